"""A Ctrl-C or SIGTERM whose raise the interpreter swallowed (the signal landed in a
finaliser or weakref callback: "Exception ignored in ...", seen in CI inside SQLAlchemy's
garbage collection) is not lost: the handler also records it, and the trainer raises it at
its next batch in the main thread (never in another thread)."""

from __future__ import annotations

import signal
import threading

import pytest
from _train_support import one_thread  # noqa: F401

from mtlsearch import _interrupt
from mtlsearch.arch import preset
from mtlsearch.cli import Terminated, _on_sigint, _on_sigterm
from mtlsearch.data import make_synthetic
from mtlsearch.train import ExperimentConfig, TrainConfig, fit


@pytest.fixture(autouse=True)
def _clean():
    _interrupt.clear()
    yield
    _interrupt.clear()


def _experiment(data):
    return ExperimentConfig(
        model=preset("mmoe", data.input_spec(), data.tasks, n_experts=2, expert_hidden=(4,), tower=(4,)),
        training=TrainConfig(epochs=2, batch_size=64),
    )


class _Swallowing:
    """What the interpreter does to an exception raised in a weakref callback."""

    def __del__(self):
        _on_sigterm(signal.SIGTERM, None)


def test_a_swallowed_sigterm_is_raised_at_the_next_training_batch():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        obj = _Swallowing()
        del obj  # the handler raises inside __del__: printed as ignored, not propagated
        data = make_synthetic(n=600, d=5, seed=0)
        batches = []
        with pytest.raises(Terminated):
            fit(_experiment(data), data, progress=False, callbacks=[batches.append])
        assert batches == []  # raised in the first epoch, before any epoch ended
        _interrupt.check()  # raised once: nothing left
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_recorded_interrupt_is_not_raised_in_another_thread():
    _interrupt.record(KeyboardInterrupt())
    data = make_synthetic(n=300, d=5, seed=0)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fit(_experiment(data), data, progress=False)))
    t.start()
    t.join()
    assert len(out["r"].history) == 2  # the worker thread trained to the end
    with pytest.raises(KeyboardInterrupt):
        _interrupt.check()  # still pending for the main thread


def test_the_sigint_handler_records_and_raises():
    with pytest.raises(KeyboardInterrupt) as err:
        _on_sigint(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt) as again:
        _interrupt.check()
    assert again.value is err.value


def test_a_swallowed_interrupt_prints_no_traceback_but_other_unraisables_still_do(tmp_path):
    """In a real process: the interpreter's "Exception ignored in ..." report (with its
    traceback) is silenced for the recorded interrupt only; a ValueError in a finaliser is
    still reported."""
    import subprocess
    import sys

    script = tmp_path / "swallow.py"
    script.write_text(
        "import signal, sys\n"
        "from mtlsearch import _interrupt\n"
        "from mtlsearch.cli import _on_sigterm\n"
        "_interrupt.quiet_swallowed_interrupts()\n"
        "_interrupt.quiet_swallowed_interrupts()  # idempotent\n"
        "class A:\n"
        "    def __del__(self):\n"
        "        _on_sigterm(signal.SIGTERM, None)\n"
        "class B:\n"
        "    def __del__(self):\n"
        "        raise ValueError('boom in a finaliser')\n"
        "a = A(); del a\n"
        "b = B(); del b\n"
        "try:\n"
        "    _interrupt.check()\n"
        "except KeyboardInterrupt as exc:\n"
        "    print('raised at the safe point:', type(exc).__name__)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "raised at the safe point: Terminated"
    assert "Terminated" not in proc.stderr
    assert "ValueError: boom in a finaliser" in proc.stderr
