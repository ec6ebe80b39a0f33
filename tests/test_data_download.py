"""The Census-Income download path, against a local HTTP server on 127.0.0.1.

A file enters the cache only whole and with the published sha256; a wrong file, a cut
connection or an HTTP error is one clear error and leaves nothing in the cache."""

from __future__ import annotations

import functools
import hashlib
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import shared_data_dir

from mtlsearch import cli
from mtlsearch._errors import UserError
from mtlsearch.data import cache_dir, census_files
from mtlsearch.data._builtin import CENSUS_FILES

NAMES = [f.name for f in CENSUS_FILES.values()]


class _Server:
    def __init__(self, folder: Path, truncate: bool = False) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if not truncate:
                    return super().do_GET()
                body = (folder / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 3])  # then the connection drops
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache; no local data folder, so the loader must download."""
    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTLSEARCH_DATA", raising=False)
    monkeypatch.delenv("MTLSEARCH_CENSUS_URL", raising=False)
    return tmp_path / "cache"


def _files(folder: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.exists()
        else []
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Server]:
    with _Server(shared_data_dir("census-income-kdd")) as server:
        yield server


def test_download_verifies_and_caches(cache: Path, served: _Server) -> None:
    train, test = census_files(base_url=served.url)
    assert train.parent == test.parent == cache / "census-income-kdd"
    for path, published in zip((train, test), CENSUS_FILES.values(), strict=True):
        assert _sha(path) == published.sha256
    assert _files(cache) == [f"census-income-kdd/{n}" for n in sorted(NAMES)]  # no temp files
    assert sorted(served.requests) == sorted(f"/{n}" for n in NAMES)
    census_files(base_url=served.url)  # cached and verified: no second download
    assert len(served.requests) == 2


def test_base_url_from_the_environment(cache: Path, served: _Server, monkeypatch) -> None:
    monkeypatch.setenv("MTLSEARCH_CENSUS_URL", served.url.rstrip("/"))
    census_files()
    assert len(served.requests) == 2


def test_a_corrupt_cached_file_is_replaced(cache: Path, served: _Server) -> None:
    folder = cache / "census-income-kdd"
    folder.mkdir(parents=True)
    (folder / NAMES[0]).write_bytes(b"not the census")
    train, _ = census_files(base_url=served.url)
    assert _sha(train) == CENSUS_FILES["train"].sha256


def test_checksum_mismatch_leaves_nothing(cache: Path, tmp_path: Path) -> None:
    fake = tmp_path / "mirror"
    fake.mkdir()
    for name in NAMES:
        (fake / name).write_bytes(b"\x1f\x8b tampered " * 1000)
    with _Server(fake) as server, pytest.raises(UserError) as exc:
        census_files(base_url=server.url)
    msg = str(exc.value)
    assert "sha256" in msg and NAMES[0] in msg and "\n" not in msg
    assert _files(cache) == []


def test_partial_download_leaves_nothing(cache: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(shared_data_dir("census-income-kdd") / NAMES[0], mirror / NAMES[0])
    with _Server(mirror, truncate=True) as server, pytest.raises(UserError) as exc:
        census_files(base_url=server.url)
    assert NAMES[0] in str(exc.value) and "\n" not in str(exc.value)
    assert _files(cache) == []


def test_http_error_is_one_line(cache: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with _Server(tmp_path / "empty") as server, pytest.raises(UserError, match="404") as exc:
        census_files(base_url=server.url)
    assert NAMES[0] in str(exc.value)
    assert _files(cache) == []


def test_cli_download_failure_exits_non_zero(cache: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    with _Server(tmp_path / "empty") as server:
        monkeypatch.setenv("MTLSEARCH_CENSUS_URL", server.url)
        monkeypatch.setattr(sys, "argv", ["mtlsearch", "data", "describe", "--dataset", "census-income"])
        with pytest.raises(SystemExit) as exc:
            cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "404" in err
    assert _files(cache) == []


def test_cache_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MTLSEARCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mtlsearch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mtlsearch"
    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_local_files_are_used_without_downloading(cache: Path) -> None:
    train, test = census_files(data_dir=shared_data_dir())  # no server: must not download
    assert train.name == NAMES[0] and test.name == NAMES[1]
    assert _files(cache) == []
