"""The dataset spec: a YAML file that says how to turn user tables into an MTL dataset.

A spec is data: frozen dataclasses, validated on construction, with a ``to_dict`` /
``from_dict`` round trip. Every error is a :class:`SpecError` whose message starts with the
offending key's path (``tasks[1].kind``) so the user can find it in the file.

Example::

    name: clicks
    files:
      path: events.parquet          # one file + split rule ...
      # train: a.csv                # ... or separate files (valid may be carved from
      # test: b.csv                 #     train or test, see split.valid_from)
    split: {valid: 0.1, test: 0.1, seed: 0, stratify: true}   # no seed: the caller's
    features:
      numeric: auto                 # or a list of columns
      categorical: [user_id, item_id]
      exclude: [request_id]
      min_frequency: 5              # rarer values share the out-of-vocabulary code (default 2)
      max_categories: 100000        # optional: keep only the most frequent values per column
      hash_buckets: {user_id: 1048576}  # hashed, not counted: for ids too many to count
    tasks:
      - {name: ctr, label: click, kind: binary}
      - {name: cvr, label: purchase, kind: binary, where: {click: 1}}
      # the same mask in long form: mask: {column: click, values: [1]}
      - {name: basket, label: amount, kind: regression, standardize: true}
      # row weights (exposure, a survey weight): - {name: ..., label: ..., weight: exposure}

Every split needs rows: with one file, ``split.valid`` and ``split.test`` must be above 0
(the validation rows pick the epoch, the test rows measure the model); with train and test
files and no validation file, ``split.valid`` must be above 0. A feature may be listed
once. A regression label is standardised with its training mean and standard deviation
by default (``standardize: false`` trains on the raw values); the loss is computed on the
standardised label, and every prediction and metric is reported in the label's own units.
A task's ``weight`` column holds row weights (finite, >= 0 in its sample space; never a
feature): the trainer's loss becomes the weighted mean over the task's rows, and
validation/test report each metric also weighted (``<metric>_weighted``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from mtlsearch._errors import UserError
from mtlsearch._yaml import dump_yaml, read_yaml_file
from mtlsearch.data._hashing import MAX_BUCKETS as _MAX_BUCKETS

TaskKind = Literal["binary", "regression", "multiclass"]
FileFormat = Literal["auto", "csv", "parquet"]
SplitSource = Literal["train", "test"]
Scalar = str | int | float | bool

AUTO = "auto"
#: Categorical values seen fewer times in training share the out-of-vocabulary code. 2 (it
#: was 1 before 2026-11) so that the OOV row is trained on the training singletons.
DEFAULT_MIN_FREQUENCY = 2
#: Rows a streamed split's shuffle buffer holds (``shuffle_buffer``; see ``data._streamsplit``).
DEFAULT_SHUFFLE_BUFFER = 262_144


class SpecError(UserError, ValueError):
    """An invalid dataset spec; the message starts with the offending key's path."""


# ---- small validation helpers ------------------------------------------------------------
def _fail(path: str, msg: str) -> None:
    raise SpecError(f"{path}: {msg}")


def _check(cond: bool, path: str, msg: str) -> None:
    if not cond:
        _fail(path, msg)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    _check(isinstance(value, Mapping), path, f"expected a mapping, got {type(value).__name__}")
    return value


def _str_list(value: Any, path: str, allow_auto: bool = False) -> tuple[str, ...] | str:
    if allow_auto and value == AUTO:
        return AUTO
    _check(
        isinstance(value, list | tuple),
        path,
        f"expected a list of column names{' or auto' if allow_auto else ''}, got {value!r}",
    )
    for i, v in enumerate(value):
        _check(isinstance(v, str) and v != "", f"{path}[{i}]", f"expected a column name, got {v!r}")
    return tuple(value)


def _scalars(value: Any, path: str) -> tuple[Scalar, ...]:
    if _is_scalar(value):
        value = [value]
    _check(
        isinstance(value, list | tuple) and len(value) > 0,
        path,
        "expected a non-empty list of values",
    )
    for i, v in enumerate(value):
        _check(_is_scalar(v), f"{path}[{i}]", f"expected a plain value, got {v!r}")
    return tuple(value)


def _reject_unknown(data: Mapping[str, Any], cls: type, path: str) -> None:
    known = [f.name for f in fields(cls) if f.init]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            _fail(f"{path}.{key}" if path else str(key), f"unknown key; {hint}expected one of {known}")


