"""Evaluation on one split: per-task metrics, skills, and expert utilisation.

Labels, masks and the reference statistics the skills need are read once when the
evaluator is built; each call is then one batched forward pass over the split.

Metrics are in the labels' own units: a regression task trained on standardised labels
(``MTLDataset.label_scaling``) has its predictions mapped back (``z * std + mean``) before
any metric sees them.

Row weights: for a task with row weights in the split (``TensorSplit.weights``), every
metric is reported twice, the plain one and ``<metric>_weighted`` (scikit-learn's
``sample_weight``). The skill, and so the monitor that selects the epoch, keeps reading the
plain primary metric: the validation rows of a weighted and an unweighted run (and of the
single-task references and the search's objectives) are then judged on the same number.
Select on a weighted metric by reading ``valid[task]["<metric>_weighted"]`` yourself.

Streamed splits (:class:`~mtlsearch.data.StreamSplit`, a spec with ``stream: true``) are
scored batch by batch, ``EVAL_BATCH`` rows at a time in file order: the network's outputs
are collected as float32 and every metric is computed exactly on all of them (the AUC is
the exact rank statistic over the collected predictions, not a binned approximation).
Memory: 4 bytes x rows x outputs for the predictions, plus the labels, masks and row
weights collected once (at most 9 bytes x rows x tasks); the features are never held.
The chunks are the in-memory ones, so both paths give the same predictions bitwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from mtlsearch.arch import TaskSpec
from mtlsearch.data import TensorSplit, is_streamed
from mtlsearch.train._errors import TrainingDiverged
from mtlsearch.train._tasks import TASK_KINDS, compute_metrics

#: Rows per forward pass when evaluating or predicting. Fixed (not the training batch
#: size) so that predictions of a model do not depend on how it was trained.
EVAL_BATCH = 8192


def split_to(split: TensorSplit, device: torch.device) -> TensorSplit:
    """``split`` on ``device`` (the same object when it is there already), copied once.

    From the CPU to a CUDA device each tensor goes through pinned (page-locked) memory with
    ``non_blocking=True``: the copies are queued on the current stream, which orders them
    before any kernel that reads them, and the pinned buffers are kept alive by torch's
    caching host allocator until the copies are done. A streamed split moves each batch.
    """
    if split.device == device:
        return split
    if is_streamed(split):
        return split.map(lambda b: split_to(b, device))
    pin = device.type == "cuda" and split.numeric.device.type == "cpu" and torch.cuda.is_available()

    def move(t: Tensor) -> Tensor:
        return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

    return TensorSplit(
        numeric=move(split.numeric),
        categorical=move(split.categorical),
        labels={k: move(v) for k, v in split.labels.items()},
        masks={k: move(v) for k, v in split.masks.items()},
        weights={k: move(v) for k, v in split.weights.items()},
    )


@torch.no_grad()
def raw_outputs(model: nn.Module, numeric: Tensor, categorical: Tensor) -> dict[str, Tensor]:
    """The network's raw outputs for all rows, in eval mode, ``EVAL_BATCH`` rows at a time,
    as float32 (a network run under autocast gives bfloat16/float16: metrics read float32)."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            model(numeric[i : i + EVAL_BATCH], categorical[i : i + EVAL_BATCH])
            for i in range(0, numeric.shape[0], EVAL_BATCH)
        ]
    finally:
        model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]} if parts else {}


