"""Benchmark (not a test): how fast NSGA-II, TPE and random search improve the Pareto front.

Why: a user choosing ``--sampler`` wants to know which sampler finds a good front for a given
number of trials, and how many trials an hour a 2-core machine runs. This script answers
both on Census-Income (KDD), task group 1 (income > 50K, marital "never married"), with the
same space, data, budget and seeds for every sampler.

What it measures, per sampler and seed:

* the **hypervolume** of the Pareto front of the first N trials (by trial number) at each
  checkpoint (default 10, 25, 50), on the two objectives ``income:auc`` and
  ``marital:auc`` (validation split, the search's own objectives). The reference point is
  fixed for every run: AUC 0.5 on both tasks (no skill), i.e. ``(-0.5, -0.5)`` in the loss
  space of :func:`mtlsearch.search.hypervolume` (which is what
  :func:`mtlsearch.search.reference_point` gives for AUC objectives). The largest possible
  value is 0.25 (both AUCs 1.0). A trial that failed counts against the budget and adds
  nothing to the front.
* **trials per hour**: finished trials over the study's wall time (one worker, in process,
  ``torch`` with ``--threads`` threads), and the median training seconds per trial (the
  trainer's own timing, ``seconds`` user attribute).

Reduced budget (450 full trainings on 199,523 rows do not fit a benchmark run on 2 cores),
stated in the report: the dataset is loaded once (data seed 0: the test file's seeded 1:1
split into validation and test, preprocessing fitted on the full train file), then the
train split is cut to ``--train-rows`` (default 20,000) rows and the validation and test
splits to ``--eval-rows`` (default 10,000) rows each, by seeded permutations (seed 0: the
same rows for every run). The space is ``--space`` (default ``search_spaces/ple.yaml``)
with ``training.epochs`` set to ``--epochs`` (default 2), early stopping removed, and the
expert widths above ``--max-width`` (default 64: [32] and [64] of ple.yaml's four) dropped.
The named reference architectures are **not** enqueued (``enqueue_references=False``):
every trial is the sampler's own, so the samplers are compared on equal terms. Encodings
are the product's defaults (``fixed`` for NSGA-II, ``conditional`` for TPE and random).
The sampler seed and the training seed of every trial are the run's seed (0, 1, 2, ...),
as in ``mtlsearch search --seed``.

The search API loads its data from the study's settings; to train on the subsample the
script replaces that loader (``mtlsearch.search._study._load_data``) for its own process.
Everything else (study creation, tickets, samplers, trial execution, objectives) is the
package's code path, the same as ``mtlsearch search``.

Run from the repository root::

    .venv/bin/python benchmarks/search_efficiency.py --data-dir ../shared/data \\
        --seeds 3 --trials 50 --out /tmp/bench/search_efficiency.md

It writes a markdown report to ``--out`` (default: stdout only) and the raw numbers (every
trial's objective values, seconds and state) as JSON beside it (``.json`` suffix).
``--quick`` is a tiny run for the smoke test (seconds, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState

import mtlsearch
import mtlsearch.search._study as study_module
from mtlsearch.data import MTLDataset, TensorSplit, load_dataset
from mtlsearch.search import (
    FAIL_ATTR,
    SearchSettings,
    create_or_resume,
    hypervolume,
    objectives_of,
    open_storage,
    reference_point,
    run_worker,
)

log = logging.getLogger("benchmark")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLER_NAMES = ("nsga2", "tpe", "random")
ZOOM_REFERENCE = (0.90, 0.98)  # income AUC, marital AUC: the secondary, zoomed view


@dataclasses.dataclass(frozen=True)
class Budget:
    """The reduced, stated budget of one benchmark invocation."""

    seeds: tuple[int, ...]
    trials: int
    checkpoints: tuple[int, ...]
    train_rows: int
    eval_rows: int
    epochs: int
    max_width: int | None
    samplers: tuple[str, ...]


FULL = {"train_rows": 20_000, "eval_rows": 10_000, "epochs": 2, "max_width": 64}
QUICK = {
    "seeds": 1,
    "trials": 6,
    "checkpoints": (2, 4, 6),
    "train_rows": 1_000,
    "eval_rows": 1_000,
    "epochs": 1,
    "max_width": 32,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("MTLSEARCH_DATA")  # mtlsearch.data.data_dirs' rule
        or os.environ.get("MTLSEARCH_SHARED_DATA")
        or REPO_ROOT.parent / "shared" / "data",
        help="folder holding census-income-kdd/ (default: $MTLSEARCH_DATA, or its alias "
        "$MTLSEARCH_SHARED_DATA, else ../shared/data)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke-test size (1 seed, 6 trials, 1 epoch)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 50)")
    p.add_argument(
        "--checkpoints", type=int, nargs="+", default=None, help="trial counts to report (default 10 25 50)"
    )
    p.add_argument(
        "--train-rows", type=int, default=None, help=f"train subsample (default {FULL['train_rows']})"
    )
    p.add_argument(
        "--eval-rows", type=int, default=None, help=f"valid and test subsample (default {FULL['eval_rows']})"
    )
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per trial (default {FULL['epochs']})")
    p.add_argument(
        "--max-width",
        type=int,
        default=None,
        help=f"drop expert widths above this from the space (default {FULL['max_width']}; 0: keep all)",
    )
    p.add_argument("--samplers", nargs="+", default=list(SAMPLER_NAMES), choices=SAMPLER_NAMES)
    p.add_argument("--space", type=Path, default=REPO_ROOT / "search_spaces" / "ple.yaml")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here (+ .json)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every trial")
    p.add_argument(
        "--zoom-ref",
        type=float,
        nargs=2,
        default=list(ZOOM_REFERENCE),
        metavar=("INCOME_AUC", "MARITAL_AUC"),
        help="reference point of the secondary, zoomed hypervolume (default %(default)s)",
    )
    p.add_argument(
        "--render", type=Path, default=None, help="print (and --out) the report of a saved JSON; runs nothing"
    )
    return p.parse_args(argv)


def make_budget(args: argparse.Namespace) -> Budget:
    base: dict[str, Any] = {"seeds": 3, "trials": 50, "checkpoints": (10, 25, 50), **FULL}
    if args.quick:
        base.update(QUICK)
    for key in ("seeds", "trials", "checkpoints", "train_rows", "eval_rows", "epochs", "max_width"):
        value = getattr(args, key)
        if value is not None:
            base[key] = tuple(value) if key == "checkpoints" else value
    if args.trials is not None and args.checkpoints is None:  # keep checkpoints inside the budget
        base["checkpoints"] = (*(c for c in base["checkpoints"] if c < args.trials), args.trials)
    checkpoints = tuple(sorted(set(base["checkpoints"])))
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > base["trials"]:
        raise SystemExit(f"--checkpoints must lie in 1..{base['trials']}, got {list(checkpoints)}")
    return Budget(
        seeds=tuple(range(base["seeds"])),
        trials=base["trials"],
        checkpoints=checkpoints,
        train_rows=base["train_rows"],
        eval_rows=base["eval_rows"],
        epochs=base["epochs"],
        max_width=base["max_width"] or None,
        samplers=tuple(args.samplers),
    )


# ---- data and space ------------------------------------------------------------------------
def _cut(split: TensorSplit, n: int, seed: int) -> TensorSplit:
    """The first ``n`` rows of a seeded permutation of ``split`` (all rows if ``n`` >= size)."""
    if n >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.take(order[:n])


def subsample(data: MTLDataset, train_rows: int, eval_rows: int, seed: int = 0) -> MTLDataset:
    return dataclasses.replace(
        data,
        train=_cut(data.train, train_rows, seed),
        valid=_cut(data.valid, eval_rows, seed + 1),
        test=_cut(data.test, eval_rows, seed + 2),
    )


def space_text(path: Path, epochs: int, max_width: int | None) -> str:
    """The space file with ``training.epochs`` set, early stopping removed and, if
    ``max_width`` is given, the ``level.expert_hidden`` choices wider than it dropped."""
    raw = yaml.safe_load(path.read_text())
    training = dict(raw.get("training", {}) or {})
    training["epochs"] = epochs
    training.pop("patience", None)
    raw["training"] = training
    note = f"epochs={epochs}, no early stopping"
    hidden = (raw.get("level", {}) or {}).get("expert_hidden")
    if max_width is not None and isinstance(hidden, dict) and "choice" in hidden:
        kept = [c for c in hidden["choice"] if max(c, default=0) <= max_width]
        if not kept:
            raise SystemExit(f"--max-width {max_width}: no level.expert_hidden choice of {path} fits")
        raw["level"]["expert_hidden"] = {"choice": kept}
        note += f", level.expert_hidden choices {kept}"
    return f"# {path.name}, benchmark budget: {note}\n" + yaml.safe_dump(raw, sort_keys=False)


def warm_up(folder: Path) -> None:
    """Pay the one-time costs (the trainer's lazy imports, scikit-learn among them; SQLAlchemy
    and schema creation) outside the timed studies, or the first study of the run would be
    charged a few seconds more than the others."""
    importlib.import_module("mtlsearch.train")
    storage = open_storage(f"sqlite:///{folder / 'warm-up.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, directions=["maximize", "maximize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=2)


# ---- one study ------------------------------------------------------------------------------
def run_study(
    sampler: str,
    seed: int,
    budget: Budget,
    text: str,
    source: str,
    data_dir: Path,
    storage_dir: Path,
) -> dict[str, Any]:
    """Run one study to its budget in this process; returns its raw numbers."""
    settings = SearchSettings(
        space_text=text,
        space_source=source,
        dataset="census-income",
        dataset_options={"group": 1},
        data_dir=str(data_dir),
        sampler=sampler,
        seed=seed,
        n_trials=budget.trials,
        enqueue_references=False,
    )
    storage = f"sqlite:///{storage_dir / f'{sampler}-{seed}.db'}"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ctx = create_or_resume(f"{sampler}-seed{seed}", storage, settings, heartbeat=False)
    ran = run_worker(ctx)
    wall = time.perf_counter() - t0
    trials = sorted(ctx.study.get_trials(deepcopy=False), key=lambda t: t.number)
    objectives = objectives_of(ctx.study)
    ref = reference_point(objectives)
    hv = {n: hypervolume(trials[:n], objectives, ref) for n in budget.checkpoints}
    for n, value in hv.items():  # the package's HV against an independent 2-D sweep
        mine = hv2d([t.values for t in trials[:n] if t.state == TrialState.COMPLETE], (0.5, 0.5))
        if abs(mine - value) > 1e-9:
            raise RuntimeError(f"{sampler} seed {seed}: HV@{n} {value} but a 2-D sweep gives {mine}")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    seconds = [float(t.user_attrs["seconds"]) for t in trials if "seconds" in t.user_attrs]
    out = {
        "sampler": sampler,
        "seed": seed,
        "ran": ran,
        "wall_s": wall,
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "objectives": [o.name for o in objectives],
        "reference_point_loss_space": ref.tolist(),
        "hypervolume": {str(n): v for n, v in hv.items()},
        "finished": len(finished),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "trials_per_hour": len(finished) / wall * 3600,
        "median_trial_s": statistics.median(seconds) if seconds else float("nan"),
        "trials": [_trial_row(t) for t in trials],
    }
    log.info(
        "%-6s seed %d: %d trials in %.0f s (%.0f/h, median %.2f s), HV %s",
        sampler, seed, len(finished), wall, out["trials_per_hour"], out["median_trial_s"],
        " ".join(f"@{n}={v:.4f}" for n, v in hv.items()),
    )  # fmt: skip
    return out


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "values": list(t.values) if t.values else None,
        "seconds": t.user_attrs.get("seconds"),
        "n_params": t.user_attrs.get("n_params"),
        "fail_reason": t.user_attrs.get(FAIL_ATTR),
    }


# ---- report ---------------------------------------------------------------------------------
def hv2d(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Hypervolume of two maximised objectives above ``ref`` (a sweep; no library), used for
    the zoomed view and to cross-check :func:`mtlsearch.search.hypervolume`."""
    inside = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    area, top = 0.0, ref[1]
    for x, y in inside:
        if y > top:
            area += (x - ref[0]) * (y - top)
            top = y
    return area


