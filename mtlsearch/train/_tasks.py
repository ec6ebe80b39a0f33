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

Metric = Callable[[np.ndarray, np.ndarray], float]


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if np.unique(y).size < 2:  # undefined with one class; say so instead of crashing
        return math.nan
    return float(roc_auc_score(y, p))


def _binary_logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, p, labels=[0, 1]))


def _multiclass_logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, p, labels=np.arange(p.shape[1])))


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(accuracy_score(y, p.argmax(axis=1)))


def _mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(mean_squared_error(y, p))


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(mean_absolute_error(y, p))


def _binary_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    return 2.0 * metrics["auc"] - 1.0


def _regression_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    var = float(np.var(y))
    return 1.0 - metrics["mse"] / var if var > 0 else math.nan


def _multiclass_skill(metrics: dict[str, float], y: np.ndarray) -> float:
    major = float(np.bincount(y).max() / y.size) if y.size else math.nan
    return (metrics["accuracy"] - major) / (1.0 - major) if major < 1 else math.nan


def _bce(out: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, y, reduction="none")


def _squared(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, y, reduction="none")


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


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
    loss: Callable[[Tensor, Tensor], Tensor]  # (raw output, label) -> per-sample loss
    predict: Callable[[Tensor], Tensor]  # raw output -> probability / value / class probs
    metrics: dict[str, Metric]
    primary: tuple[str, str]  # (metric, "maximize" | "minimize")
    skill: Callable[[dict[str, float], np.ndarray], float]
    # (task name, prediction, class labels or None) -> output columns
    columns: Callable[[str, np.ndarray, Sequence[str] | None], dict[str, np.ndarray]]


TASK_KINDS: dict[str, TaskKind] = {
    "binary": TaskKind(
        loss=_bce,
        predict=torch.sigmoid,
        metrics={"auc": _auc, "logloss": _binary_logloss},
        primary=("auc", "maximize"),
        skill=_binary_skill,
        columns=_one_column,
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
    ),
}

#: The metric each task kind is judged by, and its direction.
PRIMARY_METRICS: dict[str, tuple[str, str]] = {k: v.primary for k, v in TASK_KINDS.items()}


def compute_metrics(kind: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of a task kind on one task's (already unmasked) labels and predictions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return {name: fn(y, pred) for name, fn in TASK_KINDS[kind].metrics.items()}


def mtl_gain(kind: str, mtl: float, single: float) -> float:
    """The PLE paper's MTL gain on the primary metric: positive when the MTL model is better."""
    _, direction = PRIMARY_METRICS[kind]
    return mtl - single if direction == "maximize" else single - mtl
