"""The training loop: masked joint loss, pluggable weighting, early stopping, evaluation.

Joint loss (PLE paper, eq. 6): task k's loss is the mean of its per-sample losses over the
samples in its sample space (mask True), ``L_k = sum_i d_k^i loss_k(i) / sum_i d_k^i``;
masked rows are *selected out* before the loss, so their labels (even NaN) never reach the
loss or its gradient. The balancing method (a registry, see ``_weighting`` and
``_gradient``) turns the ``L_k`` into gradients; the loop never knows which method it runs.

Class and row weights: with row weights ``w`` (the dataset spec's ``weight`` column,
``TensorSplit.weights``) the mean becomes ``L_k = sum_i w_i loss_k(i) / sum_i w_i`` over the
sample space, and ``loss_k(i)`` itself carries the task's class weight (``pos_weight`` /
``class_weights``, :mod:`mtlsearch.train._tasks`): for a binary task
``-(p y log s + (1 - y) log(1 - s))``, for a multiclass task ``-c[y] log softmax[y]``. The
denominator is the row weights (or the row count) only, never the class weights. A task
with neither is computed exactly as before (``loss.mean()``).

Labels on a large scale: a regression task listed in ``data.label_scaling`` is learned on
its standardised label ``(y - mean) / std`` (training mean and std), as the features are;
its predictions are mapped back before any metric, so every reported number is in the
label's own units.

Epoch selection: the monitor (mean skill, or one task's skill) picks the best epoch. A task
whose validation skill is undefined (NaN: its label does not vary in the validation rows,
which the data loader refuses for its own tables) is left out of the mean with a warning;
a NaN score never selects an epoch.

Determinism: the initial weights come from ``build_model(config, seed)``, the shuffling from
a local ``torch.Generator``, and dropout from the global RNG seeded inside
``torch.random.fork_rng`` (so the caller's RNG state is left untouched). On the CPU the
same seed, data and config give bitwise the same metrics.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from mtlsearch import _interrupt
from mtlsearch._errors import UserError
from mtlsearch.arch import ArchConfig, TaskSpec, build_model, count_parameters
from mtlsearch.data import MTLDataset, TensorSplit, is_streamed
from mtlsearch.train._chained import ips_loss, loss_tasks
from mtlsearch.train._config import OPTIMIZERS, ExperimentConfig, TrainConfig
from mtlsearch.train._device import resolve_device
from mtlsearch.train._errors import TrainingDiverged
from mtlsearch.train._evaluate import EVAL_BATCH, Evaluator, mean_skill, scale_labels, split_to
from mtlsearch.train._memory import check_memory
from mtlsearch.train._precision import Precision, make_precision
from mtlsearch.train._tasks import TASK_KINDS
from mtlsearch.train._weighting import LossWeighting, make_loss_weighting
from mtlsearch.train.distributed import FitGroup, check_weighting, fit_group

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did. ``score`` is the monitor's value (higher is better): the mean of
    the tasks' skills, or one task's skill (see ``_tasks``). ``loss_weights`` are the
    weights the loss weighting applied in this epoch; ``skills`` each task's skill."""

    epoch: int
    train_loss: float
    task_losses: dict[str, float]
    valid: dict[str, dict[str, float]]
    score: float
    loss_weights: dict[str, float] = field(default_factory=dict)
    skills: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "task_losses": dict(self.task_losses),
            "valid": {k: dict(v) for k, v in self.valid.items()},
            "score": self.score,
            "loss_weights": dict(self.loss_weights),
            "skills": dict(self.skills),
        }