def zoomed(run: dict[str, Any], n: int, ref: Sequence[float]) -> float:
    """HV of the first ``n`` trials above ``ref``, as a share of the box from ``ref`` to (1, 1)."""
    values = [t["values"] for t in run["trials"][:n] if t["state"] == "COMPLETE"]
    return hv2d(values, ref) / ((1 - ref[0]) * (1 - ref[1]))


def _mean_std(values: Sequence[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _median_values(run: dict[str, Any]) -> list[float]:
    done = [t["values"] for t in run["trials"] if t["state"] == "COMPLETE"]
    return np.median(np.array(done), axis=0).tolist() if done else [float("nan")] * 2


def other_seconds(run: dict[str, Any]) -> float:
    """Wall seconds per finished trial spent outside training: sampling, storage, set-up."""
    training = sum(t["seconds"] or 0.0 for t in run["trials"])
    return (run["wall_s"] - training) / max(1, run["finished"])


def markdown(report: dict[str, Any]) -> str:
    b = report["budget"]
    runs = report["runs"]
    cps = b["checkpoints"]
    lines = [
        f"Search efficiency, census-income group 1 ({report['date']}, {report['machine']})",
        "",
        f"- objectives: {', '.join(runs[0]['objectives'])} (validation); hypervolume reference point: "
        "AUC 0.5 on both (loss space (-0.5, -0.5)); max 0.25",
        f"- budget: {b['trials']} trials x {len(b['seeds'])} seed(s) {list(b['seeds'])} per sampler; "
        f"{b['epochs']} epoch(s) per trial, no early stopping; train subsample {b['train_rows']:,} rows, "
        f"valid/test subsamples {b['eval_rows']:,} rows each (seeded, the same for every run)",
        f"- space: {b['space']} with expert widths <= {b['max_width'] or 'any'}; "
        "reference architectures not enqueued; "
        f"torch threads {report['threads']}; one in-process worker per study",
        f"- load average (1 min): {report['load_before']:.2f} before, {report['load_after']:.2f} after; "
        f"total wall {report['total_wall_s'] / 60:.1f} min",
        f"- command: `{report['command']}`",
        "- HV@N: hypervolume of the first N trials' front (mean ± sample std over seeds); trials/h: "
        "finished trials / study wall hours; median s/trial: the trainer's own time per trial; "
        "other s/trial: the rest of the wall time per trial (sampler, storage, model set-up); "
        "failed: trials that used budget without a result (e.g. a sampled level with no expert)",
        "",
        "| sampler | " + " | ".join(f"HV@{n}" for n in cps) + " | trials/h | median s/trial | failed |",
        "|---|" + "---|" * (len(cps) + 3),
    ]
    for sampler in b["samplers"]:
        mine = [r for r in runs if r["sampler"] == sampler]
        hv = [_mean_std([r["hypervolume"][str(n)] for r in mine], 4) for n in cps]
        tph = _mean_std([r["trials_per_hour"] for r in mine], 0)
        med = _mean_std([r["median_trial_s"] for r in mine], 2)
        failed = sum(r["failed"] for r in mine)
        lines.append(f"| {sampler} | " + " | ".join(hv) + f" | {tph} | {med} | {failed} |")
    zoom = report.get("zoom_reference") or list(ZOOM_REFERENCE)
    lines += [
        "",
        f"Zoomed: the same fronts above a tighter reference point, income AUC {zoom[0]} and marital AUC "
        f"{zoom[1]}, as a share of the box from there to (1, 1) (0: no trial beyond it on both, 1: a perfect "
        "model). A secondary view, chosen after the first runs, where the 0.5 point leaves every front near "
        "the same value.",
        "",
        "| sampler | " + " | ".join(f"zoomed HV@{n}" for n in cps) + " |",
        "|---|" + "---|" * len(cps),
    ]
    for sampler in b["samplers"]:
        mine = [r for r in runs if r["sampler"] == sampler]
        cells = [_mean_std([zoomed(r, n, zoom) for r in mine], 3) for n in cps]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where the trials land: median validation AUC over each study's completed trials (mean ± std "
        "over seeds), a sampler's trial quality beside its front.",
        "",
        "| sampler | median income AUC | median marital AUC |",
        "|---|---|---|",
    ]
    for sampler in b["samplers"]:
        mine = [r for r in runs if r["sampler"] == sampler]
        income, marital = zip(*(_median_values(r) for r in mine), strict=True)
        lines.append(f"| {sampler} | {_mean_std(income, 4)} | {_mean_std(marital, 4)} |")
    lines += [
        "",
        "Per run:",
        "",
        "| sampler | seed | " + " | ".join(f"HV@{n}" for n in cps) + " | wall s | trials/h | median s/trial "
        "| other s/trial | best income AUC | best marital AUC | failed | load before/after |",
        "|---|---|" + "---|" * (len(cps) + 8),
    ]
    for r in runs:
        done = [t["values"] for t in r["trials"] if t["state"] == "COMPLETE"]
        best = np.max(np.array(done), axis=0) if done else [float("nan")] * 2
        lines.append(
            f"| {r['sampler']} | {r['seed']} | "
            + " | ".join(f"{r['hypervolume'][str(n)]:.4f}" for n in cps)
            + f" | {r['wall_s']:.0f} | {r['trials_per_hour']:.0f} | {r['median_trial_s']:.2f}"
            + f" | {other_seconds(r):.2f} | {best[0]:.4f} | {best[1]:.4f} | {r['failed']}"
            + f" | {r['load_1min_before']:.2f} / {r['load_1min_after']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        text_md = markdown({**saved, "zoom_reference": args.zoom_ref})
        print(text_md)
        if args.out:
            args.out.write_text(text_md)
        return 0
    budget = make_budget(args)
    if args.out and args.out.suffix == ".json":
        raise SystemExit("--out: give the markdown file's name; the JSON is written beside it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mtlsearch").setLevel(logging.INFO if args.verbose else logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are in the JSON
    torch.set_num_threads(args.threads)
    importlib.import_module("torch._dynamo")  # the optimisers' one-time import, not charged to trial 0
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    t0 = time.perf_counter()
    full = load_dataset("census-income", data_dir=args.data_dir, group=1, seed=0)
    data = subsample(full, budget.train_rows, budget.eval_rows, seed=0)
    log.info(
        "loaded %s in %.1f s; subsample %d train / %d valid / %d test rows",
        full.name, time.perf_counter() - t0, len(data.train), len(data.valid), len(data.test),
    )  # fmt: skip
    del full
    # The search loads data from the study's settings; hand it the subsample instead.
    study_module._load_data = lambda settings: data  # type: ignore[assignment]

    space = args.space.resolve()
    source = str(space.relative_to(REPO_ROOT)) if space.is_relative_to(REPO_ROOT) else str(space)
    text = space_text(args.space, budget.epochs, budget.max_width)
    runs: list[dict[str, Any]] = []
    partial = args.out.with_suffix(".partial.json") if args.out else None
    with tempfile.TemporaryDirectory(prefix="mtlsearch-bench-") as tmp:
        warm_up(Path(tmp))
        for seed in budget.seeds:
            for sampler in budget.samplers:
                runs.append(run_study(sampler, seed, budget, text, source, args.data_dir, Path(tmp)))
                if partial:  # a long run interrupted late still leaves its finished studies
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps({"budget": dataclasses.asdict(budget), "runs": runs}))

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, mtlsearch {mtlsearch.__version__}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": args.threads,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "total_wall_s": time.perf_counter() - started,
        "budget": {**dataclasses.asdict(budget), "space": source, "data_seed": 0, "subsample_seed": 0},
        "reference_point": {"auc": 0.5, "loss_space": runs[0]["reference_point_loss_space"]},
        "zoom_reference": args.zoom_ref,
        "runs": runs,
    }
    text_md = markdown(report)
    print(text_md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text_md)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        if partial:
            partial.unlink(missing_ok=True)
        log.info("wrote %s and %s", args.out, args.out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
