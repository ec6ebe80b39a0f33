"""Preprocessing fitted in one streaming pass over record batches, never the whole table.

:func:`iter_frames` reads a table path (one file, a folder of shards, a glob; see
:mod:`mtlsearch.data._io`) batch by batch: Parquet through ``pyarrow.dataset`` (one fragment
per file, so an error names the file; every file read with the set's unified schema, see
:func:`mtlsearch.data._io.check_parquet_set`), CSV through pandas' chunked reader with the spec's
reading options (pyarrow's CSV reader has no ``skipinitialspace`` and infers types and
missing markers differently, so the in-memory and streaming paths would parse differently).

:func:`fit_frames` accumulates, over the batches, what :meth:`Preprocessor.fit` computes
on a whole frame: category counts (then ``min_frequency`` and the ``max_categories`` top-k),
numeric count/mean/M2 and missing count (Chan et al.'s pairwise update, float64), the
regression labels' mean/std in their sample space and the multiclass labels' classes, plus
label statistics per task (:class:`TaskStats`). Fitting on the same rows gives the same
preprocessor as the in-memory path: vocabularies and classes exactly, means and standard
deviations to float rounding (relative 1e-12 on census-income). Memory: one batch plus a
count per distinct value of each counted categorical column (hash the columns whose values
are too many to count: ``hash_buckets``).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtlsearch._errors import UserError
from mtlsearch.data._io import (
    check_parquet_set,
    check_same_columns,
    csv_options,
    data_files,
    first_line,
    parquet_read_schema,
    read_one_file,
    require_columns,
    table_format,
)
from mtlsearch.data._preprocess import (
    LABEL_ENCODERS,
    MISSING,
    CategoricalEncoder,
    HashedEncoder,
    NumericScaler,
    Preprocessor,
    TaskEncoder,
    category_keys,
    mask_rows,
    sorted_classes,
    to_numeric,
    value_keys,
    vocab_from_counts,
)
from mtlsearch.data._spec import AUTO, DatasetSpec, FileSpec, TaskDef

log = logging.getLogger(__name__)

#: Rows per record batch.
BATCH_ROWS = 65_536
#: Batches of category counts held before they are merged into the running totals.
_MERGE_EVERY = 16


# ---- reading batches ---------------------------------------------------------------------
def iter_frames(
    path: str | Path,
    files: FileSpec | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[tuple[pd.DataFrame, str]]:
    """``(frame, file)`` per record batch of the table at ``path``, in file and row order;
    only ``columns`` when given. A frame's index numbers its rows within its file (so a
    message's "data row" is the file's). Errors (one line, naming the file): see
    :func:`mtlsearch.data._io.data_files`, a shard whose columns differ from the first
    file's or whose types do not unify with the others', a corrupt or truncated file, a file
    without the named columns."""
    files = files or FileSpec(path=str(path))
    paths = data_files(path, files.format)
    if table_format(paths[0], files.format) == "parquet":
        yield from _parquet_frames(paths, columns, batch_rows)
    else:
        yield from _csv_frames(paths, files, columns, batch_rows)


def _parquet_frames(
    paths: list[Path], columns: Sequence[str] | None, batch_rows: int
) -> Iterator[tuple[pd.DataFrame, str]]:
    import pyarrow.dataset as pds

    unified = check_parquet_set(paths)  # every footer readable, one schema (names, unified types)
    dataset = pds.dataset([str(p) for p in paths], format="parquet", schema=unified)
    if columns is not None:
        require_columns(
            pd.DataFrame(columns=dataset.schema.names), columns, str(paths[0]), "named in the spec"
        )
    for fragment in dataset.get_fragments():
        source, start, empty = fragment.path, 0, True
        try:
            for batch in fragment.to_batches(schema=parquet_read_schema(unified, fragment.physical_schema),
                                             columns=list(columns) if columns is not None else None,
                                             batch_size=batch_rows):  # fmt: skip
                if batch.num_rows == 0:
                    continue
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                empty = False
                yield frame, source
        except UserError:
            raise
        except Exception as exc:  # pyarrow's errors: a corrupt page, a bad compression
            if type(exc).__module__.startswith("pyarrow") or isinstance(exc, OSError | ValueError):
                raise UserError(f"{source}: cannot read as PARQUET ({first_line(exc)})") from None
            raise
        if empty:
            raise UserError(f"{source}: no data rows")


def _csv_frames(
    paths: list[Path], files: FileSpec, columns: Sequence[str] | None, batch_rows: int
) -> Iterator[tuple[pd.DataFrame, str]]:
    first_cols: list[str] | None = None
    for path in paths:
        names = _csv_columns(path, files)
        if first_cols is None:
            first_cols = names
            if columns is not None:
                require_columns(pd.DataFrame(columns=names), columns, str(path), "named in the spec")
        else:
            check_same_columns(paths[0], first_cols, path, names)
        usecols = list(columns) if columns is not None and files.header else None
        try:
            reader = pd.read_csv(path, **csv_options(files), usecols=usecols, chunksize=batch_rows)
            with reader:
                for frame in reader:
                    if not files.header:
                        if frame.shape[1] != len(names):
                            raise UserError(
                                f"{path}: has {frame.shape[1]} fields per row but files.columns names "
                                f"{len(names)}"
                            )
                        frame.columns = names
                        if columns is not None:
                            frame = frame[list(columns)]
                    else:
                        frame.columns = [str(c) for c in frame.columns]
                    yield frame, str(path)
        except (ValueError, OSError, EOFError, UnicodeDecodeError, zlib.error, pd.errors.ParserError) as exc:
            raise UserError(f"{path}: cannot read as CSV ({first_line(exc)})") from None


def _csv_columns(path: Path, files: FileSpec) -> list[str]:
    """A CSV file's column names from its first lines (the in-memory reader's checks: no
    such or empty file, a name given twice, a field count other than ``files.columns``)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    head = read_one_file(path, files, nrows=2)
    return [str(c) for c in head.columns]