@torch.no_grad()
def split_outputs(model: nn.Module, split: TensorSplit) -> dict[str, Tensor]:
    """:func:`raw_outputs` over a split's ``batches(EVAL_BATCH)`` (the same chunks; a streamed
    split is read once, batch by batch)."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(b.numeric, b.categorical) for b in split.batches(EVAL_BATCH)]
    finally:
        model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]} if parts else {}


def unscale(pred: Tensor, scale: tuple[float, float] | None) -> Tensor:
    """A regression prediction in label units: ``pred * std + mean`` for a task trained on
    standardised labels (``scale = (mean, std)``), computed in float64; else ``pred``."""
    if scale is None:
        return pred
    mean, std = scale
    return pred.double() * std + mean


def scale_labels(split: TensorSplit, scaling: Mapping[str, tuple[float, float]]) -> TensorSplit:
    """``split`` with each scaled task's labels standardised, ``(y - mean) / std`` (float32):
    what the loss reads. Other tasks' tensors are shared, not copied. A streamed split
    scales each batch."""
    if not scaling:
        return split
    if is_streamed(split):
        return split.map(lambda b: scale_labels(b, scaling))
    labels = dict(split.labels)
    for name, (mean, std) in scaling.items():
        if name in labels:
            labels[name] = ((labels[name].double() - mean) / std).to(labels[name].dtype)
    return replace(split, labels=labels)


_PerExpert = dict[str, dict[str, float]]  # {gate: {expert: value}}


class Evaluator:
    """Metrics of a model on one split, per task, on the task's unmasked samples only.

    ``label_scaling`` (task -> (mean, std)) names the regression tasks whose network output
    is a standardised label; their predictions are mapped back to label units, so every
    metric (MSE, MAE, R^2 skill) is in the label's units.
    """

    def __init__(
        self,
        split: TensorSplit,
        tasks: tuple[TaskSpec, ...],
        label_scaling: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.split = split
        self.tasks = tasks
        self.scaling = dict(label_scaling or {})
        self.rows: dict[str, Tensor] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}  # row weights of the weighted tasks (float64)
        for t in tasks:
            rows = split.masks[t.name].nonzero(as_tuple=True)[0]
            self.rows[t.name] = rows
            self.labels[t.name] = split.labels[t.name][rows].cpu().numpy()
            if t.name in split.weights:
                self.weights[t.name] = split.weights[t.name][rows].double().cpu().numpy()

    def _outputs(self, model: nn.Module) -> dict[str, Tensor]:
        """The network's raw outputs on every row of the split (a DDP rank gathers them from
        all ranks: :class:`mtlsearch.train.distributed.GatheredEvaluator`)."""
        return split_outputs(model, self.split)

    def predictions(self, model: nn.Module, epoch: int | None = None) -> dict[str, np.ndarray]:
        """Each task's predictions (probabilities / values) on its unmasked rows."""
        outs = self._outputs(model)
        preds = {}
        for t in self.tasks:
            pred = unscale(
                TASK_KINDS[t.kind].predict(outs[t.name][self.rows[t.name]]), self.scaling.get(t.name)
            )
            if not bool(torch.isfinite(pred).all()):
                where = f" after epoch {epoch}" if epoch is not None else ""
                raise TrainingDiverged(f"the predictions of task {t.name!r} became NaN or infinite{where}")
            preds[t.name] = pred.double().cpu().numpy()
        return preds

    def evaluate(self, model: nn.Module, epoch: int | None = None) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}``; a task with row weights also has ``<metric>_weighted``."""
        preds = self.predictions(model, epoch)
        return {
            t.name: compute_metrics(t.kind, self.labels[t.name], preds[t.name], self.weights.get(t.name))
            for t in self.tasks
        }

    def skills(self, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
        """Each task's primary metric rescaled to 0 = uninformed, 1 = perfect."""
        return {t.name: TASK_KINDS[t.kind].skill(metrics[t.name], self.labels[t.name]) for t in self.tasks}

    def utilisation(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Mean gate weight per expert for every gate, over all rows of the split.

        Keys ``"level<l>/<gate>"`` (as ``forward_with_gates`` names them), values
        ``{expert name: mean weight}`` over the experts the gate may select; the PLE paper's
        expert-utilisation analysis. Evaluated in eval mode, so a noisy top-k gate adds no
        noise. Empty for a model without gates.

        Also, per level, ``"level<l>/dead_units"``: :meth:`dead_units`, HoME's expert-collapse
        diagnostic (a share of units, not a gate weight: those entries do not sum to 1).
        """
        return {**self._gate_means(model)[0], **self.dead_units(model)}

    @torch.no_grad()
    def dead_units(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Per level ``"level<l>/dead_units"`` and expert: the share of the expert's output
        units (its last layer, after the activation, before any ``expert_norm``) that are 0
        on every row of the split: dead ReLU units (HoME, Wang et al. 2024, found experts
        with over 90 % zero activations). Eval mode; empty for a model that cannot give its
        experts' outputs (``expert_outputs``) or an empty split."""
        if not hasattr(model, "expert_outputs"):
            return {}
        was_training = model.training
        model.eval()
        alive: list[Tensor] = []  # per level (E, D): the unit was non-zero on some row
        try:
            for b in self.split.batches(EVAL_BATCH):
                outs = model.expert_outputs(b.numeric, b.categorical)
                seen = [(h != 0).any(dim=1) for h in outs]
                alive = seen if not alive else [a | s for a, s in zip(alive, seen, strict=True)]
        finally:
            model.train(was_training)
        out: dict[str, dict[str, float]] = {}
        for level, a in enumerate(alive):
            dead = (1.0 - a.double().mean(dim=1)).tolist()
            out[f"level{level}/dead_units"] = dict(zip(model.expert_names(level), dead, strict=True))
        return out

    def routing_share(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Share of the split's rows whose gate gives each expert a non-zero weight, keyed as
        :meth:`utilisation`: how often a sparse gate (top-k, noisy top-k, DSelect-k once its
        selectors are binary) routes a row to the expert at all (1.0 for every expert of a
        softmax gate). Empty for a model without gates."""
        return self._gate_means(model)[1]

    @torch.no_grad()
    def _gate_means(self, model: nn.Module) -> tuple[_PerExpert, _PerExpert]:
        """Per gate and selectable expert: the mean weight and the share of rows routed."""
        if not hasattr(model, "forward_with_gates"):
            return {}, {}
        was_training = model.training
        model.eval()
        sums: dict[str, Tensor] = {}
        routed: dict[str, Tensor] = {}
        n = len(self.split)
        try:
            for b in self.split.batches(EVAL_BATCH):
                _, gates = model.forward_with_gates(b.numeric, b.categorical)
                for name, w in gates.items():
                    s, r = w.double().sum(0), (w > 0).sum(0, dtype=torch.float64)
                    sums[name] = s if name not in sums else sums[name] + s
                    routed[name] = r if name not in routed else routed[name] + r
        finally:
            model.train(was_training)
        means: _PerExpert = {}
        shares: _PerExpert = {}
        for name, total in sums.items():
            level = int(name.split("/", 1)[0].removeprefix("level"))
            experts = model.expert_names(level)
            selection = _selection(model, level, name.split("/", 1)[1], len(experts))
            mean, share = (total / max(n, 1)).tolist(), (routed[name] / max(n, 1)).tolist()
            means[name] = {experts[e]: mean[e] for e in selection}
            shares[name] = {experts[e]: share[e] for e in selection}
        return means, shares


def _selection(model: nn.Module, level: int, gate: str, n_experts: int) -> list[int]:
    """Indices of the experts a gate may select (all of the level's if the model can't say)."""
    specs = getattr(model.levels[level], "gate_specs", ())
    for spec in specs:
        if spec.name == gate:
            return list(spec.selection)
    return list(range(n_experts))


def mean_skill(skills: dict[str, float]) -> float:
    """The mean of the tasks' defined (non-NaN) skills; NaN when none is defined. An
    undefined skill (a split where the task's label does not vary) is left out rather than
    turning the whole monitor into NaN, which would let no epoch be better than another."""
    values = [v for v in skills.values() if not math.isnan(v)]
    return math.fsum(values) / len(values) if values else math.nan
