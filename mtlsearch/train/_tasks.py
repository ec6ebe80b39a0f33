"""Everything that depends on a task's kind, in one table: loss, prediction, metrics, skill.

``TASK_KINDS[kind]`` holds the per-sample loss on the network's raw output, the map from raw
output to a prediction (probability, value, class probabilities), the metric functions
(scikit-learn, on unmasked samples of one task: never pooled across tasks), the primary
metric and the *skill*: the primary metric rescaled so that 0 is a predictor that knows
nothing about the inputs and 1 is perfect. Skills make tasks of different kinds comparable,
so the ``mean`` monitor averages skills, not raw metrics:

* binary: ``2 * AUC - 1`` (the Gini coefficient; a constant predictor has AUC 0.5);
* regression: ``1 - MSE / Var(y)`` (R^2; predicting the mean has MSE = Var(y));
* multiclass: ``(acc - p_major) / (1 - p_major)`` (predicting the majority class has
  accuracy ``p_major``).

Each is an increasing function of the primary metric, so a monitor on one task selects the
same epoch whether it reads the metric or its skill.

Class weights (``TrainConfig.pos_weight`` / ``class_weights``; the field a kind reads is its
``weight_field``) enter the per-sample loss as torch defines them:

* binary: ``F.binary_cross_entropy_with_logits(pos_weight=p)``, i.e.
  ``-(p * y * log sigmoid(z) + (1 - y) * log(1 - sigmoid(z)))``: ``p`` multiplies the
  positive term only;
* multiclass: ``F.cross_entropy(weight=c, reduction="none")``, i.e. ``-c[y] * log softmax(z)[y]``.

The trainer divides the sum of these per-sample losses by the number (or, with row weights,
the total weight) of rows, never by the sum of class weights: unlike torch's ``"mean"``
reduction with ``weight=``, a class weight scales that class's share of the loss.

Metrics take an optional ``sample_weight`` (scikit-learn's): with row weights the
evaluator reports every metric twice, plain and ``<metric>_weighted``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)
from torch import Tensor
from torch.nn import functional as F

#: (labels, predictions, sample_weight or None) -> value
Metric = Callable[..., float]
Weights = np.ndarray | None


def _auc(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    present = y if sample_weight is None else y[sample_weight > 0]
    if np.unique(present).size < 2:  # undefined with one class; say so instead of crashing
        return math.nan
    return float(roc_auc_score(y, p, sample_weight=sample_weight))


def _binary_logloss(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    return float(log_loss(y, p, labels=[0, 1], sample_weight=sample_weight))


def _multiclass_logloss(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    return float(log_loss(y, p, labels=np.arange(p.shape[1]), sample_weight=sample_weight))


def _accuracy(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    return float(accuracy_score(y, p.argmax(axis=1), sample_weight=sample_weight))


def _mse(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    return float(mean_squared_error(y, p, sample_weight=sample_weight))


def _mae(y: np.ndarray, p: np.ndarray, sample_weight: Weights = None) -> float:
    return float(mean_absolute_error(y, p, sample_weight=sample_weight))


def _binary_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    return 2.0 * metrics["auc"] - 1.0


def _regression_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    var = float(np.var(y))
    return 1.0 - metrics["mse"] / var if var > 0 else math.nan


def _multiclass_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    major = float(np.bincount(y).max() / y.size) if y.size else math.nan
    return (metrics["accuracy"] - major) / (1.0 - major) if major < 1 else math.nan


def _bce(out: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, y, reduction="none", pos_weight=weight)


def _squared(out: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    return F.mse_loss(out, y, reduction="none")


def _cross_entropy(out: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    return F.cross_entropy(out, y, weight=weight, reduction="none")


def _softmax64(out: Tensor) -> Tensor:
    # float64 so that class probabilities sum to 1 within scikit-learn's log-loss check
    return torch.softmax(out.double(), dim=-1)


def _one_column(name: str, pred: np.ndarray, classes: Sequence[str] | None) -> dict[str, np.ndarray]:
    return {name: pred}


def _class_columns(name: str, pred: np.ndarray, classes: Sequence[str] | None) -> dict[str, np.ndarray]:
    """The argmax class (its label when known, else its index) and one column per class."""
    labels = np.asarray(classes if classes is not None else range(pred.shape[1]), dtype=object)
    best = pred.argmax(axis=1)
    cols = {name: labels[best] if classes is not None else best}
    cols.update({f"{name}_prob_{c}": pred[:, j] for j, c in enumerate(labels)})
    return cols


@dataclass(frozen=True)
class TaskKind:
    # (raw output, label, class weight or None) -> per-sample loss; the class weight is the
    # value of ``weight_field`` for the task, as a tensor (binary: 0-d; multiclass: (C,))
    loss: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    predict: Callable[[Tensor], Tensor]  # raw output -> probability / value / class probs
    metrics: dict[str, Metric]
    primary: tuple[str, str]  # (metric, "maximize" | "minimize")
    skill: Callable[[dict[str, float], np.ndarray], float]
    # (task name, prediction, class labels or None) -> output columns
    columns: Callable[[str, np.ndarray, Sequence[str] | None], dict[str, np.ndarray]]
    weight_field: str | None = None  # the TrainConfig field holding this kind's class weights


TASK_KINDS: dict[str, TaskKind] = {
    "binary": TaskKind(
        loss=_bce,
        predict=torch.sigmoid,
        metrics={"auc": _auc, "logloss": _binary_logloss},
        primary=("auc", "maximize"),
        skill=_binary_skill,
        columns=_one_column,
        weight_field="pos_weight",
    ),
    "regression": TaskKind(
        loss=_squared,
        predict=lambda out: out,
        metrics={"mse": _mse, "mae": _mae},
        primary=("mse", "minimize"),
        skill=_regression_skill,
        columns=_one_column,
    ),
    "multiclass": TaskKind(
        loss=_cross_entropy,
        predict=_softmax64,
        metrics={"accuracy": _accuracy, "logloss": _multiclass_logloss},
        primary=("accuracy", "maximize"),
        skill=_multiclass_skill,
        columns=_class_columns,
        weight_field="class_weights",
    ),
}

#: The metric each task kind is judged by, and its direction.
PRIMARY_METRICS: dict[str, tuple[str, str]] = {k: v.primary for k, v in TASK_KINDS.items()}


#: Suffix of a metric computed with the rows' weights (scikit-learn's ``sample_weight``).
WEIGHTED = "_weighted"


def compute_metrics(
    kind: str, y: np.ndarray, pred: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric of a task kind on one task's (already unmasked) labels and predictions.

    With ``sample_weight`` (the task's row weights, shape (N,), >= 0) each metric comes
    twice: the plain one and ``<metric>_weighted`` (e.g. ``auc`` and ``auc_weighted``).
    """
    metrics = TASK_KINDS[kind].metrics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = {name: fn(y, pred) for name, fn in metrics.items()}
        if sample_weight is not None:
            out.update({name + WEIGHTED: fn(y, pred, sample_weight) for name, fn in metrics.items()})
        return out


def mtl_gain(kind: str, mtl: float, single: float) -> float:
    """The PLE paper's MTL gain on the primary metric: positive when the MTL model is better."""
    _, direction = PRIMARY_METRICS[kind]
    return mtl - single if direction == "maximize" else single - mtl
