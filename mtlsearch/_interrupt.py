"""Interrupts that must not be lost (Ctrl-C, SIGTERM).

A signal handler that raises (Python's own for SIGINT, the CLI's for SIGTERM) raises in the
main thread at whatever bytecode runs. When that is a finaliser or a weakref callback (a
garbage-collection pass inside SQLAlchemy, say), the interpreter prints "Exception ignored
in ..." and drops the exception: the process would go on as if never signalled. So the
handlers also :func:`record` the interrupt, and long loops call :func:`check` at safe points
(each training batch, each trial the worker loop asks for): in the main thread, an
interrupt recorded since the last :func:`clear` is raised there. Threads other than the
main one never raise it (the main thread releases their trials).
"""

from __future__ import annotations

import threading

_pending: list[BaseException] = []


def record(exc: BaseException) -> None:
    """Remember ``exc`` (a ``KeyboardInterrupt``) until it is seen or cleared."""
    _pending[:] = [exc]


def clear() -> None:
    """Forget a recorded interrupt (it has been handled)."""
    _pending.clear()


def check() -> None:
    """Raise a recorded interrupt, once, if this is the main thread."""
    if _pending and threading.current_thread() is threading.main_thread():
        raise _pending.pop()


def quiet_swallowed_interrupts() -> None:
    """Install a :data:`sys.unraisablehook` that stays silent about an interrupt raised in a
    finaliser or weakref callback (the "Exception ignored in ..." report with its traceback):
    that interrupt was :func:`record`-ed and is raised again at the next :func:`check`, so
    the user sees one clean exit, not a traceback. Any other unraisable exception is
    reported as before. Idempotent."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_mtlsearch_quiet", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and any(
            unraisable.exc_value is exc for exc in _pending
        ):
            return
        previous(unraisable)

    hook._mtlsearch_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