@dataclass
class TrainResult:
    """A trained network (best-epoch weights, eval mode) and how it got there.

    ``valid`` is the best epoch's validation metrics; ``test`` is measured once, with the
    best weights; both in the labels' units. ``best_epoch`` indexes ``history`` (0-based);
    what is written for users (``metrics_dict``, metrics.json) numbers epochs from 1.
    ``label_scaling`` is the ``{task: (mean, std)}`` the model's regression outputs are
    standardised with: a raw output ``z`` means ``z * std + mean``. ``utilisation`` is the
    mean gate weight per expert on the validation split, keyed ``"level<l>/<gate>"``.
    ``seconds`` is the whole fit, ``epoch_seconds`` train plus validation per epoch.
    ``device`` is the device trained on (``"cuda:0"``), ``precision`` the training precision.
    """

    model: nn.Module
    config: ExperimentConfig
    history: list[EpochReport]
    best_epoch: int
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    utilisation: dict[str, dict[str, float]]
    n_params: int
    seconds: float
    epoch_seconds: list[float]
    label_scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    device: str | None = None
    precision: str = "fp32"

    @property
    def best(self) -> EpochReport:
        return self.history[self.best_epoch]

    def metrics_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-able data. Epochs are numbered from 1 here
        (``best_epoch`` and each history entry's ``epoch``), as the CLI prints them:
        ``best_epoch`` 5 with 5 epochs run means the last one."""
        history = [{**r.to_dict(), "epoch": r.epoch + 1} for r in self.history]
        return {
            "best_epoch": self.best_epoch + 1,
            "epochs_run": len(self.history),
            "score": self.best.score,
            "valid": self.valid,
            "test": self.test,
            "utilisation": self.utilisation,
            "n_params": self.n_params,
            "seconds": self.seconds,
            "epoch_seconds": list(self.epoch_seconds),
            "history": history,
            "label_scaling": {k: {"mean": m, "std": s} for k, (m, s) in self.label_scaling.items()},
            "device": self.device,
            "precision": self.precision,
        }


Callback = Callable[[EpochReport], None]


def check_compatible(model: ArchConfig, data: MTLDataset) -> None:
    """The network must read the data's features and predict tasks the data has.

    A model may predict a subset of the data's tasks (a single-task model on a multi-task
    table); a task must then have the same kind (and classes) in both.
    """
    by_name = {t.name: t for t in data.tasks}
    for i, t in enumerate(model.tasks):
        if t.name not in by_name:
            raise UserError(
                f"model.tasks[{i}].name: the data {data.name!r} has no task {t.name!r}; "
                f"its tasks are {list(by_name)}"
            )
        d = by_name[t.name]
        if (d.kind, d.n_classes) != (t.kind, t.n_classes):  # chained-task keys are the model's own
            raise UserError(
                f"model.tasks[{i}]: task {t.name!r} is {t.kind}"
                f"{f'/{t.n_classes}' if t.n_classes else ''} in the model but {d.kind}"
                f"{f'/{d.n_classes}' if d.n_classes else ''} in the data"
            )
    if model.inputs.n_numeric != len(data.numeric_features):
        raise UserError(
            f"model.inputs.n_numeric: the model reads {model.inputs.n_numeric} numeric features, "
            f"the data {data.name!r} has {len(data.numeric_features)}"
        )
    cats = [(c.name, c.cardinality) for c in model.inputs.categorical]
    if cats != [tuple(c) for c in data.categorical_features]:
        want = [f"{n}({c})" for n, c in data.categorical_features]
        have = [f"{n}({c})" for n, c in cats]
        raise UserError(
            f"model.inputs.categorical: the model's features {have} differ from the data's {want}"
        )


def _make_optimizer(tc: TrainConfig, model: nn.Module, weighting: nn.Module) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    extra = list(weighting.parameters())
    if extra:  # learned loss weights are not regularised
        groups.append({"params": extra, "weight_decay": 0.0})
    cls = getattr(torch.optim, OPTIMIZERS[tc.optimizer])
    # fused=True: one kernel over all parameters instead of a handful of ops per tensor
    # (about 4x faster steps on CPU for these small models; same update rule).
    fused = next(model.parameters()).device.type in ("cpu", "cuda") or None
    return cls(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)


def class_weight_tensors(
    tc: TrainConfig, tasks: tuple[TaskSpec, ...], device: torch.device | None = None
) -> dict[str, Tensor]:
    """Each task's class weight as its loss takes it (float32 on ``device``): binary tasks'
    ``pos_weight`` as a 0-d tensor, multiclass tasks' ``class_weights`` as a (C,) tensor.
    Tasks without one are left out."""
    out = {}
    for t in tasks:
        field_name = TASK_KINDS[t.kind].weight_field
        value = getattr(tc, field_name).get(t.name) if field_name else None
        if value is not None:
            out[t.name] = torch.tensor(value, dtype=torch.float32, device=device)
    return out


def _masked_losses(
    outputs: dict[str, Tensor],
    batch: TensorSplit,
    tasks: tuple[TaskSpec, ...],
    full: dict[str, bool],
    class_weights: dict[str, Tensor] | None = None,
    totals: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Each task's mean loss over its unmasked rows of the batch, and how many rows count.

    ``class_weights`` (from :func:`class_weight_tensors`) go into the per-sample loss. A task
    with row weights in ``batch.weights`` gets ``sum_i w_i loss_i / sum_i w_i``; its count
    is the number of its rows with ``w_i > 0``, and its total weight ``sum_i w_i`` is put in
    ``totals`` (when given; float64, detached). Unweighted tasks count their rows and are
    left out of ``totals``. A task with no row (or no row of positive weight) in the batch
    gets a zero loss with a graph, so backward works, and count 0.
    """
    class_weights = class_weights or {}
    losses, counts = {}, {}
    for t in tasks:
        if t.loss == "ips":  # ESCM²'s inverse-propensity-weighted factor loss (see _chained)
            losses[t.name], counts[t.name] = ips_loss(outputs, batch, t, tasks, class_weights.get(t.name))
            continue
        out, y = outputs[t.name], batch.labels[t.name]
        w = batch.weights.get(t.name)
        if not full[t.name]:  # select the task's rows: masked labels never enter the loss
            rows = batch.masks[t.name].nonzero(as_tuple=True)[0]
            out, y = out[rows], y[rows]
            w = None if w is None else w[rows]
        loss, weight = TASK_KINDS[t.kind].loss, class_weights.get(t.name)
        if w is None:
            n = y.shape[0]
            counts[t.name] = n
            losses[t.name] = loss(out, y, weight).mean() if n else outputs[t.name].sum() * 0.0
            continue
        n = int(torch.count_nonzero(w))
        counts[t.name] = n
        total = w.sum()
        if totals is not None:
            totals[t.name] = total.detach().double()
        losses[t.name] = (w * loss(out, y, weight)).sum() / total if n else outputs[t.name].sum() * 0.0
    return losses, counts


