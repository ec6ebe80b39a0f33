"""Benchmark (not a test): replay MOASHA's stopping rule over a full-budget search's recorded curves.

Why: ``benchmarks/search_cost.py`` measures whole searches (half an hour of this machine per
setting), too slow to choose MOASHA's settings by. Every full-budget TPE run it saves holds,
for each trial, the validation values of every epoch and when each epoch ended. This script
replays the package's own rung rule (:func:`mtlsearch.search._rungs.decide`, the function
the workers call) over those curves, for many settings at once, in seconds:

* the **same proposals in the same order** as full TPE made them, one worker (as
  search_cost.py runs): trial *i* trains to its first rung epoch, is ranked against the
  earlier trials' values at that rung, stops or goes on to the next rung, and so on; a
  trial that passes every rung completes with the result full TPE recorded for it;
* **time**: a stopped trial costs what its epochs cost in the recorded run (start to that
  epoch's end; a stopped trial skips the test evaluation, so nothing is added after it);
  a completed one its whole recorded time; the gaps between trials (the sampler's ask,
  the storage) as recorded. So the replay's clock is the recorded run's clock with the
  stopped trials' later epochs taken out;
* the question: how soon does the replay reach the hypervolume full TPE had after its
  ``--target-trials``-th trial (issue 14's goal (a)), as a share of full TPE's time?
  And which of the trials making full TPE's final front did the rule stop?

What it leaves out (so the figures are the rule's, not the search's): the sampler's answer
to stopped trials (TPE learns from rung values and proposes differently) and the extra
configurations a faster search would reach in the same time; a replay never proposes
anything full TPE did not. ``--shuffles N`` also replays N seeded random orders of each
run's trials (full TPE's time in the same order is the reference), a proposal stream with
TPE's start-up and its later, better trials mixed.

Settings replayed (the grid, ``--min-epochs``, ``--eta``, ``--rung-values``):
``min_epochs`` r (epoch of rung 0), ``eta`` (rungs at r*eta^k strictly below the last epoch;
the top ceil(n/eta) of the n trials seen at a rung go on), and the values a rung ranks:
``current`` (that epoch's validation values: what ``--pruner moasha`` uses) or ``best``
(the best epoch so far by the trainer's monitor, mean skill over the tasks: what the trial
would deliver if it stopped there; skill = AUC - 0.5 for both objectives here).

Input: ``--from-json`` with search_cost.py's ``search_cost.json`` files or its saved run
files (``OUT/runs/tpe-seedN.json``); the full-budget TPE runs in them are replayed (runs
made before the per-epoch end times were recorded cannot be, and are named).

Usage::

    .venv/bin/python benchmarks/search_cost.py --strategies tpe ... --out-dir /tmp/sc
    .venv/bin/python benchmarks/rung_replay.py --from-json /tmp/sc/search_cost.json [--shuffles 20]

Output: a markdown table on stdout (and ``--out`` FILE): per setting, per seed the time to
reach the target as a share of full TPE's time, the mean, how many replays reached the
target in at most a third, how many trials stopped at each rung, and how many of full
TPE's final front trials the rule stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_cost as sc

from mtlsearch.search._rungs import decide, rung_epochs

RUNG_VALUES = ("current", "best")


def _fail(message: str) -> NoReturn:
    print(f"rung_replay.py: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class Trial:
    """One full-budget trial as recorded: its number, result, per-epoch values and costs."""

    number: int
    values: tuple[float, float]
    curve: tuple[tuple[float, ...], ...]  # per epoch, the task objectives' values
    epoch_cost: tuple[float, ...]  # cumulative seconds from the trial's start to each epoch's end
    cost: float  # start to finish
    gap: float  # seconds between the previous trial's finish (or the clock's start) and its start
    params: tuple[tuple[str, Any], ...] = ()  # the trial's sampled parameters, as recorded


def load_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Full TPE's runs from search_cost.json files or saved run files."""
    runs = []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            _fail(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})")
        if isinstance(payload, dict) and "runs" in payload:
            found = payload["runs"]
        elif isinstance(payload, dict) and "run" in payload:
            found = [payload["run"]]
        else:
            _fail(f"{path}: neither a search_cost.json report nor a saved run file")
        runs += [r for r in found if r.get("strategy") == sc.FULL_TPE and r.get("pruning") is None]
    if not runs:
        _fail(f"no full-budget TPE run ({sc.FULL_TPE!r}, no pruning) in {', '.join(map(str, paths))}")
    return runs


