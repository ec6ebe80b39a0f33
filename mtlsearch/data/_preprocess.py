"""Preprocessing fitted on the training split only, and saved with a trained model.

* categorical -> integer codes: ``0`` is the out-of-vocabulary bucket (values unseen in
  training, or seen fewer than ``min_frequency`` times, or beyond the ``max_categories``
  most frequent), ``1..K`` the vocabulary in order of training frequency. Missing values are
  a category of their own (``<missing>``): absence is often informative, and pandas 3 would
  otherwise give code -1 (see pitfalls.md). The OOV row is trained only if some training
  rows carry code 0: with the default ``min_frequency: 2`` the values seen once in training
  do (unseen test values are, by Good-Turing's estimate, as frequent as the training
  singletons, and a value seen once gets almost no training of its own row anyway). With
  ``min_frequency: 1`` (the default before 2026-11) the OOV row of a column is never
  trained: unseen test values get its random initial embedding.
* hashed categorical (``hash_buckets: N``) -> ``1 + stablehash(key) mod N``, ``0`` for a
  missing value (:mod:`mtlsearch.data._hashing`): no vocabulary, no OOV (every value has a
  bucket), for ids too many to count or embed.
* numeric -> standardised with the training mean/std; missing values are imputed with the
  mean (0 after scaling) and, for columns that had any missing value in training, flagged
  in an extra ``<column>:missing`` indicator column.
* labels -> float 0/1 (binary), float (regression), int class codes (multiclass) plus a
  boolean mask for the task's sample space. Labels stay in their own units; for a
  regression task (unless ``standardize: false``) the training rows' label mean and
  standard deviation are fitted here (:attr:`Preprocessor.label_scaling`), and the trainer
  computes its loss on ``(y - mean) / std`` and maps predictions back with them.
* row weights (a task's ``weight`` column) -> float32, checked on the task's sample space
  (finite, >= 0); 0 outside it, where they are never read.

The fitted :class:`Preprocessor` is plain data (JSON via ``to_dict``/``save``, never
pickle), so an exported model can score raw rows. Everything is vectorised per column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec
from mtlsearch.data._hashing import HASH_NAME, MAX_BUCKETS, bucket_codes
from mtlsearch.data._io import require_columns
from mtlsearch.data._spec import MaskSpec, Scalar, TaskDef, to_plain
from mtlsearch.data._tensors import TensorSplit

MISSING = "<missing>"
_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "boolean")
FORMAT_VERSION = 1


# ---- value normalisation -----------------------------------------------------------------
def category_keys(col: pd.Series) -> pd.Series:
    """Each value as a string key (pandas ``str`` dtype), so that 3, 3.0, "3" and True/1
    meet in one category.

    Integral numbers print without a decimal point (a column read as float because it has
    gaps must give the same keys as the same column read as int); missing -> ``<missing>``.
    Infinities count as missing here: they are no category.
    """
    if isinstance(col.dtype, pd.CategoricalDtype):  # e.g. Parquet dictionary columns
        col = col.astype(col.cat.categories.dtype)
    if col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in _NUMBER_KINDS:
        col = pd.to_numeric(col)  # Python numbers in an object column (rows sent as dicts)
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        v = col.to_numpy(dtype="float64", na_value=np.nan, copy=True)
        v[np.isinf(v)] = np.nan
        ok = v[~np.isnan(v)]
        nums = pd.Series(v, index=col.index, name=col.name)
        if np.all(np.floor(ok) == ok) and np.abs(ok).max(initial=0) < 2**53:
            keys = nums.astype("Int64").astype(str)
        else:
            keys = nums.astype(str).str.removesuffix(".0")
    else:
        keys = col.astype(str)
    return keys.fillna(MISSING)


def index_in(keys: pd.Series, values: Sequence[str]) -> np.ndarray:
    """Position of each key in ``values`` (-1 when absent): one hash lookup per row in
    Arrow, several times faster than an object-dtype ``Index.get_indexer``."""
    arr = pa.array(keys)
    found = pc.index_in(arr, value_set=pa.array(list(values), type=pa.string()).cast(arr.type))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def is_in(keys: pd.Series, values: Sequence[str]) -> np.ndarray:
    return index_in(keys, values) >= 0


def value_keys(values: Sequence[Scalar]) -> list[str]:
    """Keys of declared values (from a spec), matching :func:`category_keys`."""
    return [str(category_keys(pd.Series([v])).iloc[0]) for v in values]  # a few, one by one


def to_numeric(col: pd.Series, source: str, what: str) -> np.ndarray:
    """float64 values; missing -> NaN. Non-numeric strings or infinities are errors."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        v = col.to_numpy(dtype="float64", na_value=np.nan)
    else:
        v = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = np.isnan(v) & col.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            n_bad = int(bad.sum())
            raise UserError(
                f"{source}: {what} holds non-numeric values such as {col.iloc[i]!r} "
                f"(data row {_row(col, i)}; {n_bad} such row{'s' if n_bad > 1 else ''})"
            )
    inf = np.isinf(v)
    if inf.any():
        i = int(np.argmax(inf))
        raise UserError(f"{source}: {what} holds an infinite value (data row {_row(col, i)})")
    return v


