"""``mtlsearch worker --nproc 2``: each trial trains in a fresh 2-process DDP group (gloo, CPU)
that the worker launches, on a real PostgreSQL study.

The worker finishes an exact budget of 3 trials; one rank SIGKILLed in the middle of a trial
fails that trial with a reason naming the rank and the signal, and the worker goes on to
the next trial. The kill is made deterministic without any sleep: once the trial has
reported an epoch, the worker is SIGSTOPped (rank 0 then waits for its continue/stop decision
and cannot finish the trial), rank 1 is SIGKILLed, and the worker is resumed. Waits are on
trial states and process exits, with limits far above any plausible time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from _services import require_postgres
from optuna.trial import TrialState

from mtlsearch.search import SearchSettings, count_finished, create_or_resume, open_storage

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SPACE = (ROOT / "search_spaces" / "quick.yaml").read_text().replace("epochs: 3", "epochs: 4")
LIMIT = 240  # seconds: far above any plausible wait; a hang fails instead of blocking CI
RANK_MODULE = "mtlsearch.search._launch"


def _children_ranks(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of the trial-group processes ``parent`` started (read from /proc)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent or RANK_MODULE.encode() not in cmdline:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = int(entry.name)
    return ranks


def _wait(what: str, check, log: Path, limit: float = LIMIT):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{log.read_text()[-4000:]}")


@pytest.mark.services
def test_a_two_process_worker_finishes_its_budget_and_survives_a_killed_rank(tmp_path):
    url = require_postgres()
    name = f"ddp-{uuid.uuid4().hex[:10]}"
    settings = SearchSettings(
        space_text=SPACE,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 600, "d": 8},
        sampler="random",
        seed=5,
        n_trials=3,
        enqueue_references=False,
    )
    create_or_resume(name, url, settings, heartbeat=False)
    storage = open_storage(url, heartbeat=False)

    def study() -> optuna.Study:
        return optuna.load_study(study_name=name, storage=storage)

    log = tmp_path / "worker.log"
    cmd = [sys.executable, str(ROOT / "cli.py"), "worker", "--study", name, "--storage", url]
    cmd += ["--no-mlflow", "--quiet", "--nproc", "2", "--threads", "1"]
    with log.open("w") as out:
        worker = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        first = _wait(
            "the first trial to report an epoch",
            lambda: [
                t
                for t in study().get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("epoch_values")
            ],
            log,
        )[0]
        ranks = _wait("the trial's two rank processes", lambda: len(_children_ranks(worker.pid)) == 2, log)
        assert ranks
        os.kill(worker.pid, signal.SIGSTOP)  # rank 0 now waits for a decision that cannot come
        try:
            victim = _children_ranks(worker.pid)[1]
            os.kill(victim, signal.SIGKILL)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        code = worker.wait(timeout=LIMIT)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert code == 0, text[-4000:]

    final = study()
    trials = final.get_trials()
    assert count_finished(final) == 3
    assert not [t.number for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    states = {t.number: t.state for t in trials}
    assert states[first.number] == TrialState.FAIL
    reason = final.trials[first.number].user_attrs["fail_reason"]
    assert f"rank 1 of 2 (pid {victim}) was killed by SIGKILL" in reason, reason
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, states
    for t in complete:
        assert len(t.values) == 2 and all(v == v for v in t.values)  # two finite objectives
        assert len(t.user_attrs["epoch_values"]) == 4  # every epoch relayed by rank 0
        assert t.user_attrs["best_epoch"] in range(4)
        assert t.user_attrs["processes"] == 2 and t.user_attrs["threads"] == 1  # per process
    assert f"trial {first.number} failed: {reason}" in text


def test_a_prune_decision_stops_every_rank_after_that_epoch():
    """The worker's callback raises (as pruning does) after epoch 2 of 4: rank 0 relays the
    stop to rank 1, both leave, and the exception reaches the caller; no storage needed."""
    from types import SimpleNamespace

    from mtlsearch.search._launch import group_fit
    from mtlsearch.search._study import _load_data
    from mtlsearch.train import ExperimentConfig

    settings = SearchSettings(
        space_text=SPACE, space_source="quick.yaml", dataset="synthetic",
        dataset_options={"n": 600, "d": 8}, seed=5, n_trials=1, enqueue_references=False,
    )  # fmt: skip
    data = _load_data(settings)
    raw = {
        "model": {
            "levels": [{"n_shared": 1, "n_specific": 0, "expert_hidden": [8]}],
            "towers": {"hidden": [4]},
        },
        "training": {"lr": 0.01, "batch_size": 64, "epochs": 4, "seed": 0},
    }
    config = ExperimentConfig.from_dict(raw, inputs=data.input_spec(), tasks=data.tasks)
    seen = []

    def prune_after_two(report) -> None:
        seen.append(report.epoch)
        assert set(report.valid) == {"y1", "y2"}
        if report.epoch == 1:
            raise optuna.TrialPruned("enough")

    with pytest.raises(optuna.TrialPruned, match="enough"):
        group_fit(
            SimpleNamespace(settings=settings, nproc=2, threads=1), config, data, callbacks=[prune_after_two]
        )
    assert seen == [0, 1]
    assert _children_ranks(os.getpid()) == {}  # every rank process is gone
