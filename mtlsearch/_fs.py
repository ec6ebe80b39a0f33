"""Small file-system helpers shared by the layers that write folders (checkpoints, exports).

A folder is written under a temporary name in its parent (:func:`make_temp_dir`) and swapped
in whole (:func:`replace_dir`), so a reader sees the old complete folder or the new complete
one, never a half-written one and never none.

Temporary folders are named ``.{name}.{host}.{pid}.{random}.tmp`` (``host``: 8 hex digits of
a hash of the host name; ``pid``: the writer's process id), and the fallback's renamed-aside
old folders ``.{name}.{host}.{pid}.{random}.old``, so that a later writer can tell whether
their owner still runs. A writer killed mid-way (SIGKILL, OOM killer, power cut) leaves them
behind; the next write to the same parent folder removes them (:func:`clean_stale`) and puts
back an ``out`` that a killed fallback replace had moved aside (:func:`recover`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: A temporary folder whose owner cannot be checked (another host, an old-style name) is
#: stale after this many seconds.
STALE_AFTER_S = 24 * 3600

#: An ``out`` moved aside by an owner that cannot be checked is put back after this many
#: seconds (the fallback's two renames are microseconds apart; a live writer on another host
#: is not raced).
RECOVER_AFTER_S = 10.0

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276}
#: errno values meaning "this kernel / file system cannot exchange": fall back to renames.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)}

# .{name}.{host}.{pid}.{random}.{tmp|old}; tempfile's random part has no dots.
_OWNED = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.[a-z0-9_]+\.(?P<kind>tmp|old)$"
)
# the names before owners were recorded: .{name}.{random}.{tmp|old}
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)$")


def _host_id() -> str:
    return hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


# ---- atomic exchange ---------------------------------------------------------------------
_renameat2: Callable[..., int] | None = None
_syscall: Callable[..., int] | None = None
_exchange_unsupported = False


def _raw_renameat2(libc: ctypes.CDLL, number: int) -> Callable[[int, bytes, int, bytes, int], int]:
    """``renameat2`` through ``syscall(number, ...)``, for a libc without the wrapper (glibc
    before 2.28, some musl builds); ``number`` is 316 on x86_64, 276 on aarch64."""
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def raw(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        return int(
            syscall(
                ctypes.c_long(number),
                ctypes.c_int(olddirfd),
                ctypes.c_char_p(old),
                ctypes.c_int(newdirfd),
                ctypes.c_char_p(new),
                ctypes.c_uint(flags),
            )
        )

    return raw


def _load_renameat2() -> bool:
    """Find libc's ``renameat2`` (glibc >= 2.28) or the raw syscall; False elsewhere."""
    global _renameat2, _syscall
    if _renameat2 is not None or _syscall is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
        return True
    number = _SYS_RENAMEAT2.get(platform.machine().lower())
    if number is None or not hasattr(libc, "syscall"):
        return False
    raw = _raw_renameat2(libc, number)
    _syscall = raw
    return True


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``; both must exist, on one file system).

    Returns False when this system or file system cannot (another OS, a kernel before 3.15,
    a file system without it: EINVAL/ENOSYS/EPERM/EOPNOTSUPP), and nothing happened. Raises
    ``OSError`` for other failures (a missing path, EXDEV, EACCES).
    """
    global _exchange_unsupported
    if _exchange_unsupported or not _load_renameat2():
        return False
    call = _renameat2 or _syscall
    assert call is not None
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS,):  # the kernel has no renameat2: remember
        _exchange_unsupported = True
        return False
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# ---- owners of temporary folders ---------------------------------------------------------
@dataclass(frozen=True)
class _Leftover:
    path: Path
    name: str  # the folder it was writing or replacing
    kind: str  # "tmp" or "old"
    host: str | None  # None for an old-style name
    pid: int | None


def _parse(path: Path) -> _Leftover | None:
    if m := _OWNED.match(path.name):
        return _Leftover(path, m["name"], m["kind"], m["host"], int(m["pid"]))
    if m := _LEGACY.match(path.name):
        return _Leftover(path, m["name"], m["kind"], None, None)
    return None


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _process_start(pid: int) -> tuple[float | None, bool]:
    """When process ``pid`` started (seconds since the epoch, None if unknown) and whether
    it is a zombie (dead, not yet reaped), from ``/proc/<pid>/stat``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, False
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    boot = _boot_time()
    try:
        state, ticks = fields[0], int(fields[19])  # field 3 (state) and 22 (starttime)
    except (IndexError, ValueError):
        return None, False
    start = boot + ticks / os.sysconf("SC_CLK_TCK") if boot is not None else None
    return start, state == "Z"


