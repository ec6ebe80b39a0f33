"""Streamed splits: a split read in record batches, encoded per batch, never held whole.

With ``stream: true`` in a dataset spec, :func:`load_streaming` fits the preprocessing in one
streaming pass over ``files.train`` (:func:`mtlsearch.data.stream.fit_streaming`) and returns
an :class:`~mtlsearch.data.MTLDataset` whose ``train``/``valid``/``test`` are
:class:`StreamSplit` objects. A :class:`StreamSplit` has the ``batches(batch_size, shuffle,
generator)`` protocol of :class:`~mtlsearch.data.TensorSplit`: each call reads the split's
files again (Parquet through ``pyarrow.dataset``, one fragment per row group; CSV through
pandas' chunked reader, with the spec's reading options), encodes each record batch with
the fitted :class:`~mtlsearch.data.Preprocessor` (vectorised, column by column) and yields
``TensorSplit`` batches of exactly ``batch_size`` rows (the last one may be shorter).

Shuffling (``shuffle=True``; the trainer's training batches): a seed is drawn from
``generator`` (a ``torch.Generator``: the same seed gives the same order, whatever
``PYTHONHASHSEED``); the order of the row groups (CSV: of the files) is permuted with it,
and the rows pass through a bounded shuffle buffer: rows gather until the buffer holds
``shuffle_buffer`` rows, the buffer is permuted, full batches are emitted from it until
half of it is left, and reading goes on. Memory: ``shuffle_buffer`` rows plus one record
batch (:data:`mtlsearch.data.stream.BATCH_ROWS` rows), encoded. When ``shuffle_buffer``
covers the whole split the split is read into the buffer in file order and permuted with
``torch.randperm(len(split), generator=generator)``: exactly what an in-memory
``TensorSplit`` does, so the batches, and so the trained model, are the in-memory ones.

Row selections without reading: :meth:`StreamSplit.take` with sorted row indices (the
split's positions, file order; ``--max-rows`` and the search's data-fraction fidelity, see
:mod:`mtlsearch.data._sample`) and :meth:`StreamSplit.row_range` (a contiguous range: each
DDP rank's share of a validation split) return a split that reads the same files and drops
the other rows of each record batch before encoding; a row group without a selected row is
not read. Slices are refused (a streamed split has no position to slice from).

Several processes (DDP, :mod:`mtlsearch.train.distributed`): :meth:`StreamSplit.rank_batches`
gives rank ``r`` of ``N`` its own part of every epoch. The epoch's seed is drawn from
``generator`` (the same on every rank), the row groups holding selected rows are permuted
with it, and the ``i``-th row group of that order goes to rank ``i % N``; each rank passes
its row groups through its own shuffle buffer (``shuffle_buffer`` rows per process, seeded
with ``(epoch seed, rank)``). The ranks' parts are disjoint and together the whole split.
Each rank needs at least one row group (:meth:`StreamSplit.check_world`).

Its ``labels``/``masks``/``weights`` (what the evaluator reads once) are collected on first
use in one pass: 9 bytes per row and task at most.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtlsearch._errors import UserError
from mtlsearch.data._io import (
    check_parquet_set,
    data_files,
    first_line,
    parquet_read_schema,
    require_columns,
    table_format,
)
from mtlsearch.data._preprocess import Preprocessor
from mtlsearch.data._spec import DEFAULT_SHUFFLE_BUFFER, DatasetSpec, FileSpec
from mtlsearch.data._tensors import MTLDataset, TensorSplit
from mtlsearch.data.stream import BATCH_ROWS, StreamFit, fit_streaming, iter_frames

log = logging.getLogger(__name__)

_SPLITS = ("train", "valid", "test")
_SPLIT_WORDS = {"train": "training", "valid": "validation", "test": "test"}


def cat_splits(parts: Sequence[TensorSplit]) -> TensorSplit:
    """The rows of ``parts`` one after the other (one copy per tensor)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return TensorSplit(
        numeric=torch.cat([p.numeric for p in parts]),
        categorical=torch.cat([p.categorical for p in parts]),
        labels={k: torch.cat([p.labels[k] for p in parts]) for k in first.labels},
        masks={k: torch.cat([p.masks[k] for p in parts]) for k in first.masks},
        weights={k: torch.cat([p.weights[k] for p in parts]) for k in first.weights},
    )


