"""Smoke test of ``benchmarks/search_cost.py --quick`` on the real Census-Income files.

The benchmark is run by hand and its results go into docs/benchmarks.md; this runs it as a
user does (a subprocess from the repository root, one process, a 3-second budget per run)
and checks its outputs: a hypervolume table per reference point with one row per strategy
and one cell per checkpoint (10%, ..., 100% of the budget), never dropping over time; the
four goal lines; a JSON holding every trial of the four runs whose states, epochs and finish
times obey the run's rules (full budget: every counted trial trains every epoch; MOASHA with
r = 1 on 2-epoch trials: a stopped trial stopped at rung 0 after epoch 1; nothing counted
after the deadline); the table's final hypervolume equal to the package's own
``mtlsearch.search.hypervolume`` recorded in the JSON; a PNG; and ``--from-json`` writing
the same markdown without running anything. The numbers mean nothing at this size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "search_cost.py"
STRATEGIES = ("tpe", "tpe+dominance", "tpe+moasha", "random+moasha")
BUDGET_S = 3.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _table(markdown: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and each row's cells (keyed by the first cell) of the table under ``heading``."""
    lines = markdown.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(heading))
    start = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("|"))  # the header row

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = cells(line)
        rows[row[0]] = row[1:]
    return cells(lines[start]), rows