def trials_of(run: dict[str, Any]) -> list[Trial]:
    """The run's counted COMPLETE trials in proposal order, with their recorded costs."""
    rows = sorted(sc._complete(run), key=lambda t: t["number"])
    if any(not t.get("epoch_end_s") for t in rows):
        _fail(
            f"{run['strategy']} seed {run['seed']}: no per-epoch end times (a run saved before "
            "search_cost.py recorded them); run it again"
        )
    out, last_finish = [], 0.0
    for t in sorted(rows, key=lambda t: t["start_s"]):
        ends = t["epoch_end_s"]
        out.append(
            Trial(
                number=t["number"],
                values=tuple(t["values"]),
                curve=tuple(tuple(v) for v in t["epoch_values"]),
                epoch_cost=tuple(e - t["start_s"] for e in ends),
                cost=t["finish_s"] - t["start_s"],
                gap=max(0.0, t["start_s"] - last_finish),
                params=tuple(sorted((t.get("params") or {}).items())),
            )
        )
        last_finish = t["finish_s"]
    return out


def rung_value(curve: Sequence[Sequence[float]], epoch: int, kind: str) -> list[float]:
    """The values a rung at 1-based ``epoch`` ranks: that epoch's, or the best epoch's so far by
    mean skill (AUC - 0.5; the earlier epoch on a tie, as the trainer keeps the first best)."""
    if kind == "current":
        return list(curve[epoch - 1])
    best = max(range(epoch), key=lambda i: (statistics.fmean(v - 0.5 for v in curve[i]), -i))
    return list(curve[best])


@dataclass
class Replay:
    """What one replay did: finish times of the completed trials, stops per rung, time spent."""

    finished: list[tuple[float, tuple[float, float]]]  # (replay clock, result) of completed trials
    stopped: dict[int, list[int]]  # rung -> trial numbers stopped there
    wall: float


def replay(trials: Sequence[Trial], epochs: int, r: int, eta: int, kind: str) -> Replay:
    """One worker replaying ``trials`` in order under MOASHA(r, eta) ranking ``kind`` values."""
    rungs = rung_epochs(r, eta, epochs)
    seen: dict[int, list[tuple[int, list[float]]]] = {k: [] for k in range(len(rungs))}
    clock, finished, stopped = 0.0, [], {k: [] for k in range(len(rungs))}
    for t in trials:
        clock += t.gap
        stop_at = None
        for k, e in enumerate(rungs):
            seen[k].append((t.number, rung_value(t.curve, e, kind)))
            if not decide(t.number, seen[k], (1.0, 1.0), eta, k, e).goes_on:
                stop_at = (k, e)
                break
        if stop_at is None:
            clock += t.cost
            finished.append((clock, t.values))
        else:
            clock += t.epoch_cost[stop_at[1] - 1]
            stopped[stop_at[0]].append(t.number)
    return Replay(finished, stopped, clock)


def full_run(trials: Sequence[Trial]) -> Replay:
    """Full TPE's own run on the replay's clock (every trial complete)."""
    clock, finished = 0.0, []
    for t in trials:
        clock += t.gap + t.cost
        finished.append((clock, t.values))
    return Replay(finished, {}, clock)


def hv_after(finished: Sequence[tuple[float, tuple[float, float]]], n: int, ref: Sequence[float]) -> float:
    return sc.hv2d([v for _, v in finished[:n]], ref) / sc._scale(ref)