def _require(data: Mapping[str, Any], key: str, path: str) -> Any:
    _check(key in data, f"{path}.{key}" if path else key, "missing field")
    return data[key]


def to_plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


# ---- the spec ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSpec:
    """Where the rows are and how to read them.

    Either ``path`` (one table, split by :class:`SplitSpec`) or ``train`` + ``test`` (and
    optionally ``valid``; without it the validation rows are carved from ``split.valid_from``).
    ``columns`` names the fields of a headerless CSV; ``na_values`` replaces pandas' default
    missing markers when given (so a value like "None" stays a category unless listed).
    """

    path: str | None = None
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    format: FileFormat = "auto"
    sep: str = ","
    header: bool = True
    columns: tuple[str, ...] | None = None
    na_values: tuple[str, ...] | None = None
    skipinitialspace: bool = False

    def __post_init__(self) -> None:
        p = "files"
        for key in ("path", "train", "valid", "test"):
            v = getattr(self, key)
            _check(
                v is None or (isinstance(v, str) and v),
                f"{p}.{key}",
                f"expected a file path, got {v!r}",
            )
        if self.path is not None:
            for key in ("train", "valid", "test"):
                _check(
                    getattr(self, key) is None,
                    f"{p}.{key}",
                    "give either 'path' (one file and a split rule) or 'train'/'test' files, not both",
                )
        else:
            _check(self.train is not None, f"{p}.train", "missing field (or give 'path')")
            _check(
                self.test is not None,
                f"{p}.test",
                "missing field (a test file is needed with 'train')",
            )
        _check(
            self.format in get_args(FileFormat),
            f"{p}.format",
            f"expected one of {list(get_args(FileFormat))}",
        )
        _check(
            isinstance(self.sep, str) and len(self.sep) >= 1,
            f"{p}.sep",
            "expected a separator string",
        )
        _check(isinstance(self.header, bool), f"{p}.header", "expected true or false")
        _check(
            isinstance(self.skipinitialspace, bool),
            f"{p}.skipinitialspace",
            "expected true or false",
        )
        if self.columns is not None:
            _check(
                not self.header,
                f"{p}.columns",
                "only for files without a header line (header: false)",
            )
            _check(
                len(set(self.columns)) == len(self.columns),
                f"{p}.columns",
                "duplicate column names",
            )
        else:
            _check(self.header, f"{p}.columns", "a file without a header needs its column names")

    @property
    def single(self) -> bool:
        return self.path is not None

    def resolved(self, base: Path) -> FileSpec:
        """The same spec with relative file paths made absolute against ``base``."""

        def res(v: str | None) -> str | None:
            return None if v is None else str((base / Path(v).expanduser()).resolve())

        return FileSpec(
            path=res(self.path),
            train=res(self.train),
            valid=res(self.valid),
            test=res(self.test),
            format=self.format,
            sep=self.sep,
            header=self.header,
            columns=self.columns,
            na_values=self.na_values,
            skipinitialspace=self.skipinitialspace,
        )

    @classmethod
    def from_dict(cls, data: Any, path: str = "files") -> FileSpec:
        if isinstance(data, str):  # shorthand: files: data.csv
            return cls(path=data)
        data = _mapping(data, path)
        _reject_unknown(data, cls, path)
        kw = dict(data)
        if kw.get("columns") is not None:
            kw["columns"] = _str_list(kw["columns"], f"{path}.columns")
        if kw.get("na_values") is not None:
            kw["na_values"] = tuple(str(v) for v in _scalars(kw["na_values"], f"{path}.na_values"))
        return cls(**kw)


