"""What several command modules share: wide consoles, thread counts, spec-file checks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from mtlsearch._errors import UserError

logger = logging.getLogger("mtlsearch")

#: Columns of a console that is not a terminal (a pipe, a file, a CI log): wide enough that
#: tables keep full task and objective names instead of rich's 80-column ellipses.
PIPE_WIDTH = 1000


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 trial``, ``0 trials``, ``3 trials``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def console(stderr: bool = False) -> Console:
    """Rich's console on a terminal; piped or captured output gets :data:`PIPE_WIDTH` columns,
    so ``mtlsearch front | cat`` shows ``income:auc``, not ``income:a…``."""
    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(parallel: int = 1) -> int:
    """torch threads per trial when ``parallel`` trials share this process: the cores divided
    among them (at least 1). Oversubscribed OpenMP threads made epochs 7-18x slower."""
    return max(1, available_cores() // max(1, parallel))


THREADS_HELP = (
    "torch threads (intra-op) of this process; default: the available cores divided by the "
    "trials run in parallel. Results are bitwise reproducible at a fixed thread count."
)


def threads_option() -> int | None:
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP, show_default=False)


def set_threads(threads: int | None, parallel: int = 1) -> int:
    """Set torch's thread count (given, or :func:`default_threads`) and return it."""
    import torch

    n = threads if threads is not None else default_threads(parallel)
    if n < 1:
        raise UserError(f"--threads: must be >= 1, got {n}")
    torch.set_num_threads(n)
    logger.debug("torch threads: %d", n)
    return n


_TABLE_SUFFIXES = {".csv": "CSV", ".tsv": "TSV", ".txt": "text", ".gz": "compressed", ".parquet": "Parquet"}
_TABLE_SUFFIXES[".pq"] = "Parquet"


def check_spec_path(path: str | Path, flag: str = "--data") -> None:
    """Refuse, in one line, a data table given where a dataset spec YAML is expected (the
    YAML reader would say "expected a mapping, got str"). Built-in names and missing files
    are left to the loader."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return
    kind = _TABLE_SUFFIXES.get(path.suffix.lower())
    if head.startswith(b"PAR1"):
        kind = "Parquet"
    elif head.startswith(b"\x1f\x8b"):
        kind = "compressed (gzip)"
    elif kind is None and path.suffix.lower() not in (".yaml", ".yml"):
        first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        if ":" not in first and any(sep in first for sep in (",", "\t", ";")):
            kind = "TSV" if "\t" in first else "CSV"
    if kind is not None:
        raise UserError(
            f"{flag} {path}: looks like a {kind} table, not a dataset spec YAML; write a spec whose "
            f"files.path names the table (schema: mtlsearch/data/_spec.py), or use --dataset NAME"
        )


MAX_ROWS_HELP = (
    "Train on a seeded subsample of N training rows (all of them if the table has fewer), for quick "
    "runs; validation and test keep every row. A table in memory: stratified by the binary tasks; "
    "a streamed spec (stream: true): a seeded pseudo-random choice made row by row, so the same "
    "seed keeps the same rows. Built-in datasets and spec files alike; same as --option max_rows=N."
)


def max_rows_option() -> str | None:
    # Read as text and parsed by with_max_rows: a bad value is then one line, exit 2 (click's
    # own int check prints a usage box).
    return typer.Option(None, "--max-rows", metavar="N", help=MAX_ROWS_HELP, show_default=False)


def with_max_rows(options: dict, text: str | None, flag: str = "--max-rows") -> dict:
    """The dataset options with ``max_rows`` from ``--max-rows`` (text) added, checked before
    any data is read: not an integer >= 1 is a one-line ``UserError`` naming the flag (or
    ``--option max_rows`` when given that way); both ways with different values is refused."""
    from mtlsearch.data import MAX_ROWS, check_max_rows

    if MAX_ROWS in options:
        check_max_rows(options[MAX_ROWS], f"--option {MAX_ROWS}")
    if text is None:
        return options
    try:
        value = int(text.strip())
    except ValueError:
        raise UserError(f"{flag}: must be an integer >= 1, got {text!r}") from None
    check_max_rows(value, flag)
    if MAX_ROWS in options and options[MAX_ROWS] != value:
        raise UserError(f"{flag} {value} and --option {MAX_ROWS}={options[MAX_ROWS]}: give one of them")
    return {**options, MAX_ROWS: value}


DEVICE_HELP = (
    "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps; default: the experiment's "
    "training.device, else auto. A device that is not present is an error."
)
PRECISION_HELP = (
    "fp32, bf16 (autocast to bfloat16) or fp16 (autocast + loss scaling; refused with loss "
    "weightings that do their own backward); default: the experiment's training.precision, else fp32."
)


def device_option() -> str | None:
    # Read as text and checked by training_on: a bad value is one line, exit 2.
    return typer.Option(
        None, "--device", metavar="auto|cpu|cuda|cuda:N", help=DEVICE_HELP, show_default=False
    )


def precision_option() -> str | None:
    return typer.Option(
        None, "--precision", metavar="fp32|bf16|fp16", help=PRECISION_HELP, show_default=False
    )


def check_device_flag(device: str | None) -> str:
    """``--device``'s text (``auto`` when not given), checked for form and presence."""
    from mtlsearch.train import resolve_device

    text = device if device is not None else "auto"
    resolve_device(text, "--device")
    return text.strip().lower()


def check_precision_flag(precision: str | None, method: str | None = None) -> str | None:
    """``--precision``'s name (None when not given); with ``method`` (a loss weighting), a
    precision that cannot train it is refused naming the flag."""
    if precision is None:
        return None
    from mtlsearch.train import PRECISIONS, check_precision_text

    name = check_precision_text(precision, "--precision")
    if method is not None:
        PRECISIONS[name].check_method(method, "--precision")
    return name


def training_on(training: Any, device: str | None, precision: str | None, source: str = "") -> Any:
    """``training`` (a ``TrainConfig``) with ``--device``/``--precision`` applied: a flag wins
    over the config's value, which wins over ``auto``/``fp32``. The device is checked for
    presence here, before any data is read (a one-line ``UserError`` naming the flag, or
    ``source: training.device`` for the config's value)."""
    from dataclasses import replace

    from mtlsearch.train import resolve_device

    if device is not None:
        text = check_device_flag(device)
    else:
        text = training.device or "auto"
        resolve_device(text, f"{source}: training.device" if source and training.device else "--device")
    name = check_precision_flag(precision, training.loss_weighting.method) or training.precision
    return replace(training, device=text, precision=name)
