"""Reading user tables (CSV or Parquet) with one-line errors that name the file.

pandas and pyarrow report bad files with multi-line messages or tracebacks; here every
failure becomes a :class:`UserError` with the file name and the first line of the cause.
"""

from __future__ import annotations

import difflib
import logging
import zlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mtlsearch._errors import UserError
from mtlsearch.data._spec import FileSpec

log = logging.getLogger(__name__)

_PARQUET_SUFFIXES = {".parquet", ".pq"}


def first_line(exc: object) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def table_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    return "parquet" if path.suffix.lower() in _PARQUET_SUFFIXES else "csv"


def read_table(path: str | Path, files: FileSpec | None = None) -> pd.DataFrame:
    """Read one table with the reading options of ``files``.

    Errors (one line, naming the file): no such file, empty file, a file that is not valid
    CSV/Parquet (including truncated gzip), a header that names a column twice (pandas
    would silently rename the second ``age.1``), a headerless file whose field count
    differs from ``files.columns``, and a table without data rows.
    """
    files = files or FileSpec(path=str(path))
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    fmt = table_format(path, files.format)
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                sep=files.sep,
                header=0 if files.header else None,
                skipinitialspace=files.skipinitialspace,
                na_values=list(files.na_values) if files.na_values is not None else None,
                keep_default_na=files.na_values is None,
                low_memory=False,
            )
            if files.header:
                _check_header(path, files)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty (no columns)") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except (
        ValueError,
        OSError,
        EOFError,
        UnicodeDecodeError,
        zlib.error,
        pd.errors.ParserError,
    ) as exc:
        raise UserError(f"{path}: cannot read as {fmt.upper()} ({first_line(exc)})") from None
    except Exception as exc:  # pyarrow's own error types, without importing pyarrow here
        if type(exc).__module__.startswith("pyarrow"):
            raise UserError(f"{path}: cannot read as {fmt.upper()} ({first_line(exc)})") from None
        raise
    if fmt == "parquet":
        _reject_duplicates(path, [str(c) for c in frame.columns])
    if files.columns is not None:
        if frame.shape[1] != len(files.columns):
            raise UserError(
                f"{path}: has {frame.shape[1]} fields per row but files.columns names {len(files.columns)}"
            )
        frame.columns = list(files.columns)
    else:
        frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise UserError(f"{path}: no data rows")
    log.debug("read %s: %d rows x %d columns", path, *frame.shape)
    return frame


def _check_header(path: Path, files: FileSpec) -> None:
    """Read the header line as data (one row) and refuse a column name given twice."""
    names = pd.read_csv(
        path,
        sep=files.sep,
        header=None,
        nrows=1,
        dtype=str,
        keep_default_na=False,
        skipinitialspace=files.skipinitialspace,
    )
    _reject_duplicates(path, [str(v) for v in names.iloc[0].tolist()] if len(names) else [])


def _reject_duplicates(path: Path, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise UserError(
                f"{path}: column {name!r} appears twice in the header (fields {seen[name] + 1} and "
                f"{i + 1}); rename one of them"
            )
        seen[name] = i


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str, what: str) -> None:
    """Fail with the closest existing names when a named column is not in ``frame``."""
    have = [str(c) for c in frame.columns]
    for col in columns:
        if col in frame.columns:
            continue
        close = difflib.get_close_matches(col, have, n=3, cutoff=0.5)
        hint = (
            f"closest: {', '.join(repr(c) for c in close)}"
            if close
            else f"columns are {', '.join(repr(c) for c in have[:8])}" + (", ..." if len(have) > 8 else "")
        )
        raise UserError(f"{source}: no column {col!r} ({what}); {hint}")


__all__ = ["first_line", "read_table", "require_columns", "table_format"]
