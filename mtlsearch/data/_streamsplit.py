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

A streamed split cannot be subsampled by row indices (``take``): the search's data-fraction
fidelity needs an in-memory split. Its ``labels``/``masks``/``weights`` (what the evaluator
reads once) are collected on first use in one pass: 9 bytes per row and task at most.
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
from mtlsearch.data._io import check_parquet_set, data_files, first_line, require_columns, table_format
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
    an empty folder or glob, a corrupt or truncated Parquet file, a shard whose columns or
    types differ from the first file's, a file without a column the preprocessor reads.
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
        if self.format == "parquet":
            self._rows, self._units = self._parquet_units()
        else:
            self._rows, self._units = -1, [(str(p), None) for p in self.paths]

    # ---- files -----------------------------------------------------------------------------
    def _parquet_units(self) -> tuple[int, list[tuple[str, int | None]]]:
        import pyarrow.parquet as pq

        check_parquet_set(self.paths)  # every footer readable, one schema (names and types)
        schema = pq.read_schema(self.paths[0])
        require_columns(pd.DataFrame(columns=schema.names), self.columns, str(self.paths[0]), "a model input")
        rows, units = 0, []
        for p in self.paths:
            meta = pq.ParquetFile(p).metadata
            rows += meta.num_rows
            units.extend((str(p), g) for g in range(meta.num_row_groups) if meta.row_group(g).num_rows)
        if rows == 0:
            raise UserError(f"{self.path}: no data rows")
        return rows, units

    def _frames(self, rng: np.random.Generator | None) -> Iterator[tuple[pd.DataFrame, str]]:
        order = list(range(len(self._units)))
        if rng is not None:
            order = [int(i) for i in rng.permutation(len(order))]
        if self.format != "parquet":
            for i in order:
                yield from iter_frames(self._units[i][0], self.files, self.columns, self.read_rows)
            return
        import pyarrow.dataset as pds

        check_parquet_set(self.paths)  # again each pass: a shard replaced or truncated since
        fragments = {
            str(Path(f.path)): f
            for f in pds.dataset([str(p) for p in self.paths], format="parquet").get_fragments()
        }
        for i in order:
            path, group = self._units[i]
            try:
                piece = fragments[str(Path(path))].subset(row_group_ids=[group])
                for batch in piece.to_batches(columns=self.columns, batch_size=self.read_rows):
                    if batch.num_rows:
                        yield batch.to_pandas(), path
            except UserError:
                raise
            except Exception as exc:  # pyarrow's errors: a corrupt page, a bad compression
                if type(exc).__module__.startswith("pyarrow") or isinstance(exc, OSError | ValueError):
                    raise UserError(f"{path}: cannot read as PARQUET ({first_line(exc)})") from None
                raise

    def _encoded(self, rng: np.random.Generator | None = None) -> Iterator[TensorSplit]:
        for frame, source in self._frames(rng):
            yield self.preprocessor.transform_split(frame, source)

    # ---- the TensorSplit protocol ----------------------------------------------------------
    def __len__(self) -> int:
        if self._rows < 0:  # CSV: counted once, reading one column
            col = self.columns[:1]
            self._rows = sum(len(f) for p in self.paths for f, _ in iter_frames(p, self.files, col))
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
        cap, keep = self.shuffle_buffer, self.shuffle_buffer // 2
        buf: TensorSplit | None = None
        for chunk in self._encoded(rng):
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

    def take(self, idx: Tensor | slice) -> TensorSplit:
        raise UserError(
            f"{self.path}: a streamed split (stream: true) cannot be subsampled by row indices "
            "(--max-rows, the search's data-fraction fidelity); set stream: false to load it in memory"
        )

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
        return f"StreamSplit({self.path!r}, {len(self._units)} unit(s), shuffle_buffer={self.shuffle_buffer})"


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
