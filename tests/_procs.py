"""Catching a worker process at a point of its work, whatever the machine's load.

Polling a study for "a trial is mid-way" races the worker: on a loaded machine one look at
the storage can take longer than a whole short trial, and the trial ends unseen (or ends
between the look and the signal that was meant to interrupt it). :func:`stopped_when` looks
only while the worker is stopped (SIGSTOP), so the worker advances between looks and never
during one, and returns with it still stopped at the state it saw."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _stopped(pid: int) -> bool:
    """The process is in the stopped state (Linux /proc; a zombie or gone counts as stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X")


def stopped_when(proc: subprocess.Popen, check: Callable[[], T | None], limit: float) -> T | None:
    """Stop ``proc``, call ``check``; if it finds something, return it with ``proc`` still
    STOPPED (the caller kills it or sends SIGCONT); else let ``proc`` run 0.2 s and look
    again. None after ``limit`` seconds or once ``proc`` has exited (``proc`` left running)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        while not _stopped(proc.pid):
            time.sleep(0.005)
        found = check()
        if found:
            return found
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
    return None
