"""User tables -> :class:`MTLDataset`: read, check, split, fit preprocessing on train, encode.

Everything is checked before anything is returned, so a bad spec or file fails with one
line naming the file and the column (or spec key) and leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtlsearch._errors import UserError
from mtlsearch.data._io import read_table, require_columns
from mtlsearch.data._preprocess import (
    MISSING,
    Preprocessor,
    TaskEncoder,
    category_keys,
    is_in,
    to_numeric,
    value_keys,
)
from mtlsearch.data._spec import AUTO, DatasetSpec, TaskDef
from mtlsearch.data._tensors import MTLDataset, TensorSplit

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_WORDS = {"train": "training", "valid": "validation", "test": "test"}
#: Below this many examples of the rarer class, a split's AUC is noise: warn.
MIN_AUC_CLASS = 10
#: Under ``numeric: auto``, a text column whose values are at least this share numbers
#: is probably a numeric column with a few stray words: warn.
_NUMBERS_SHARE = 0.5
_PROBE_ROWS = 2000


@dataclass(frozen=True)
class _Part:
    frame: pd.DataFrame
    source: str  # the file (and which part of it) the rows came from, for messages


def split_indices(
    n: int, fractions: tuple[float, ...], strata: np.ndarray | None = None, seed: int = 0
) -> list[np.ndarray]:
    """Seeded random partition of ``range(n)``: ``[rest, part_1, ..., part_k]`` where part i
    holds ``fractions[i]`` of the rows (of each stratum, when ``strata`` is given). Indices
    come back sorted so each part keeps the file's row order."""
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        order = np.argsort(strata, kind="stable")
        bounds = np.flatnonzero(np.diff(strata[order])) + 1
        groups = np.split(order, bounds)
    out: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for g in groups:
        g = rng.permutation(g)
        start = 0
        for k, f in enumerate(fractions):
            m = min(int(np.floor(f * len(g) + 0.5)), len(g) - start)
            out[k + 1].append(g[start : start + m])
            start += m
        out[0].append(g[start:])
    return [np.sort(np.concatenate(parts)) for parts in out]


def binary_strata(frame: pd.DataFrame, tasks: tuple[TaskDef, ...], source: str) -> np.ndarray | None:
    """One stratum code per row from every binary task's state (outside its sample space,
    negative, positive): stratifying on it keeps rare positives in every part."""
    code = np.zeros(len(frame), dtype=np.int64)
    used = False
    for task in tasks:
        if task.kind != "binary":
            continue
        y, m = TaskEncoder(task).encode(frame, source)
        code = code * 3 + np.where(m, 1 + y.astype(np.int64), 0)
        used = True
    return code if used else None


def resolve_features(frame: pd.DataFrame, spec: DatasetSpec, source: str) -> tuple[list[str], list[str]]:
    """The numeric and categorical input columns; ``auto`` infers them from dtypes."""
    fs = spec.features
    reserved = set(spec.label_columns) | set(fs.exclude)
    listed = {c for cols in (fs.numeric, fs.categorical) if cols != AUTO for c in cols}
    remaining = [c for c in frame.columns if c not in reserved and c not in listed]

    def is_number(c: str) -> bool:
        dt = frame[c].dtype
        return pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt)

    hashed = set(fs.hash_buckets)  # categorical whatever their dtype
    require_columns(frame, [c for c in fs.hash_buckets if c not in listed], source, "features.hash_buckets")
    numeric = (
        [c for c in remaining if is_number(c) and c not in hashed] if fs.numeric == AUTO else list(fs.numeric)
    )
    categorical = (
        [c for c in remaining if not is_number(c) or c in hashed]
        if fs.categorical == AUTO
        else list(fs.categorical)
    )
    if fs.numeric == AUTO:
        for c in remaining:
            if not is_number(c):
                _warn_numbers_as_text(frame[c], source, "categorical" if c in categorical else "ignored")
    ignored = [c for c in remaining if c not in numeric and c not in categorical]
    if ignored:
        log.info("%s: not used as features: %s", source, ", ".join(ignored))
    if not numeric and not categorical:
        raise UserError(f"{source}: no feature columns (features: {fs.numeric} / {fs.categorical})")
    return numeric, categorical


