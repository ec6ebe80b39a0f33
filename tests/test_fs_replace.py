"""Atomic folder replace (``mtlsearch._fs``): the exchange, the fallback and its recovery
after a real SIGKILL between its two renames, and the cleaning of killed writers' folders."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mtlsearch import _fs

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def start(tmp_path: Path, code: str) -> subprocess.Popen:
    script = tmp_path / f"helper_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(proc: subprocess.Popen, expected: str) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith(expected):
        proc.kill()
        raise AssertionError(f"helper said {line!r}; stderr: {proc.stderr.read()}")  # type: ignore[union-attr]
    return line.strip()


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: its pid is no longer a live process (nor a zombie)
    assert proc.returncode == -signal.SIGKILL


@linux_only
def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a = folder(tmp_path / "a", x="1")
    b = folder(tmp_path / "b", y="2")
    assert _fs.exchange(a, b) is True
    assert contents(a) == {"y": "2"} and contents(b) == {"x": "1"}
    with pytest.raises(FileNotFoundError):
        _fs.exchange(tmp_path / "missing", a)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine().lower() not in _fs._SYS_RENAMEAT2,
    reason="the renameat2 syscall number is known for Linux x86_64 and aarch64",
)
def test_the_raw_syscall_exchanges_too(tmp_path, monkeypatch):
    # a libc without the renameat2 wrapper: the syscall by its number
    raw = _fs._raw_renameat2(
        ctypes.CDLL(None, use_errno=True), _fs._SYS_RENAMEAT2[platform.machine().lower()]
    )
    monkeypatch.setattr(_fs, "_renameat2", None)
    monkeypatch.setattr(_fs, "_syscall", raw)
    a = folder(tmp_path / "a", x="1")
    b = folder(tmp_path / "b", y="2")
    assert _fs.exchange(a, b) is True
    assert contents(a) == {"y": "2"} and contents(b) == {"x": "1"}
    with pytest.raises(FileNotFoundError):
        _fs.exchange(tmp_path / "missing", a)


@linux_only
def test_replace_swaps_in_the_new_folder_and_deletes_the_old(tmp_path, monkeypatch):
    def no_fallback(tmp, out, between=None):
        raise AssertionError("the rename-aside fallback ran")

    monkeypatch.setattr(_fs, "_replace_aside", no_fallback)
    out = folder(tmp_path / "out", weights="old", extra="old only")
    tmp = _fs.make_temp_dir(out)
    folder(tmp, weights="new")
    _fs.replace_dir(tmp, out)
    assert contents(out) == {"weights": "new"}
    assert os.listdir(tmp_path) == ["out"]  # the old version is gone, no temporary left


def test_the_temporary_folder_names_its_owner(tmp_path):
    tmp = _fs.make_temp_dir(tmp_path / "sub" / "run.v2")
    assert tmp.parent == tmp_path / "sub" and tmp.is_dir() and not any(tmp.iterdir())
    name, host, pid, _random, kind = tmp.name[1:].rsplit(".", 4)
    assert (name, host, pid, kind) == ("run.v2", _fs._host_id(), str(os.getpid()), "tmp")
    parsed = _fs._parse(tmp)
    assert parsed is not None
    assert (parsed.name, parsed.kind, parsed.pid, parsed.host) == (
        "run.v2",
        "tmp",
        os.getpid(),
        _fs._host_id(),
    )


@pytest.mark.parametrize("how", ["atomic=False", "exchange unsupported", "renameat2 says EINVAL"])
def test_the_fallback_reaches_the_same_end_state(tmp_path, monkeypatch, how):
    calls = []
    real = _fs._replace_aside
    monkeypatch.setattr(_fs, "_replace_aside", lambda tmp, out: calls.append(1) or real(tmp, out))
    if how == "exchange unsupported":
        monkeypatch.setattr(_fs, "exchange", lambda a, b: False)
    if how == "renameat2 says EINVAL":

        def einval(*args):
            ctypes.set_errno(errno.EINVAL)
            return -1

        monkeypatch.setattr(_fs, "_renameat2", einval)
        monkeypatch.setattr(_fs, "_exchange_unsupported", False)
    out = folder(tmp_path / "out", weights="old", extra="old only")
    tmp = _fs.make_temp_dir(out)
    folder(tmp, weights="new")
    _fs.replace_dir(tmp, out, atomic=how != "atomic=False")
    assert calls == [1]
    assert contents(out) == {"weights": "new"}
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path):
    out = folder(tmp_path / "out", weights="old")
    with pytest.raises(FileNotFoundError):
        _fs._replace_aside(tmp_path / "never-written", out)
    assert contents(out) == {"weights": "old"}
    assert os.listdir(tmp_path) == ["out"]


def test_replacing_a_missing_folder_is_a_rename(tmp_path):
    out = tmp_path / "out"
    tmp = folder(_fs.make_temp_dir(out), weights="new")
    _fs.replace_dir(tmp, out)
    assert contents(out) == {"weights": "new"} and os.listdir(tmp_path) == ["out"]


@linux_only
def test_out_never_goes_missing_while_a_writer_replaces_it_and_is_killed(tmp_path):
    out = folder(tmp_path / "out", version="0", payload="x" * 1000)
    proc = start(
        tmp_path,
        f"""
        from pathlib import Path
        from mtlsearch._fs import make_temp_dir, replace_dir
        out = Path({str(out)!r})
        for i in range(1, 10**9):
            tmp = make_temp_dir(out)
            (tmp / "payload").write_text("x" * 1000)
            (tmp / "version").write_text(str(i))
            replace_dir(tmp, out)
            if i == 20:
                print("running", flush=True)
        """,
    )
    wait_for_line(proc, "running")
    missing = checks = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # read the folder as a reader would, thousands of times
        checks += 1
        missing += not out.is_dir()
    kill(proc)
    assert checks > 100 and missing == 0
    assert contents(out)["payload"] == "x" * 1000 and int(contents(out)["version"]) >= 20
    _fs.make_temp_dir(tmp_path / "next").rmdir()  # the next write cleans the killed writer's
    assert [p for p in os.listdir(tmp_path) if not p.startswith("helper_")] == ["out"]


def _killed_between_renames(tmp_path: Path) -> Path:
    """A writer killed by SIGKILL between the fallback's two renames: ``out`` is gone and
    its old version sits in ``.out.*.old/previous``."""
    out = folder(tmp_path / "data" / "out", weights="old")
    proc = start(
        tmp_path,
        f"""
        import time
        from pathlib import Path
        from mtlsearch._fs import _replace_aside, make_temp_dir
        out = Path({str(out)!r})
        tmp = make_temp_dir(out)
        (tmp / "weights").write_text("new")
        _replace_aside(tmp, out, between=lambda: (print("between", flush=True), time.sleep(600)))
        """,
    )
    wait_for_line(proc, "between")
    kill(proc)
    assert not out.exists()  # the bug the exchange removes: a kill here left no `out`
    (aside,) = out.parent.glob(".out.*.old")
    assert contents(aside / "previous") == {"weights": "old"}
    return out


def test_recover_restores_out_after_a_kill_between_the_renames(tmp_path):
    out = _killed_between_renames(tmp_path)
    assert _fs.recover(out) is True
    assert contents(out) == {"weights": "old"}
    assert _fs.recover(out) is False  # nothing left to do
    _fs.clean_stale(out.parent)  # the killed writer's .tmp
    assert os.listdir(out.parent) == ["out"]


def test_the_next_write_restores_out_and_cleans_up(tmp_path):
    out = _killed_between_renames(tmp_path)
    tmp = _fs.make_temp_dir(out)  # the start of the next write to the same folder
    assert contents(out) == {"weights": "old"}
    assert sorted(os.listdir(out.parent)) == sorted(["out", tmp.name])
    folder(tmp, weights="newer")
    _fs.replace_dir(tmp, out)
    assert contents(out) == {"weights": "newer"} and os.listdir(out.parent) == ["out"]


def test_replace_dir_itself_restores_before_replacing(tmp_path):
    out = _killed_between_renames(tmp_path)
    tmp = folder(out.parent / "elsewhere", weights="newer")
    _fs.replace_dir(tmp, out)
    assert contents(out) == {"weights": "newer"}
    assert not list(out.parent.glob(".out.*.old"))


def test_stale_folders_of_dead_writers_go_and_a_live_writers_stay(tmp_path):
    parent = tmp_path / "runs"
    code = f"""
        import sys, time
        from pathlib import Path
        from mtlsearch._fs import make_temp_dir
        tmp = make_temp_dir(Path({str(parent / "out")!r}))
        print("made", tmp, flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
        """
    live = start(tmp_path, code)
    try:
        live_tmp = Path(wait_for_line(live, "made").split(" ", 1)[1])
        dead = start(tmp_path, code)
        dead_tmp = Path(wait_for_line(dead, "made").split(" ", 1)[1])
        assert live_tmp.is_dir()  # the second writer's start kept the first one's folder
        kill(dead)
        # a folder named after the live pid but older than that process: the pid was reused
        reused = folder(parent / f".out.{_fs._host_id()}.{live.pid}.abcd1234.tmp", part="1")
        hour_ago = time.time() - 3600
        os.utime(reused, (hour_ago, hour_ago))
        # another host's folders: gone after a day, kept before; so are old-style names
        foreign_old = folder(parent / ".out.0badf00d.1.zz99yy88.tmp")
        foreign_new = folder(parent / ".out.0badf00d.2.zz99yy77.tmp")
        legacy_old = folder(parent / ".out.q1w2e3r4.tmp")
        two_days_ago = time.time() - 2 * 86400
        for p in (foreign_old, legacy_old):
            os.utime(p, (two_days_ago, two_days_ago))
        unrelated = folder(parent / ".cache")
        for p in (dead_tmp, live_tmp, reused, foreign_old, foreign_new, legacy_old, unrelated):
            assert p.is_dir(), p
        mine = _fs.make_temp_dir(parent / "other")  # the next write to the same parent
        assert not dead_tmp.exists() and not reused.exists()
        assert not foreign_old.exists() and not legacy_old.exists()
        assert live_tmp.is_dir() and foreign_new.is_dir() and unrelated.is_dir() and mine.is_dir()
    finally:
        kill(live)
    _fs.clean_stale(parent)  # now its owner is dead too
    assert not live_tmp.exists() and mine.is_dir()  # this process is alive
