"""Smoke test of benchmarks/balancing.py at its --quick size, synthetic data only.

The benchmark is run by hand and its outputs go into docs/benchmarks.md; this runs it as a
user does (a subprocess from the repository root, one fit at a time) and checks its outputs:
one table row per (model, method) with finite gains, the JSON holding every fit (the
single-task reference plus models x methods), a PNG, and ``--from-json`` redrawing the same
table without training. The numbers mean nothing at this size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "balancing.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_quick_run_writes_table_json_png_and_redraws_from_json(tmp_path: Path) -> None:
    proc = _run("--quick", "--no-census", "--methods", "fixed", "pcgrad", "dwa", "--jobs", "1",
                "--out-dir", str(tmp_path / "a"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "a" / "balancing.md").read_text()
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| MMoE") or line.startswith("| PLE")
    ]
    assert [(r[0], r[1]) for r in rows] == [
        ("MMoE", "equal"), ("MMoE", "pcgrad"), ("MMoE", "dwa"),
        ("PLE", "equal"), ("PLE", "pcgrad"), ("PLE", "dwa"),
    ]  # fmt: skip
    for row in rows:
        for cell in row[2:4]:  # y1 and y2 gain, "+x.x% ± y.y"
            assert math.isfinite(float(cell.split("%")[0]))
    raw = json.loads((tmp_path / "a" / "balancing.json").read_text())
    assert len(raw["runs"]) == 1 + 2 * 3  # single-task + 2 models x 3 methods, one seed, p = 0
    assert (tmp_path / "a" / "balancing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _run("--from-json", str(tmp_path / "a" / "balancing.json"), "--out-dir", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "b" / "balancing.md").read_text() == table