def _warn_numbers_as_text(col: pd.Series, source: str, used_as: str) -> None:
    """Warn when ``numeric: auto`` leaves out a column that is mostly numbers: a few stray
    words (``unknown``, ``n/a``) make pandas read the whole column as text."""
    present = col.dropna()
    if present.empty:
        return
    probe = pd.to_numeric(present.iloc[:_PROBE_ROWS], errors="coerce")
    if probe.notna().mean() < _NUMBERS_SHARE:  # a real text column: cheap exit
        return
    parsed = pd.to_numeric(present, errors="coerce")
    share = float(parsed.notna().mean())
    if share < _NUMBERS_SHARE:
        return
    stray = present[parsed.isna()]
    example = f", e.g. {str(stray.iloc[0])!r}" if len(stray) else ""
    log.warning(
        "%s: column %r is %s, not numeric (features.numeric: auto): %d of %d values are not "
        "numbers%s; list it in features.numeric (and its stray values in files.na_values) to "
        "use it as a number, or in features.categorical to keep it a category",
        source, col.name, used_as, len(stray), len(present), example,
    )  # fmt: skip


def _values_hint(col: pd.Series, n: int = 5) -> str:
    counts = category_keys(col).value_counts()
    counts = counts[counts.index != MISSING]
    shown = ", ".join(repr(str(v)) for v in counts.index[:n])
    return shown + (", ..." if len(counts) > n else "")


def check_labels_defined(frame: pd.DataFrame, tasks: tuple[TaskDef, ...], source: str) -> None:
    """Refuse a task whose label cannot vary in any split, naming the real cause.

    Run on all rows (every file) before splitting: a binary task with no positive (or no
    negative) example anywhere, e.g. a ``positive`` value that never occurs or a
    ``threshold`` above every value, and a regression task whose label is constant, are
    spec or data errors that no other split would fix.
    """
    for i, task in enumerate(tasks):
        path = f"tasks[{i}]"
        col = frame[task.label]
        if not col.notna().any():
            raise UserError(f"{source}: label column {task.label!r} of task {task.name!r} is all missing")
        if task.kind == "binary":
            _check_binary_defined(frame, task, path, source)
        elif task.kind == "regression":
            y, m = TaskEncoder(task).encode(frame, source)
            values = y[m]
            if values.size and np.all(values == values[0]):
                raise UserError(
                    f"{source}: {path}: regression label {task.label!r} of task {task.name!r} is constant "
                    f"({float(values[0]):g}) in all {values.size} rows of its sample space; a regression "
                    "task needs a label that varies"
                )


def _check_binary_defined(frame: pd.DataFrame, task: TaskDef, path: str, source: str) -> None:
    col = frame[task.label]
    keys = category_keys(col)
    for key in ("positive", "negative"):
        declared = getattr(task, key)
        if declared is None:
            continue
        found = is_in(keys, value_keys(declared))
        if not found.any():
            shown = ", ".join(repr(v) for v in declared)
            raise UserError(
                f"{source}: {path}.{key}: value{'s' if len(declared) > 1 else ''} {shown} never "
                f"occur{'' if len(declared) > 1 else 's'} in column {task.label!r} "
                f"(values: {_values_hint(col)})"
            )
        for v, k in zip(declared, value_keys(declared), strict=True):
            if not is_in(keys, [k]).any():
                log.warning("%s: %s.%s: value %r never occurs in column %r", source, path, key, v, task.label)
    if task.threshold is not None:
        v = to_numeric(col, source, f"label column {task.label!r} of task {task.name!r}")
        v = v[~np.isnan(v)]
        if v.max() <= task.threshold:
            raise UserError(
                f"{source}: {path}.threshold: {task.threshold:g} is at or above every value of column "
                f"{task.label!r} (max {v.max():g}), so no row is positive"
            )
        if v.min() > task.threshold:
            raise UserError(
                f"{source}: {path}.threshold: {task.threshold:g} is below every value of column "
                f"{task.label!r} (min {v.min():g}), so every row is positive"
            )
    y, m = TaskEncoder(task).encode(frame, source)
    n, pos = int(m.sum()), int(y[m].sum())
    if n == 0:
        return  # no sample space at all: check_sample_spaces names the split
    if pos == 0 or pos == n:
        missing = "positive" if pos == 0 else "negative"
        where = " (within its mask)" if task.mask else ""
        raise UserError(
            f"{source}: {path}: binary task {task.name!r} has no {missing} examples in any row{where} "
            f"({n} rows; column {task.label!r} values: {_values_hint(col[m])})"
        )


