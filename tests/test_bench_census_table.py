"""Smoke test of benchmarks/census_table.py: its ``--quick`` size runs end to end from the CLI.

Why: the committed census table in the docs must come from this script, so a change that
breaks it (an API it uses, the table layout, the JSON) should fail here rather than when
someone next spends an hour regenerating the table. The quick size (a row sample, 1 epoch,
1 seed, single-task and PLE, plus a searched config given as a file) finishes in well under
a minute on 2 cores; its AUCs only have to be finite and better than chance.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlsearch.arch import InputSpec, TaskSpec, preset

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "census_table.py"


def _searched_config(path: Path) -> Path:
    """A hand-written experiment file without inputs/tasks (the script fills them from the
    data), as a user would keep the levels and towers of an exported config."""
    dummy_inputs = InputSpec(n_numeric=1, categorical=())
    tasks = (TaskSpec("income", "binary"), TaskSpec("marital", "binary"))
    model = preset(
        "cgc", dummy_inputs, tasks, n_experts=1, n_specific=1, expert_hidden=(16,), tower=(8,)
    ).to_dict()
    model.pop("inputs")
    model.pop("tasks")
    path.write_text(yaml.safe_dump({"model": model, "training": {"lr": 0.003, "batch_size": 256}}))
    return path


@pytest.mark.slow
def test_quick_run_writes_the_table(shared_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    searched = _searched_config(tmp_path / "searched.yaml")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--data-dir",
        str(shared_data_dir),
        "--groups",
        "1",
        "--searched",
        f"1={searched}",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]

    text = out.read_text()
    assert text in proc.stdout  # the same table on stdout and in the file
    header = "| model | income AUC | income gain | marital AUC | marital gain | verdict | params | s/epoch |"
    assert header in text
    assert "MMoE paper Table 1" in text and "PLE paper Table 5" in text
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert {"single-task", "PLE", "searched"} <= rows

    raw = json.loads(out.with_suffix(".json").read_text())
    group = raw["groups"]["1"]
    assert group["tasks"] == ["income", "marital"]
    assert {r["model"] for r in group["runs"]} == {"single_task", "ple", "searched"}
    for run in group["runs"]:
        for task in ("income", "marital"):
            auc = run["test"][task]["auc"]
            assert math.isfinite(auc) and 0.5 < auc <= 1.0, (run["model"], task, auc)
    summary = group["summary"]
    assert set(summary["ple"]["gain"]) == {"income", "marital"}
    assert summary["searched"]["verdict"] in {"beats_single_task", "seesaw", "partial_gain", "no_gain"}
