"""Data-parallel training (PyTorch DistributedDataParallel) across processes.

One model is trained by N processes ("ranks") started by ``torchrun`` (or ``mtlsearch train
--nproc N``, which starts it): each rank holds the whole table in memory and trains on its
share of every batch; the gradients are averaged by DDP. The set-up reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; or
``$MTLSEARCH_DIST_INIT``, a ``file://`` rendezvous the search's per-trial groups use): gloo on
the CPU, NCCL on CUDA (rank ``r`` on ``cuda:LOCAL_RANK``).

What is exact (equal, up to float rounding, to 1 process with the same global batch):

- the batches: one seeded permutation per epoch, the same as the 1-process order; each
  global batch of ``batch_size`` rows is cut into N contiguous slices, rank ``r`` trains on
  slice ``r``, so N ranks see together exactly the 1-process batches;
- the loss: rank ``r``'s task loss ``L_k^r`` (mean over its ``n_k^r`` rows of task k, or per
  unit of row weight) is multiplied by ``N n_k^r / n_k`` (``n_k``: the global batch's rows of
  task k, known to every rank from the shared permutation; for ESCM²'s ``loss: ips``, a mean
  over the product task's rows, those rows: :func:`~mtlsearch.train._chained.count_mask`)
  before backward, so DDP's mean of the ranks' gradients is the gradient of the global
  batch's ``L_k`` for every loss that is linear in the task losses (``fixed``, ``dynamic``,
  ``dwa``, ``uncertainty``, ``rlw``); the learned parameters of a weighting (uncertainty's
  log-variances) have their gradients averaged the same way;
- the epoch's task losses (the input of ``dwa`` and the other stateful weightings) and the
  reported training loss: sums all-reduced over the ranks, so every rank holds the same;
- validation and test metrics: each rank predicts a contiguous slice of the split, the
  predictions are gathered (padded to the longest slice, with the sizes) in row order, and
  every metric (AUC included) is computed on the full set, identically on every rank, so
  early stopping and the best epoch agree.

Not exact: dropout (each rank draws its own masks), batch normalisation (per-rank batch
statistics), the gates' auxiliary (load-balancing) loss (the mean of the ranks' losses,
not the loss of the global batch), and float summation order (a few ulps per step).

Streamed training splits (``stream: true``, :class:`~mtlsearch.data.StreamSplit`): no rank
holds the table, so the global batches cannot be the 1-process ones. Each epoch, row group
``i`` of the epoch's seeded row-group order goes to rank ``i % N``
(:meth:`StreamSplit.rank_batches`), and each rank passes its row groups through its own
seeded shuffle buffer, yielding local batches of its share of ``batch_size``
(``(r + 1) B // N - r B // N`` rows). Lock-step: every rank counts the batches its part
gives, the count is all-reduced with MIN, and every rank trains that many steps, so a rank
with more rows *skips* its last batches of the epoch (logged; a different part each epoch, as
the order changes) and no rank waits for a peer that ran out. The loss scaling is the same
as above with ``n_k`` all-reduced per step (one small all-reduce), so each step's gradient
is the gradient of the union of the ranks' local batches. Such a run is *not* equal to a
1-process streamed run (other batch composition, other shuffle, skipped rows); the same
seed, data and N give the same result. Fewer row groups with rows than ranks is refused
(:meth:`StreamSplit.check_world`). Streamed validation and test splits are scored as
in-memory ones: rank ``r`` predicts its contiguous range of rows (read streaming, through
:meth:`StreamSplit.row_range`), the outputs are gathered in row order and the metrics (the
exact AUC) computed on all rows, the same on every rank.

Loss weightings that need the per-task gradients of shared parameters (the gradient-level
methods of :mod:`mtlsearch.train._gradient`, ``gradnorm``, ``famo``, ``gls``: any method that
overrides ``backward`` or ``after_step``, or reads the model) are refused under DDP with a
one-line :class:`UserError` before training starts (:func:`check_weighting`).

Reference: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", VLDB 2020; ``torch.nn.parallel.DistributedDataParallel``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec
from mtlsearch.data import StreamSplit, TensorSplit, is_streamed
from mtlsearch.train._chained import count_mask
from mtlsearch.train._evaluate import Evaluator, raw_outputs, split_outputs
from mtlsearch.train._weighting import LOSS_WEIGHTINGS, LossWeighting

logger = logging.getLogger(__name__)

#: A rendezvous URL (``file:///path`` or ``tcp://host:port``) that replaces ``env://``.
INIT_ENV = "MTLSEARCH_DIST_INIT"
#: Seconds a collective waits for the other ranks before failing (a dead peer usually fails
#: it at once: its sockets close).
TIMEOUT_ENV = "MTLSEARCH_DIST_TIMEOUT"


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group: ``rank`` in ``[0, world_size)``,
    ``local_rank`` on this machine, the ``device`` it trains on and the ``backend``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and metrics and logs progress."""
        return self.rank == 0


