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