def _read_parts(spec: DatasetSpec, seed: int) -> dict[str, _Part]:
    files, split = spec.files, spec.split
    seed = split.seed if split.seed is not None else seed
    needed = [*spec.label_columns]
    for cols in (spec.features.numeric, spec.features.categorical):
        if cols != AUTO:
            needed.extend(cols)

    def read(path: str) -> pd.DataFrame:
        frame = read_table(path, files)
        require_columns(frame, needed, path, "named in the spec")
        return frame

    if files.single:
        assert files.path is not None
        whole = read(files.path)
        require_columns(whole, spec.features.exclude, files.path, "features.exclude")
        check_labels_defined(whole, spec.tasks, files.path)
        strata = binary_strata(whole, spec.tasks, files.path) if split.stratify else None
        rest, valid, test = split_indices(len(whole), (split.valid, split.test), strata, seed)
        rows = {"train": rest, "valid": valid, "test": test}
        for k, idx in rows.items():
            if len(idx) == 0:
                fix = "lower split.valid or split.test" if k == "train" else f"raise split.{k}"
                raise UserError(
                    f"{files.path}: the {_SPLIT_WORDS[k]} part is empty ({len(whole)} rows, split.valid "
                    f"{split.valid:g}, split.test {split.test:g}); {fix}"
                )
        return {
            k: _Part(whole.iloc[idx], f"{files.path} ({_SPLIT_WORDS[k]} part)") for k, idx in rows.items()
        }

    assert files.train is not None and files.test is not None
    parts = {
        "train": _Part(read(files.train), files.train),
        "test": _Part(read(files.test), files.test),
    }
    require_columns(parts["train"].frame, spec.features.exclude, files.train, "features.exclude")
    if files.valid is not None:
        parts["valid"] = _Part(read(files.valid), files.valid)
    label_cols = list(spec.label_columns)
    check_labels_defined(
        pd.concat([p.frame[label_cols] for p in parts.values()], ignore_index=True),
        spec.tasks,
        ", ".join(p.source for p in parts.values()),
    )
    if files.valid is None:
        donor = parts[split.valid_from]
        strata = binary_strata(donor.frame, spec.tasks, donor.source) if split.stratify else None
        keep, take = split_indices(len(donor.frame), (split.valid,), strata, seed)
        for what, idx in (("validation", take), (f"remaining {split.valid_from}", keep)):
            if len(idx) == 0:
                raise UserError(
                    f"{donor.source}: the {what} part is empty ({len(donor.frame)} rows, split.valid "
                    f"{split.valid:g} of them go to validation); change split.valid"
                )
        parts[split.valid_from] = _Part(donor.frame.iloc[keep], donor.source)
        parts["valid"] = _Part(donor.frame.iloc[take], f"{donor.source} (validation part)")
    return {k: parts[k] for k in SPLITS}


def _class_name(encoder: TaskEncoder | None, code: int) -> str:
    if encoder is not None and encoder.classes is not None and 0 <= code < len(encoder.classes):
        return repr(encoder.classes[code])
    return str(code)