_CURRENT: DistContext | None = None


def launched() -> bool:
    """Whether this process was started as one rank of several (torchrun's ``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"${name}: expected an integer, got {text!r}") from None


def init_from_env(device: str | torch.device | None = None) -> DistContext | None:
    """Join the process group the environment describes; None when ``WORLD_SIZE`` is 1 or
    unset (a plain process). Idempotent: a second call returns the same context.

    ``device``: the device asked for (``cpu``, ``cuda``, ``cuda:N``; None: the CPU); a CUDA
    device becomes ``cuda:LOCAL_RANK`` and the backend NCCL, else gloo.
    Raises :class:`UserError` for a malformed environment.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return None
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise UserError(f"$RANK: must be in [0, {world}), got {rank}")
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        target, backend = torch.device(kind), "gloo"
    init_method = os.environ.get(INIT_ENV) or "env://"
    timeout = timedelta(seconds=_env_int(TIMEOUT_ENV, 1800))
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout
        )
    _CURRENT = DistContext(rank, world, local_rank, target, backend)
    logger.debug("rank %d of %d joined (%s, %s)", rank, world, backend, target)
    return _CURRENT


def current() -> DistContext | None:
    """The context :func:`init_from_env` made, or None in a plain process."""
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


def refusal(method: str) -> str | None:
    """Why loss weighting ``method`` cannot run under DDP, or None when it can: a method that
    combines per-task gradients or reads the model (it would combine each rank's local
    gradients, not the global batch's)."""
    if refusal_free(method):
        return None
    return (
        f"training.loss_weighting.method: {method!r} combines per-task gradients (or reads the "
        f"model), which is not supported with several processes (DDP); use a loss-level method "
        f"({', '.join(supported_methods())}) or train in one process"
    )


def supported_methods() -> list[str]:
    """The registered loss weightings that run under DDP."""
    return sorted(m for m in LOSS_WEIGHTINGS if refusal_free(m))


def refusal_free(method: str) -> bool:
    """Whether ``method`` only combines the losses (its gradient is then DDP's average)."""
    cls = LOSS_WEIGHTINGS[method]
    return not (
        cls.needs_model
        or cls.backward is not LossWeighting.backward
        or cls.after_step is not LossWeighting.after_step
    )


def check_weighting(method: str) -> None:
    """Raise the one-line :class:`UserError` of :func:`refusal` if ``method`` cannot run under DDP."""
    reason = refusal(method)
    if reason is not None:
        raise UserError(reason)


