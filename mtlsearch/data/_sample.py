"""``max_rows``: a seeded, stratified subsample of the training rows, for quick searches.

Every dataset takes it (built-in or a spec file) through :func:`~mtlsearch.data.load_dataset`.
Only the training split is cut: validation and test keep every row, so the metrics of a
quick search are measured on the same rows as a full one. Preprocessing (vocabularies,
numeric scaling, label scaling) stays fitted on the full training split, so a model
trained on the subsample reads rows exactly as one trained on all of them.

Streamed splits (``stream: true``, :class:`~mtlsearch.data.StreamSplit`) are subsampled
without reading them: the kept rows are the ``max_rows`` global row indices (file order)
with the smallest stable hash of ``(seed, index)`` (:func:`row_hash`, SplitMix64; not
Python's salted ``hash()``), found in chunks with ``O(max_rows)`` memory
(:func:`hashed_indices`), and the split skips the other rows as it reads (whole row groups
without a kept row are not read). Exactly ``max_rows`` rows, the same for the same seed in
every process; unlike the in-memory sample it is *not* stratified by the binary tasks and
the labels of the kept rows are not checked (either would need a pass over the data).
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


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
#: Indices hashed per chunk by :func:`hashed_indices` (32 MiB of hashes).
HASH_CHUNK = 1 << 22


def row_hash(seed: int, index: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash (uint64, one per element) of ``(seed, index)``: SplitMix64's
    finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
    OOPSLA 2014) of ``index * golden + mix(seed)``, vectorised; the same in every process
    and platform (no ``PYTHONHASHSEED``)."""
    offset = np.uint64((((seed & _M64) * 0xBF58476D1CE4E5B9) ^ 0x2545F4914F6CDD1D) & _M64)
    z = np.asarray(index).astype(np.uint64) * np.uint64(_GOLDEN) + offset  # wraps mod 2**64
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def hashed_indices(n: int, k: int, seed: int, chunk: int = HASH_CHUNK) -> np.ndarray:
    """The ``k`` indices of ``range(n)`` with the smallest :func:`row_hash`, sorted: a seeded
    subsample of exactly ``min(k, n)`` rows that needs no data,
    computed ``chunk`` indices at a time in ``O(k + chunk)`` memory (int64)."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    best_h = np.zeros(0, dtype=np.uint64)
    best_i = np.zeros(0, dtype=np.int64)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n), dtype=np.int64)
        cand_h = np.concatenate([best_h, row_hash(seed, idx)])
        cand_i = np.concatenate([best_i, idx])
        if len(cand_h) > k:
            order = np.argpartition(cand_h, k - 1)[:k]  # deterministic (a 64-bit tie: ~never)
            cand_h, cand_i = cand_h[order], cand_i[order]
        best_h, best_i = cand_h, cand_i
    return np.sort(best_i)


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
    from mtlsearch.data._streamsplit import is_streamed

    max_rows = check_max_rows(max_rows)  # type: ignore[assignment]
    n = len(ds.train)
    meta = {**ds.meta, MAX_ROWS: max_rows, "train_rows": n}
    if max_rows >= n:
        log.info("%s: max_rows %d >= the %d training rows: all are used", ds.name, max_rows, n)
        return dataclasses.replace(ds, meta=meta)
    if is_streamed(ds.train):  # hashed, unstratified, unchecked: see the module docstring
        train = ds.train.take(torch.from_numpy(hashed_indices(n, max_rows, seed)))
        log.info(
            "%s: streaming %d of %d training rows (max_rows, hashed, seed %d)", ds.name, max_rows, n, seed
        )
        return dataclasses.replace(ds, train=train, meta=meta)
    idx = sample_indices(n, max_rows, binary_strata_of(ds.train, ds.tasks), seed)
    train = ds.train.take(torch.from_numpy(idx))
    _check_sample(train, ds.tasks, max_rows, n)
    log.info("%s: training on %d of %d rows (max_rows, seed %d)", ds.name, max_rows, n, seed)
    return dataclasses.replace(ds, train=train, meta=meta)


__all__ = ["MAX_ROWS", "check_max_rows", "hashed_indices", "row_hash", "sample_indices", "sample_train"]