def _owner_alive(item: _Leftover) -> bool | None:
    """True if the process that made ``item`` still runs, False if it is gone, None when
    that cannot be told (another host, an old-style name).

    A pid is reused after its process ends: a process with that pid that started after
    the folder was last modified is another one, and the owner is gone.
    """
    if item.pid is None or item.host != _host_id():
        return None
    if item.pid == os.getpid():
        return True
    try:
        os.kill(item.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return None
    start, zombie = _process_start(item.pid)
    if zombie:
        return False
    try:
        modified = item.path.stat().st_mtime
    except OSError:
        return False  # already gone
    return not (start is not None and start > modified + 1.0)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _leftovers(parent: Path) -> list[_Leftover]:
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            item = _parse(Path(entry.path))
            if item is not None:
                found.append(item)
    return found


def _may_recover(item: _Leftover) -> bool:
    alive = _owner_alive(item)
    return alive is False or (alive is None and _age(item.path) > RECOVER_AFTER_S)


def recover(out: Path) -> bool:
    """Put back ``out`` if a replace was killed between its two renames (the fallback path of
    :func:`replace_dir`): ``out`` is missing but a ``.{name}.*.old/previous`` of a writer
    that no longer runs holds it. The newest such folder wins. Returns True if restored.

    Cheap (one directory listing) when there is nothing to do, so readers may call it too.
    """
    out = Path(out)
    if os.path.lexists(out):
        return False
    candidates = [
        item
        for item in _leftovers(out.parent)
        if item.kind == "old" and item.name == out.name and (item.path / "previous").exists()
    ]
    candidates.sort(key=lambda item: _age(item.path))
    for item in candidates:
        if not _may_recover(item):
            continue
        try:
            os.rename(item.path / "previous", out)
        except FileNotFoundError:
            continue  # another process recovered it first
        except OSError:
            if os.path.lexists(out):
                return False  # someone else recovered it, or wrote a new one
            raise
        logger.warning("%s: restored the previous version left by an interrupted replace", out)
        shutil.rmtree(item.path, ignore_errors=True)
        return True
    return False


def clean_stale(parent: Path) -> list[Path]:
    """Remove the temporary (``.tmp``) and renamed-aside (``.old``) folders of writers that no
    longer run, from ``parent``; first put back any folder they had moved aside
    (:func:`recover`). A folder whose owner cannot be checked (another host, an old-style
    name) is removed once older than ``STALE_AFTER_S`` (a day). Returns what was removed.
    """
    parent = Path(parent)
    removed = []
    for item in _leftovers(parent):
        if item.kind == "old" and (item.path / "previous").exists():
            recover(parent / item.name)
            if not item.path.exists():
                continue
        alive = _owner_alive(item)
        if alive is False or (alive is None and _age(item.path) > STALE_AFTER_S):
            if item.kind == "old" and (item.path / "previous").exists() and not (parent / item.name).exists():
                continue  # still the only copy of that folder; never delete it
            shutil.rmtree(item.path, ignore_errors=True)
            if not item.path.exists():
                logger.info("removed %s, left behind by an interrupted write", item.path)
                removed.append(item.path)
    return removed


# ---- writing -----------------------------------------------------------------------------
def _remove(path: Path) -> None:
    """Delete a folder, or a file or symbolic link (what an ``out`` may have been)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _temp_name_prefix(out: Path) -> str:
    return f".{out.name}.{_host_id()}.{os.getpid()}."


def make_temp_dir(out: Path) -> Path:
    """A new empty folder beside ``out`` to write its next version in, then give to
    :func:`replace_dir`. Cleans up after killed writers in the same parent first
    (:func:`clean_stale`), which also restores an ``out`` a killed replace moved aside.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    path = Path(tempfile.mkdtemp(prefix=_temp_name_prefix(out), suffix=".tmp", dir=out.parent))
    # mkdtemp makes it private (0700); the folder becomes the user's output: use their umask
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o777 & ~mask)
    return path


def replace_dir(tmp: Path, out: Path, *, atomic: bool = True) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out``.

    At every moment ``out`` is the old complete folder or the new complete one. On Linux the
    two are swapped by one ``renameat2(RENAME_EXCHANGE)`` and the old one (now at ``tmp``'s
    name) is deleted. Where that is unsupported (or ``atomic=False``) the old folder is
    renamed aside to ``.{name}.*.old/previous`` before the new one takes its name: a kill
    between those two renames leaves ``out`` missing, and the next :func:`replace_dir`,
    :func:`make_temp_dir` or :func:`recover` puts the old one back.
    """
    tmp, out = Path(tmp), Path(out)
    recover(out)
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if atomic and exchange(tmp, out):
        _remove(tmp)  # the old version, now under the temporary name
        return
    _replace_aside(tmp, out)


def _replace_aside(tmp: Path, out: Path, between: Callable[[], None] | None = None) -> None:
    """The fallback: ``out`` -> ``.{name}.*.old/previous``, then ``tmp`` -> ``out``.
    ``between`` runs between the two renames (tests kill the process there)."""
    old = Path(tempfile.mkdtemp(prefix=_temp_name_prefix(out), suffix=".old", dir=out.parent))
    os.rename(out, old / "previous")
    if between is not None:
        between()
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "previous", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