# ---- accumulators ------------------------------------------------------------------------
@dataclass
class Moments:
    """Count, mean and M2 (sum of squared deviations) of the present values, and the count
    of missing ones; merged batch by batch (Chan, Golub and LeVeque 1979), float64."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    missing: int = 0

    def add(self, values: np.ndarray) -> None:
        present = values[~np.isnan(values)]
        self.missing += values.size - present.size
        if present.size == 0:
            return
        nb = present.size
        mb = float(present.mean())
        m2b = float(((present - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0), as numpy's ``std``."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


class Counter:
    """Counts of category keys over batches (a pandas Series of int64, merged in groups)."""

    def __init__(self) -> None:
        self._total = pd.Series(dtype="int64")
        self._pending: list[pd.Series] = []

    def add(self, keys: pd.Series) -> None:
        self._pending.append(keys.value_counts(sort=False))
        if len(self._pending) >= _MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            parts = [self._total, *self._pending] if len(self._total) else self._pending
            both = pd.concat(parts)
            self._total = both.groupby(level=0, sort=False).sum().astype("int64")
            self._pending = []

    @property
    def counts(self) -> pd.Series:
        self._merge()
        return self._total


@dataclass
class TaskStats:
    """A task's labels over the streamed rows: ``rows`` in its sample space, ``positives``
    (binary), ``moments`` of the label (regression: raw units), ``classes`` with their
    counts (multiclass)."""

    rows: int = 0
    positives: int = 0
    moments: Moments = field(default_factory=Moments)
    classes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamFit:
    """The fitted preprocessor, the rows read, per-task label statistics and the files."""

    preprocessor: Preprocessor
    rows: int
    tasks: dict[str, TaskStats]
    files: tuple[str, ...]


# ---- fitting -----------------------------------------------------------------------------
def fit_frames(
    frames: Iterable[tuple[pd.DataFrame, str]],
    numeric_cols: Sequence[str],
    categorical_cols: Sequence[str],
    tasks: Sequence[TaskDef] = (),
    *,
    min_frequency: int = 1,
    missing_indicator: bool = True,
    hash_buckets: Mapping[str, int] | None = None,
    max_categories: int | None = None,
    source: str = "training rows",
) -> StreamFit:
    """:meth:`Preprocessor.fit` over batches: the same arguments, the same result on the
    same rows (module docstring). Errors as the in-memory fit (naming the batch's file), and
    a file in which a task's label column is all missing on the rows inside the task's mask
    (a file with none of the task's rows, e.g. no clicks for a conversion task masked by
    ``click == 1``, is accepted)."""
    hashed = dict(hash_buckets or {})
    counted = [c for c in categorical_cols if c not in hashed]
    moments = {c: Moments() for c in numeric_cols}
    counters = {c: Counter() for c in counted}
    stats = {t.name: TaskStats() for t in tasks}
    # per task, in the current file: [rows inside the task's mask, of them with a label]
    label_seen: dict[str, list[int]] = {}
    rows, sources = 0, []
    for frame, src in frames:
        if not sources or sources[-1] != src:
            _check_labels_seen(label_seen, sources[-1] if sources else None, tasks)
            sources.append(src)
            require_columns(frame, [*numeric_cols, *categorical_cols], src, "a feature")
            label_seen = {t.name: [0, 0] for t in tasks}
        rows += len(frame)
        for c in numeric_cols:
            moments[c].add(to_numeric(frame[c], src, f"numeric feature {c!r}"))
        for c in counted:
            counters[c].add(category_keys(frame[c]))
        for t in tasks:
            in_mask, labelled = _add_labels(t, frame, src, stats[t.name])
            label_seen[t.name][0] += in_mask
            label_seen[t.name][1] += labelled
    _check_labels_seen(label_seen, sources[-1] if sources else None, tasks)
    if rows == 0:
        raise UserError(f"{source}: no data rows")
    numeric = []
    for c in numeric_cols:
        m = moments[c]
        if m.n == 0:
            raise UserError(f"{source}: numeric feature {c!r} is all missing in the training rows")
        std = m.std
        numeric.append(
            NumericScaler(
                column=c,
                mean=m.mean,
                std=std if std > 0 and np.isfinite(std) else 1.0,
                indicator=bool(missing_indicator and m.missing > 0),
            )
        )
    categorical = tuple(
        HashedEncoder(c, hashed[c])
        if c in hashed
        else CategoricalEncoder(c, vocab_from_counts(counters[c].counts, min_frequency, max_categories))
        for c in categorical_cols
    )
    pre = Preprocessor(
        numeric=tuple(numeric),
        categorical=categorical,
        tasks=tuple(_task_encoder(t, stats[t.name], source) for t in tasks),
    )
    return StreamFit(pre, rows, stats, tuple(sources))


def _check_labels_seen(seen: dict[str, list[int]], src: str | None, tasks: Sequence[TaskDef]) -> None:
    """Refuse a file that has rows inside a task's mask but no label on any of them."""
    for t in tasks:
        in_mask, labelled = seen.get(t.name, (0, 0))
        if src is not None and in_mask > 0 and labelled == 0:
            raise UserError(f"{src}: label column {t.label!r} of task {t.name!r} is all missing in this file")


def _add_labels(task: TaskDef, frame: pd.DataFrame, source: str, st: TaskStats) -> tuple[int, int]:
    """Add a batch's labels to ``st``; the batch's rows inside the task's mask and, of
    them, those with a label."""
    col = frame[task.label]
    in_mask = mask_rows(task.mask, frame, source)
    n_mask = int(in_mask.sum())
    if n_mask == 0 or not col.notna().any():
        return n_mask, 0
    if task.kind == "multiclass":
        keys = category_keys(col)
        present = (keys != MISSING).to_numpy() & in_mask
        for k, n in keys[present].value_counts(sort=False).items():
            st.classes[str(k)] = st.classes.get(str(k), 0) + int(n)
        st.rows += int(present.sum())
        return n_mask, int(present.sum())
    y, present = LABEL_ENCODERS[task.kind](task, None, col, source)
    m = present & in_mask
    st.rows += int(m.sum())
    if task.kind == "binary":
        st.positives += int(y[m].sum())
    else:
        st.moments.add(y[m].astype(np.float64))
    return n_mask, int(m.sum())


def _task_encoder(task: TaskDef, st: TaskStats, source: str) -> TaskEncoder:
    if task.standardized:
        if st.moments.n == 0:
            return TaskEncoder(task)
        std = st.moments.std
        return TaskEncoder(task, mean=st.moments.mean, std=std if std > 0 and np.isfinite(std) else 1.0)
    if task.kind != "multiclass":
        return TaskEncoder(task)
    if task.classes is not None:
        classes = tuple(value_keys(task.classes))
    else:
        classes = sorted_classes(pd.Series(list(st.classes), dtype=object))
    if len(classes) < 2:
        raise UserError(
            f"{source}: multiclass task {task.name!r} has only {len(classes)} class(es) "
            f"in column {task.label!r}"
        )
    return TaskEncoder(task, classes)


def fit_streaming(
    spec: DatasetSpec | str | Path, *, split: str = "train", batch_rows: int = BATCH_ROWS
) -> StreamFit:
    """Fit a spec's preprocessing in one streaming pass over the rows of ``files.train``
    (``split="train"``; or ``valid``/``test``, for statistics), or of ``files.path`` when the
    spec has one table: then every row of it, since its random split is drawn in memory.
    Features under ``auto`` are resolved from the first batch's columns and types."""
    from mtlsearch.data._tables import resolve_features

    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.load(spec)
    files = spec.files
    path = files.path if files.single else getattr(files, split)
    if path is None:
        raise UserError(f"{spec.name}: the spec has no files.{split}")
    fs = spec.features
    needed: list[str] | None = None
    if fs.numeric != AUTO and fs.categorical != AUTO:
        needed = list(dict.fromkeys([*fs.numeric, *fs.categorical, *fs.hash_buckets, *spec.label_columns]))
    frames = iter_frames(path, files, needed, batch_rows)
    first = next(frames, None)
    if first is None:
        raise UserError(f"{path}: no data rows")
    require_columns(first[0], spec.label_columns, first[1], "named in the spec")
    numeric, categorical = resolve_features(first[0], spec, first[1])

    def chained() -> Iterator[tuple[pd.DataFrame, str]]:
        yield first
        yield from frames

    result = fit_frames(
        chained(),
        numeric,
        categorical,
        spec.tasks,
        min_frequency=fs.min_frequency,
        missing_indicator=fs.missing_indicator,
        hash_buckets=fs.hash_buckets,
        max_categories=fs.max_categories,
        source=str(path),
    )
    log.info(
        "%s: fitted preprocessing on %d rows of %d file(s), streaming", path, result.rows, len(result.files)
    )
    return result


__all__ = [
    "BATCH_ROWS",
    "Counter",
    "Moments",
    "StreamFit",
    "TaskStats",
    "fit_frames",
    "fit_streaming",
    "iter_frames",
]