@dataclass(frozen=True)
class SplitSpec:
    """How rows become train / validation / test.

    With one file, ``valid`` and ``test`` are fractions of its rows. With train and test
    files but no validation file, ``valid`` is the fraction of ``valid_from`` that becomes
    validation (the Census-Income protocol: half of the test file). ``stratify`` keeps each
    binary task's positive rate (within its sample space) equal across the parts, which is
    what keeps rare positives in every part. Without ``seed`` the caller's seed is used
    (``load_dataset(spec, seed=...)``), so one spec serves several seeded repetitions.
    """

    valid: float = 0.1
    test: float = 0.1
    valid_from: SplitSource = "train"
    seed: int | None = None
    stratify: bool = True

    def __post_init__(self) -> None:
        p = "split"
        for key in ("valid", "test"):
            v = getattr(self, key)
            _check(
                _is_num(v) and 0.0 <= v < 1.0,
                f"{p}.{key}",
                f"expected a fraction in [0, 1), got {v!r}",
            )
        _check(self.valid + self.test < 1.0, p, "valid + test must leave some rows for training")
        _check(
            self.valid_from in get_args(SplitSource),
            f"{p}.valid_from",
            f"unknown value {self.valid_from!r}; expected one of {list(get_args(SplitSource))}",
        )
        _check(
            self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
            f"{p}.seed",
            "expected an integer",
        )
        _check(isinstance(self.stratify, bool), f"{p}.stratify", "expected true or false")

    @classmethod
    def from_dict(cls, data: Any, path: str = "split") -> SplitSpec:
        data = _mapping(data, path)
        _reject_unknown(data, cls, path)
        return cls(**data)


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns are inputs, and how categorical values are encoded.

    ``auto`` takes every remaining column (not a label, a mask column or excluded) of the
    matching dtype: numbers are numeric, anything else categorical. Listing the columns is
    the safer choice for integer codes (ids, zip codes) that are really categories.

    ``min_frequency`` (default 2): rarer training values share the out-of-vocabulary code 0,
    whose embedding row is then trained on them (unseen validation/test values use it); 1
    gives every training value its own code and leaves the OOV row untrained.
    ``max_categories``: keep only that many values per column (the most frequent).
    ``hash_buckets: {column: N}``: the column is categorical and hashed into N buckets
    (code ``1 + stablehash(value) mod N``, 0 for missing) instead of counted: for ids with
    too many values to count or embed.
    """

    numeric: tuple[str, ...] | str = AUTO
    categorical: tuple[str, ...] | str = AUTO
    exclude: tuple[str, ...] = ()
    min_frequency: int = DEFAULT_MIN_FREQUENCY
    missing_indicator: bool = True
    max_categories: int | None = None
    hash_buckets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = "features"
        _check(
            isinstance(self.min_frequency, int)
            and not isinstance(self.min_frequency, bool)
            and self.min_frequency >= 1,
            f"{p}.min_frequency",
            f"expected an integer >= 1, got {self.min_frequency!r}",
        )
        _check(
            self.max_categories is None
            or (
                isinstance(self.max_categories, int)
                and not isinstance(self.max_categories, bool)
                and self.max_categories >= 1
            ),
            f"{p}.max_categories",
            f"expected an integer >= 1, got {self.max_categories!r}",
        )
        _check(
            isinstance(self.missing_indicator, bool),
            f"{p}.missing_indicator",
            "expected true or false",
        )
        _check(
            isinstance(self.hash_buckets, Mapping),
            f"{p}.hash_buckets",
            f"expected a mapping column: buckets, got {self.hash_buckets!r}",
        )
        for col, n in self.hash_buckets.items():
            _check(
                isinstance(col, str) and col != "",
                f"{p}.hash_buckets",
                f"expected a column name, got {col!r}",
            )
            _check(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_BUCKETS,
                f"{p}.hash_buckets.{col}",
                f"expected a number of buckets in [1, {_MAX_BUCKETS}], got {n!r}",
            )
            _check(
                self.numeric == AUTO or col not in self.numeric,
                f"{p}.hash_buckets.{col}",
                "the column is listed in features.numeric; a hashed column is categorical",
            )
            _check(
                self.categorical == AUTO or col in self.categorical,
                f"{p}.hash_buckets.{col}",
                "not in features.categorical (list it there too)",
            )
            _check(col not in self.exclude, f"{p}.hash_buckets.{col}", "the column is in features.exclude")
        for key in ("numeric", "categorical"):
            cols = getattr(self, key)
            if cols == AUTO:
                continue
            seen: set[str] = set()
            for i, c in enumerate(cols):
                _check(c not in seen, f"{p}.{key}[{i}]", f"column {c!r} is listed twice")
                seen.add(c)
        if self.numeric != AUTO and self.categorical != AUTO:
            both = set(self.numeric) & set(self.categorical)
            _check(not both, f"{p}.categorical", f"column(s) {sorted(both)} are also listed as numeric")

    @classmethod
    def from_dict(cls, data: Any, path: str = "features") -> FeatureSpec:
        data = _mapping(data, path)
        _reject_unknown(data, cls, path)
        kw = dict(data)
        for key in ("numeric", "categorical"):
            if key in kw:
                kw[key] = _str_list(kw[key], f"{path}.{key}", allow_auto=True)
        if "exclude" in kw:
            kw["exclude"] = _str_list(kw["exclude"], f"{path}.exclude")
        if kw.get("hash_buckets") is not None:
            kw["hash_buckets"] = dict(_mapping(kw["hash_buckets"], f"{path}.hash_buckets"))
        else:
            kw.pop("hash_buckets", None)
        return cls(**kw)


@dataclass(frozen=True)
class MaskSpec:
    """The task's sample space: rows where ``column`` is in ``values``, or above ``threshold``,
    or (with neither) non-zero. The PLE paper's example: conversion only where click = 1."""

    column: str
    values: tuple[Scalar, ...] | None = None
    threshold: float | None = None

    def validate(self, path: str) -> None:
        _check(
            isinstance(self.column, str) and self.column != "",
            f"{path}.column",
            "expected a column name",
        )
        _check(
            self.values is None or self.threshold is None,
            f"{path}.threshold",
            "give 'values' or 'threshold', not both",
        )
        _check(
            self.threshold is None or _is_num(self.threshold),
            f"{path}.threshold",
            "expected a number",
        )

    @classmethod
    def from_dict(cls, data: Any, path: str) -> MaskSpec:
        if isinstance(data, str):  # shorthand: mask: click
            return cls(column=data)
        data = _mapping(data, path)
        _reject_unknown(data, cls, path)
        kw = dict(data)
        _require(kw, "column", path)
        if kw.get("values") is not None:
            kw["values"] = _scalars(kw["values"], f"{path}.values")
        return cls(**kw)


