"""Smoke test of ``benchmarks/search_efficiency.py --quick``: the script runs end to end on
the real Census-Income files, reports all three samplers, and its hypervolume never drops
from one checkpoint to the next (the front of the first N trials only grows with N).

The numbers of a quick run mean nothing (1,000 rows, 1 epoch); the full run's results are
recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "search_efficiency.py"
SAMPLERS = ("nsga2", "tpe", "random")


def _summary_table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """The summary table (the first one, headed ``| sampler | HV@...``): header cells and
    each sampler's cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| sampler | HV@"))

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = cells(line)
        rows[row[0]] = row[1:]
    return cells(lines[start])[1:], rows


def test_quick_run_reports_every_sampler_with_growing_hypervolume(
    shared_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "search_efficiency.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data_dir), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    markdown = out.read_text()
    assert "reference point" in markdown
    header, rows = _summary_table(markdown)
    checkpoints = [int(c[3:]) for c in header if c.startswith("HV@")]
    assert checkpoints == sorted(checkpoints) and len(checkpoints) >= 2
    assert set(rows) == set(SAMPLERS)
    for sampler, cells in rows.items():
        hv = [float(c.split("±")[0]) for c in cells[: len(checkpoints)]]
        assert all(0.0 <= v <= 0.25 for v in hv), (sampler, hv)
        assert hv == sorted(hv), f"{sampler}: hypervolume dropped over checkpoints {hv}"

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["reference_point"]["loss_space"] == [-0.5, -0.5]
    assert {r["sampler"] for r in report["runs"]} == set(SAMPLERS)
    for run in report["runs"]:
        hv = [run["hypervolume"][str(n)] for n in checkpoints]
        assert hv == sorted(hv), (run["sampler"], hv)
        assert run["finished"] == report["budget"]["trials"]
        assert run["trials_per_hour"] > 0
