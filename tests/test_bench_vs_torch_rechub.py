"""Smoke test of benchmarks/vs_torch_rechub.py: its ``--quick`` size runs end to end.

Why: the speed/accuracy comparison with torch-rechub in the docs must come from this
script, so a change that breaks it (an mtlsearch API it calls, the child-process protocol,
the report layout) should fail here, not when someone next regenerates the numbers. The
quick size (a row sample, 1 epoch, 1 round) only has to produce a table with both tools and
finite timings, memory and AUCs; the numbers themselves are not checked.

torch-rechub is never a dependency of mtlsearch: it lives in ``benchmarks/.rechub-env``
(installed there by the script's ``--install``, ``pip --no-deps``). When it is missing the
test installs it first; if that fails, CI (``CI=true``) fails loudly, a developer's machine
without network skips with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "vs_torch_rechub.py"


def _script() -> ModuleType:
    """The benchmark as a module (its top level imports only numpy and the stdlib)."""
    spec = importlib.util.spec_from_file_location("vs_torch_rechub", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ensure_rechub(bench: ModuleType) -> None:
    env_dir: Path = bench.RECHUB_ENV
    if (env_dir / f"torch_rechub-{bench.RECHUB_VERSION}.dist-info").is_dir():
        return
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--install"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == 0:
        return
    reason = (
        f"could not install torch-rechub {bench.RECHUB_VERSION} into {env_dir} "
        f"(exit {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.mark.slow
def test_quick_run_writes_the_table_with_both_tools(shared_data_dir: Path, tmp_path: Path) -> None:
    bench = _script()
    _ensure_rechub(bench)
    out_md, out_json = tmp_path / "vs.md", tmp_path / "vs.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--data-dir",
        str(shared_data_dir),
        "--out-md",
        str(out_md),
        "--out-json",
        str(out_json),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    text = out_md.read_text()
    assert text in proc.stdout  # the same report on stdout and in the file
    assert "| tool | s/epoch (train + valid) |" in text
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert {"torch-rechub", "mtlsearch"} <= rows
    assert f"torch-rechub {bench.RECHUB_VERSION}" in text
    assert "ratio torch-rechub / mtlsearch" in text

    report = json.loads(out_json.read_text())
    assert [r["tool"] for r in report["runs"]] == ["torch-rechub", "mtlsearch"]
    assert report["rows"] == {"train": 10_000, "valid": 5_000, "test": 5_000}
    for run in report["runs"]:
        for key in ("epoch_seconds", "train_seconds", "valid_seconds"):
            assert len(run[key]) == 1, (run["tool"], key, run[key])
            assert all(math.isfinite(x) and x > 0 for x in run[key]), (run["tool"], key, run[key])
        assert math.isfinite(run["rss_peak_mib"]) and run["rss_peak_mib"] > 0, run
        for task in ("income", "marital"):
            auc = run["test_auc"][task]
            assert math.isfinite(auc) and 0.0 <= auc <= 1.0, (run["tool"], task, auc)
    for tool, summary in report["summary"].items():
        assert all(math.isfinite(v) for v in summary.values()), (tool, summary)
    # the same network: with batch norm and the embedding init mirrored (the script's
    # defaults), mtlsearch's PLE has exactly torch-rechub's trainable parameter count
    params = {r["tool"]: r["n_params"] for r in report["runs"]}
    assert params["mtlsearch"] == params["torch-rechub"], params
    assert report["settings"]["norm"] == "batch" and report["settings"]["embed_init_std"] == 1e-4