def _train_epoch(
    model: nn.Module,
    weighting: LossWeighting,
    optimizer: torch.optim.Optimizer,
    train: TensorSplit,
    tasks: tuple[TaskSpec, ...],
    full: dict[str, bool],
    tc: TrainConfig,
    shuffle: torch.Generator,
    epoch: int,
    on_batch: Callable[[float], None],
    class_weights: dict[str, Tensor] | None = None,
    precision: Precision | None = None,
    group: FitGroup | None = None,
) -> tuple[float, dict[str, float]]:
    """One pass over the training split; returns the mean weighted loss per row and each
    task's mean loss per unmasked row (per unit of row weight for a row-weighted task).
    ``group``: this process is one DDP rank (``model`` is wrapped; see ``distributed``)."""
    model.train()
    precision = precision or Precision(train.device)  # fp32: no autocast, no scaling
    names = [t.name for t in tasks]
    # per-task sums stay on the device (one sync per epoch); the total is read every batch
    # anyway, to stop at the first non-finite loss
    loss_sum = torch.zeros(len(names), dtype=torch.float64, device=train.device)
    loss_rows = torch.zeros_like(loss_sum)  # rows per task, or total row weight
    weighted = [k for k, n in enumerate(names) if n in train.weights]
    total_sum, rows = 0.0, 0
    aux_sum, aux_rows = 0.0, 0  # the gates' auxiliary loss (load balancing), outside the weighting
    auxiliary_loss = getattr(getattr(model, "module", model), "auxiliary_loss", None)  # DDP wraps it
    if group is None:
        batches = train.batches(tc.batch_size, shuffle=True, generator=shuffle)
    else:  # this rank's slice of each global batch, in the 1-process order
        batches = group.batches(train, tc.batch_size, shuffle, tasks)
    for b, batch in enumerate(batches):
        _interrupt.check()  # a Ctrl-C/SIGTERM whose raise was swallowed (see mtlsearch._interrupt)
        totals: dict[str, Tensor] = {}
        with precision.autocast():  # forward and losses; metrics stay float32 (see _precision)
            outputs = model(batch.numeric, batch.categorical)
            losses, counts = _masked_losses(outputs, batch, tasks, full, class_weights, totals)
        optimizer.zero_grad(set_to_none=True)
        aux = auxiliary_loss() if auxiliary_loss is not None else None
        if aux is not None:  # its gradient goes straight into .grad; the method's adds to it
            aux_value = aux.item()
            if not math.isfinite(aux_value):
                raise TrainingDiverged(
                    f"training diverged: the gates' auxiliary (load-balancing) loss became {aux_value} "
                    f"at epoch {epoch + 1} (batch {b + 1})"
                )
            if group is None:  # under DDP it joins the weighting's loss in one backward
                precision.scale(aux).backward(retain_graph=True)
            aux_sum, aux_rows = aux_sum + aux_value * len(batch), aux_rows + len(batch)
        if group is None:
            total = precision.backward(weighting, losses, counts)  # the method accumulates .grad
        else:
            total = group.backward(weighting, losses, aux, precision.scale)
        total_value = total.item()
        if not math.isfinite(total_value):
            raise _diverged(losses, total, epoch + 1, b + 1, tc.loss_weighting.method)  # 1-based, as shown
        precision.step(optimizer)
        recompute = functools.partial(_recompute_losses, model, batch, tasks, full, class_weights)
        weighting.after_step(precision.autocasting(recompute))
        batch_losses = torch.stack([losses[n].detach() for n in names]).double()
        batch_rows = loss_sum.new_tensor([counts[n] for n in names])
        if weighted:  # a row-weighted task's batch loss stands for its total row weight
            batch_rows[weighted] = torch.stack([totals[names[k]] for k in weighted])
        loss_sum += batch_losses * batch_rows
        loss_rows += batch_rows
        total_sum += total_value * len(batch)
        rows += len(batch)
        on_batch(total_sum / rows)
    if group is not None:  # every rank: the sums over all ranks (same task losses for dwa & co.)
        loss_sum, loss_rows, total_sum, rows = group.epoch_sums(loss_sum, loss_rows, total_sum, rows)
    if aux_rows:
        logger.debug("epoch %d: gates' auxiliary loss %.6g (mean per row)", epoch + 1, aux_sum / aux_rows)
    sums, denominators = loss_sum.tolist(), loss_rows.tolist()
    task_losses = {n: sums[k] / denominators[k] if denominators[k] else math.nan for k, n in enumerate(names)}
    return total_sum / max(rows, 1), task_losses


