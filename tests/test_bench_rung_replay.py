"""benchmarks/rung_replay.py: MOASHA's rule replayed over a recorded full-budget run.

A constructed run of four 3-epoch trials whose decisions, clock and hypervolumes are worked
out by hand below (MOASHA r = 1, eta = 3: one rung, at epoch 1; the top ceil(n/3) go on):

====  =====  ============  ======  =============  ==============================================
#     start  epoch ends    finish  epoch 1        rung 0 (seen, quota, place)        result
====  =====  ============  ======  =============  ==============================================
0     0.0    1, 2, 3       3.5     (0.80, 0.90)   alone: goes on                     (0.86, 0.93)
1     4.0    5, 6, 7       7.5     (0.70, 0.85)   2 seen, quota 1, dominated: stops  (0.88, 0.90)
2     8.0    9, 10, 11     11.5    (0.82, 0.91)   3 seen, quota 1, dominates all     (0.87, 0.94)
3     12.0   13, 14, 15    15.5    (0.81, 0.95)   4 seen, quota 2, front with #2     (0.85, 0.96)
====  =====  ============  ======  =============  ==============================================

#3 and #2 share front 0 (neither dominates), both end points of a two-member front (crowding
inf), #2 first by number: #3 is second of four, inside the quota of 2.

Replay clock (gaps between trials as recorded, 0.5 s): #0 completes at 3.5; #1 starts at 4.0
and stops after its first epoch (1 s): 5.0; #2 starts at 5.5, completes at 9.0; #3 starts at
9.5, completes at 13.0. Full TPE: 3.5, 7.5, 11.5, 15.5.

Target (4 trials, AUC 0.5 reference): the front #1, #2, #3 sorted by income AUC:
0.38 * 0.40 + 0.37 * 0.04 + 0.35 * 0.02 = 0.1738. The replay lost #1, so its exact
hypervolume never gets there. Raised by 0.01 AUC: after #0 and #2, (0.88, 0.95) alone gives
0.38 * 0.45 = 0.171 < 0.1738; with #3, + 0.36 * 0.02 = 0.1782: reached at 13.0, a share of
13 / 15.5 = 0.84 of full TPE's time.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "rung_replay.py"


@pytest.fixture(scope="module")
def rr():
    """The script as a module (it imports its sibling search_cost.py)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("rung_replay", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["rung_replay"] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("rung_replay", None)
        sys.path.remove(str(SCRIPT.parent))


def _trial(number, start, epoch1, result):
    curve = [epoch1, [epoch1[0] + 0.01, epoch1[1] + 0.01], result]
    return {
        "number": number,
        "state": "COMPLETE",
        "counted": True,
        "values": result,
        "start_s": start,
        "finish_s": start + 3.5,
        "epoch_values": curve,
        "epoch_end_s": [start + 1, start + 2, start + 3],
    }


RUN = {
    "strategy": "tpe",
    "pruning": None,
    "seed": 0,
    "trials": [
        _trial(0, 0.0, [0.80, 0.90], [0.86, 0.93]),
        _trial(1, 4.0, [0.70, 0.85], [0.88, 0.90]),
        _trial(2, 8.0, [0.82, 0.91], [0.87, 0.94]),
        _trial(3, 12.0, [0.81, 0.95], [0.85, 0.96]),
    ],
}


def test_the_replay_stops_decides_and_clocks_as_worked_out_by_hand(rr):
    trials = rr.trials_of(RUN)
    assert [t.gap for t in trials] == [0.0, 0.5, 0.5, 0.5]
    rep = rr.replay(trials, epochs=3, r=1, eta=3, kind="current")
    assert rep.stopped == {0: [1]}
    assert [(when, list(v)) for when, v in rep.finished] == [
        (3.5, [0.86, 0.93]),
        (9.0, [0.87, 0.94]),
        (13.0, [0.85, 0.96]),
    ]
    assert rep.wall == 13.0
    assert [when for when, _ in rr.full_run(trials).finished] == [3.5, 7.5, 11.5, 15.5]

    strict = rr.compare(trials, 3, 1, 3, "current", 4, (0.5, 0.5))
    assert strict["share"] is None and strict["front_lost"] == 1 and strict["front"] == 3
    assert rr.hv_after(rr.full_run(trials).finished, 4, (0.5, 0.5)) == pytest.approx(0.1738)
    raised = rr.compare(trials, 3, 1, 3, "current", 4, (0.5, 0.5), tolerance=0.01)
    assert raised["share"] == pytest.approx(13.0 / 15.5)
    assert raised["stopped"] == {0: 1} and raised["wall_share"] == pytest.approx(13.0 / 15.5)


def test_best_rung_values_are_the_monitors_best_epoch_so_far(rr):
    curve = [[0.80, 0.90], [0.79, 0.95], [0.70, 0.70]]  # mean skill 0.35, 0.37, 0.20
    assert rr.rung_value(curve, 3, "best") == [0.79, 0.95]
    assert rr.rung_value(curve, 3, "current") == [0.70, 0.70]
    assert rr.rung_value(curve, 1, "best") == [0.80, 0.90]


def _cli(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_command_prints_the_rows_and_refuses_a_file_without_full_tpe_in_one_line(tmp_path):
    path = tmp_path / "search_cost.json"
    path.write_text(json.dumps({"runs": [RUN]}))
    common = ["--from-json", str(path), "--min-epochs", "1", "--eta", "3", "--rung-values", "current"]
    out = _cli(*common, "--target-trials", "4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 1 | 3 | current | 1 | never | never | 0 of 1 | 1 | 1 of 3 | 0.84 |" in out.stdout, out.stdout
    # the front trial the defaults stop: #1 at rung 0 (epoch 1); its margin: #2 dominates it
    # once raised by max(0.88 - 0.87, 0.90 - 0.94) = 0.01 (#3 by 0.03); no parameters recorded
    assert "| 0 | 1 | 0 (1) | 0.7000, 0.8500 | 0.8800, 0.9000 | 0.01 | - | - |" in out.stdout, out.stdout
    out = _cli(*common, "--target-trials", "4", "--auc-tolerance", "0.01")
    assert "| 1 | 3 | current | 1 | 0.84 | 0.84 | 0 of 1 | 1 | 1 of 3 | 0.84 |" in out.stdout, out.stdout

    # r = 1 and 2 replayed, r = 3 (the last epoch) named; the 50-trial target is after the last
    out = _cli("--from-json", str(path), "--eta", "2", "--min-epochs", "1", "2", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "- full TPE finished fewer than 50 trials on seeds 0: 4: the target" in out.stdout
    assert "- no rung below the last epoch (3) with --min-epochs [3]: not replayed" in out.stdout
    assert "| 2 | 2 | current | 2 |" in out.stdout and "| 3 | 2 |" not in out.stdout
    for args, says in (
        (["--min-epochs", "3"], "no setting has a rung below the runs' last epoch (3)"),
        (["--out", str(tmp_path / "no" / "x.md")], "--out: no folder"),
        (["--zoom-margin", "-1"], "--zoom-margin: must be >= 0"),
    ):
        bad = _cli("--from-json", str(path), *args)
        assert bad.returncode == 2 and says in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2, (
            bad.stderr
        )
    moasha_only = tmp_path / "moasha.json"
    moasha_only.write_text(
        json.dumps({"runs": [{**RUN, "strategy": "tpe+moasha", "pruning": {"method": "moasha"}}]})
    )
    bad = _cli("--from-json", str(moasha_only))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no full-budget TPE run" in bad.stderr and "Traceback" not in bad.stderr
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps({"runs": [{**RUN, "trials": [{**t, "epoch_end_s": None} for t in RUN["trials"]]}]})
    )
    bad = _cli("--from-json", str(old))
    assert bad.returncode == 2 and "no per-epoch end times" in bad.stderr, bad.stderr
