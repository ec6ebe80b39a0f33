"""Verified downloads into a user cache.

A file enters the cache only whole and with the published sha256: it is streamed into a
temporary file in the cache folder, hashed on the way, and renamed into place (atomic on
one file system) only when the byte count and the hash match. A failed, partial or
tampered download raises and leaves nothing behind; concurrent workers each write their
own temporary file, and the last rename wins with identical content.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from mtlsearch._errors import UserError
from mtlsearch.data._io import first_line

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$MTLSEARCH_CACHE``, else ``$XDG_CACHE_HOME/mtlsearch``, else ``~/.cache/mtlsearch``."""
    if os.environ.get("MTLSEARCH_CACHE"):
        return Path(os.environ["MTLSEARCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mtlsearch"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_verified(url: str, dest: str | Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the right bytes.

    Raises :class:`UserError` (one line, naming the URL) on a network error, an HTTP error,
    a body shorter than its Content-Length, or a sha256 mismatch; ``dest`` is then untouched.
    """
    dest = Path(dest)
    if dest.is_file():
        if sha256_file(dest) == sha256:
            return dest
        log.warning("%s: cached file has the wrong sha256; downloading it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        log.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise UserError(f"{url}: download incomplete ({size} of {int(expected)} bytes)")
        if h.hexdigest() != sha256:
            raise UserError(f"{url}: sha256 mismatch (got {h.hexdigest()}, expected {sha256})")
        os.replace(tmp, dest)
        log.info("saved %s (%d bytes, sha256 ok)", dest, size)
        return dest
    except urllib.error.HTTPError as exc:
        raise UserError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        # URLError: no route / refused; HTTPException: IncompleteRead (connection cut short)
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"{url}: download failed ({type(exc).__name__}: {first_line(reason)})") from None
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["cache_dir", "fetch_verified", "sha256_file"]
