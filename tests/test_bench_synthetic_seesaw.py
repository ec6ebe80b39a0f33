"""Smoke test of benchmarks/synthetic_seesaw.py at its --quick size.

Why: the benchmark is run by hand and its outputs go into the docs, so a change in the
trainer, the presets or the generator could break it unnoticed until the next full run
(about an hour on a shared 2-core machine). This runs the script as a user does (a
subprocess from the repository root, one torch thread) and checks its three outputs: the
markdown table has one row per (correlation, model) with finite test MSEs, the JSON holds
the same runs, and the PNG is a PNG. The numbers themselves mean nothing at this size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "synthetic_seesaw.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table_rows(markdown: str) -> list[list[str]]:
    """The data rows of the one markdown table (header and separator dropped)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_quick_run_writes_table_json_and_png(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    table = (tmp_path / "synthetic_seesaw.md").read_text()
    rows = _table_rows(table)
    # --quick: correlations 0 and 1, models single-task and MMoE, one seed
    assert [(r[0], r[2]) for r in rows] == [
        ("0.00", "single-task"),
        ("0.00", "MMoE"),
        ("1.00", "single-task"),
        ("1.00", "MMoE"),
    ]
    for row in rows:
        for cell in (row[4], row[6]):  # y1 and y2 test MSE, "mean ± std"
            mean, std = (float(v) for v in cell.split("±"))
            assert math.isfinite(mean) and mean > 0 and math.isfinite(std)
        assert row[8] in {"reference", "beats_single_task", "seesaw", "partial_gain", "no_gain"}

    raw = json.loads((tmp_path / "synthetic_seesaw.json").read_text())
    assert raw["settings"]["quick"] is True
    assert len(raw["runs"]) == 4
    assert all(math.isfinite(v) for run in raw["runs"] for v in run["mse"].values())

    png = (tmp_path / "synthetic_seesaw.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