def _row(col: pd.Series, i: int) -> int:
    label = col.index[i]
    return int(label) + 1 if isinstance(label, int | np.integer) else i + 1


def _examples(keys: pd.Series, bad: np.ndarray, n: int = 3) -> str:
    return ", ".join(repr(str(v)) for v in pd.unique(keys.to_numpy(dtype=object)[bad])[:n])


# ---- features ----------------------------------------------------------------------------
def vocab_from_counts(
    counts: pd.Series, min_frequency: int = 1, max_categories: int | None = None
) -> tuple[str, ...]:
    """The vocabulary from training counts (index: category keys): keys seen at least
    ``min_frequency`` times, most frequent first, ties by key (deterministic whatever the
    row order), cut to the first ``max_categories`` when given."""
    counts = counts[counts >= min_frequency]
    order = np.lexsort((counts.index.to_numpy(dtype=str), -counts.to_numpy()))
    if max_categories is not None:
        order = order[:max_categories]
    return tuple(str(k) for k in counts.index[order])


@dataclass(frozen=True)
class CategoricalEncoder:
    """``vocab[i]`` gets code ``i + 1``; anything else code 0 (out of vocabulary)."""

    column: str
    vocab: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        return len(self.vocab) + 1

    @classmethod
    def fit(
        cls, col: pd.Series, min_frequency: int = 1, max_categories: int | None = None
    ) -> CategoricalEncoder:
        counts = category_keys(col).value_counts(sort=False)
        return cls(column=str(col.name), vocab=vocab_from_counts(counts, min_frequency, max_categories))

    def encode(self, col: pd.Series) -> np.ndarray:
        codes = index_in(category_keys(col), self.vocab)
        return (codes + 1).astype(np.int64)  # -1 (unknown) -> 0, the OOV bucket

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> CategoricalEncoder:
        return cls(data["column"], tuple(data["vocab"]))


@dataclass(frozen=True)
class HashedEncoder:
    """Code ``1 + stablehash(key) mod buckets``; 0 for a missing value (see
    :mod:`mtlsearch.data._hashing`). ``hash`` names the hash function, checked on load."""

    column: str
    buckets: int
    hash: str = HASH_NAME
    kind: str = field(default="hash", init=False)

    def __post_init__(self) -> None:
        if self.hash != HASH_NAME:
            raise UserError(
                f"preprocessor: column {self.column!r} was hashed with {self.hash!r}; this version "
                f"hashes with {HASH_NAME!r}"
            )
        if not (isinstance(self.buckets, int) and 1 <= self.buckets <= MAX_BUCKETS):
            raise UserError(f"preprocessor: column {self.column!r}: bad hash_buckets {self.buckets!r}")

    @property
    def cardinality(self) -> int:
        return self.buckets + 1

    @property
    def vocab(self) -> tuple[str, ...]:
        """A hashed column has no vocabulary: readers that need one get a one-line
        :class:`UserError` (the serving export records ``buckets`` and ``hash`` instead)."""
        raise UserError(
            f"column {self.column!r} is hashed (hash_buckets: {self.buckets}); it has no vocabulary"
        )

    def encode(self, col: pd.Series) -> np.ndarray:
        return bucket_codes(category_keys(col), self.buckets, MISSING)

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> HashedEncoder:
        return cls(data["column"], int(data["buckets"]), data.get("hash", HASH_NAME))


