"""Smoke test of benchmarks/architectures.py on the AliExpress sample (issue 16's benchmark).

Why: the sample-data tables in docs/benchmarks.md come from this script, and the census run
is long, so an API change that breaks the script should fail here, not when the lead next
spends an hour on census. ``--quick`` on the 100-row AliExpress sample trains the seven rows
with 2 seeds in about ten seconds; the AUCs there are noise, so the test checks the table's
shape, the JSON and the networks each row built (parameter counts written out from the
builder with the row's sizes), not the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mtlsearch.arch import build_model, count_parameters, preset
from mtlsearch.data import load_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "architectures.py"
PLE_SIZES = {"n_experts": 2, "n_specific": 2, "n_levels": 2, "expert_hidden": (64,), "tower": (32,)}
LABELS = ["single-task", "MMoE", "PLE", "ESMM-PLE", "AdaTT", "DSelect-k MMoE", "STEM-PLE"]


def test_quick_aliexpress_table_and_json(shared_data_dir: Path) -> None:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--data-dir",
        str(shared_data_dir),
        "--datasets",
        "aliexpress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *markdown, last = proc.stdout.rstrip().splitlines()
    text = "\n".join(markdown)
    result = json.loads(last)  # strict JSON: NaN would not parse as None

    # sizes of the sample are stated, and every row is in the table in the script's order
    assert "train 100 rows (ctr 60/100, cvr 2/60, ctcvr 2/100 positive)" in text
    assert "| model | ctr AUC | cvr AUC | ctcvr AUC | verdict vs single-task | params | s/epoch |" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert [r for r in rows if r in LABELS] == LABELS
    for task in ("ctr", "cvr", "ctcvr"):
        assert any(line.startswith(f"- {task}: the rows' means span") for line in markdown), task
    assert "papers.md holds no MTReclib or ESMM-paper figures" in text

    summary = result["datasets"]["aliexpress"]["summary"]
    assert list(summary) == ["single_task", "mmoe", "ple", "esmm_ple", "adatt", "dselect_mmoe", "stem_ple"]
    runs = result["datasets"]["aliexpress"]["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == sorted((m, s) for m in summary for s in (0, 1))
    for model, s in summary.items():
        for task, auc in s["auc"].items():
            assert auc["n"] == 0 or 0.0 <= auc["mean"] <= 1.0, (model, task)

    # ESMM-PLE is the PLE network of ctr and cvr: ctcvr = ctr x cvr adds no tower or expert
    data = load_dataset("aliexpress", data_dir=shared_data_dir)
    ctr, cvr, _ = data.tasks
    two = count_parameters(build_model(preset("ple", data.input_spec(), (ctr, cvr), **PLE_SIZES)))
    three = count_parameters(build_model(preset("ple", data.input_spec(), data.tasks, **PLE_SIZES)))
    assert summary["esmm_ple"]["n_params"] == two
    assert summary["ple"]["n_params"] == three > two
