"""Streaming prediction: raw rows in record batches in, predictions batch by batch out.

:func:`predict_stream` reads a table (one file, a folder of shards or a glob; Parquet or
CSV, see :func:`mtlsearch.data.stream.iter_frames`) in record batches, scores each batch
with :func:`~mtlsearch.train.predict` (the checkpoint's saved preprocessing, so the same
columns and values as the in-memory ``predict``) and appends it to the output: a Parquet
file through one ``ParquetWriter`` (a row group per batch), or a CSV file (the header
once). Memory: one record batch and its predictions, whatever the row count.

The output is written to a temporary file beside it and renamed when every batch is
written: a bad shard mid-way (a one-line :class:`UserError` naming the file) leaves nothing
at ``output``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mtlsearch._errors import UserError
from mtlsearch.data._spec import FileSpec
from mtlsearch.data.stream import BATCH_ROWS, iter_frames
from mtlsearch.train._checkpoint import Checkpoint, predict

logger = logging.getLogger(__name__)


def _parquet_sink(path: str) -> tuple[Callable[[pd.DataFrame], None], Callable[[], None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    state: dict[str, pq.ParquetWriter] = {}

    def write(frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if "w" not in state:
            state["w"] = pq.ParquetWriter(path, table.schema)
        state["w"].write_table(table)

    def close() -> None:
        if "w" in state:
            state["w"].close()

    return write, close


def _csv_sink(path: str) -> tuple[Callable[[pd.DataFrame], None], Callable[[], None]]:
    state = {"first": True}

    def write(frame: pd.DataFrame) -> None:
        frame.to_csv(path, index=False, header=state["first"], mode="w" if state["first"] else "a")
        state["first"] = False

    return write, lambda: None


_SINKS = {".csv": _csv_sink, ".parquet": _parquet_sink, ".pq": _parquet_sink}


def predict_stream(
    checkpoint: Checkpoint,
    input_path: str | Path,
    output: str | Path,
    files: FileSpec | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Score the rows at ``input_path`` batch by batch into ``output`` (``.csv`` or
    ``.parquet``/``.pq``, by suffix); returns the number of rows written. ``files`` gives
    the reading options (separator, missing markers). Errors: see the module docstring and
    :func:`mtlsearch.data.stream.iter_frames`; an unknown output suffix."""
    output = Path(output)
    sink = _SINKS.get(output.suffix.lower())
    if sink is None:
        raise UserError(f"{output}: unknown output format; use .csv or .parquet")
    columns = list(checkpoint.preprocessor.input_columns)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    rows = 0
    try:
        write, close = sink(tmp)
        try:
            for frame, source in iter_frames(input_path, files, columns, batch_rows):
                write(predict(checkpoint, frame, source=source))
                rows += len(frame)
        finally:
            close()
        if rows == 0:
            raise UserError(f"{input_path}: no data rows")
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %d predictions to %s, batch by batch", rows, output)
    return rows


__all__ = ["predict_stream"]
