"""Small file-system helpers shared by the layers that write folders (checkpoints, exports)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out``.

    The old folder is renamed aside before the new one takes its name and only then deleted,
    so at every moment ``out`` is either the old complete folder or the new complete one.
    """
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        out.rename(old / "previous")
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
