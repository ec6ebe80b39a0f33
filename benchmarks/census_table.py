"""Benchmark (not a test): the MTL family and a searched architecture on Census-Income (KDD).

Why: the MMoE paper (Ma et al., KDD 2018, Tables 1-2) and the PLE paper (Tang et al., RecSys
2020, Table 5) report test AUCs on Census-Income; this script puts the package's own presets
(single-task, shared-bottom, OMoE, MMoE, CGC, PLE) and, optionally, the best architecture of
a census search beside those published figures, trained with one budget and several seeds,
so that a claim such as "the searched network beats PLE and single-task" is a measured one.

Protocol (the MMoE paper's): train on the train file; the test file is split 1:1 (seeded,
stratified, data seed 0) into validation and test. Group 1: income > 50K + marital status
"never married"; group 2: education (associate degree or higher) + never married. Education
and marital status are never inputs. Every model is trained with each training seed and
selected on the validation split (multi-task models on the mean of the tasks' normalised
AUC, each single-task network on its own task); the table reports test AUC, mean ± sample
std over seeds, and each model's MTL gain over single-task (the PLE paper's definition, on
the means).

Training (every model): Adam, lr 1e-3, batch 1024, 6 epochs, early stopping with patience 2
(best-epoch weights restored), equal fixed loss weights. The epoch budget is below the
10 of benchmarks/census_ple_vs_single.py so that 6 models x 5 seeds x 2 groups fit in about
an hour on 2 shared cores at 1 thread; ``--epochs``/``--patience`` change it.

Sizes: single-layer experts of 64 units and towers of one 32-unit layer, as in the PLE
paper's experiments; every mixture-of-experts model has 6 experts per level (OMoE/MMoE: 6
shared; CGC/PLE: 2 shared + 2 per task; PLE: 2 levels). Single-task: a 64-unit bottom and a
32-unit tower per task; shared-bottom: one shared 64-unit bottom.

The searched row (``--searched GROUP=CONFIG``) retrains an exported config (``mtlsearch
export ... --out DIR`` writes ``DIR/config.yaml``): its architecture and its searched training
settings (optimiser, lr, batch size, weight decay, loss weighting), with this table's epoch
budget, patience and seeds.

Usage::

    .venv/bin/python benchmarks/census_table.py --data-dir ../shared/data --groups 1 2 \\
        --seeds 5 --searched 1=/tmp/census-g1-pick/config.yaml --out /tmp/census_table.md

``--extra "GROUP:LABEL=CONFIG"`` adds more rows retrained the same way (ablations, e.g. PLE
with another embedding initialisation), shown as LABEL between the presets and the searched
row. Verdicts use ``BaselineReport.verdict``'s rule: with several seeds a gain within two
standard errors of the difference of the means is a tie.

``--out FILE`` writes the markdown table to FILE and the raw numbers to FILE with suffix
``.json``; ``--resume`` reuses the runs already in that JSON (training is deterministic on
the CPU) so that a searched row can be added later without retraining the presets.
``--quick`` is a smoke-test size (a row sample, 1 epoch, 1 seed, single-task and PLE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtlsearch.arch import preset
from mtlsearch.data import MTLDataset, load_dataset
from mtlsearch.train import (
    SINGLE_TASK,
    ExperimentConfig,
    LossWeightingConfig,
    TrainConfig,
    classify_gains,
    fit,
    mtl_gain,
)

log = logging.getLogger("census_table")

PRESETS = ("single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple")
SEARCHED = "searched"
EXTRA = "extra:"  # rows from --extra GROUP:LABEL=CONFIG (ablations), keyed "extra:LABEL"
COMMON = {"expert_hidden": (64,), "tower": (32,)}
SIZES: dict[str, dict[str, Any]] = {
    "single_task": COMMON,
    "shared_bottom": COMMON,
    "omoe": {**COMMON, "n_experts": 6},
    "mmoe": {**COMMON, "n_experts": 6},
    "cgc": {**COMMON, "n_experts": 2, "n_specific": 2},
    "ple": {**COMMON, "n_experts": 2, "n_specific": 2, "n_levels": 2},
}
LABELS = {
    "single_task": "single-task",
    "shared_bottom": "shared-bottom",
    "omoe": "OMoE",
    "mmoe": "MMoE",
    "cgc": "CGC",
    "ple": "PLE",
    SEARCHED: "searched",
}
QUICK_ROWS = {"train": 20_000, "valid": 5_000, "test": 5_000}

# Published test AUCs (read from the papers; see /work/shared/reference/papers.md).
# MMoE paper: mean over 400 runs (the paper also gives the best run); PLE paper: one figure.
PUBLISHED: dict[int, list[tuple[str, dict[str, dict[str, float]]]]] = {
    1: [
        (
            "MMoE paper Table 1 (mean of 400 runs)",
            {
                "single_task": {"income": 0.9337, "marital": 0.9922},
                "shared_bottom": {"income": 0.9295, "marital": 0.9921},
                "omoe": {"income": 0.9319, "marital": 0.9923},
                "mmoe": {"income": 0.9359, "marital": 0.9927},
            },
        ),
        (
            "PLE paper Table 5",
            {
                "single_task": {"income": 0.9445, "marital": 0.9923},
                "mmoe": {"income": 0.9393, "marital": 0.9928},
                "ple": {"income": 0.9522, "marital": 0.9945},
            },
        ),
    ],
    2: [
        (
            "MMoE paper Table 2 (mean of 400 runs; education only)",
            {
                "single_task": {"education": 0.8792},
                "shared_bottom": {"education": 0.8813},
                "omoe": {"education": 0.8813},
                "mmoe": {"education": 0.8826},
            },
        ),
    ],
}


# ---- data and configs ----------------------------------------------------------------------
def load_group(data_dir: Path | None, group: int, quick: bool) -> MTLDataset:
    """The census data of one task group; ``quick`` keeps a seeded row sample of each split
    (the preprocessing is still fitted on every training row)."""
    data = load_dataset("census-income", data_dir=data_dir, group=group, seed=0)
    if not quick:
        return data
    gen = torch.Generator().manual_seed(0)
    picked = {
        name: getattr(data, name).take(torch.randperm(len(getattr(data, name)), generator=gen)[:n])
        for name, n in QUICK_ROWS.items()
    }
    return replace(data, **picked)


def model_configs(
    data: MTLDataset,
    models: Sequence[str],
    training: TrainConfig,
    searched: ExperimentConfig | None,
    extras: Mapping[str, ExperimentConfig] | None = None,
) -> dict[str, list[ExperimentConfig]]:
    """Per model, the networks one seed trains (one per task for single-task)."""
    inputs = data.input_spec()
    out: dict[str, list[ExperimentConfig]] = {}
    for name in models:
        if name == SINGLE_TASK:
            out[name] = [
                ExperimentConfig(
                    model=preset(SINGLE_TASK, inputs, (t,), **SIZES[name]),
                    training=replace(training, monitor=t.name, loss_weighting=LossWeightingConfig()),
                )
                for t in data.tasks
            ]
        else:
            out[name] = [
                ExperimentConfig(model=preset(name, inputs, data.tasks, **SIZES[name]), training=training)
            ]
    budget = {"epochs": training.epochs, "patience": training.patience, "monitor": training.monitor}
    for label, config in (extras or {}).items():
        out[EXTRA + label] = [replace(config, training=replace(config.training, **budget))]
    if searched is not None:
        out[SEARCHED] = [replace(searched, training=replace(searched.training, **budget))]
    return out


def load_searched(path: Path, data: MTLDataset) -> ExperimentConfig:
    """An exported (or hand-written) experiment config; missing inputs/tasks come from the data."""
    config = ExperimentConfig.load(path, inputs=data.input_spec(), tasks=data.tasks)
    if config.model.task_names != tuple(t.name for t in data.tasks):
        raise SystemExit(f"{path}: tasks {config.model.task_names} are not {data.name}'s")
    return config


# ---- training --------------------------------------------------------------------------------
def train_one(configs: Sequence[ExperimentConfig], data: MTLDataset, seed: int) -> dict[str, Any]:
    """One (model, seed) run; single-task folds its per-task networks (sums of params, time)."""
    results = [
        fit(replace(c, training=replace(c.training, seed=seed)), data, progress=False) for c in configs
    ]
    run: dict[str, Any] = {"seed": seed, "valid": {}, "test": {}, "best_epoch": {}, "epochs_run": {}}
    for r in results:
        for t in r.config.model.task_names:
            run["valid"][t] = r.valid[t]
            run["test"][t] = r.test[t]
            run["best_epoch"][t] = r.best_epoch
            run["epochs_run"][t] = len(r.history)
    run["n_params"] = sum(r.n_params for r in results)
    run["seconds"] = sum(r.seconds for r in results)
    run["epoch_seconds"] = sum(statistics.fmean(r.epoch_seconds) for r in results)
    return run


# ---- summaries and tables ----------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _label(model: str) -> str:
    return LABELS.get(model, model.removeprefix(EXTRA))


def _order(model: str) -> int:
    return PRESETS.index(model) if model in PRESETS else len(PRESETS) + (model == SEARCHED)


def summarise(runs: Sequence[dict[str, Any]], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model: test AUC mean/std per task, gains over single-task, verdict, params, s/epoch.

    The verdict is ``BaselineReport.verdict``'s rule: with two or more seeds a task's gain
    counts only beyond two standard errors of the difference of the means (a seed wobble is
    a tie, not a seesaw); ``clear_gain`` holds those gains (0.0 = tie)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_model.setdefault(r["model"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for model, rs in by_model.items():
        auc = {t: _mean_std([r["test"][t]["auc"] for r in rs]) for t in tasks}
        out[model] = {
            "seeds": [r["seed"] for r in rs],
            "auc_mean": {t: auc[t][0] for t in tasks},
            "auc_std": {t: auc[t][1] for t in tasks},
            "n_params": rs[0]["n_params"],
            "epoch_seconds": statistics.fmean(r["epoch_seconds"] for r in rs),
        }
    if SINGLE_TASK in out:
        ref = out[SINGLE_TASK]["auc_mean"]
        for model, s in out.items():
            if model != SINGLE_TASK:
                s["gain"] = {t: mtl_gain("binary", s["auc_mean"][t], ref[t]) for t in tasks}
                s["clear_gain"] = {t: _beyond_noise(s, out[SINGLE_TASK], t) for t in tasks}
                s["verdict"] = classify_gains(s["clear_gain"].values())
    return out


def _beyond_noise(s: Mapping[str, Any], ref: Mapping[str, Any], task: str, noise: float = 2.0) -> float:
    gain = s["gain"][task]
    n, n_ref = len(s["seeds"]), len(ref["seeds"])
    if n > 1 and n_ref > 1:
        se = math.sqrt(s["auc_std"][task] ** 2 / n + ref["auc_std"][task] ** 2 / n_ref)
        if abs(gain) <= noise * se:
            return 0.0
    return gain


def _published_cell(
    group: int, source: Mapping[str, Mapping[str, float]], model: str, tasks: Sequence[str]
) -> str:
    values = source.get(model, {})
    return " / ".join(f"{values[t]:.4f}" if t in values else "–" for t in tasks) if values else ""


def group_markdown(group: int, tasks: Sequence[str], summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The group's table: ours (mean ± std, gain) beside the papers' figures for the same model."""
    sources = PUBLISHED.get(group, [])
    head = ["model"]
    for t in tasks:
        head += [f"{t} AUC", f"{t} gain"]
    head += ["verdict", "params", "s/epoch"]
    head += [f"{name}: {' / '.join(tasks)}" for name, _ in sources]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in sorted(summary, key=_order):
        s = summary[model]
        row = [_label(model)]
        for t in tasks:
            std = f" ± {s['auc_std'][t]:.4f}" if len(s["seeds"]) > 1 else ""
            row.append(f"{s['auc_mean'][t]:.4f}{std}")
            row.append(f"{s['gain'][t]:+.4f}" if "gain" in s else "")
        row.append(s.get("verdict", "reference" if model == SINGLE_TASK else ""))
        row.append(f"{s['n_params']:,}")
        row.append(f"{s['epoch_seconds']:.2f}")
        row += [_published_cell(group, src, model, tasks) for _, src in sources]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def runs_markdown(runs: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """Raw numbers: one row per (model, seed)."""
    head = [
        "model",
        "seed",
        *(f"{t} AUC" for t in tasks),
        "best epoch (0-based) / epochs run",
        "s/epoch",
        "s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=lambda r: (_order(r["model"]), r["seed"])):
        epochs = ", ".join(f"{t} {r['best_epoch'][t]}/{r['epochs_run'][t]}" for t in tasks)
        row = [_label(r["model"]), str(r["seed"]), *(f"{r['test'][t]['auc']:.4f}" for t in tasks)]
        row += [epochs, f"{r['epoch_seconds']:.2f}", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------
def parse_searched(items: Sequence[str]) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for item in items:
        group, sep, path = item.partition("=")
        if not sep or not group.strip().isdigit():
            raise SystemExit(f"--searched {item}: expected GROUP=PATH, e.g. 1=/tmp/pick/config.yaml")
        out[int(group)] = Path(path)
    return out


def parse_extras(items: Sequence[str]) -> dict[tuple[int, str], Path]:
    out: dict[tuple[int, str], Path] = {}
    for item in items:
        head, sep, path = item.partition("=")
        group, colon, label = head.partition(":")
        if not (sep and colon and label and group.strip().isdigit()):
            raise SystemExit(f"--extra {item}: expected GROUP:LABEL=PATH, e.g. 2:PLE init 0.01=/tmp/ple.yaml")
        out[(int(group), label)] = Path(path)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding census-income-kdd/")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1")
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--searched", nargs="*", default=[], metavar="GROUP=CONFIG", help="exported config")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="GROUP:LABEL=CONFIG",
        help="more rows (ablations): a config retrained like the searched one, shown as LABEL",
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--quick", action="store_true", help="smoke size: row sample, 1 epoch, 1 seed, 2 models"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="markdown table; raw numbers go to .json beside"
    )
    parser.add_argument("--resume", action="store_true", help="reuse the runs already in the --out JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.quick:
        args.epochs, args.seeds, args.batch_size = 1, 1, 256
        args.models = ["single_task", "ple"]
    if SINGLE_TASK not in args.models:
        args.models.insert(0, SINGLE_TASK)  # the gains need the reference
    searched_paths = parse_searched(args.searched)
    extra_paths = parse_extras(args.extra)
    torch.set_num_threads(args.threads)
    # The optimisers import torch._dynamo on their first step (seconds); do it once up front.
    importlib.import_module("torch._dynamo")
    training = TrainConfig(
        optimizer="adam",
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        patience=args.patience,
        monitor="mean",
    )
    settings = {
        "quick": args.quick,
        "training": training.to_dict(),
        "sizes": SIZES,
        "data_seed": 0,
        "rows": QUICK_ROWS if args.quick else "all",
    }
    json_path = args.out.with_suffix(".json") if args.out else None
    previous: list[dict[str, Any]] = []
    if args.resume and json_path and json_path.exists():
        old = json.loads(json_path.read_text())
        if old["settings"] != json.loads(json.dumps(settings)):
            raise SystemExit(
                f"--resume: {json_path} was made with other settings; remove it or drop --resume"
            )
        previous = [r for g in old["groups"].values() for r in g["runs"]]

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    groups: dict[str, dict[str, Any]] = {}
    for group in args.groups:
        data = load_group(args.data_dir, group, args.quick)
        tasks = [t.name for t in data.tasks]
        log.info(
            "group %d: %s, %d/%d/%d rows", group, data.name, len(data.train), len(data.valid), len(data.test)
        )
        searched = load_searched(searched_paths[group], data) if group in searched_paths else None
        extras = {label: load_searched(path, data) for (g, label), path in extra_paths.items() if g == group}
        configs = model_configs(data, args.models, training, searched, extras)
        runs: list[dict[str, Any]] = []
        for model, cfgs in configs.items():
            for seed in range(args.seeds):
                key = json.loads(json.dumps([c.to_dict() for c in cfgs]))
                done = [
                    r
                    for r in previous
                    if (r["group"], r["model"], r["seed"]) == (group, model, seed) and r["configs"] == key
                ]
                if done:
                    runs.append(done[0])
                    continue
                run = {"group": group, "model": model, **train_one(cfgs, data, seed), "configs": key}
                runs.append(run)
                aucs = {t: round(run["test"][t]["auc"], 4) for t in tasks}
                log.info("group %d %s seed %d: test AUC %s, %.0f s", group, model, seed, aucs, run["seconds"])
        summary = summarise(runs, tasks)
        groups[str(group)] = {
            "dataset": data.name,
            "tasks": tasks,
            "rows": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
            "searched_config": str(searched_paths[group]) if searched is not None else None,
            "summary": summary,
            "runs": runs,
        }
    total_s = time.perf_counter() - started

    header = [
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} thread(s); 1-min load average before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        f"command: {shlex.join(sys.argv if argv is None else ['census_table.py', *argv])}",
        f"training: Adam, lr {args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, patience "
        f"{args.patience}, seeds 0..{args.seeds - 1}, data seed 0"
        + (" (QUICK: row sample)" if args.quick else ""),
        f"wall time: {total_s / 60:.1f} min",
    ]
    parts = ["\n".join(header)]
    for group, g in groups.items():
        title = f"### Group {group}: {' + '.join(g['tasks'])} (test AUC, mean ± std over seeds)"
        note = f"\nsearched config: {g['searched_config']}" if g["searched_config"] else ""
        parts.append(f"{title}{note}\n\n{group_markdown(int(group), g['tasks'], g['summary'])}")
        parts.append(f"Raw runs, group {group}:\n\n{runs_markdown(g['runs'], g['tasks'])}")
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        payload = {"settings": settings, "header": header, "total_seconds": total_s, "groups": groups}
        if json_path is not None:
            json_path.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out} and {json_path}")


if __name__ == "__main__":
    main()
