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

from mtlsearch._errors import UserError
from mtlsearch.data._io import read_table, require_columns
from mtlsearch.data._preprocess import Preprocessor, TaskEncoder
from mtlsearch.data._spec import AUTO, DatasetSpec, TaskDef
from mtlsearch.data._tensors import MTLDataset, TensorSplit

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_WORDS = {"train": "training", "valid": "validation", "test": "test"}


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

    numeric = [c for c in remaining if is_number(c)] if fs.numeric == AUTO else list(fs.numeric)
    categorical = (
        [c for c in remaining if not is_number(c)] if fs.categorical == AUTO else list(fs.categorical)
    )
    ignored = [c for c in remaining if c not in numeric and c not in categorical]
    if ignored:
        log.info("%s: not used as features: %s", source, ", ".join(ignored))
    if not numeric and not categorical:
        raise UserError(f"{source}: no feature columns (features: {fs.numeric} / {fs.categorical})")
    return numeric, categorical


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
        strata = binary_strata(whole, spec.tasks, files.path) if split.stratify else None
        rest, valid, test = split_indices(len(whole), (split.valid, split.test), strata, seed)
        rows = {"train": rest, "valid": valid, "test": test}
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
    else:
        donor = parts[split.valid_from]
        strata = binary_strata(donor.frame, spec.tasks, donor.source) if split.stratify else None
        keep, take = split_indices(len(donor.frame), (split.valid,), strata, seed)
        parts[split.valid_from] = _Part(donor.frame.iloc[keep], donor.source)
        parts["valid"] = _Part(donor.frame.iloc[take], f"{donor.source} (validation part)")
    return {k: parts[k] for k in SPLITS}


def check_sample_spaces(split: TensorSplit, tasks: tuple[TaskDef, ...], source: str, which: str) -> None:
    """Every task needs rows in its sample space in every split, and a binary task needs
    both classes there: without them its loss or its AUC is undefined."""
    for task in tasks:
        m = split.masks[task.name]
        n = int(m.sum())
        if n == 0:
            raise UserError(
                f"{source}: task {task.name!r} has no rows in its sample space in the {which} rows"
            )
        if task.kind == "binary":
            pos = int(split.labels[task.name][m].sum())
            if pos == 0 or pos == n:
                missing = "positive" if pos == 0 else "negative"
                raise UserError(
                    f"{source}: task {task.name!r} has no {missing} examples in the {which} rows "
                    f"({n} rows in its sample space); change the split (fractions, seed, stratify)"
                )


def load_from_spec(spec: DatasetSpec | str | Path, *, seed: int = 0) -> MTLDataset:
    """Load a user dataset: preprocessing is fitted on the training rows only.

    ``seed`` drives the random split unless the spec fixes ``split.seed``.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.load(spec)
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
    )
    splits: dict[str, TensorSplit] = {}
    for k in SPLITS:
        splits[k] = pre.transform_split(parts[k].frame, parts[k].source)
        check_sample_spaces(splits[k], spec.tasks, parts[k].source, _SPLIT_WORDS[k])
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
        meta={
            "spec": spec.to_dict(),
            "sources": {k: parts[k].source for k in SPLITS},
            "seed": spec.split.seed if spec.split.seed is not None else seed,
        },
    )


__all__ = [
    "binary_strata",
    "check_sample_spaces",
    "load_from_spec",
    "resolve_features",
    "split_indices",
]