def test_quick_run_writes_tables_json_png_and_rerenders(shared_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    proc = _run(
        "--quick", "--budget-s", str(BUDGET_S), "--data-dir", str(shared_data_dir), "--out-dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (out / "search_cost.md").read_text()
    assert "--quick: smoke size" in markdown
    assert "2,000 training rows (max_rows)" in markdown

    header, rows = _table(markdown, "## Hypervolume at checkpoints, reference AUC 0.5")
    assert header[0] == "strategy" and [h.split(" ")[0] for h in header[1:]] == [
        f"{k}0%" for k in range(1, 11)
    ]
    assert list(rows) == list(STRATEGIES)
    for strategy, cells in rows.items():
        hv = [float(c) for c in cells]
        assert len(hv) == 10 and all(0.0 <= v <= 0.25 for v in hv), (strategy, hv)
        assert hv == sorted(hv), f"{strategy}: hypervolume dropped over time {hv}"
    _, zoomed = _table(markdown, "## Hypervolume at checkpoints, zoomed reference")
    assert list(zoomed) == list(STRATEGIES)
    for strategy, cells in zoomed.items():
        hv = [float(c) for c in cells]
        assert all(0.0 <= v <= 1.0 for v in hv) and hv == sorted(hv), (strategy, hv)

    goals = [line for line in markdown.splitlines() if line.startswith("- goal: ")]
    assert [g[8:11] for g in goals] == ["(a)", "(b)", "(a)", "(b)"]
    assert all(": yes (" in g or ": no (" in g for g in goals), goals

    raw = json.loads((out / "search_cost.json").read_text())
    assert raw["settings"]["budget_s"] == BUDGET_S and raw["settings"]["epochs"] == 2
    runs = {r["strategy"]: r for r in raw["runs"]}
    assert sorted(runs) == sorted(STRATEGIES) and len(raw["runs"]) == 4
    assert runs["tpe"]["pruning"] is None
    assert runs["tpe+moasha"]["pruning"] == {
        "method": "moasha",
        "min_epochs": 1,
        "eta": 3,
        "rung_fraction": None,
    }
    assert runs["random+moasha"]["sampler"] == "random"
    for strategy, run in runs.items():
        assert run["objectives"] == ["income:auc", "marital:auc"]
        assert run["trials"], strategy
        for t in run["trials"]:
            assert t["state"] in ("COMPLETE", "PRUNED", "FAIL"), t
            if t["counted"]:
                assert t["finish_s"] <= BUDGET_S and not t["cut"], t
            if t["state"] == "COMPLETE" and t["counted"]:
                assert t["epochs"] == 2 and len(t["values"]) == 2, t
                # the result is the best epoch's (the trainer restores it), one of the epochs' values
                assert len(t["epoch_values"]) == 2 and t["values"] in t["epoch_values"], t
            if t["state"] == "PRUNED":
                assert strategy != "tpe", t  # no rule, no stop
                if strategy.endswith("moasha"):
                    assert (t["stopped_rung"], t["epochs"]) == (0, 1), t  # the only rung: epoch 1
        final_cell = float(rows[strategy][-1])
        assert abs(final_cell - run["final_hv_package"]) <= 5e-5, (
            strategy,
            final_cell,
            run["final_hv_package"],
        )
    assert (out / "search_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _run("--from-json", str(out / "search_cost.json"), "--out-dir", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "b" / "search_cost.md").read_text() == markdown
    assert (tmp_path / "b" / "search_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the early/last epoch rank agreement: one row per rung (2-epoch trials: epoch 1 only)
    assert "## Rank agreement of early epochs and results" in markdown
    header, agreement = _table(markdown, "## Rank agreement of early epochs and results")
    assert list(agreement) == ["1"] and header[-1] == "trials per seed"
    assert int(agreement["1"][-1]) == sum(
        t["state"] == "COMPLETE" and t["counted"]  # finished within the budget
        for t in runs["tpe"]["trials"]
        if len(t.get("epoch_values") or []) == 2
    )

    # every run saved as it ended; --resume reads them all and runs nothing
    saved = sorted(p.name for p in (out / "runs").iterdir())
    assert saved == sorted(f"{x.replace('+', '_')}-seed0.json" for x in STRATEGIES)
    resumed = _run(
        "--quick", "--budget-s", str(BUDGET_S), "--data-dir", str(shared_data_dir), "--out-dir", str(out),
        "--resume",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "4 run(s) read from" in resumed.stderr and "0 runs of" in resumed.stderr, resumed.stderr[-2000:]
    table = "## Hypervolume at checkpoints, reference AUC 0.5"
    assert _table((out / "search_cost.md").read_text(), table) == _table(markdown, table)

    # two files, each with some of the strategies, merge back into the one report
    halves = []
    for k, names in enumerate((STRATEGIES[:2], STRATEGIES[2:])):
        part = {
            **raw,
            "settings": {**raw["settings"], "strategies": list(names)},
            "runs": [r for r in raw["runs"] if r["strategy"] in names],
        }
        halves.append(tmp_path / f"half{k}.json")
        halves[-1].write_text(json.dumps(part))
    merged = _run("--from-json", *map(str, halves), "--out-dir", str(tmp_path / "c"))
    assert merged.returncode == 0, merged.stderr[-3000:]
    text = (tmp_path / "c" / "search_cost.md").read_text()
    for heading in (table, "## Per run"):
        assert _table(text, heading) == _table(markdown, heading), heading
    other = {**raw, "settings": {**raw["settings"], "epochs": 3}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    clash = _run(
        "--from-json", str(halves[0]), str(tmp_path / "other.json"), "--out-dir", str(tmp_path / "d")
    )
    assert clash.returncode == 2 and "setting epochs = 3" in clash.stderr, clash.stderr[-2000:]
    assert len(clash.stderr.strip().splitlines()) == 1 and "Traceback" not in clash.stderr
    # MOASHA's settings must agree only between files that both ran MOASHA: full TPE's runs
    # are the same runs whatever --eta was, and --resume reads them under another --eta
    assert [r["strategy"] for r in json.loads(halves[0].read_text())["runs"]] == ["tpe", "tpe+dominance"]
    tpe_eta4 = json.loads(halves[0].read_text())
    tpe_eta4["settings"]["eta"] = 4
    (tmp_path / "tpe_eta4.json").write_text(json.dumps(tpe_eta4))
    mixed = _run(
        "--from-json", str(tmp_path / "tpe_eta4.json"), str(halves[1]), "--out-dir", str(tmp_path / "e")
    )
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    shown = _run("--from-json", str(out / "search_cost.json"), "--out-dir", str(tmp_path / "g"),
                 "--auc-tolerance", "0.01")  # fmt: skip
    goal_a = [
        x for x in (tmp_path / "g" / "search_cost.md").read_text().splitlines() if x.startswith("- goal: (a)")
    ]
    assert shown.returncode == 0 and len(goal_a) == 4, shown.stderr[-2000:]  # strict and raised, two points
    assert sum("in <= 1/3 of its time within 0.01 AUC, every seed" in x for x in goal_a) == 2
    assert json.loads((tmp_path / "e" / "search_cost.json").read_text())["settings"]["eta"] == 3
    moasha_eta4 = json.loads(halves[1].read_text())
    moasha_eta4["settings"]["eta"] = 4
    (tmp_path / "moasha_eta4.json").write_text(json.dumps(moasha_eta4))
    clash = _run(
        "--from-json", str(halves[1]), str(tmp_path / "moasha_eta4.json"), "--out-dir", str(tmp_path / "f")
    )
    assert clash.returncode == 2 and "setting eta = 4" in clash.stderr, clash.stderr[-2000:]
    resumed = _run(
        "--quick", "--budget-s", str(BUDGET_S), "--data-dir", str(shared_data_dir), "--out-dir", str(out),
        "--resume", "--strategies", "tpe", "--eta", "4",
    )  # fmt: skip
    assert resumed.returncode == 0 and "1 run(s) read from" in resumed.stderr, resumed.stderr[-2000:]
    missing = _run("--from-json", str(tmp_path / "nope.json"), "--out-dir", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope.json: no such file")
