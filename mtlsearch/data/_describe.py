"""A dataset at a glance: split sizes, features, task label statistics, label correlations.

Computed from the encoded tensors, so it describes exactly what a model will see (after
the train-fitted preprocessing), for user specs and built-in datasets alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtlsearch._errors import UserError
from mtlsearch.data._tensors import MTLDataset, TensorSplit

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class FeatureSummary:
    """``cardinality``: embedding rows (OOV included) for categorical features, distinct
    training values for numeric ones. ``oov_test``: share of test rows in the OOV bucket."""

    name: str
    kind: str  # numeric | categorical
    cardinality: int
    oov_test: float | None = None


@dataclass(frozen=True)
class TaskSplitSummary:
    rows: int  # rows in the task's sample space
    masked: float  # fraction of the split outside the sample space
    positive_rate: float | None = None  # binary
    mean: float | None = None  # regression
    std: float | None = None  # regression
    n_classes: int | None = None  # multiclass
    majority_share: float | None = None  # multiclass


@dataclass(frozen=True)
class DatasetDescription:
    """What ``mtlsearch data describe`` prints, as data (so tests and notebooks can use it).

    ``tasks[task][split]`` holds the label statistics inside the task's sample space and the
    fraction of the split outside it; ``correlation[(a, b)]`` is the Pearson correlation of
    two tasks' labels on the training rows in both sample spaces -- the quantity the MMoE
    paper relates to how much tasks gain from sharing.
    """

    name: str
    rows: dict[str, int]
    features: tuple[FeatureSummary, ...]
    tasks: dict[str, dict[str, TaskSplitSummary]]  # task -> split -> stats
    task_kinds: dict[str, str]
    correlation: dict[tuple[str, str], float]  # Pearson on training rows in both sample spaces


def _binary_stats(y: torch.Tensor, n_classes: int | None) -> dict[str, float | int]:
    return {"positive_rate": float(y.float().mean())}


def _regression_stats(y: torch.Tensor, n_classes: int | None) -> dict[str, float | int]:
    return {"mean": float(y.mean()), "std": float(y.std(unbiased=False))}


def _multiclass_stats(y: torch.Tensor, n_classes: int | None) -> dict[str, float | int]:
    counts = torch.bincount(y, minlength=n_classes or 0)
    return {"n_classes": int(counts.numel()), "majority_share": float(counts.max()) / y.numel()}


_LABEL_STATS = {
    "binary": _binary_stats,
    "regression": _regression_stats,
    "multiclass": _multiclass_stats,
}


def _task_stats(split: TensorSplit, name: str, kind: str, n_classes: int | None) -> TaskSplitSummary:
    m = split.masks[name]
    n = len(split)
    k = int(m.sum())
    base = {"rows": k, "masked": 1.0 - k / n if n else 0.0}
    if k == 0:
        return TaskSplitSummary(**base)
    return TaskSplitSummary(**base, **_LABEL_STATS[kind](split.labels[name][m], n_classes))


def label_correlation(split: TensorSplit, a: str, b: str) -> float:
    """Pearson correlation of two tasks' labels over rows in both sample spaces (NaN when
    undefined: too few rows, or a label constant there, e.g. ctr given click = 1)."""
    m = split.masks[a] & split.masks[b]
    if int(m.sum()) < 2:
        return math.nan
    x = split.labels[a][m].double()
    y = split.labels[b][m].double()
    x, y = x - x.mean(), y - y.mean()
    den = float(torch.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else math.nan


def streamed_refusal(name: str) -> UserError:
    """The one-line refusal of a streamed dataset (``stream: true``) named ``name``:
    ``mtlsearch data describe`` raises it from the spec, before the data is read."""
    return UserError(
        f"{name}: a streamed dataset (stream: true) is not described in memory; "
        "`mtlsearch data scan SPEC` summarises it in one streaming pass"
    )


def describe(data: MTLDataset) -> DatasetDescription:
    """Summarise a loaded dataset from its encoded tensors (what a model will see). A streamed
    dataset (``stream: true``) is refused in one line: ``mtlsearch data scan`` reads it."""
    ds = data
    if not isinstance(ds.train, TensorSplit):
        raise streamed_refusal(ds.name)
    features: list[FeatureSummary] = []
    for j, name in enumerate(ds.numeric_features):
        features.append(FeatureSummary(name, "numeric", int(torch.unique(ds.train.numeric[:, j]).numel())))
    for j, (name, card) in enumerate(ds.categorical_features):
        col = ds.test.categorical[:, j]
        oov = float((col == 0).float().mean()) if len(ds.test) else 0.0
        features.append(FeatureSummary(name, "categorical", card, oov))
    tasks = {
        t.name: {s: _task_stats(getattr(ds, s), t.name, t.kind, t.n_classes) for s in SPLITS}
        for t in ds.tasks
    }
    ordinal = [t.name for t in ds.tasks if t.kind != "multiclass"]  # Pearson needs ordered labels
    corr = {
        (a, b): label_correlation(ds.train, a, b) for i, a in enumerate(ordinal) for b in ordinal[i + 1 :]
    }
    return DatasetDescription(
        name=ds.name,
        rows={s: len(getattr(ds, s)) for s in SPLITS},
        features=tuple(features),
        tasks=tasks,
        task_kinds={t.name: t.kind for t in ds.tasks},
        correlation=corr,
    )


__all__ = [
    "DatasetDescription",
    "FeatureSummary",
    "TaskSplitSummary",
    "describe",
    "label_correlation",
]