def compare(trials: Sequence[Trial], epochs: int, r: int, eta: int, kind: str, target_trials: int,
            ref: Sequence[float], tolerance: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """One replay against full TPE in the same order: the share of full TPE's time to its
    ``target_trials``-trial hypervolume, the rung stops, the front trials lost."""
    full = full_run(trials)
    n = min(target_trials, len(trials))
    target = hv_after(full.finished, n, ref)
    t_full = full.finished[n - 1][0]
    rep = replay(trials, epochs, r, eta, kind)
    t_rep = sc.time_to_reach(rep.finished, target, ref, tolerance)
    best = {tuple(v) for v in sc.front([t.values for t in trials[:n]])}
    lost = sum(
        1 for t in trials[:n] if tuple(t.values) in best and any(t.number in s for s in rep.stopped.values())
    )
    return {
        "share": None if t_rep is None else t_rep / t_full,
        "stopped": {k: len(v) for k, v in rep.stopped.items()},
        "front_lost": lost,
        "front": len(best),
        "wall_share": rep.wall / full.wall,
        "trials": len(trials),
    }


def _share(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}"


def _shuffled(by_seed: dict[int, list[Trial]], epochs: int, r: int, eta: int, kind: str,
              a: argparse.Namespace, ref: Sequence[float]) -> list[float]:  # fmt: skip
    """Shares over ``a.shuffles`` seeded random orders of each seed's trials (inf: never)."""
    pool = []
    for seed, ts in by_seed.items():
        rng = random.Random(seed)
        for _ in range(a.shuffles):
            order = list(ts)
            rng.shuffle(order)
            share = compare(order, epochs, r, eta, kind, a.target_trials, ref, a.auc_tolerance)["share"]
            pool.append(math.inf if share is None else share)
    return sorted(pool)


def _inf_share(x: float) -> str:
    return _share(None if math.isinf(x) else x)


def table(
    runs: Sequence[dict[str, Any]], a: argparse.Namespace, ref: Sequence[float], label: str
) -> list[str]:
    """One markdown table: a row per (r, eta, rung values) setting."""
    by_seed = {r["seed"]: trials_of(r) for r in sorted(runs, key=lambda r: r["seed"])}
    epochs = max(len(t.curve) for ts in by_seed.values() for t in ts)
    seeds = list(by_seed)
    shuffled_note = (
        f"shuffled: {a.shuffles} seeded orders per seed, median share and the share of replays at <= 1/3; "
        if a.shuffles
        else ""
    )
    columns = ["r", "eta", "rung values", "rungs (epochs)", *[f"seed {s}" for s in seeds], "mean", "<= 1/3"]
    columns += ["shuffled median", "shuffled <= 1/3"] if a.shuffles else []
    columns += ["stopped per rung", "front stopped", "wall"]
    lines = [
        f"#### {label}: time to full TPE's {a.target_trials}-trial hypervolume, "
        "as a share of full TPE's time",
        "",
        "recorded order per seed (share; `never`: a front trial was stopped and the target not "
        "reached), then the mean and the count of replays at <= 1/3; "
        + shuffled_note
        + "stopped per rung (sum over seeds), front trials stopped (of front size, sum over "
        "seeds), replay wall over full TPE's wall (mean)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in a.min_epochs:
        for eta in a.eta:
            rungs = rung_epochs(r, eta, epochs)
            if not rungs:
                continue
            for kind in a.rung_values:
                res = [
                    compare(ts, epochs, r, eta, kind, a.target_trials, ref, a.auc_tolerance)
                    for ts in by_seed.values()
                ]
                shares = [math.inf if x["share"] is None else x["share"] for x in res]
                row = [str(r), str(eta), kind, ", ".join(map(str, rungs))]
                row += [_inf_share(x) for x in shares]
                row += [
                    _inf_share(statistics.fmean(shares)),
                    f"{sum(x <= 1 / 3 for x in shares)} of {len(seeds)}",
                ]
                if a.shuffles:
                    pool = _shuffled(by_seed, epochs, r, eta, kind, a, ref)
                    row += [
                        _inf_share(statistics.median(pool)),
                        f"{sum(v <= 1 / 3 for v in pool) / len(pool):.0%}",
                    ]
                row.append(
                    " / ".join(str(sum(x["stopped"].get(k, 0) for x in res)) for k in range(len(rungs)))
                )
                row.append(f"{sum(x['front_lost'] for x in res)} of {sum(x['front'] for x in res)}")
                row.append(f"{statistics.fmean(x['wall_share'] for x in res):.2f}")
                lines.append("| " + " | ".join(row) + " |")
    return lines


def lost_front(runs: Sequence[dict[str, Any]], a: argparse.Namespace) -> list[str]:
    """The trials of full TPE's front (after ``--target-trials``) that MOASHA with the
    package's defaults (r = 1, eta = 3, current values) stops, in the recorded order: where,
    their values there and their results, its *margin* (the smallest raise of both AUCs
    that lets another point of the front dominate it: what the rest of the front lacks
    without it), the learning rate and batch size."""
    lines = [
        "#### Front trials stopped by r = 1, eta = 3, current values (the defaults), recorded order",
        "",
        "| seed | trial | stopped at rung (epoch) | values there | result | margin over the rest of "
        "the front (AUC) | lr | batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(runs, key=lambda r: r["seed"]):
        trials = trials_of(run)
        epochs = max(len(t.curve) for t in trials)
        rungs = rung_epochs(1, 3, epochs)
        n = min(a.target_trials, len(trials))
        best = [tuple(v) for v in sc.front([t.values for t in trials[:n]])]
        rep = replay(trials, epochs, 1, 3, "current")
        where = {number: k for k, numbers in rep.stopped.items() for number in numbers}
        for t in trials[:n]:
            if tuple(t.values) not in best or t.number not in where:
                continue
            k = where[t.number]
            others = [p for p in best if p != tuple(t.values)]
            margin = min((max(t.values[0] - p[0], t.values[1] - p[1]) for p in others), default=math.nan)
            params = dict(t.params)
            lr = params.get("training.lr")
            cells = [
                str(run["seed"]),
                str(t.number),
                f"{k} ({rungs[k]})",
                ", ".join(f"{v:.4f}" for v in t.curve[rungs[k] - 1]),
                ", ".join(f"{v:.4f}" for v in t.values),
                f"{margin:.2g}",
                "-" if lr is None else f"{lr:.2g}",
                str(params.get("training.batch_size", "-")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 4:
        lines[2:] = ["none"]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--from-json", type=Path, nargs="+", required=True,
        help="search_cost.json reports or OUT/runs/tpe-seedN.json files holding full TPE runs",
    )  # fmt: skip
    p.add_argument("--min-epochs", type=int, nargs="+", default=[1, 2, 3], help="r values (default 1 2 3)")
    p.add_argument("--eta", type=int, nargs="+", default=[2, 3, 4], help="eta values (default 2 3 4)")
    p.add_argument("--rung-values", nargs="+", choices=RUNG_VALUES, default=list(RUNG_VALUES))
    p.add_argument("--target-trials", type=int, default=50, help="goal (a)'s full TPE trial count")
    p.add_argument(
        "--auc-tolerance", type=float, default=0.0,
        help="a replay reaches the target when its front raised by this AUC on both tasks does (default 0)",
    )  # fmt: skip
    p.add_argument("--shuffles", type=int, default=0, help="also replay N seeded random orders per run")
    p.add_argument("--zoom-margin", type=float, default=0.002)
    p.add_argument("--out", type=Path, help="also write the report here")
    a = p.parse_args(argv)
    for name in ("min_epochs", "eta"):
        low = 1 if name == "min_epochs" else 2
        if any(v < low for v in getattr(a, name)):
            p.error(f"--{name.replace('_', '-')}: every value must be >= {low}")
    if a.target_trials < 1 or a.shuffles < 0 or not 0 <= a.auc_tolerance < 0.5:
        p.error("--target-trials must be >= 1, --shuffles >= 0 and --auc-tolerance in [0, 0.5)")
    if a.zoom_margin < 0:
        _fail(f"--zoom-margin: must be >= 0 (AUC below the fronts' worst), got {a.zoom_margin}")
    if a.out is not None and not a.out.parent.is_dir():
        _fail(f"--out: no folder {a.out.parent}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    runs = load_runs(a.from_json)
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        _fail(f"two full TPE runs of one seed among the inputs (seeds {sorted(seeds)})")
    zoom = sc.zoom_reference(runs, a.zoom_margin)
    epochs = max(len(t.curve) for r in runs for t in trials_of(r))
    bare = sorted({r for r in a.min_epochs for eta in a.eta if not rung_epochs(r, eta, epochs)})
    if len(bare) == len(set(a.min_epochs)):
        _fail(f"no setting has a rung below the runs' last epoch ({epochs}): --min-epochs must be < {epochs}")
    short = [f"{r['seed']}: {len(sc._complete(r))}" for r in runs if len(sc._complete(r)) < a.target_trials]
    lines = [
        "- date: " + dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        + f"; machine: {platform.machine()}; command: `benchmarks/rung_replay.py "
        + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        f"- replayed: full TPE runs, seeds {sorted(seeds)}; complete trials per seed: "
        + ", ".join(f"{r['seed']}: {len(sc._complete(r))}" for r in sorted(runs, key=lambda r: r["seed"])),
    ]  # fmt: skip
    if short:
        lines.append(
            f"- full TPE finished fewer than {a.target_trials} trials on seeds {', '.join(short)}: "
            "the target is its hypervolume after its last"
        )
    if bare:
        lines.append(f"- no rung below the last epoch ({epochs}) with --min-epochs {bare}: not replayed")
    lines.append("")
    lines += [*table(runs, a, sc.NO_SKILL, "AUC 0.5 reference"), ""]
    lines += [*table(runs, a, zoom, f"zoomed reference {zoom}"), ""]
    lines += [*lost_front(runs, a), ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