class FitGroup:
    """What :func:`~mtlsearch.train.fit` does differently on one rank of a DDP group: wrap the
    model, cut the batches, scale the losses, run one backward, sum the epoch's losses,
    gather the predictions. Made by :func:`fit_group`."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.scales: list[float] = []  # this batch's loss factors N n_k^r / n_k, per task

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's initial weights are broadcast). The
        unwrapped ``model`` shares the parameters: evaluate and save that one."""
        ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        # every parameter takes part in every forward (gates are dense over the experts)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def batches(
        self, split: TensorSplit, batch_size: int, generator: torch.Generator, tasks: tuple[TaskSpec, ...]
    ) -> Iterator[TensorSplit]:
        """This rank's slice of every global batch, in the 1-process order
        (``randperm(n, generator)``, as :meth:`TensorSplit.batches`); sets :attr:`scales`.
        A streamed split: this rank's own part of the epoch (:meth:`stream_batches`)."""
        if is_streamed(split):
            yield from self.stream_batches(split, batch_size, generator, tasks)  # type: ignore[arg-type]
            return
        n, world, rank = len(split), self.ctx.world_size, self.ctx.rank
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size].to(split.numeric.device)
            g = idx.shape[0]
            lo, hi = rank * g // world, (rank + 1) * g // world
            self.scales = self._scales(split, idx, lo, hi, tasks)
            yield split.take(idx[lo:hi])

    def stream_batches(
        self, split: StreamSplit, batch_size: int, generator: torch.Generator, tasks: tuple[TaskSpec, ...]
    ) -> Iterator[TensorSplit]:
        """This rank's batches of a streamed split for one epoch (module docstring): its row
        groups, its share of ``batch_size``, as many steps as the rank with the fewest; sets
        :attr:`scales` from the per-step all-reduced task row counts (or row weights)."""
        world, rank = self.ctx.world_size, self.ctx.rank
        local = (rank + 1) * batch_size // world - rank * batch_size // world
        if batch_size < world:
            raise UserError(f"training.batch_size: {batch_size} is smaller than the {world} processes")
        split.check_world(world)
        rows, parts = split.rank_batches(local, generator, rank, world)
        steps = self._min_int(-(-rows // local))
        counts = torch.tensor(
            [rows, rows - min(rows, steps * local)], dtype=torch.int64, device=self._comm_device
        )
        dist.all_reduce(counts)  # every rank's rows and skipped rows, for the log
        total, skipped = (int(v) for v in counts.tolist())
        if skipped and rank == 0:
            logger.log(
                logging.WARNING if skipped > 0.05 * total else logging.DEBUG,
                "streamed DDP epoch: %d of %d training rows skipped (%d steps; the ranks' row groups "
                "hold unequal rows: more, smaller row groups balance them)",
                skipped, total, steps,
            )  # fmt: skip
        try:
            for _ in range(steps):
                batch = next(parts)
                self.scales = self._stream_scales(batch, tasks)
                yield batch
        finally:
            parts.close()  # a rank with more rows skips the rest (module docstring)

    def _min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t)

    @property
    def _comm_device(self) -> torch.device:
        return self.ctx.device if self.ctx.backend == "nccl" else torch.device("cpu")

    def _stream_scales(self, batch: TensorSplit, tasks: tuple[TaskSpec, ...]) -> list[float]:
        """``N n_k^r / n_k`` with ``n_k`` (the step's rows, or row weight, of task k over all
        ranks) all-reduced."""
        mine = []
        for t in tasks:
            weight = count_mask(t, tasks, batch.masks).double()
            if t.name in batch.weights:
                weight = weight * batch.weights[t.name].double()
            mine.append(weight.sum())
        local = torch.stack(mine).to(self._comm_device) if mine else torch.zeros(0, dtype=torch.float64)
        total = local.clone()
        dist.all_reduce(total)
        world = self.ctx.world_size
        return [world * m / s if s > 0 else 0.0 for m, s in zip(local.tolist(), total.tolist(), strict=True)]

    def _scales(
        self, split: TensorSplit, idx: Tensor, lo: int, hi: int, tasks: tuple[TaskSpec, ...]
    ) -> list[float]:
        dens = []
        for t in tasks:
            weight = count_mask(t, tasks, split.masks)[idx].double()
            if t.name in split.weights:
                weight = weight * split.weights[t.name][idx].double()
            dens.append(torch.stack([weight[lo:hi].sum(), weight.sum()]))
        pairs = torch.stack(dens).tolist()
        world = self.ctx.world_size
        return [world * mine / total if total > 0 else 0.0 for mine, total in pairs]

    def backward(
        self,
        weighting: LossWeighting,
        losses: dict[str, Tensor],
        aux: Tensor | None,
        scale: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """One backward pass for the whole step (DDP's reducer allows one per forward): the
        weighting's total of the scaled losses plus the gates' auxiliary loss. The weighting's
        own parameters get their gradients averaged here; returns the global batch's total
        (the mean of the ranks' scaled totals), detached and the same on every rank. Always
        differentiates (``scale``: fp16's loss scaling), even a non-finite total, so that no
        rank waits for a reduction its peers skip; the caller stops on a non-finite return."""
        names = weighting.task_names
        scaled = {n: losses[n] * s for n, s in zip(names, self.scales, strict=True)}
        total = weighting(scaled)
        combined = total if aux is None else total + aux
        (combined if scale is None else scale(combined)).backward()  # scale: fp16's loss scaler
        params = [p for p in weighting.parameters() if p.grad is not None]
        flat = torch.cat([total.detach().reshape(1).double(), *(p.grad.reshape(-1).double() for p in params)])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        offset = 1
        for p in params:
            k = p.grad.numel()
            p.grad.copy_(flat[offset : offset + k].reshape(p.grad.shape))
            offset += k
        return flat[0].to(total.dtype)

    def epoch_sums(
        self, loss_sum: Tensor, loss_rows: Tensor, total_sum: float, rows: int
    ) -> tuple[Tensor, Tensor, float, int]:
        """The epoch's per-task loss sums and row counts and the total's sum, over all ranks."""
        k = loss_sum.numel()
        flat = torch.cat([loss_sum, loss_rows, loss_sum.new_tensor([total_sum, float(rows)])])
        dist.all_reduce(flat)
        return flat[:k], flat[k : 2 * k], float(flat[2 * k]), int(flat[2 * k + 1])

    def evaluator(
        self,
        split: TensorSplit,
        tasks: tuple[TaskSpec, ...],
        label_scaling: Mapping[str, tuple[float, float]] | None = None,
    ) -> Evaluator:
        return GatheredEvaluator(self.ctx, split, tasks, label_scaling)


def fit_group(device: torch.device | None = None) -> FitGroup | None:
    """The :class:`FitGroup` of this process, or None outside a process group; joins the
    group the environment describes when torchrun started this process and no one has yet."""
    ctx = current()
    if ctx is None and launched():
        ctx = init_from_env(device)
    return FitGroup(ctx) if ctx is not None else None


def gather_rows(ctx: DistContext, local: Tensor) -> Tensor:
    """Every rank's ``local`` rows (dim 0 may differ per rank), concatenated in rank order.

    Padded to the longest slice for the all-gather, then cut back with the gathered sizes."""
    device = local.device if ctx.backend == "nccl" else torch.device("cpu")
    local = local.to(device)
    size = torch.tensor([local.shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


class GatheredEvaluator(Evaluator):
    """:class:`Evaluator` whose forward passes are shared out: rank ``r`` predicts rows
    ``[r n / N, (r + 1) n / N)`` of the split, the raw outputs are gathered in row order and
    the metrics are computed on all ``n`` rows, identically on every rank (exact AUC, never a
    mean of per-rank AUCs)."""

    def __init__(
        self,
        ctx: DistContext,
        split: TensorSplit,
        tasks: tuple[TaskSpec, ...],
        label_scaling: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__(split, tasks, label_scaling)
        self.ctx = ctx

    def _outputs(self, model: nn.Module) -> dict[str, Tensor]:
        n, world, rank = len(self.split), self.ctx.world_size, self.ctx.rank
        lo, hi = rank * n // world, (rank + 1) * n // world
        split = self.split
        if is_streamed(split):  # this rank's range, read streaming
            part: Any = split
            mine = split_outputs(model, part.row_range(lo, hi))
            if not mine:  # no row here: the shapes come from a one-row pass
                mine = {k: v[:0] for k, v in split_outputs(model, part.row_range(0, 1)).items()}
            device = split.device
        else:
            mine = raw_outputs(model, split.numeric[lo:hi], split.categorical[lo:hi])
            if not mine:  # no row here: the shapes come from a one-row pass
                probe = raw_outputs(model, split.numeric[:1], split.categorical[:1])
                mine = {k: v[:0] for k, v in probe.items()}
            device = split.numeric.device
        return {t.name: gather_rows(self.ctx, mine[t.name]).to(device) for t in self.tasks}


def exit_cause(code: int) -> str:
    """How a rank's process ended, from its exit status (``subprocess``'s convention: a
    negative ``code`` is death by signal ``-code``): ``"killed by SIGKILL"`` or
    ``"exited with status 1"``."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def install_rank_logging(ctx: DistContext | None) -> None:
    """Ranks other than 0 log errors only (rank 0 logs warnings and progress)."""
    if ctx is not None and not ctx.is_main:
        _log_errors_only()


def quiet_other_ranks() -> None:
    """When this process is a rank other than 0 (``$RANK``, set by torchrun), log errors only,
    from the start (the data load's warnings included): rank 0 alone prints warnings and
    progress. Nothing changes in a plain process or on rank 0."""
    if launched() and _env_int("RANK", 0) != 0:
        _log_errors_only()


def _log_errors_only() -> None:
    logging.getLogger("mtlsearch").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # other libraries' warnings (through logging)


def broadcast_object(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a small picklable object)."""
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "INIT_ENV",
    "DistContext",
    "FitGroup",
    "GatheredEvaluator",
    "broadcast_object",
    "check_weighting",
    "current",
    "fit_group",
    "gather_rows",
    "init_from_env",
    "install_rank_logging",
    "launched",
    "quiet_other_ranks",
    "refusal",
    "shutdown",
    "supported_methods",
]
