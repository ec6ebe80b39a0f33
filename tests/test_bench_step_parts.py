"""Smoke test of benchmarks/step_parts.py: its ``--quick`` size runs and prints every part.

Why: docs/benchmarks.md quotes this script's figures for the builder's implementation
choices (embedding lookup, expert inputs, fused Adam, batched GEMMs); a change that breaks
one of the variants it patches or builds should fail here. Timings are not checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "step_parts.py"


def test_quick_run_prints_every_part_and_variant(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out-json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by_part: dict[str, list[str]] = {}
    for r in rows:
        assert math.isfinite(r["us"]) and r["us"] > 0, r
        by_part.setdefault(r["part"], []).append(r["variant"])
        assert f"| {r['part']} | {r['variant']} |" in proc.stdout
    assert set(by_part) == {"embedding", "expert_inputs", "model_step", "adam", "expert_gemm"}
    assert all(len(v) >= 2 for v in by_part.values()), by_part  # a choice has an alternative
