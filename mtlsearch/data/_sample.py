"""``max_rows``: a seeded, stratified subsample of the training rows, for quick searches.

Every dataset takes it (built-in or a spec file) through :func:`~mtlsearch.data.load_dataset`.
Only the training split is cut: validation and test keep every row, so the metrics of a
quick search are measured on the same rows as a full one. Preprocessing (vocabularies,
numeric scaling, label scaling) stays fitted on the full training split, so a model
trained on the subsample reads rows exactly as one trained on all of them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from mtlsearch._errors import UserError
from mtlsearch.data._tensors import MTLDataset, TensorSplit

log = logging.getLogger(__name__)

#: The name of the option wherever it is given: ``load_dataset(..., max_rows=N)``, ``-o max_rows=N``.
MAX_ROWS = "max_rows"


def check_max_rows(value: Any, path: str = MAX_ROWS) -> int | None:
    """``value`` as a row count (an integer >= 1), ``None`` when unset; anything else is a
    one-line :class:`UserError` naming ``path`` (``max_rows: must be an integer >= 1, got 0``).
    Booleans and floats are refused (``1.5`` rows, ``true`` rows mean nothing)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserError(f"{path}: must be an integer >= 1, got {value!r}")
    return int(value)


def binary_strata_of(split: TensorSplit, tasks: Any) -> np.ndarray:
    """One stratum code per row from every binary task's state (outside its sample space,
    negative, positive), from the encoded tensors: the same strata the splits use."""
    code = np.zeros(len(split), dtype=np.int64)
    for task in tasks:
        if task.kind != "binary":
            continue
        y = split.labels[task.name].numpy().astype(np.int64)
        m = split.masks[task.name].numpy()
        code = code * 3 + np.where(m, 1 + y, 0)
    return code


def sample_indices(n: int, max_rows: int, strata: np.ndarray, seed: int) -> np.ndarray:
    """``max_rows`` of ``range(n)`` drawn without replacement, sorted (file order kept).

    Each stratum gets its share by the largest-remainder rule: ``floor(max_rows * n_s / n)``
    rows, and the rows still missing go to the strata with the largest fractional parts
    (ties: the smaller stratum code). Within a stratum the rows are
    ``np.random.default_rng(seed).choice(rows, k, replace=False)``, strata in increasing code
    order, so the same seed always gives the same rows.
    """
    if max_rows >= n:
        return np.arange(n)
    codes, inverse = np.unique(strata, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(codes))
    exact = max_rows * sizes / n
    quota = np.floor(exact).astype(np.int64)
    missing = max_rows - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:missing]] += 1
    rng = np.random.default_rng(seed)
    parts = [
        rng.choice(np.flatnonzero(inverse == g), int(k), replace=False) for g, k in enumerate(quota) if k > 0
    ]
    return np.sort(np.concatenate(parts))


def _check_sample(split: TensorSplit, tasks: Any, max_rows: int, n_full: int) -> None:
    """Each task still needs rows in its sample space, and a label that varies there."""
    for task in tasks:
        m = split.masks[task.name]
        y = split.labels[task.name][m]
        problem = None
        if int(m.sum()) == 0:
            problem = "no rows in its sample space"
        elif task.kind == "binary" and int(y.sum()) in (0, int(m.sum())):
            problem = f"no {'positive' if int(y.sum()) == 0 else 'negative'} examples"
        elif task.kind == "multiclass" and torch.unique(y).numel() < 2:
            problem = "a single class"
        elif task.kind == "regression" and bool((y == y[0]).all()):
            problem = "a constant label"
        if problem:
            raise UserError(
                f"{MAX_ROWS}: {max_rows:,} training row{'s' * (max_rows != 1)} (of {n_full:,}) leave task "
                f"{task.name!r} with {problem}; raise {MAX_ROWS}"
            )


def sample_train(ds: MTLDataset, max_rows: int, seed: int = 0) -> MTLDataset:
    """``ds`` with at most ``max_rows`` training rows: a seeded subsample stratified by the
    binary tasks (see :func:`sample_indices`); validation and test untouched.

    ``ds.meta`` records ``max_rows`` and ``train_rows`` (the full count). Raises
    :class:`UserError` when the subsample leaves a task without a usable training label.
    """
    max_rows = check_max_rows(max_rows)  # type: ignore[assignment]
    n = len(ds.train)
    meta = {**ds.meta, MAX_ROWS: max_rows, "train_rows": n}
    if max_rows >= n:
        log.info("%s: max_rows %d >= the %d training rows: all are used", ds.name, max_rows, n)
        return dataclasses.replace(ds, meta=meta)
    idx = sample_indices(n, max_rows, binary_strata_of(ds.train, ds.tasks), seed)
    train = ds.train.take(torch.from_numpy(idx))
    _check_sample(train, ds.tasks, max_rows, n)
    log.info("%s: training on %d of %d rows (max_rows, seed %d)", ds.name, max_rows, n, seed)
    return dataclasses.replace(ds, train=train, meta=meta)


__all__ = ["MAX_ROWS", "check_max_rows", "sample_indices", "sample_train"]