#: How a saved categorical encoder (``kind``; none: a vocabulary) is read back.
CATEGORICAL_ENCODERS: dict[str, Callable[[Mapping[str, Any]], CategoricalEncoder | HashedEncoder]] = {
    "vocab": CategoricalEncoder.from_plain,
    "hash": HashedEncoder.from_plain,
}


@dataclass(frozen=True)
class NumericScaler:
    """``(x - mean) / std``; missing -> 0 (the mean), flagged when ``indicator``."""

    column: str
    mean: float
    std: float
    indicator: bool

    @classmethod
    def fit(cls, col: pd.Series, source: str, missing_indicator: bool = True) -> NumericScaler:
        v = to_numeric(col, source, f"numeric feature {col.name!r}")
        present = v[~np.isnan(v)]
        if present.size == 0:
            raise UserError(f"{source}: numeric feature {col.name!r} is all missing in the training rows")
        std = float(present.std())
        return cls(
            column=str(col.name),
            mean=float(present.mean()),
            std=std if std > 0 and np.isfinite(std) else 1.0,
            indicator=bool(missing_indicator and present.size < v.size),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.column, f"{self.column}:missing") if self.indicator else (self.column,)

    def encode(self, col: pd.Series, source: str) -> list[np.ndarray]:
        v = to_numeric(col, source, f"numeric feature {self.column!r}")
        miss = np.isnan(v)
        out = (v - self.mean) / self.std
        out[miss] = 0.0
        return [out, miss.astype(np.float64)] if self.indicator else [out]


# ---- labels ------------------------------------------------------------------------------
def _binary(task: TaskDef, classes: tuple[str, ...] | None, col: pd.Series, source: str) -> tuple:
    what = f"label column {task.label!r} of task {task.name!r}"
    if task.threshold is not None:
        v = to_numeric(col, source, what)
        present = ~np.isnan(v)
        return (v > task.threshold).astype(np.float32), present
    keys = category_keys(col)
    present = (keys != MISSING).to_numpy()
    if task.positive is not None:
        pos = is_in(keys, value_keys(task.positive))
        if task.negative is None:
            return pos.astype(np.float32), present
        allowed = pos | is_in(keys, value_keys(task.negative))
        declared = f"the declared positive/negative values {[*task.positive, *task.negative]}"
        hint = ""
    else:
        pos = is_in(keys, ["1", "True", "true"])
        allowed = pos | is_in(keys, ["0", "False", "false"])
        declared = "{0, 1}"
        hint = "; declare 'positive' (the values that count as 1) or 'threshold'"
    bad = present & ~allowed
    if bad.any():
        raise UserError(f"{source}: {what} has values outside {declared}, e.g. {_examples(keys, bad)}{hint}")
    return pos.astype(np.float32), present


def _regression(task: TaskDef, classes: tuple[str, ...] | None, col: pd.Series, source: str) -> tuple:
    v = to_numeric(col, source, f"label column {task.label!r} of task {task.name!r}")
    present = ~np.isnan(v)
    return np.where(present, v, 0.0).astype(np.float32), present