def check_sample_spaces(
    split: TensorSplit,
    tasks: tuple[TaskDef, ...],
    source: str,
    which: str,
    encoders: dict[str, TaskEncoder] | None = None,
) -> None:
    """Every task needs rows in its sample space in every split, and a label that varies
    there, or its metric is undefined in that split: a binary task needs both classes (AUC),
    a multiclass task two classes (its skill, accuracy over the majority share), a regression
    task two distinct values (R^2); a task with row weights needs a positive sum of weights
    there (its weighted loss and metrics divide by it). Each is refused with one line naming
    the task, the split and the cause. In the validation and test rows, a binary task with fewer than
    :data:`MIN_AUC_CLASS` examples of a class gets a warning: its AUC there is noise.
    ``encoders`` (by task name) lets messages show class labels instead of codes."""
    hint = "change the split (fractions, seed, stratify)"
    for task in tasks:
        m = split.masks[task.name]
        n = int(m.sum())
        if n == 0:
            raise UserError(
                f"{source}: task {task.name!r} has no rows in its sample space in the {which} rows"
            )
        w = split.weights.get(task.name)
        if w is not None and not bool((w[m] > 0).any()):
            raise UserError(
                f"{source}: weight column {task.weight!r} of task {task.name!r} is 0 on all {n} {which} "
                "rows of its sample space; a weighted task needs rows of positive weight"
            )
        y = split.labels[task.name][m]
        if task.kind == "binary":
            pos = int(y.sum())
            if pos == 0 or pos == n:
                missing = "positive" if pos == 0 else "negative"
                raise UserError(
                    f"{source}: task {task.name!r} has no {missing} examples in the {which} rows "
                    f"({n} rows in its sample space), so its AUC is undefined there; {hint}"
                )
            rare = min(pos, n - pos)
            if which != "training" and rare < MIN_AUC_CLASS:
                log.warning(
                    "%s: task %r has only %d %s example%s in the %s rows (of %d): its AUC there is "
                    "unreliable",
                    source, task.name, rare, "positive" if rare == pos else "negative",
                    "" if rare == 1 else "s", which, n,
                )  # fmt: skip
        elif task.kind == "multiclass":
            present = torch.unique(y)
            if present.numel() < 2:
                label = _class_name((encoders or {}).get(task.name), int(present[0]))
                raise UserError(
                    f"{source}: task {task.name!r} has one class ({label}) in all {n} {which} rows "
                    f"of its sample space, so its skill is undefined there; {hint}"
                )
        elif bool((y == y[0]).all()):
            raise UserError(
                f"{source}: task {task.name!r} has a constant label ({float(y[0]):g}) in all {n} "
                f"{which} rows of its sample space, so its R^2 is undefined there; {hint}"
            )


def load_from_spec(spec: DatasetSpec | str | Path, *, seed: int = 0) -> MTLDataset:
    """Load a user dataset: preprocessing is fitted on the training rows only.

    ``seed`` drives the random split unless the spec fixes ``split.seed``. With the spec's
    ``cache: true`` the encoded splits come from (or go into) the user cache; with
    ``stream: true`` the splits are :class:`~mtlsearch.data.StreamSplit` objects, read per batch.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.load(spec)
    if spec.stream:  # splits read in record batches (mtlsearch.data._streamsplit)
        from mtlsearch.data._streamsplit import load_streaming

        return load_streaming(spec, seed=seed)
    if spec.cache:
        from mtlsearch.data._cache import load_cached

        return load_cached(spec, seed, _encode)
    return _encode(spec, seed)


def _encode(spec: DatasetSpec, seed: int) -> MTLDataset:
    parts = _read_parts(spec, seed)
    train = parts["train"]
    numeric, categorical = resolve_features(train.frame, spec, train.source)
    pre = Preprocessor.fit(
        train.frame,
        numeric,
        categorical,
        spec.tasks,
        min_frequency=spec.features.min_frequency,
        missing_indicator=spec.features.missing_indicator,
        source=train.source,
        hash_buckets=spec.features.hash_buckets,
        max_categories=spec.features.max_categories,
    )
    splits: dict[str, TensorSplit] = {}
    encoders = {t.task.name: t for t in pre.tasks}
    for k in SPLITS:
        splits[k] = pre.transform_split(parts[k].frame, parts[k].source)
        check_sample_spaces(splits[k], spec.tasks, parts[k].source, _SPLIT_WORDS[k], encoders)
    log.info(
        "%s: %d train / %d valid / %d test rows, %d numeric + %d categorical inputs",
        spec.name,
        *(len(splits[k]) for k in SPLITS),
        len(pre.numeric_feature_names),
        len(pre.categorical),
    )
    return MTLDataset(
        name=spec.name,
        tasks=pre.task_specs,
        numeric_features=pre.numeric_feature_names,
        categorical_features=pre.categorical_cardinalities,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        preprocessor=pre,
        label_scaling=pre.label_scaling,
        meta={
            "spec": spec.to_dict(),
            "sources": {k: parts[k].source for k in SPLITS},
            "seed": spec.split.seed if spec.split.seed is not None else seed,
        },
    )


__all__ = [
    "binary_strata",
    "check_labels_defined",
    "check_sample_spaces",
    "load_from_spec",
    "resolve_features",
    "split_indices",
]
