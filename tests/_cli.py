"""The console script run in the test's own process (cheap: no interpreter start)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def run_main(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str, str]:
    """``mtlsearch ARGS`` in ``cwd``: exit code, stdout, stderr. ``main()`` installs its own
    SIGTERM and SIGINT handlers and sets torch's thread count; the test process gets its own
    back."""
    import torch

    from mtlsearch.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["mtlsearch", *args])
    code = 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err