def _multiclass(task: TaskDef, classes: tuple[str, ...] | None, col: pd.Series, source: str) -> tuple:
    assert classes is not None
    keys = category_keys(col)
    present = (keys != MISSING).to_numpy()
    codes = index_in(keys, classes)
    bad = present & (codes < 0)
    if bad.any():
        raise UserError(
            f"{source}: label column {task.label!r} of task {task.name!r} has classes not in "
            f"{'the declared classes' if task.classes else 'the training rows'}, "
            f"e.g. {_examples(keys, bad)}"
        )
    return np.where(present, codes, 0).astype(np.int64), present


LABEL_ENCODERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "binary": _binary,
    "regression": _regression,
    "multiclass": _multiclass,
}


def _condition(cond: MaskSpec, frame: pd.DataFrame, source: str) -> np.ndarray:
    col = frame[cond.column]
    if cond.values is not None:
        return is_in(category_keys(col), value_keys(cond.values))
    if not (pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype)):
        raise UserError(
            f"{source}: mask column {cond.column!r} is not numeric; "
            "give mask.values (the values that keep a row)"
        )
    v = to_numeric(col, source, f"mask column {cond.column!r}")
    return v > cond.threshold if cond.threshold is not None else (v != 0) & ~np.isnan(v)


def mask_rows(mask: Sequence[MaskSpec], frame: pd.DataFrame, source: str) -> np.ndarray:
    """True where a row is in the task's sample space: every condition holds (AND)."""
    keep = np.ones(len(frame), dtype=bool)
    for cond in mask:
        keep &= _condition(cond, frame, source)
    return keep


def sorted_classes(col: pd.Series) -> tuple[str, ...]:
    keys = np.asarray(category_keys(col).unique(), dtype=object)
    keys = keys[keys != MISSING]
    as_num = pd.to_numeric(pd.Series(keys, dtype=object), errors="coerce")
    if not as_num.isna().any():  # numeric classes in numeric order (2 before 10)
        keys = keys[np.argsort(as_num.to_numpy(), kind="stable")]
    else:
        keys = np.sort(keys.astype(str))
    return tuple(str(k) for k in keys)


