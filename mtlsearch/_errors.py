"""The one error type users see: a clear, one-line message and a non-zero exit."""

from __future__ import annotations

import math
from typing import Any


class UserError(Exception):
    """Bad input from the user (a file, a field, a value). The CLI prints the message alone
    on one line and exits with status 2; no traceback, nothing half-written."""


def as_float(value: Any, path: str, error: type[UserError] = UserError) -> float:
    """A finite number from user data, or ``error("<path>: ...")``.

    PyYAML reads ``1e-3`` (no dot) as a string: numeric strings are accepted so that the
    natural way of writing a learning rate or an init scale works.
    """
    if isinstance(value, bool):
        raise error(f"{path}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise error(f"{path}: expected a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"{path}: expected a finite number, got {value!r}")
    return float(value)


class StorageUnavailable(Exception):
    """The study storage (database, Redis) stayed out of reach for longer than the retry
    window. The CLI prints the message on one line and exits with :data:`EXIT_UNAVAILABLE`;
    the worker's running trial is recovered by the other workers once its lease expires."""


#: Exit status after giving up on an unreachable service (sysexits' EX_TEMPFAIL: try again).
EXIT_UNAVAILABLE = 75
