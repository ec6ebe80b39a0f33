"""``--nproc N``: run ``mtlsearch train`` as N DDP processes through torchrun's launcher.

``mtlsearch train --nproc N ...`` runs torchrun's launcher (``torch.distributed.run
--standalone --nproc-per-node N -m mtlsearch train ...``, the same arguments without
``--nproc``) in this process and exits with its outcome; ``torchrun --nproc-per-node N -m
mtlsearch train ...`` works the same way directly. Each rank gets ``cores // N`` torch
threads unless ``--threads`` says.

Errors: a rank that raises a :class:`UserError` writes its message to
``$MTLSEARCH_RANK_ERRORS/rank<R>`` (a folder this launcher makes and names in that variable;
:func:`rank_errors`) and exits 2 without printing; the launcher then raises one
:class:`UserError` with rank 0's message (the lowest rank's when rank 0 left none), so the
command prints one ``error:`` line and exits 2, as without ``--nproc``. Any other failure of
a rank is reported in one line naming the rank that failed first (one killed by a signal,
else the lowest failed rank), exit status 1; a rank's unexpected exception is written to
``trace<R>`` instead of stderr, and only the failing rank's traceback is shown (its peers'
"connection reset" tracebacks, which follow from it, are not). The elastic agent's own log
lines and ``ChildFailedError`` report are not shown (``--verbose`` shows the agent's log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from mtlsearch._errors import UserError
from mtlsearch.cli._common import available_cores, count

logger = logging.getLogger(__name__)

#: The folder a rank writes its UserError message into (``rank<R>``); set by :func:`launch`.
ERRORS_ENV = "MTLSEARCH_RANK_ERRORS"
#: Exit status of a rank that stopped on a UserError (the CLI's status for bad input).
USER_ERROR_STATUS = 2
#: Loggers of torchrun's launcher and elastic agent, hidden while it runs (unless --verbose).
_AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")

NPROC_HELP = (
    "Train with N processes (PyTorch DDP through torchrun; gloo on the CPU, NCCL on CUDA): each "
    "trains on 1/N of every batch. Loss-level weightings only; see README 'Several processes'."
)


def nproc_option() -> int | None:
    return typer.Option(None, "--nproc", min=1, metavar="N", help=NPROC_HELP, show_default=False)


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = i + 1 < len(argv)
            continue
        if token.startswith("--nproc="):
            continue
        out.append(token)
    return out


def rank_threads(threads: int | None, nproc: int) -> int:
    """Torch threads per rank: ``--threads``, else the cores shared out (at least 1)."""
    return threads if threads is not None else max(1, available_cores() // max(1, nproc))


def launch(nproc: int, threads: int | None, argv: Sequence[str] | None = None) -> int:
    """Run this command line again as ``nproc`` ranks under torchrun's launcher; 0 when every
    rank exits 0.

    The ranks get ``--threads`` (:func:`rank_threads`) and ``OMP_NUM_THREADS`` set alike.
    Raises :class:`UserError` with rank 0's message when a rank stopped on bad input (module
    docstring) and ``KeyboardInterrupt`` after Ctrl-C (the ranks are stopped first); any other
    failure is logged in one line naming the rank and gives 1 (SIGTERM: 143).
    """
    args = without_nproc(list(sys.argv[1:] if argv is None else argv))
    n = rank_threads(threads, nproc)
    if threads is None:
        args += ["--threads", str(n)]
    logger.info("starting %d processes (DDP), %s each", nproc, count(n, "thread"))
    folder = Path(tempfile.mkdtemp(prefix="mtlsearch-ranks-"))
    try:
        with _environ({"OMP_NUM_THREADS": str(n), ERRORS_ENV: str(folder)}), _quiet_agent():
            failure = _run_agent(nproc, ["-m", "mtlsearch", *args])
        if failure is None:
            return 0
        message = _rank_message(folder)
        if message is not None:
            raise UserError(message)
        rank, code = failure
        trace = folder / f"trace{rank}"
        if trace.is_file():  # the failed rank's own exception: a bug's traceback, shown once
            sys.stderr.write(trace.read_text(errors="replace"))
        logger.error("%s", describe_failure(rank, nproc, code))
        return 1
    except OSError as exc:
        raise UserError(f"--nproc {nproc}: could not start torchrun: {exc}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_agent(nproc: int, args: list[str]) -> tuple[int, int] | None:
    """torchrun ``--standalone`` in this process; None on success, else the first failed
    rank and its exit status (negative: killed by that signal)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    parsed = get_args_parser().parse_args([f"--nproc-per-node={nproc}", *args])
    # what torchrun's --standalone sets: a c10d store on a free local port
    parsed.rdzv_backend, parsed.rdzv_endpoint, parsed.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    parsed.standalone = True
    config, cmd, cmd_args = config_from_args(parsed)
    try:
        elastic_launch(config=config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as exc:
        # the cause: a rank killed by a signal, else the lowest rank that exited non-zero,
        # else one the agent stopped with SIGTERM (its peers fail in a collective after the
        # cause; the agent's own timestamps have a resolution of seconds)
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        return min(codes.items(), key=lambda rc: (_failure_order(rc[1]), rc[0]))
    except SignalException as exc:  # the agent stopped the ranks before raising
        if exc.sigval == signal.SIGTERM:
            typer.secho("terminated (SIGTERM)", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(128 + signal.SIGTERM) from None
        raise KeyboardInterrupt from None
    return None


def _failure_order(code: int) -> int:
    """0: killed by a signal other than SIGTERM; 1: a non-zero status; 2: SIGTERM (how the
    agent stops the other ranks once one failed)."""
    if code == -signal.SIGTERM:
        return 2
    return 0 if code < 0 else 1


def describe_failure(rank: int, nproc: int, code: int) -> str:
    """One line on why rank ``rank`` of ``nproc`` failed (``code`` < 0: killed by signal -code)."""
    from mtlsearch.train.distributed import exit_cause

    how = exit_cause(code).replace("killed", "was killed", 1)
    return f"rank {rank} of {nproc} {how}; the other processes were stopped"


def _rank_message(folder: Path) -> str | None:
    """Rank 0's UserError message in ``folder``, else the lowest rank's; None if none wrote one."""
    found = []
    for path in folder.glob("rank*"):
        suffix = path.name[4:]
        if suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found):
        text = path.read_text(errors="replace").strip()
        if text:
            return text
    return None


@contextlib.contextmanager
def rank_errors() -> Iterator[None]:
    """Around a rank's command: a :class:`UserError` is written to ``$MTLSEARCH_RANK_ERRORS/
    rank<RANK>`` and the rank exits 2 silently (the launcher prints it once). Outside a group
    started by :func:`launch` the error propagates unchanged."""
    folder = os.environ.get(ERRORS_ENV)
    rank = os.environ.get("RANK", "0")
    try:
        yield
    except UserError as exc:
        if not folder or not _write(Path(folder) / f"rank{rank}", str(exc)):
            raise
        raise typer.Exit(USER_ERROR_STATUS) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception:  # the launcher shows it if this rank failed first (peers then fail too)
        if not folder or not _write(Path(folder) / f"trace{rank}", traceback.format_exc()):
            raise
        raise typer.Exit(1) from None


def _write(target: Path, text: str) -> bool:
    """``text`` into ``target``, atomically; False when the launcher's folder is gone."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError:
        return False
    return True


def start_rank() -> None:
    """Once, when a rank of a group :func:`launch` started begins: the signals the launcher
    stops the ranks with (SIGTERM after a rank failed, SIGINT passed on after Ctrl-C) end the
    rank silently (the launcher says why, once), and ranks other than 0 log errors only (rank 0
    alone prints warnings and progress)."""
    if os.environ.get(ERRORS_ENV):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    from mtlsearch.train import distributed

    distributed.quiet_other_ranks()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (the ranks inherit it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """The elastic agent's log lines (its start-up, ``Sending process ... closing signal``,
    ``failed (exitcode: 2)``) are not shown, unless the root logger logs debug messages
    (``--verbose``): its loggers (torch attaches its own handler) are disabled meanwhile."""
    import torch.distributed.elastic.agent.server.local_elastic_agent
    import torch.distributed.launcher.api  # noqa: F401 (imported for their loggers)

    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(_AGENT_LOGGERS)]
    loggers = [
        lg for n in names if isinstance(lg := logging.getLogger(n), logging.Logger) and not lg.disabled
    ]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg in loggers:
            lg.disabled = False
