"""Reading user tables (CSV or Parquet) with one-line errors that name the file.

pandas and pyarrow report bad files with multi-line messages or tracebacks; here every
failure becomes a :class:`UserError` with the file name and the first line of the cause.

A table path is one file, a folder (its ``.parquet``/``.pq`` files, else its ``.csv``/
``.tsv``/``.txt`` files, gzip or not; hidden and ``_``-prefixed names such as ``_SUCCESS``
are skipped) or a glob pattern (``shards/part-*.parquet``); :func:`data_files` lists them in
name order. Every file of a set must have the first file's columns: a shard with a missing
or extra column is refused naming file and column. The Parquet files of a set are read with
one unified schema (:func:`check_parquet_set`): column types that differ only in safe ways
(integer or float widths, integers beside floats, an all-null column, string/large_string/
dictionary-encoded strings) are widened; any other difference is refused, naming file,
column and both types.
"""

from __future__ import annotations

import difflib
import glob
import logging
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from mtlsearch._errors import UserError
from mtlsearch.data._spec import FileSpec

log = logging.getLogger(__name__)

_PARQUET_SUFFIXES = {".parquet", ".pq"}
_CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
_GLOB_CHARS = set("*?[")


def first_line(exc: object) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def table_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    return "parquet" if _suffix(Path(path)) in _PARQUET_SUFFIXES else "csv"


