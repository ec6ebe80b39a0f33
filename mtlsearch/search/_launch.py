"""N processes per trial: each trial trains in a fresh DDP group that the worker launches.

``mtlsearch worker --nproc N`` (and ``search --nproc N``) keeps the worker process exactly as
with one process: it asks for the trial, samples its configuration, holds the lease
(heartbeat, reaper), runs the observers and the pruning rule, and tells the result. Only the
``fit`` call is replaced by :func:`group_fit`, which

1. writes the job (study recipe, sampled config, the data-fraction rows) to a temporary folder;
2. starts N rank processes (``python -m mtlsearch.search._launch FOLDER`` with torchrun's
   environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; the rendezvous is a ``file://``
   store in the folder, so no port is picked and none can clash); every rank loads the data
   from the study's recipe and trains with :func:`mtlsearch.train.fit` under DDP;
3. after every epoch rank 0 appends the :class:`~mtlsearch.train.EpochReport` to
   ``reports.jsonl`` and waits for the worker's decision (``decision-<epoch>``: continue or
   stop); the worker runs its epoch callbacks (pruning, observers) on the report and writes
   the decision; rank 0 broadcasts it to the other ranks, which stop together;
4. at the end rank 0 writes ``result.json`` (the metrics) and ``best.pt`` (the best
   weights, a ``state_dict`` of tensors, read back with ``weights_only=True``), from which the
   worker rebuilds the :class:`~mtlsearch.train.TrainResult` its objective, observers and
   ``tell`` need.

If any rank dies (SIGKILL, out of memory, an exception), the worker stops the others and the
trial FAILs with a reason naming the rank and the signal or status (the trial's
``fail_reason``); the worker goes on with the next trial.

Why a fresh group per trial, launched by the worker, rather than a persistent group whose
rank 0 holds the Optuna trial (optuna-integration's ``TorchDistributedTrial``): a process
group does not survive a dead rank (NCCL and gloo collectives fail or hang, and the group
cannot be rebuilt without every process joining again), so with a persistent group one
killed rank ends the whole worker, trial and lease included. Here a dead rank costs one
trial; the worker, its lease and its storage connection are never part of the group.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from mtlsearch import _interrupt

logger = logging.getLogger(__name__)

#: Seconds the ranks get to exit on their own (after a stop decision, or after a peer died)
#: before they are killed.
STOP_GRACE = 10.0
_POLL = 0.02


class GroupFailed(RuntimeError):
    """A rank of the trial's DDP group exited abnormally; the message names it."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- the worker's side -------------------------------------------------------------------------