def rechunk(chunks: Iterator[TensorSplit], batch_size: int) -> Iterator[TensorSplit]:
    """Batches of exactly ``batch_size`` rows (the last may be shorter) from chunks of any size."""
    pending: list[TensorSplit] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held < batch_size:
            continue
        buf = cat_splits(pending)
        full = (len(buf) // batch_size) * batch_size
        for s in range(0, full, batch_size):
            yield buf.take(slice(s, s + batch_size))
        pending = [buf.take(slice(full, None))] if full < len(buf) else []
        held = len(buf) - full
    if held:
        yield cat_splits(pending)


class StreamSplit:
    """One split of a streamed dataset (module docstring): ``len()`` rows in the files at
    ``path``, encoded per record batch by ``preprocessor``; tensors as :class:`TensorSplit`'s.

    Errors (one line, naming the file; raised when the files are listed, or while reading):
    an empty folder or glob, a corrupt or truncated Parquet file, a shard whose columns differ
    from the first file's or whose types do not unify with the others' (the files are read
    with the set's unified schema), a file without a column the preprocessor reads.
    """

    def __init__(
        self,
        path: str,
        files: FileSpec,
        preprocessor: Preprocessor,
        columns: Sequence[str],
        *,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        read_rows: int = BATCH_ROWS,
    ) -> None:
        self.path = str(path)
        self.files = files
        self.preprocessor = preprocessor
        self.columns = list(dict.fromkeys(columns))
        self.shuffle_buffer = int(shuffle_buffer)
        self.read_rows = int(read_rows)
        self.paths = data_files(path, files.format)
        self.format = table_format(self.paths[0], files.format)
        self._transforms: tuple[Callable[[TensorSplit], TensorSplit], ...] = ()
        self._shared: dict[str, Any] = {}  # collected targets, shared by mapped copies
        # the row selection (take, row_range): sorted global row indices (file order), or a
        # global [lo, hi) span, or neither (every row)
        self._idx: np.ndarray | None = None
        self._span: tuple[int, int] | None = None
        self._unit_rows: list[int] | None = None  # rows per unit (CSV: counted when needed)
        if self.format == "parquet":
            self._rows, self._units, self._unit_rows = self._parquet_units()
        else:
            self._rows, self._units = -1, [(str(p), None) for p in self.paths]

    # ---- files -----------------------------------------------------------------------------
    def _parquet_units(self) -> tuple[int, list[tuple[str, int | None]], list[int]]:
        import pyarrow.parquet as pq

        schema = check_parquet_set(self.paths)  # every footer readable, one schema (unified types)
        require_columns(pd.DataFrame(columns=schema.names), self.columns, str(self.paths[0]), "a model input")
        rows, units, sizes = 0, [], []
        for p in self.paths:
            meta = pq.ParquetFile(p).metadata
            rows += meta.num_rows
            for g in range(meta.num_row_groups):
                if meta.row_group(g).num_rows:
                    units.append((str(p), g))
                    sizes.append(meta.row_group(g).num_rows)
        if rows == 0:
            raise UserError(f"{self.path}: no data rows")
        return rows, units, sizes

    # ---- the row selection -----------------------------------------------------------------
    def _sizes(self) -> list[int]:
        """Rows per unit (row group; CSV: file), in file order."""
        if self._unit_rows is None:  # CSV: counted once, reading one column
            col = self.columns[:1]
            self._unit_rows = [
                sum(len(f) for f, _ in iter_frames(p, self.files, col, self.read_rows))
                for p, _ in self._units
            ]
        return self._unit_rows

    def _starts(self) -> list[int]:
        """The global index (file order) of each unit's first row."""
        return [0, *np.cumsum(self._sizes()).tolist()][:-1]

    def _selected(self) -> bool:
        return self._idx is not None or self._span is not None

    def _kept(self, start: int, n: int) -> np.ndarray | None:
        """Positions (0-based, in ``[0, n)``) of the selected rows among the global rows
        ``[start, start + n)``; None: all of them."""
        if self._idx is not None:
            a, b = np.searchsorted(self._idx, [start, start + n])
            return None if b - a == n else self._idx[a:b] - start
        if self._span is not None:
            lo, hi = max(self._span[0], start), min(self._span[1], start + n)
            return None if (lo, hi) == (start, start + n) else np.arange(max(lo, start), max(hi, lo)) - start
        return None

    def _unit_counts(self) -> list[int]:
        """Selected rows per unit."""
        sizes = self._sizes()
        if not self._selected():
            return list(sizes)
        starts = self._starts()
        return [n if (k := self._kept(s, n)) is None else len(k) for s, n in zip(starts, sizes, strict=True)]

    def _live_units(self) -> list[int]:
        """The units (file order) that hold a selected row: the ones shuffling permutes."""
        if not self._selected():
            return list(range(len(self._units)))
        return [u for u, c in enumerate(self._unit_counts()) if c]

    def _positions(self, idx: np.ndarray) -> np.ndarray:
        """Global row indices of this split's positions ``idx``."""
        if self._idx is not None:
            return self._idx[idx]
        return idx + (self._span[0] if self._span is not None else 0)

    def _frames(self, order: Sequence[int] | None) -> Iterator[tuple[pd.DataFrame, str]]:
        """The frames of units ``order`` (None: every unit with a selected row, file order),
        with the selected rows only."""
        selected = self._selected()
        if order is None:
            order = self._live_units()
        starts = self._starts() if selected else None
        read = self._unit_reader()
        for i in order:
            offset = starts[i] if starts is not None else 0
            for frame, path in read(i):
                n = len(frame)
                keep = self._kept(offset, n) if selected else None
                offset += n
                if keep is not None:
                    if not len(keep):
                        continue
                    frame = frame.iloc[keep]
                yield frame, path

    def _unit_reader(self) -> Callable[[int], Iterator[tuple[pd.DataFrame, str]]]:
        """A function reading one unit's frames (one per pass: the Parquet set is checked and
        its fragments listed once)."""
        if self.format != "parquet":
            return lambda i: iter_frames(self._units[i][0], self.files, self.columns, self.read_rows)
        import pyarrow.dataset as pds

        unified = check_parquet_set(self.paths)  # again each pass: a shard replaced or truncated since
        dataset = pds.dataset([str(p) for p in self.paths], format="parquet", schema=unified)
        fragments = {str(Path(f.path)): f for f in dataset.get_fragments()}

        def read(i: int) -> Iterator[tuple[pd.DataFrame, str]]:
            path, group = self._units[i]
            try:
                fragment = fragments[str(Path(path))]
                piece = fragment.subset(row_group_ids=[group])
                target = parquet_read_schema(unified, fragment.physical_schema)
                for batch in piece.to_batches(schema=target, columns=self.columns, batch_size=self.read_rows):
                    if batch.num_rows:
                        yield batch.to_pandas(), path
            except UserError:
                raise
            except Exception as exc:  # pyarrow's errors: a corrupt page, a bad compression
                if type(exc).__module__.startswith("pyarrow") or isinstance(exc, OSError | ValueError):
                    raise UserError(f"{path}: cannot read as PARQUET ({first_line(exc)})") from None
                raise

        return read

    def _encoded(self, order: Sequence[int] | None = None) -> Iterator[TensorSplit]:
        for frame, source in self._frames(order):
            yield self.preprocessor.transform_split(frame, source)

    # ---- the TensorSplit protocol ----------------------------------------------------------
    def __len__(self) -> int:
        if self._idx is not None:
            return len(self._idx)
        if self._span is not None:
            return self._span[1] - self._span[0]
        if self._rows < 0:  # CSV: counted once, reading one column
            self._rows = sum(self._sizes())
        return self._rows

    @property
    def device(self) -> torch.device:
        """Where the batches end up (after :meth:`map`'s transforms): probed on an empty batch."""
        return self._apply(self._empty()).numeric.device

    def _empty(self) -> TensorSplit:
        pre = self.preprocessor
        return TensorSplit(
            numeric=torch.zeros(0, len(pre.numeric_feature_names)),
            categorical=torch.zeros(0, len(pre.categorical), dtype=torch.int64),
            labels={t.task.name: torch.zeros(0) for t in pre.tasks},
            masks={t.task.name: torch.zeros(0, dtype=torch.bool) for t in pre.tasks},
        )

    def _apply(self, batch: TensorSplit) -> TensorSplit:
        for fn in self._transforms:
            batch = fn(batch)
        return batch

    def map(self, fn: Callable[[TensorSplit], TensorSplit]) -> StreamSplit:
        """The same split with ``fn`` applied to every batch it yields (a device copy, label
        scaling); the collected targets are shared with ``self``."""
        out = copy.copy(self)
        out._transforms = (*self._transforms, fn)
        return out

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[TensorSplit]:
        """Batches of ``batch_size`` rows in file order, or shuffled (module docstring)."""
        if not shuffle:
            for b in rechunk(self._encoded(None), batch_size):
                yield self._apply(b)
            return
        if self.shuffle_buffer >= len(self):  # the in-memory order exactly
            whole = cat_splits(list(self._encoded(None)))
            for b in whole.batches(batch_size, shuffle=True, generator=generator):
                yield self._apply(b)
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        live = self._live_units()
        order = [live[int(i)] for i in rng.permutation(len(live))]
        yield from self._buffered(order, batch_size, rng)

    def _buffered(
        self, order: Sequence[int], batch_size: int, rng: np.random.Generator
    ) -> Iterator[TensorSplit]:
        """Units ``order`` through the bounded shuffle buffer (module docstring), in batches."""
        cap, keep = self.shuffle_buffer, self.shuffle_buffer // 2
        buf: TensorSplit | None = None
        for chunk in self._encoded(order):
            buf = chunk if buf is None else cat_splits([buf, chunk])
            if len(buf) < cap:
                continue
            buf = buf.take(torch.from_numpy(rng.permutation(len(buf))))
            out = ((len(buf) - keep) // batch_size) * batch_size
            for s in range(0, out, batch_size):
                yield self._apply(buf.take(slice(s, s + batch_size)))
            buf = buf.take(slice(out, None))
        if buf is not None and len(buf):
            buf = buf.take(torch.from_numpy(rng.permutation(len(buf))))
            for s in range(0, len(buf), batch_size):
                yield self._apply(buf.take(slice(s, s + batch_size)))

    # ---- several processes (DDP) -----------------------------------------------------------
    def check_world(self, world: int) -> None:
        """Raise a one-line :class:`UserError` when fewer than ``world`` row groups (CSV:
        files) hold selected rows: a rank would have nothing to read."""
        live = len(self._live_units())
        if live < world:
            unit = "row group" if self.format == "parquet" else "file"
            raise UserError(
                f"{self.path}: {live} {unit}{'s' * (live != 1)} with rows, fewer than the {world} "
                f"processes; each process reads whole {unit}s: write smaller row groups or more "
                "shards, or use fewer processes"
            )

    def rank_batches(
        self, batch_size: int, generator: torch.Generator, rank: int, world: int
    ) -> tuple[int, Iterator[TensorSplit]]:
        """Rank ``rank`` of ``world``'s part of one epoch (module docstring): the number of
        rows in it and its batches of ``batch_size`` rows (the last may be shorter). Draws
        one number from ``generator``, as a 1-process epoch does; every rank must call it
        with a generator in the same state."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        live = self._live_units()
        order = [live[int(i)] for i in np.random.default_rng(seed).permutation(len(live))]
        mine = order[rank::world]  # the i-th unit of the epoch's order goes to rank i % world
        counts = self._unit_counts()
        rows = sum(counts[u] for u in mine)
        return rows, self._buffered(mine, batch_size, np.random.default_rng([seed, rank]))

    # ---- row selections --------------------------------------------------------------------
    def _select(self, idx: np.ndarray | None, span: tuple[int, int] | None) -> StreamSplit:
        out = copy.copy(self)
        out._idx, out._span = idx, span
        out._shared = {}  # other rows: other targets
        return out

    def take(self, idx: Tensor | slice) -> StreamSplit:  # type: ignore[override]
        """The split reduced to the rows at positions ``idx`` (a sorted 1-D integer tensor of
        distinct positions in ``[0, len(self))``, file order), read by skipping the others."""
        if isinstance(idx, slice) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise UserError(
                f"{self.path}: a streamed split (stream: true) takes sorted row indices only, "
                "not a slice or a mask"
            )
        pos = idx.cpu().numpy().astype(np.int64)
        if len(pos) and (pos[0] < 0 or pos[-1] >= len(self) or bool((np.diff(pos) <= 0).any())):
            raise ValueError(f"{self.path}: row indices must be sorted, distinct and in [0, {len(self)})")
        return self._select(self._positions(pos), None)

    def row_range(self, lo: int, hi: int) -> StreamSplit:
        """The split's rows at positions ``[lo, hi)`` (file order): one DDP rank's share of a
        validation or test split."""
        lo, hi = max(0, lo), min(len(self), hi)
        hi = max(lo, hi)
        if self._idx is not None:
            return self._select(self._idx[lo:hi], None)
        base = self._span[0] if self._span is not None else 0
        return self._select(None, (base + lo, base + hi))

    def resident_bytes(self) -> int:
        """Bytes the split holds while training batches are drawn: the shuffle buffer plus one
        record batch, encoded (the whole split when the buffer covers it)."""
        rows = min(len(self), self.shuffle_buffer + self.read_rows)
        pre = self.preprocessor
        per_row = 4 * len(pre.numeric_feature_names) + 8 * len(pre.categorical)
        per_row += sum(4 + 1 + 4 * (t.task.weight is not None) for t in pre.tasks)
        return rows * per_row

    # ---- targets (collected once, for the evaluator) ----------------------------------------
    def targets(self) -> TensorSplit:
        """Labels, masks and row weights of every row in file order (features left out:
        ``numeric``/``categorical`` have 0 columns), after :meth:`map`'s transforms."""
        if "targets" not in self._shared:
            parts = [
                TensorSplit(
                    numeric=b.numeric[:, :0],
                    categorical=b.categorical[:, :0],
                    labels=b.labels,
                    masks=b.masks,
                    weights=b.weights,
                )
                for b in self._encoded(None)
            ]
            self._shared["targets"] = cat_splits(parts) if parts else self._empty()
        return self._apply(self._shared["targets"])

    @property
    def labels(self) -> Mapping[str, Tensor]:
        """Every task's labels (collected on first item access; ``in``/``keys`` read nothing)."""
        return _Targets(self, "labels", [t.task.name for t in self.preprocessor.tasks])

    @property
    def masks(self) -> Mapping[str, Tensor]:
        return _Targets(self, "masks", [t.task.name for t in self.preprocessor.tasks])

    @property
    def weights(self) -> Mapping[str, Tensor]:
        """The row weights of the tasks with a ``weight`` column."""
        return _Targets(self, "weights", [t.task.name for t in self.preprocessor.tasks if t.task.weight])

    def __repr__(self) -> str:
        chosen = f", {len(self)} selected rows" if self._selected() else ""
        units = f"{len(self._units)} unit(s){chosen}"
        return f"StreamSplit({self.path!r}, {units}, shuffle_buffer={self.shuffle_buffer})"


class _Targets(Mapping[str, Tensor]):
    """A streamed split's labels, masks or weights by task: the keys are known without
    reading (so ``task in split.weights`` costs nothing), an item collects the targets."""

    def __init__(self, split: StreamSplit, part: str, keys: Sequence[str]) -> None:
        self._split, self._part, self._keys = split, part, tuple(keys)

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return getattr(self._split.targets(), self._part)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _check_train_stats(fit: StreamFit, spec: DatasetSpec, source: str) -> None:
    """The training rows' sample spaces, from the fit's label statistics (no second pass)."""
    for task in spec.tasks:
        st = fit.tasks[task.name]
        if st.rows == 0:
            raise UserError(
                f"{source}: task {task.name!r} has no rows in its sample space in the training rows"
            )
        if task.kind == "binary" and st.positives in (0, st.rows):
            missing = "positive" if st.positives == 0 else "negative"
            raise UserError(
                f"{source}: task {task.name!r} has no {missing} examples in the training rows "
                f"({st.rows} rows in its sample space)"
            )


def load_streaming(spec: DatasetSpec, *, seed: int = 0) -> MTLDataset:
    """A ``stream: true`` spec as an :class:`MTLDataset` of :class:`StreamSplit` objects: one
    streaming pass fits the preprocessing on ``files.train``, one more collects the
    validation and test labels (checked as the in-memory loader checks them); the training
    rows are read again by every epoch. ``seed`` is recorded only (no random split here)."""
    from mtlsearch.data._tables import check_sample_spaces

    files = spec.files
    paths = {"train": files.train, "valid": files.valid, "test": files.test}
    fit = fit_streaming(spec, split="train")
    pre = fit.preprocessor
    assert files.train is not None
    _check_train_stats(fit, spec, files.train)
    columns = [*pre.input_columns, *spec.label_columns]
    splits = {
        k: StreamSplit(str(paths[k]), files, pre, columns, shuffle_buffer=spec.shuffle_buffer)
        for k in _SPLITS
    }
    encoders = {t.task.name: t for t in pre.tasks}
    for k in ("valid", "test"):
        check_sample_spaces(splits[k].targets(), spec.tasks, str(paths[k]), _SPLIT_WORDS[k], encoders)
    log.info(
        "%s: streaming %d train / %d valid / %d test rows, %d numeric + %d categorical inputs, "
        "shuffle buffer %d rows",
        spec.name, *(len(splits[k]) for k in _SPLITS), len(pre.numeric_feature_names), len(pre.categorical),
        spec.shuffle_buffer,
    )  # fmt: skip
    return MTLDataset(
        name=spec.name,
        tasks=pre.task_specs,
        numeric_features=pre.numeric_feature_names,
        categorical_features=pre.categorical_cardinalities,
        train=splits["train"],  # type: ignore[arg-type]
        valid=splits["valid"],  # type: ignore[arg-type]
        test=splits["test"],  # type: ignore[arg-type]
        preprocessor=pre,
        label_scaling=pre.label_scaling,
        meta={
            "spec": spec.to_dict(),
            "sources": {k: str(paths[k]) for k in _SPLITS},
            "seed": seed,
            "stream": True,
        },
    )


def is_streamed(split: object) -> bool:
    """Whether ``split`` is a :class:`StreamSplit` (read per batch) rather than in memory."""
    return isinstance(split, StreamSplit)


__all__ = ["DEFAULT_SHUFFLE_BUFFER", "StreamSplit", "cat_splits", "is_streamed", "load_streaming", "rechunk"]