def _suffix(path: Path) -> str:
    """The format suffix, ignoring a trailing ``.gz``/``.bz2``/``.zst``/``.xz``."""
    suffixes = [x.lower() for x in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".xz"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_file_set(path: str | Path) -> bool:
    """Whether ``path`` names several files: a folder, or a glob pattern that is no file."""
    p = Path(path)
    return p.is_dir() or (not p.exists() and bool(_GLOB_CHARS & set(str(path))))


def data_files(path: str | Path, declared: str = "auto") -> list[Path]:
    """The files a table path names, in name order (see the module docstring).

    Errors (one line): a pattern that matches no file, a folder without data files, a
    folder or pattern whose files mix Parquet and CSV under ``format: auto``.
    """
    p = Path(path)
    if p.is_dir():
        names = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
        if declared == "parquet":
            found = [f for f in names if _suffix(f) in _PARQUET_SUFFIXES]
        elif declared == "csv":
            found = [f for f in names if _suffix(f) in _CSV_SUFFIXES]
        else:
            found = [f for f in names if _suffix(f) in _PARQUET_SUFFIXES] or [
                f for f in names if _suffix(f) in _CSV_SUFFIXES
            ]
        if not found:
            kinds = {"parquet": ".parquet/.pq", "csv": ".csv/.tsv/.txt"}.get(declared, ".parquet or .csv")
            raise UserError(f"{p}: the folder holds no {kinds} files")
        return found
    if not p.exists() and _GLOB_CHARS & set(str(path)):
        found = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
        if not found:
            raise UserError(f"{path}: no file matches the pattern")
        if declared == "auto" and len({table_format(f) for f in found}) > 1:
            raise UserError(f"{path}: the pattern matches both Parquet and CSV files; narrow it")
        return found
    return [p]


def check_same_columns(first: Path, first_cols: Sequence[str], path: Path, cols: Sequence[str]) -> None:
    """Refuse a file of a set whose column names differ from the first file's."""
    for c in first_cols:
        if c not in cols:
            raise UserError(f"{path}: no column {c!r} (the first file of the set, {first.name}, has it)")
    for c in cols:
        if c not in first_cols:
            raise UserError(f"{path}: column {c!r} is not in the first file of the set ({first.name})")


def parquet_schema(path: Path):  # -> pyarrow.Schema
    """The schema in a Parquet file's footer; a corrupt or truncated file is a one-line
    :class:`UserError` naming it."""
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        return pq.read_schema(path)
    except Exception as exc:  # ArrowInvalid, OSError: not Parquet, truncated footer
        raise UserError(f"{path}: cannot read as PARQUET ({first_line(exc)})") from None


def check_parquet_set(paths: Sequence[Path]):  # -> pyarrow.Schema
    """Every Parquet file of a set readable, with the first file's column names, and column
    types that unify; returns the set's unified schema (the first file's column order and
    metadata) that every reader of the set reads each file with (:func:`parquet_read_schema`).

    Types unify with ``pyarrow.unify_schemas(promote_options="permissive")`` where the
    widening is safe: integers of any widths (the widest, as pyarrow promotes them), floats
    of any widths (the widest), integers beside a float (float64), the ``null`` type of an
    all-null column (the other type), string, large_string and dictionary-encoded strings
    (a plain string type). Anything else (a string beside a number, a timestamp beside a
    number, a decimal or binary column beside another type) is a
    one-line :class:`UserError` naming the file, the column and both types. Values that do
    not fit the unified type (an integer above 2**53 read as float64) fail when read, naming
    the file."""
    first = parquet_schema(paths[0])
    _reject_duplicates(paths[0], list(first.names))
    types = {name: (first.field(name).type, paths[0]) for name in first.names}
    for path in paths[1:]:
        schema = parquet_schema(path)
        check_same_columns(paths[0], first.names, path, schema.names)
        for name in first.names:
            want, since = types[name]
            got = schema.field(name).type
            merged = _unify_types(want, got)
            if merged is None:
                if since != paths[0] and _unify_types(first.field(name).type, got) is None:
                    want, since = first.field(name).type, paths[0]  # blame the first file if it can
                where = "the first file of the set" if since == paths[0] else "another file of the set"
                raise UserError(f"{path}: column {name!r} is {got} here but {want} in {where} ({since.name})")
            if merged != want:
                types[name] = (merged, path)
    fields = []
    for name in first.names:
        field = first.field(name)
        if types[name][0] != field.type:  # widened: nullable, as some file's values may be null
            field = field.with_type(types[name][0]).with_nullable(True)
        fields.append(field)
    import pyarrow as pa

    return pa.schema(fields, metadata=first.metadata)


def parquet_read_schema(unified, schema):  # (pyarrow.Schema, pyarrow.Schema) -> pyarrow.Schema
    """The schema to read a file of a set with (``schema``: its own, from its footer): the
    set's ``unified`` types and column order, with the file's own metadata (pandas' index
    and per-column dtypes there describe the file's own values, which fit them)."""
    import pyarrow as pa

    return pa.schema(list(unified), metadata=schema.metadata)


def _is_string(t) -> bool:
    import pyarrow.types as pat

    return pat.is_string(t) or pat.is_large_string(t)


def _plain(t):
    """A dictionary of strings as its value type; other types as they are."""
    import pyarrow.types as pat

    return t.value_type if pat.is_dictionary(t) and _is_string(t.value_type) else t


def _safe_widening(src, dst) -> bool:
    """Whether reading a column of type ``src`` as ``dst`` keeps every value (see
    :func:`check_parquet_set`; values out of range still fail the cast when read)."""
    import pyarrow as pa
    import pyarrow.types as pat

    if src == dst or pat.is_null(src):
        return True
    if pat.is_integer(src):
        return pat.is_integer(dst) or dst == pa.float64()
    if pat.is_floating(src):  # float16/32 -> a wider float: every value kept
        return pat.is_floating(dst) and dst.bit_width >= src.bit_width
    return _is_string(_plain(src)) and _is_string(dst)


def _unify_types(a, b):  # -> pyarrow.DataType | None
    """The type a column of types ``a`` and ``b`` is read as, or None when they do not unify
    safely (pyarrow's permissive promotion, restricted by :func:`_safe_widening`)."""
    if a == b:
        return a
    import pyarrow as pa

    # pyarrow does not unify a dictionary with its value type: unify the value types
    one, other = pa.schema([("c", _plain(a))]), pa.schema([("c", _plain(b))])
    try:
        merged = pa.unify_schemas([one, other], promote_options="permissive").field("c").type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return merged if _safe_widening(a, merged) and _safe_widening(b, merged) else None


def csv_options(files: FileSpec) -> dict:
    """The ``pandas.read_csv`` keywords a spec's ``files`` section means (separator, header,
    spaces after separators, missing-value markers); every CSV reader of the package uses
    them, in memory and streaming."""
    return {
        "sep": files.sep,
        "header": 0 if files.header else None,
        "skipinitialspace": files.skipinitialspace,
        "na_values": list(files.na_values) if files.na_values is not None else None,
        "keep_default_na": files.na_values is None,
        "low_memory": False,
    }


def read_table(path: str | Path, files: FileSpec | None = None) -> pd.DataFrame:
    """Read a table (one file, a folder of shards or a glob pattern) with the reading
    options of ``files``; the files of a set are checked (:func:`check_parquet_set`, same
    CSV columns) and joined in name order, rows numbered 0..N-1 across them; the Parquet
    files of a set are each read with the set's unified schema.

    Errors (one line, naming the file): see :func:`read_one_file` and :func:`data_files`.
    """
    files = files or FileSpec(path=str(path))
    if not is_file_set(path):
        return read_one_file(path, files)
    paths = data_files(path, files.format)
    unified = check_parquet_set(paths) if table_format(paths[0], files.format) == "parquet" else None
    frames = []
    for p in paths:
        frame = read_one_file(p, files, unified=unified)
        if frames:
            check_same_columns(paths[0], list(frames[0].columns), p, list(frame.columns))
            frame = frame[list(frames[0].columns)]
        frames.append(frame)
    out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    log.debug("read %s: %d files, %d rows x %d columns", path, len(paths), *out.shape)
    return out


def read_one_file(
    path: str | Path, files: FileSpec | None = None, nrows: int | None = None, *, unified=None
) -> pd.DataFrame:
    """Read one table file with the reading options of ``files``; a Parquet file of a set
    with the set's ``unified`` schema (:func:`check_parquet_set`) when given.

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
            if unified is None:
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_parquet(path, schema=parquet_read_schema(unified, parquet_schema(path)))
        else:
            frame = pd.read_csv(path, **csv_options(files), nrows=nrows)
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


__all__ = [
    "check_parquet_set",
    "data_files",
    "first_line",
    "is_file_set",
    "parquet_read_schema",
    "parquet_schema",
    "read_table",
    "require_columns",
    "table_format",
]
