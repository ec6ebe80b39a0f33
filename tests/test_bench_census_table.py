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


def _with_init(searched: Path, path: Path) -> Path:
    """The same experiment with small embedding initialisation (an ablation row)."""
    doc = yaml.safe_load(searched.read_text())
    doc["model"]["inputs"] = {"embed_init_std": 0.01}
    path.write_text(yaml.safe_dump(doc))
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
        "--extra",
        f"1:CGC, embed init 0.01={_with_init(searched, tmp_path / 'extra.yaml')}",
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
    assert {"single-task", "PLE", "searched", "CGC, embed init 0.01"} <= rows
    # the extra row sits between the presets and the searched row
    order = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert order.index("PLE") < order.index("CGC, embed init 0.01") < order.index("searched")

    raw = json.loads(out.with_suffix(".json").read_text())
    group = raw["groups"]["1"]
    assert group["tasks"] == ["income", "marital"]
    assert {r["model"] for r in group["runs"]} == {
        "single_task",
        "ple",
        "searched",
        "extra:CGC, embed init 0.01",
    }
    extra = next(r for r in group["runs"] if r["model"].startswith("extra:"))
    assert extra["configs"][0]["model"]["inputs"]["embed_init_std"] == 0.01
    for run in group["runs"]:
        for task in ("income", "marital"):
            auc = run["test"][task]["auc"]
            assert math.isfinite(auc) and 0.5 < auc <= 1.0, (run["model"], task, auc)
    summary = group["summary"]
    assert set(summary["ple"]["gain"]) == {"income", "marital"}
    assert summary["searched"]["verdict"] in {"beats_single_task", "seesaw", "partial_gain", "no_gain"}


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("census_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdict_counts_a_gain_only_beyond_two_standard_errors() -> None:
    bench = _module()

    def runs(model: str, income: list[float], marital: list[float]) -> list[dict]:
        return [
            {
                "model": model,
                "seed": i,
                "test": {"income": {"auc": a}, "marital": {"auc": b}},
                "n_params": 1,
                "epoch_seconds": 1.0,
            }
            for i, (a, b) in enumerate(zip(income, marital, strict=True))
        ]

    single = runs("single_task", [0.940, 0.942, 0.941], [0.990, 0.991, 0.992])
    # income: +0.0003 on the means, far inside the seeds' spread -> a tie; marital clearly up
    wobble = runs("omoe", [0.9403, 0.9423, 0.9413], [0.995, 0.996, 0.997])
    # income clearly down, marital clearly up -> a real seesaw
    seesaw = runs("mmoe", [0.930, 0.931, 0.932], [0.995, 0.996, 0.997])
    summary = bench.summarise(single + wobble + seesaw, ["income", "marital"])
    assert summary["omoe"]["clear_gain"]["income"] == 0.0
    assert summary["omoe"]["verdict"] == "partial_gain"
    assert summary["mmoe"]["verdict"] == "seesaw"