def group_fit(
    ctx: Any,
    config: Any,
    data: Any,
    *,
    callbacks: Sequence[Callable[[Any], None]] = (),
    progress: bool = False,
    epoch_rows: Callable[[int], Any] | None = None,
    **_: Any,
) -> Any:
    """Train ``config`` in a fresh group of ``ctx.nproc`` DDP processes; :func:`mtlsearch.train.fit`'s
    contract (callbacks after each epoch, whose exception stops training and propagates; the
    best-epoch :class:`~mtlsearch.train.TrainResult`). ``data`` is not sent: every rank loads
    it from the study's recipe (``ctx.settings``). Raises :class:`GroupFailed` when a rank
    dies and :class:`~mtlsearch._errors.UserError` for a loss weighting DDP cannot run."""
    import torch

    from mtlsearch.train import distributed

    distributed.check_weighting(config.training.loss_weighting.method)  # before any process starts
    folder = Path(tempfile.mkdtemp(prefix="mtlsearch-ddp-"))
    try:
        epochs = config.training.epochs
        if epoch_rows is not None:
            rows = {str(e): r for e in range(epochs) if (r := epoch_rows(e)) is not None}
            if rows:
                torch.save(rows, folder / "rows.pt")
        threads = ctx.threads or 1
        job = {
            "settings": ctx.settings.to_json(),
            "config": config.to_dict(),
            "worker_pid": os.getpid(),
            "threads": threads,
        }
        _write_atomic(folder / "job.json", json.dumps(job))
        group = _Group(folder, ctx.nproc, threads)
        grace = 0.0  # an error or an interrupt here: the ranks are killed at once
        try:
            for report in group.reports():
                try:
                    for cb in callbacks:
                        cb(report)
                except BaseException:
                    group.decide(report.epoch, go=False)
                    grace = STOP_GRACE  # told to stop: they leave the group cleanly
                    raise
                group.decide(report.epoch, go=True)
            return _load_result(folder, config)
        finally:
            group.stop(grace)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Group:
    """The rank processes of one trial, watched from the worker."""

    def __init__(self, folder: Path, nproc: int, threads: int) -> None:
        self.folder = folder
        self.nproc = nproc
        self.procs: list[subprocess.Popen] = []
        base = {
            **os.environ,
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "OMP_NUM_THREADS": str(threads),
            "MTLSEARCH_DIST_INIT": f"file://{folder / 'rendezvous'}",
        }
        for rank in range(nproc):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            log = (folder / f"rank{rank}.log").open("w")
            cmd = [sys.executable, "-m", "mtlsearch.search._launch", str(folder)]
            self.procs.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            log.close()
        logger.debug("trial group: %d ranks, pids %s", nproc, [p.pid for p in self.procs])

    def reports(self) -> Iterator[Any]:
        """The epoch reports as rank 0 writes them; returns when every rank exited 0,
        raises :class:`GroupFailed` when one did not."""
        path, offset = self.folder / "reports.jsonl", 0
        while True:
            _interrupt.check()
            codes = [p.poll() for p in self.procs]  # read before the reports: none is missed
            if path.exists():
                with path.open() as f:
                    f.seek(offset)
                    text = f.read()
                complete = text[: text.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    yield _report(json.loads(line))
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                raise GroupFailed(self._reason(failed))
            if all(c == 0 for c in codes):
                return
            time.sleep(_POLL)

    def _reason(self, failed: list[tuple[int, int]]) -> str:
        # A rank killed by a signal is the cause; its peers then fail in a collective.
        rank, code = sorted(failed, key=lambda rc: (rc[1] >= 0, rc[0]))[0]
        what = f"rank {rank} of {self.nproc} (pid {self.procs[rank].pid})"
        from mtlsearch.train.distributed import exit_cause

        if code < 0:
            return f"{what} was {exit_cause(code)}; the trial's DDP group was stopped"
        last = _last_line(self.folder / f"rank{rank}.log")
        return f"{what} {exit_cause(code)}" + (f": {last}" if last else "")

    def decide(self, epoch: int, go: bool) -> None:
        _write_atomic(self.folder / f"decision-{epoch}", "continue" if go else "stop")

    def stop(self, grace: float = 0.0) -> None:
        """Let the ranks exit on their own for ``grace`` seconds, then kill them. With a dead
        peer the survivors are killed at once (they wait in a collective that cannot end)."""
        if any(p.poll() not in (None, 0) for p in self.procs):
            grace = 0.0
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def _report(d: dict[str, Any]) -> Any:
    from mtlsearch.train import EpochReport

    return EpochReport(
        epoch=d["epoch"],
        train_loss=d["train_loss"],
        task_losses=d["task_losses"],
        valid=d["valid"],
        score=d["score"],
        loss_weights=d.get("loss_weights", {}),
        skills=d.get("skills", {}),
    )


def _load_result(folder: Path, config: Any) -> Any:
    """The :class:`TrainResult` rank 0 left in ``folder``: metrics from JSON, the best weights
    loaded (``weights_only=True``) into a freshly built network."""
    import torch

    from mtlsearch.arch import build_model
    from mtlsearch.train import TrainResult

    metrics = json.loads((folder / "result.json").read_text())
    model = build_model(config.model, seed=config.training.seed)
    model.load_state_dict(torch.load(folder / "best.pt", map_location="cpu", weights_only=True))
    model.eval()
    history = [_report({**h, "epoch": h["epoch"] - 1}) for h in metrics["history"]]
    extra = {k: metrics[k] for k in ("device", "precision") if k in metrics}
    extra = {k: v for k, v in extra.items() if k in {f.name for f in fields(TrainResult)}}
    return TrainResult(
        model=model,
        config=config,
        history=history,
        best_epoch=metrics["best_epoch"] - 1,
        valid=metrics["valid"],
        test=metrics["test"],
        utilisation=metrics["utilisation"],
        n_params=metrics["n_params"],
        seconds=metrics["seconds"],
        epoch_seconds=metrics["epoch_seconds"],
        label_scaling={k: (v["mean"], v["std"]) for k, v in metrics["label_scaling"].items()},
        **extra,
    )


# ---- a rank's side -----------------------------------------------------------------------------
class _Stopped(Exception):
    """The worker decided to stop the trial (pruned, or an observer raised)."""


class _Relay:
    """The epoch callback on every rank: rank 0 hands the report to the worker and waits for
    its decision; the decision is broadcast, so every rank continues or stops together."""

    def __init__(self, folder: Path, dist_ctx: Any, worker_pid: int) -> None:
        self.folder = folder
        self.dist = dist_ctx
        self.worker_pid = worker_pid

    def __call__(self, report: Any) -> None:
        from mtlsearch.train import distributed

        go = None
        if self.dist.is_main:
            with (self.folder / "reports.jsonl").open("a") as f:
                f.write(json.dumps(report.to_dict()) + "\n")
            go = self._wait(report.epoch)
        if not distributed.broadcast_object(self.dist, go):
            raise _Stopped()

    def _wait(self, epoch: int) -> bool:
        path = self.folder / f"decision-{epoch}"
        while not path.exists():
            try:
                os.kill(self.worker_pid, 0)
            except ProcessLookupError:
                raise SystemExit(f"the worker (pid {self.worker_pid}) is gone") from None
            time.sleep(_POLL)
        return path.read_text() == "continue"


def rank_main(folder: Path) -> int:
    """One rank of a trial's group: load the job, train under DDP, rank 0 writes the result."""
    import torch

    from mtlsearch.search._study import SearchSettings, _load_data
    from mtlsearch.train import ExperimentConfig, distributed, fit, resolve_device

    job = json.loads((folder / "job.json").read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.ERROR,  # rank 0 alone warns and reports
        format=f"%(levelname)s rank{rank} %(name)s: %(message)s",
    )
    torch.set_num_threads(int(job["threads"]))
    config = ExperimentConfig.from_dict(job["config"])
    device = resolve_device(config.training.device, "training.device") if config.training.device else None
    ctx = distributed.init_from_env(device)
    if ctx is None:
        raise SystemExit("not started as a rank (WORLD_SIZE unset or 1)")
    data = _load_data(SearchSettings.from_json(job["settings"]))
    rows_path = folder / "rows.pt"
    rows = torch.load(rows_path, weights_only=True) if rows_path.exists() else None
    epoch_rows = (lambda e: rows.get(str(e))) if rows else None
    try:
        result = fit(
            config,
            data,
            callbacks=[_Relay(folder, ctx, int(job["worker_pid"]))],
            progress=False,
            epoch_rows=epoch_rows,
        )
    except _Stopped:
        distributed.shutdown()
        return 0
    if ctx.is_main:
        tmp = folder / ".best.pt.tmp"
        torch.save(result.model.state_dict(), tmp)
        os.replace(tmp, folder / "best.pt")
        _write_atomic(folder / "result.json", json.dumps(result.metrics_dict()))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(Path(sys.argv[1])))