@dataclass(frozen=True)
class TaskEncoder:
    """A task's label transform and sample-space rule, with its fitted classes (multiclass)
    and, for a standardised regression task, the training label's ``mean`` and ``std``
    (population standard deviation, label units; 1.0 for a constant label, which the
    loader refuses anyway)."""

    task: TaskDef
    classes: tuple[str, ...] | None = None
    mean: float | None = None
    std: float | None = None

    @classmethod
    def fit(cls, task: TaskDef, frame: pd.DataFrame, source: str) -> TaskEncoder:
        if task.standardized:
            y, m = cls(task).encode(frame, source)
            values = y[m].astype(np.float64)
            if values.size == 0:
                return cls(task)  # the loader says the task has no training rows
            std = float(values.std())
            return cls(task, mean=float(values.mean()), std=std if std > 0 and np.isfinite(std) else 1.0)
        if task.kind != "multiclass":
            return cls(task)
        classes = (
            tuple(value_keys(task.classes)) if task.classes is not None else sorted_classes(frame[task.label])
        )
        if len(classes) < 2:
            raise UserError(
                f"{source}: multiclass task {task.name!r} has only {len(classes)} class(es) "
                f"in column {task.label!r}"
            )
        return cls(task, classes)

    @property
    def spec(self) -> TaskSpec:
        n = len(self.classes) if self.task.kind == "multiclass" and self.classes else None
        return TaskSpec(self.task.name, self.task.kind, n)

    def encode(self, frame: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels and the sample-space mask (mask rule and label present). A label column
        that is all missing is an error: such a task cannot be trained or evaluated."""
        task = self.task
        col = frame[task.label]
        if not col.notna().any():
            raise UserError(f"{source}: label column {task.label!r} of task {task.name!r} is all missing")
        y, present = LABEL_ENCODERS[task.kind](task, self.classes, col, source)
        return y, present & mask_rows(task.mask, frame, source)

    def row_weights(self, frame: pd.DataFrame, mask: np.ndarray, source: str) -> np.ndarray | None:
        """The task's row weights, float32 (N,), or None when its spec names no ``weight``.

        Only the rows of the sample space (``mask``) are read: each must hold a finite number
        >= 0, else a :class:`UserError` naming ``source``, the column and the first bad data
        row. Rows outside the sample space get 0 (the loss never reads them).
        """
        column = self.task.weight
        if column is None:
            return None
        what = f"weight column {column!r} of task {self.task.name!r}"
        col = frame[column][mask]
        v = to_numeric(col, source, what)  # non-numeric text and infinities are errors
        for bad, problem in ((np.isnan(v), "a missing value"), (v < 0, "a negative value")):
            if bad.any():
                i = int(np.argmax(bad))
                shown = "" if problem == "a missing value" else f" ({v[i]:g})"
                n_bad = int(bad.sum())
                raise UserError(
                    f"{source}: {what} has {problem}{shown} in data row {_row(col, i)} "
                    f"({n_bad} such row{'s' if n_bad > 1 else ''} in the task's sample space); "
                    "row weights must be finite numbers >= 0"
                )
        out = np.zeros(len(frame), dtype=np.float32)
        out[mask] = v
        return out


# ---- the whole preprocessor --------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessor:
    """The fitted transform from raw rows to tensors. Fit on training rows only."""

    numeric: tuple[NumericScaler, ...]
    categorical: tuple[CategoricalEncoder | HashedEncoder, ...]
    tasks: tuple[TaskEncoder, ...]

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        numeric_cols: Sequence[str],
        categorical_cols: Sequence[str],
        tasks: Sequence[TaskDef] = (),
        *,
        min_frequency: int = 1,
        missing_indicator: bool = True,
        source: str = "training rows",
        hash_buckets: Mapping[str, int] | None = None,
        max_categories: int | None = None,
    ) -> Preprocessor:
        """Learn the encodings from ``frame``, which must be the training rows only: fitting
        on validation or test rows would leak their statistics (means, vocabularies) into
        the model. ``tasks`` adds the label transforms (multiclass classes are fitted here);
        ``source`` names the rows in error messages. A categorical column named in
        ``hash_buckets`` is hashed into that many buckets instead of counted; the others keep
        at most ``max_categories`` values (the most frequent) when it is given."""
        require_columns(frame, [*numeric_cols, *categorical_cols], source, "a feature")
        hashed = dict(hash_buckets or {})
        return cls(
            numeric=tuple(NumericScaler.fit(frame[c], source, missing_indicator) for c in numeric_cols),
            categorical=tuple(
                HashedEncoder(c, hashed[c])
                if c in hashed
                else CategoricalEncoder.fit(frame[c], min_frequency, max_categories)
                for c in categorical_cols
            ),
            tasks=tuple(TaskEncoder.fit(t, frame, source) for t in tasks),
        )

    # ---- schema --------------------------------------------------------------------------
    @property
    def numeric_feature_names(self) -> tuple[str, ...]:
        """Names of the numeric input columns, indicator columns included: the columns of
        ``transform(...)[0]`` and ``MTLDataset.numeric_features``."""
        return tuple(n for s in self.numeric for n in s.names)

    @property
    def categorical_cardinalities(self) -> tuple[tuple[str, int], ...]:
        """``(column, cardinality)`` with the OOV bucket counted, as in
        ``MTLDataset.categorical_features``: the embedding tables' sizes."""
        return tuple((e.column, e.cardinality) for e in self.categorical)

    @property
    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(t.spec for t in self.tasks)

    @property
    def label_scaling(self) -> dict[str, tuple[float, float]]:
        """``{task: (mean, std)}`` in label units for every standardised regression task: the
        trainer's loss reads ``(y - mean) / std``, and a raw network output ``z`` is the
        prediction ``z * std + mean``. Serving a model needs the same map."""
        return {t.task.name: (t.mean, t.std) for t in self.tasks if t.mean is not None and t.std is not None}

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The raw columns a row needs for scoring (labels are not needed)."""
        return tuple(s.column for s in self.numeric) + tuple(e.column for e in self.categorical)

    # ---- transforms ----------------------------------------------------------------------
    def transform(
        self, rows: pd.DataFrame | Sequence[Mapping[str, Any]], source: str = "rows"
    ) -> tuple[Tensor, Tensor]:
        """Raw rows -> (numeric float32 (N, n_numeric), categorical int64 (N, n_cat))."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        require_columns(frame, self.input_columns, source, "an input of the model")
        n = len(frame)
        num_cols = [c for s in self.numeric for c in s.encode(frame[s.column], source)]
        numeric = np.empty((n, len(num_cols)), dtype=np.float32)
        for j, c in enumerate(num_cols):
            numeric[:, j] = c
        categorical = np.empty((n, len(self.categorical)), dtype=np.int64)
        for j, e in enumerate(self.categorical):
            categorical[:, j] = e.encode(frame[e.column])
        return torch.from_numpy(numeric), torch.from_numpy(categorical)

    def transform_targets(
        self, frame: pd.DataFrame, source: str = "rows"
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Labels and sample-space masks per task."""
        require_columns(
            frame, [c for t in self.tasks for c in t.task.columns], source, "a task's label or mask"
        )
        labels, masks = {}, {}
        for t in self.tasks:
            y, m = t.encode(frame, source)
            labels[t.task.name] = torch.from_numpy(y)
            masks[t.task.name] = torch.from_numpy(m)
        return labels, masks

    def transform_weights(
        self, frame: pd.DataFrame, masks: Mapping[str, Tensor], source: str = "rows"
    ) -> dict[str, Tensor]:
        """Row weights of the tasks whose spec names a ``weight`` column (the others weigh
        every row 1 and are left out); ``masks`` as :meth:`transform_targets` returns them."""
        out = {}
        for t in self.tasks:
            w = t.row_weights(frame, masks[t.task.name].numpy(), source)
            if w is not None:
                out[t.task.name] = torch.from_numpy(w)
        return out

    def transform_split(self, frame: pd.DataFrame, source: str = "rows") -> TensorSplit:
        numeric, categorical = self.transform(frame, source)
        labels, masks = self.transform_targets(frame, source)
        weights = self.transform_weights(frame, masks, source)
        return TensorSplit(
            numeric=numeric, categorical=categorical, labels=labels, masks=masks, weights=weights
        )

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            **{f.name: to_plain(getattr(self, f.name)) for f in fields(self)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, Mapping) else data
            raise UserError(f"preprocessor: unknown format {found!r} (expected {FORMAT_VERSION})")
        try:
            return cls(
                numeric=tuple(NumericScaler(**s) for s in data["numeric"]),
                categorical=tuple(
                    CATEGORICAL_ENCODERS[e.get("kind", "vocab")](e) for e in data["categorical"]
                ),
                tasks=tuple(
                    TaskEncoder(
                        _task_from_plain(t["task"]),
                        tuple(t["classes"]) if t.get("classes") is not None else None,
                        mean=t.get("mean"),
                        std=t.get("std"),
                    )
                    for t in data["tasks"]
                ),
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"preprocessor: malformed ({exc})") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read the preprocessor ({exc})") from None
        return cls.from_dict(data)


def _task_from_plain(d: Mapping[str, Any]) -> TaskDef:
    d = dict(d)
    for key in ("positive", "negative", "classes"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    conditions = []
    for m in d.get("mask") or ():
        m = dict(m)
        if m.get("values") is not None:
            m["values"] = tuple(m["values"])
        conditions.append(MaskSpec(**m))
    d["mask"] = tuple(conditions)
    return TaskDef(**d)


__all__ = [
    "CATEGORICAL_ENCODERS",
    "MISSING",
    "CategoricalEncoder",
    "HashedEncoder",
    "NumericScaler",
    "Preprocessor",
    "TaskEncoder",
    "category_keys",
    "mask_rows",
    "to_numeric",
    "value_keys",
    "vocab_from_counts",
]