def _recompute_losses(
    model: nn.Module,
    batch: TensorSplit,
    tasks: tuple[TaskSpec, ...],
    full: dict[str, bool],
    class_weights: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    """The batch's per-task losses with the network as it is now, without a graph (for
    methods that compare the losses before and after a step, e.g. FAMO)."""
    with torch.no_grad():
        outputs = model(batch.numeric, batch.categorical)
        return _masked_losses(outputs, batch, tasks, full, class_weights)[0]


def _diverged(
    losses: dict[str, Tensor], total: Tensor, epoch: int, batch: int, method: str
) -> TrainingDiverged:
    for name, loss in losses.items():
        value = loss.item()
        if not math.isfinite(value):
            return TrainingDiverged(
                f"training diverged: the loss of task {name!r} became {value} at epoch {epoch} "
                f"(batch {batch})"
            )
    return TrainingDiverged(
        f"training diverged: the {method!r}-weighted total loss became {total.item()} at epoch "
        f"{epoch} (batch {batch}) while every task's loss was finite"
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _fmt_metrics(valid: dict[str, dict[str, float]]) -> str:
    return ", ".join(
        f"{task} {' '.join(f'{m} {v:.4f}' for m, v in ms.items())}" for task, ms in valid.items()
    )


class _BestWeights:
    """The best-scoring epoch so far and a copy of its weights. A NaN score never selects
    an epoch: while every score is NaN, ``epoch`` stays -1 and ``state`` None."""

    def __init__(self) -> None:
        self.epoch = -1
        self.score = -math.inf
        self.state: dict[str, Tensor] | None = None

    def update(self, epoch: int, score: float, model: nn.Module) -> None:
        if math.isnan(score):
            return
        if self.state is None or score > self.score:
            self.epoch, self.score = epoch, score
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _monitor_score(monitor: str, skills: dict[str, float], warned: set[str], epoch: int) -> float:
    """The monitor's value; a task whose skill is NaN is left out of the mean, with one
    warning per task."""
    for name, value in skills.items():
        if math.isnan(value) and name not in warned and (monitor in ("mean", name)):
            warned.add(name)
            logger.warning(
                "task %r: validation skill undefined at epoch %d (its label does not vary in the "
                "validation rows); %s",
                name, epoch + 1,
                "left out of the mean monitor" if monitor == "mean" else "it cannot select an epoch",
            )  # fmt: skip
    return mean_skill(skills) if monitor == "mean" else skills[monitor]


def _split_bytes(split: TensorSplit) -> int:
    tensors = [
        split.numeric,
        split.categorical,
        *split.labels.values(),
        *split.masks.values(),
        *split.weights.values(),
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


def _data_bytes(
    splits: Sequence[TensorSplit], device: torch.device, tasks: Sequence[Any] = (), scored: int = 2
) -> int:
    """Bytes of data ``fit`` adds to the estimate: the copies it makes of in-memory splits on
    another device (0 when they are there already), what a streamed split holds at once
    (its shuffle buffer and one record batch; never the whole table), and, for the streamed
    splits among the last ``scored`` (validation and test, scored one at a time), what is
    collected for the exact metrics on the larger of them: 4 bytes x rows x outputs of the
    float32 predictions plus 9 bytes x rows x tasks of labels, masks and row weights
    (:mod:`mtlsearch.train._evaluate`); ``tasks`` are the model's (``out_dim`` each)."""
    total = 0
    for s in splits:
        if is_streamed(s):
            total += s.resident_bytes()
        elif s.device != device:
            total += _split_bytes(s)
    rows = max((len(s) for s in splits[len(splits) - scored :] if is_streamed(s)), default=0)
    total += rows * (4 * sum(t.out_dim for t in tasks) + 9 * len(tasks))
    return total


def fit(
    config: ExperimentConfig,
    data: MTLDataset,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    max_memory: int | str | None = None,
    epoch_rows: Callable[[int], Tensor | None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``data`` as ``config.training`` says.

    ``epoch_rows(epoch)`` (0-based epoch), if given, returns the int64 indices into
    ``data.train`` of the rows that epoch trains on, or None for all of them (the search's
    data-fraction fidelity trains its first epochs on a subsample this way).

    After each epoch's validation every callback gets the :class:`EpochReport`; an exception
    a callback raises (the search's pruning signal, say) propagates out of ``fit``.
    Raises :class:`TrainingDiverged` when a loss or prediction becomes NaN/infinite, and
    :class:`UserError` when the config does not fit the data.

    Before the model is built, the memory the run needs is estimated without allocating
    anything (:func:`~mtlsearch.train.estimate_memory`); above ``max_memory`` (bytes or a
    size such as ``"8GiB"``; default ``$MTLSEARCH_MAX_MEMORY``, else 90 % of the available
    memory) it raises :class:`~mtlsearch.train.MemoryLimitExceeded` (a ``UserError``)
    instead of dying in the allocator or being killed by the OS.

    Streamed data (``data.train`` etc. are :class:`~mtlsearch.data.StreamSplit`, a spec
    with ``stream: true``): the loop draws the training batches through the same
    ``batches(...)`` protocol, reading the files again each epoch (shuffled by row group and
    a bounded, seeded buffer: the same seed gives the same order); validation and test are
    scored batch by batch, their predictions collected as float32 and the metrics computed
    exactly on all of them (memory: 4 bytes x rows x outputs plus the labels, see
    :mod:`mtlsearch.train._evaluate`). With a shuffle buffer that covers the training rows,
    the order is the in-memory one, so the metrics equal the in-memory run's.
    Under DDP each rank reads its own row groups of every epoch, with its own shuffle
    buffer, in lock-step (:mod:`mtlsearch.train.distributed`): not the 1-process result, but
    the same one for the same seed and number of processes.
    """
    started = time.perf_counter()
    tc = config.training
    check_compatible(config.model, data)
    tasks = config.model.tasks
    trained = loss_tasks(config.model)  # all but the factors with loss 'none' (ESMM)
    device = resolve_device(tc.device, "training.device") if tc.device else torch.get_default_device()
    group = fit_group(device)  # started by torchrun: one rank of a DDP group
    if group is not None:
        check_weighting(tc.loss_weighting.method)
        if is_streamed(data.train):  # each rank reads its own row groups (see distributed)
            data.train.check_world(group.ctx.world_size)  # type: ignore[attr-defined]
        device = group.device
    splits = (data.train, data.valid, data.test)
    check_memory(
        config,
        max_memory=max_memory,
        device=device,
        train_rows=len(data.train),
        eval_rows=min(EVAL_BATCH, max(len(data.valid), len(data.test), 1)),
        data_bytes=_data_bytes(splits, device, tasks),
    )
    rng_devices = [] if device.type == "cpu" else [device]
    history: list[EpochReport] = []
    epoch_seconds: list[float] = []
    best = _BestWeights()
    with torch.random.fork_rng(devices=rng_devices, device_type=device.type):
        torch.manual_seed(tc.seed)  # dropout draws from the global RNG
        model = build_model(config.model, seed=tc.seed).to(device)
        weighting = make_loss_weighting(tc.loss_weighting, trained).to(device)
        weighting.attach(model)
        optimizer = _make_optimizer(tc, model, weighting)
        precision = make_precision(tc.precision, device)
        train_model = group.wrap(model) if group is not None else model  # evaluate and save `model`
        make_evaluator = Evaluator if group is None else group.evaluator  # group: gathered predictions
        shuffle = torch.Generator().manual_seed(tc.seed)
        scaling = {
            t.name: data.label_scaling[t.name]
            for t in tasks
            if t.kind == "regression" and t.name in data.label_scaling
        }
        train = scale_labels(split_to(data.train, device), scaling)  # the loss reads these
        class_weights = class_weight_tensors(tc, tasks, device)
        # a streamed split selects every task's rows (the same loss as the whole-batch mean)
        full = {t.name: not is_streamed(train) and bool(train.masks[t.name].all()) for t in tasks}
        valid_eval = make_evaluator(split_to(data.valid, device), tasks, scaling)
        warned: set[str] = set()
        n_batches = math.ceil(len(train) / tc.batch_size)
        with _progress(progress and (group is None or group.is_main)) as bar:
            for epoch in range(tc.epochs):
                t0 = time.perf_counter()
                weighting.start_epoch(epoch)
                weights_now = weighting.current_weights()
                rows = epoch_rows(epoch) if epoch_rows is not None else None
                epoch_train = train if rows is None else train.take(rows.to(train.device))
                epoch_batches = n_batches if rows is None else math.ceil(len(epoch_train) / tc.batch_size)
                bar_id = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=epoch_batches, info="")

                def on_batch(loss: float, bar_id: Any = bar_id) -> None:
                    bar.update(bar_id, advance=1, info=f"loss {loss:.4f}")

                train_loss, task_losses = _train_epoch(
                    train_model, weighting, optimizer, epoch_train, trained, full, tc, shuffle, epoch,
                    on_batch, class_weights, precision, group,
                )  # fmt: skip
                weighting.end_epoch(task_losses)
                valid = valid_eval.evaluate(model, epoch)
                skills = valid_eval.skills(valid)
                score = _monitor_score(tc.monitor, skills, warned, epoch)
                report = EpochReport(epoch, train_loss, task_losses, valid, score, weights_now, skills)
                history.append(report)
                epoch_seconds.append(time.perf_counter() - t0)
                bar.update(bar_id, info=f"loss {train_loss:.4f}  valid score {score:.4f}")
                logger.log(
                    logging.DEBUG if progress else logging.INFO,
                    "epoch %d/%d loss %.4f score %.4f (%s)",
                    epoch + 1, tc.epochs, train_loss, score, _fmt_metrics(valid),
                )  # fmt: skip
                best.update(epoch, score, model)
                for cb in callbacks:
                    cb(report)
                if tc.patience is not None and epoch - best.epoch >= tc.patience:
                    logger.info(
                        "early stop after epoch %d: no better %r score in %d epochs (best: %d)",
                        epoch + 1, tc.monitor, tc.patience, best.epoch + 1,
                    )  # fmt: skip
                    break
        if best.state is None:  # every score NaN: no epoch was selected, keep the last
            logger.warning(
                "the %r monitor was undefined in every epoch; keeping the last epoch's weights",
                tc.monitor,
            )
            best.epoch = len(history) - 1
        else:
            model.load_state_dict(best.state)
        model.eval()
        test = make_evaluator(split_to(data.test, device), tasks, scaling).evaluate(model)
        utilisation = valid_eval.utilisation(model)
    return TrainResult(
        model=model,
        config=config,
        history=history,
        best_epoch=best.epoch,
        valid=history[best.epoch].valid,
        test=test,
        utilisation=utilisation,
        n_params=count_parameters(model),
        seconds=time.perf_counter() - started,
        epoch_seconds=epoch_seconds,
        label_scaling=scaling,
        device=str(device),
        precision=tc.precision,
    )