@dataclass(frozen=True)
class TaskDef:
    """One task: its label column, kind and optional label transform and sample-space mask.

    Binary labels are 0/1 (or booleans) unless ``positive`` lists the values that count as 1
    (``negative``, when also given, makes any other value an error) or ``threshold`` makes
    the label ``value > threshold``. A multiclass task's classes are the training values
    unless ``classes`` lists them. Rows whose label is missing are outside the sample space.
    A regression label is standardised on the training rows unless ``standardize`` is
    false (only for regression tasks); predictions and metrics stay in the label's units.

    ``mask`` holds the conditions (AND-ed) that define the task's sample space; in YAML it is
    a column name, a ``{column, values | threshold}`` mapping or a list of them, and
    ``where: {click: 1}`` is shorthand for ``mask: {column: click, values: [1]}``.

    ``weight`` names a column of row weights for this task (a survey weight, an exposure):
    read as numbers, they must be finite and >= 0 on every row of the task's sample space
    (rows outside it are never read), with a positive sum in every split. The loss is then
    ``sum_i w_i loss_i / sum_i w_i`` over the sample space and each validation/test metric
    is reported twice, plain and ``<metric>_weighted``. The column is never a feature.
    """

    name: str
    label: str
    kind: TaskKind
    positive: tuple[Scalar, ...] | None = None
    negative: tuple[Scalar, ...] | None = None
    threshold: float | None = None
    classes: tuple[Scalar, ...] | None = None
    mask: tuple[MaskSpec, ...] = ()
    standardize: bool | None = None  # None: the kind's default (regression: true)
    weight: str | None = None  # column of row weights; None: every row weighs 1

    def validate(self, path: str) -> None:
        _check(
            isinstance(self.name, str) and self.name != "",
            f"{path}.name",
            "expected a non-empty name",
        )
        _check(
            isinstance(self.label, str) and self.label != "",
            f"{path}.label",
            "expected a column name",
        )
        kinds = list(get_args(TaskKind))
        _check(
            self.kind in kinds,
            f"{path}.kind",
            f"unknown value {self.kind!r}; expected one of {kinds}",
        )
        if self.kind != "binary":
            for key in ("positive", "negative", "threshold"):
                _check(getattr(self, key) is None, f"{path}.{key}", "only for binary tasks")
        if self.kind != "multiclass":
            _check(self.classes is None, f"{path}.classes", "only for multiclass tasks")
        _check(
            self.standardize is None or isinstance(self.standardize, bool),
            f"{path}.standardize",
            f"expected true or false, got {self.standardize!r}",
        )
        if self.kind != "regression":
            _check(self.standardize is None, f"{path}.standardize", "only for regression tasks")
        _check(
            self.positive is None or self.threshold is None,
            f"{path}.threshold",
            "give 'positive' (a value set) or 'threshold', not both",
        )
        _check(
            self.negative is None or self.positive is not None,
            f"{path}.negative",
            "needs 'positive' too",
        )
        _check(
            self.threshold is None or _is_num(self.threshold),
            f"{path}.threshold",
            "expected a number",
        )
        if self.positive is not None and self.negative is not None:
            both = {str(v) for v in self.positive} & {str(v) for v in self.negative}
            _check(not both, f"{path}.negative", f"value(s) {sorted(both)} are also positive")
        if self.classes is not None:
            _check(
                len(self.classes) >= 2,
                f"{path}.classes",
                "a multiclass task needs at least 2 classes",
            )
        _check(
            self.weight is None or (isinstance(self.weight, str) and self.weight != ""),
            f"{path}.weight",
            f"expected a column name, got {self.weight!r}",
        )
        _check(
            self.weight != self.label,
            f"{path}.weight",
            f"column {self.weight!r} is the task's label; a weight column holds row weights",
        )
        for i, m in enumerate(self.mask):
            m.validate(f"{path}.mask[{i}]")

    @property
    def standardized(self) -> bool:
        """Whether the trainer sees this task's label standardised (regression by default)."""
        return self.kind == "regression" and self.standardize is not False

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns this task reads (label, the mask columns, then the weight column)."""
        out = [self.label]
        for c in (*(m.column for m in self.mask), *((self.weight,) if self.weight else ())):
            if c not in out:
                out.append(c)
        return tuple(out)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> TaskDef:
        data = _mapping(data, path)
        _reject_unknown({k: v for k, v in data.items() if k != "where"}, cls, path)
        kw = dict(data)
        for key in ("name", "label", "kind"):
            _require(kw, key, path)
        for key in ("positive", "negative", "classes"):
            if kw.get(key) is not None:
                kw[key] = _scalars(kw[key], f"{path}.{key}")
        conditions: list[MaskSpec] = []
        raw = kw.pop("mask", None)
        if raw is not None:
            items = raw if isinstance(raw, list) else [raw]  # [] (as to_dict writes): no mask
            for i, m in enumerate(items):
                conditions.append(MaskSpec.from_dict(m, f"{path}.mask" if raw is m else f"{path}.mask[{i}]"))
        where = kw.pop("where", None)
        if where is not None:
            where = _mapping(where, f"{path}.where")
            _check(len(where) > 0, f"{path}.where", "expected at least one 'column: value(s)' pair")
            for col, vals in where.items():
                _check(
                    isinstance(col, str) and col != "",
                    f"{path}.where",
                    f"expected a column name, got {col!r}",
                )
                conditions.append(MaskSpec(column=col, values=_scalars(vals, f"{path}.where.{col}")))
        kw["mask"] = tuple(conditions)
        return cls(**kw)  # validated by DatasetSpec, which knows the task's index


@dataclass(frozen=True)
class DatasetSpec:
    """A whole user dataset: files, split rule, features and tasks.

    File paths in a spec file are relative to the spec's folder; :meth:`load` makes them
    absolute so the spec means the same thing from any working directory. ``cache: true``
    keeps the encoded splits in the user cache, keyed by spec, seed and the data files'
    sizes and times, so later loads skip reading and encoding (:mod:`mtlsearch.data._cache`).

    ``stream: true`` reads every split in record batches instead of holding it in memory
    (:mod:`mtlsearch.data._streamsplit`): it needs ``files.train``, ``files.valid`` and
    ``files.test`` (files, folders of shards or globs), since a random split of one table
    cannot stream. ``shuffle_buffer`` (rows, default 262144) bounds the training shuffle.
    """

    name: str
    files: FileSpec
    tasks: tuple[TaskDef, ...]
    features: FeatureSpec = field(default_factory=FeatureSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    cache: bool = False  # keep the encoded splits in the user cache (mtlsearch.data._cache)
    stream: bool = False  # read the splits in record batches (mtlsearch.data._streamsplit)
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "name", "expected a non-empty name")
        _check(isinstance(self.cache, bool), "cache", f"expected true or false, got {self.cache!r}")
        _check(isinstance(self.stream, bool), "stream", f"expected true or false, got {self.stream!r}")
        _check(
            isinstance(self.shuffle_buffer, int) and not isinstance(self.shuffle_buffer, bool)
            and self.shuffle_buffer >= 1,
            "shuffle_buffer",
            f"expected a number of rows >= 1, got {self.shuffle_buffer!r}",
        )  # fmt: skip
        if self.stream:
            _check(
                not self.files.single and self.files.valid is not None,
                "stream",
                "needs files.train, files.valid and files.test (a random split of one file cannot stream)",
            )
            _check(not self.cache, "cache", "not with stream: true (streamed splits are encoded per batch)")
        else:
            _check(
                self.shuffle_buffer == DEFAULT_SHUFFLE_BUFFER,
                "shuffle_buffer",
                "only with stream: true (an in-memory split is shuffled whole every epoch)",
            )
        _check(len(self.tasks) >= 1, "tasks", "needs at least one task")
        for i, t in enumerate(self.tasks):
            t.validate(f"tasks[{i}]")
        names = [t.name for t in self.tasks]
        for i, n in enumerate(names):
            _check(names.index(n) == i, f"tasks[{i}].name", f"duplicate task name {n!r}")
        split, files = self.split, self.files
        carved = ("valid", "test") if files.single else ("valid",) if files.valid is None else ()
        for key in carved:
            _check(
                getattr(split, key) > 0,
                f"split.{key}",
                f"must be above 0 (got {getattr(split, key)!r}): "
                + (
                    "the validation rows pick the best epoch"
                    if key == "valid"
                    else "the test rows measure the trained model"
                )
                + (f"; with one file both parts come from {files.path}" if files.single else ""),
            )
        labels = {t.label: t.name for t in self.tasks}
        weights = {t.weight: t.name for t in self.tasks if t.weight is not None}
        for i, t in enumerate(self.tasks):
            _check(
                t.weight not in labels,
                f"tasks[{i}].weight",
                f"column {t.weight!r} is the label of task {labels.get(t.weight)!r}",
            )
        for c in self.features.hash_buckets:
            _check(
                c not in labels and c not in weights,
                f"features.hash_buckets.{c}",
                "the column is a task's label or weight column and cannot be a feature",
            )
        for key in ("numeric", "categorical"):
            cols = getattr(self.features, key)
            if cols == AUTO:
                continue
            for c in cols:
                _check(
                    c not in labels,
                    f"features.{key}",
                    f"column {c!r} is the label of task {labels.get(c)!r} and cannot be a feature",
                )
                _check(
                    c not in weights,
                    f"features.{key}",
                    f"column {c!r} is the weight column of task {weights.get(c)!r} and cannot be a feature",
                )

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Label, mask and weight columns: never features."""
        out: list[str] = []
        for t in self.tasks:
            out.extend(c for c in t.columns if c not in out)
        return tuple(out)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | Path | None = None) -> DatasetSpec:
        """Build from plain data (as read from YAML); unknown keys and missing fields are errors.

        With ``base_dir``, relative file paths are resolved against it.
        """
        data = _mapping(data, "spec")
        _reject_unknown(data, cls, "")
        files = FileSpec.from_dict(_require(data, "files", ""))
        if base_dir is not None:
            files = files.resolved(Path(base_dir))
        tasks_raw = _require(data, "tasks", "")
        _check(
            isinstance(tasks_raw, list),
            "tasks",
            f"expected a list of tasks, got {type(tasks_raw).__name__}",
        )
        return cls(
            name=str(data.get("name", "dataset")),
            files=files,
            tasks=tuple(TaskDef.from_dict(t, f"tasks[{i}]") for i, t in enumerate(tasks_raw)),
            features=FeatureSpec.from_dict(data.get("features", {})),
            split=SplitSpec.from_dict(data.get("split", {})),
            cache=data.get("cache", False),
            stream=data.get("stream", False),
            shuffle_buffer=data.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER),
        )

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> DatasetSpec:
        """Read a spec file; every error names the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such spec file")
        _, data = read_yaml_file(path, "dataset spec")
        if data is None:
            raise UserError(f"{path}: the spec file is empty")
        if isinstance(data, Mapping) and set(data) == {"data"}:  # a 'data:' section
            data = data["data"]
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except (SpecError, TypeError) as exc:
            raise UserError(f"{path}: {exc}") from None


__all__ = [
    "AUTO",
    "DatasetSpec",
    "FeatureSpec",
    "FileSpec",
    "MaskSpec",
    "SpecError",
    "SplitSpec",
    "TaskDef",
]
