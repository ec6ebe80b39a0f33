"""Benchmark (not a test): task balancing methods on the seesaw and on census, gain and step cost.

Why: how tasks are balanced decides the seesaw as much as the wiring does (a gradient
conflict between tasks is what makes one task gain while the other loses). This script
trains MMoE and PLE with each balancing method on the MMoE paper's synthetic data at task
correlations 0, 0.5 and 1 and on Census-Income (KDD) group 1, with a few seeds, and
measures each (model, method)'s gain over the single-task models of the same seed, judged
by the verdict rule of ``mtlsearch baselines`` (a gain counts only above the seed noise),
plus the cost of one training step relative to equal weighting, measured side by side.

What it does:

1. For each data set and seed: the single-task references (``run_baselines`` with no
   preset; one network per task, each selected on its own task), then for each model and
   method one ``fit`` with the same optimiser, batch, epoch budget and early stopping.
   Every fit runs in a worker process with one torch thread (``--jobs`` processes at once).
2. Gains: synthetic tasks are regressions, the gain is the relative test-MSE reduction
   ``(MSE_single - MSE) / MSE_single``; census tasks are binary, the gain is test AUC minus
   the single-task test AUC. The verdict (``beats single-task``, ``seesaw``, ...) applies
   :func:`mtlsearch.train._verdict.judge` to the gains with the seeds' standard errors.
3. Step time: on census batches, every method's training step (forward, masked losses,
   the method's backward, Adam step, the method's after-step hook) is timed in round-robin
   rounds in one process, so a busy machine slows every method alike; the table gives each
   method's median step time over the median of ``fixed`` (equal weights), per model.

Outputs, in ``--out-dir``: ``balancing.md`` (settings and tables), ``balancing.json`` (every
run) and ``balancing.png`` (gain per task and method, per data set and model).

Usage::

    .venv/bin/python benchmarks/balancing.py [--quick] [--seeds 3] [--jobs 2] [--out-dir DIR]
    .venv/bin/python benchmarks/balancing.py --from-json DIR/balancing.json --out-dir DIR2

``--quick`` is a smoke size (seconds per fit; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import importlib
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt

from mtlsearch.arch import build_model, preset
from mtlsearch.data import MTLDataset, load_dataset, make_synthetic
from mtlsearch.train import (
    SINGLE_TASK,
    ExperimentConfig,
    LossWeightingConfig,
    TrainConfig,
    fit,
    make_loss_weighting,
    run_baselines,
)
from mtlsearch.train._verdict import RULE, judge, label, standard_error

log = logging.getLogger("benchmark")

METHODS = (
    "fixed",
    "uncertainty",
    "dwa",
    "gradnorm",
    "famo",
    "pcgrad",
    "cagrad",
    "nash_mtl",
    "upgrad",
    "mgda",
)
MODELS = ("mmoe", "ple")
CORRELATIONS = (0.0, 0.5, 1.0)
LABELS = {"mmoe": "MMoE", "ple": "PLE", "fixed": "equal"}

#: Sizes as in benchmarks/synthetic_seesaw.py (synthetic) and census_ple_vs_single.py (census).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {
        "single_task": {"expert_hidden": (64,), "tower": (8,)},
        "mmoe": {"n_experts": 8, "expert_hidden": (16,), "tower": (8,)},
        "ple": {"n_experts": 4, "n_specific": 2, "expert_hidden": (16,), "tower": (8,), "n_levels": 2},
    },
    "census": {
        "single_task": {"expert_hidden": (64,), "tower": (32,)},
        "mmoe": {"n_experts": 4, "expert_hidden": (64,), "tower": (32,)},
        "ple": {"n_experts": 2, "n_specific": 2, "expert_hidden": (64,), "tower": (32,), "n_levels": 2},
    },
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (written into the outputs)."""

    correlations: tuple[float, ...]
    census: bool
    seeds: tuple[int, ...]
    models: tuple[str, ...]
    methods: tuple[str, ...]
    n: int
    d: int
    epochs: int
    census_epochs: int
    patience: int | None
    batch_size: int
    census_batch_size: int
    lr: float
    census_max_rows: int | None
    step_rounds: int
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, Path, Path | None, int, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke size (numbers mean nothing)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    p.add_argument("--correlations", type=float, nargs="*", default=None)
    p.add_argument("--no-census", action="store_true", help="leave census-income out")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--n", type=int, default=None, help="synthetic rows, split 80/10/10")
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--epochs", type=int, default=None, help="synthetic epoch budget")
    p.add_argument("--census-epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--census-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--census-max-rows", type=int, default=None, help="only for --quick-like smoke runs")
    p.add_argument("--step-rounds", type=int, default=None, help="round-robin rounds of the step timing")
    p.add_argument("--jobs", type=int, default=2, help="fits in parallel (one torch thread each)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding census-income-kdd/")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--from-json", type=Path, default=None, help="re-render an earlier run's balancing.json")
    a = p.parse_args(argv)
    q = a.quick
    s = Settings(
        correlations=tuple(a.correlations if a.correlations is not None else ((0.0,) if q else CORRELATIONS)),
        census=not a.no_census,
        seeds=tuple(range(a.seeds if a.seeds is not None else (1 if q else 3))),
        models=tuple(a.models or MODELS),
        methods=tuple(a.methods or (("fixed", "pcgrad") if q else METHODS)),
        n=a.n or (1_000 if q else 10_000),
        d=a.d,
        epochs=a.epochs or (1 if q else 20),
        census_epochs=a.census_epochs or (1 if q else 4),
        patience=a.patience if a.patience is not None else (None if q else 3),
        batch_size=a.batch_size,
        census_batch_size=a.census_batch_size,
        lr=a.lr,
        census_max_rows=a.census_max_rows or (3_000 if q else None),
        step_rounds=a.step_rounds or (2 if q else 7),
        quick=q,
    )
    if not s.seeds:
        p.error("--seeds must be at least 1")
    if "fixed" not in s.methods:
        p.error("--methods must include fixed (the step-time reference)")
    return s, a.out_dir, a.from_json, a.jobs, a.data_dir


def dataset_keys(s: Settings) -> list[str]:
    return [f"synthetic p={p:g}" for p in s.correlations] + (["census"] if s.census else [])


@functools.lru_cache(maxsize=2)
def _data(key: str, seed: int, s: Settings, data_dir: str | None) -> MTLDataset:
    if key == "census":
        data = load_dataset("census-income", data_dir=Path(data_dir) if data_dir else None, group=1, seed=0)
        if s.census_max_rows:  # smoke runs only: the first rows of the training split
            data = dataclasses.replace(data, train=data.train.take(slice(0, s.census_max_rows)))
        return data
    return make_synthetic(n=s.n, d=s.d, correlation=float(key.split("=")[1]), seed=seed)


def _training(s: Settings, key: str, seed: int, method: str) -> TrainConfig:
    census = key == "census"
    return TrainConfig(
        optimizer="adam",
        lr=1e-3 if census else s.lr,
        batch_size=s.census_batch_size if census else s.batch_size,
        epochs=s.census_epochs if census else s.epochs,
        patience=s.patience,
        monitor="mean",
        seed=seed,
        loss_weighting=LossWeightingConfig(method=method),
    )


def _primary(data: MTLDataset, task: str) -> str:
    kind = next(t.kind for t in data.tasks if t.name == task)
    return "mse" if kind == "regression" else "auc"


def run_one(job: tuple[str, int, str, str], s: Settings, data_dir: str | None) -> dict[str, Any]:
    """One fit (or the single-task references when ``model`` is single_task)."""
    torch.set_num_threads(1)
    key, seed, model, method = job
    data = _data(key, seed, s, data_dir)
    family = "census" if key == "census" else "synthetic"
    training = _training(s, key, seed, method)
    t0 = time.perf_counter()
    if model == SINGLE_TASK:
        report = run_baselines(data, training, presets=(), sizes=SIZES[family][SINGLE_TASK])
        run = report.runs_of(SINGLE_TASK)[0]
        test, epoch_s = run.test, run.epoch_seconds
    else:
        config = ExperimentConfig(
            model=preset(model, data.input_spec(), data.tasks, **SIZES[family][model]), training=training
        )
        result = fit(config, data, progress=False)
        test, epoch_s = result.test, float(np.mean(result.epoch_seconds))
    tasks = [t.name for t in data.tasks]
    metric = {t: float(test[t][_primary(data, t)]) for t in tasks}
    return {
        "data": key,
        "seed": seed,
        "model": model,
        "method": method,
        "metric": metric,
        "metric_name": {t: _primary(data, t) for t in tasks},
        "seconds": time.perf_counter() - t0,
        "epoch_seconds": epoch_s,
    }


def run_all(s: Settings, jobs: int, data_dir: str | None) -> list[dict[str, Any]]:
    todo = [
        (key, seed, model, method)
        for key in dataset_keys(s)
        for seed in s.seeds
        for model, method in [(SINGLE_TASK, "fixed")] + [(m, w) for m in s.models for w in s.methods]
    ]
    runs: list[dict[str, Any]] = []
    log.info("%d fits on %d process(es)", len(todo), jobs)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, job, s, data_dir) for job in todo]
        for i, f in enumerate(futures, 1):
            r = f.result()
            runs.append(r)
            log.info(
                "[%d/%d] %s seed %d %s/%s test %s, %.0f s",
                i, len(todo), r["data"], r["seed"], r["model"], r["method"],
                {t: round(v, 4) for t, v in r["metric"].items()}, r["seconds"],
            )  # fmt: skip
    return runs


def step_times(s: Settings, data_dir: str | None) -> dict[str, dict[str, float]]:
    """Median seconds per training step of each (model, method) on census batches, timed
    in round-robin rounds (``step_rounds`` rounds of 10 steps after 3 warm-up steps)."""
    from mtlsearch.train._fit import _masked_losses, _recompute_losses

    torch.set_num_threads(1)
    data = _data("census", 0, s, data_dir)
    tasks = data.tasks
    g = torch.Generator().manual_seed(0)
    first = list(itertools.islice(data.train.batches(s.census_batch_size, shuffle=True, generator=g), 13))
    batches = [first[i % len(first)] for i in range(13)]  # a smoke run's split may hold fewer
    full = {t.name: True for t in tasks}
    states = {}
    for model in s.models:
        for method in s.methods:
            config = preset(model, data.input_spec(), tasks, **SIZES["census"][model])
            net = build_model(config, seed=0)
            weighting = make_loss_weighting(LossWeightingConfig(method=method), tasks)
            weighting.attach(net)
            params = [{"params": list(net.parameters())}]
            if list(weighting.parameters()):
                params.append({"params": list(weighting.parameters())})
            opt = torch.optim.Adam(params, lr=1e-3)
            states[model, method] = (net, weighting, opt)

    def steps(key: tuple[str, str], chunk: Sequence[Any]) -> float:
        net, weighting, opt = states[key]
        net.train()
        t0 = time.perf_counter()
        for batch in chunk:
            outputs = net(batch.numeric, batch.categorical)
            losses, counts = _masked_losses(outputs, batch, tasks, full)
            opt.zero_grad(set_to_none=True)
            weighting.backward(losses, counts)
            opt.step()
            weighting.after_step(functools.partial(_recompute_losses, net, batch, tasks, full, None))
        return (time.perf_counter() - t0) / len(chunk)

    for key in states:  # warm-up: first-step imports, solver set-up
        steps(key, batches[:3])
    times: dict[tuple[str, str], list[float]] = {key: [] for key in states}
    for _ in range(s.step_rounds):
        for key in states:
            times[key].append(steps(key, batches[3:13]))
    return {
        model: {method: statistics.median(times[model, method]) for method in s.methods} for model in s.models
    }


def summarise(s: Settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (data, model, method): mean gain per task over seeds, its std, and the verdict."""
    by = {(r["data"], r["seed"], r["model"], r["method"]): r for r in runs}
    out: dict[str, Any] = {}
    for key in dataset_keys(s):
        singles = [by[key, seed, SINGLE_TASK, "fixed"] for seed in s.seeds]
        tasks = list(singles[0]["metric"])
        names = singles[0]["metric_name"]
        for model in s.models:
            for method in s.methods:
                mine = [by[key, seed, model, method] for seed in s.seeds]
                gains, shown, spread, errors = {}, {}, {}, {}
                for t in tasks:
                    m = np.array([r["metric"][t] for r in mine])
                    ref = np.array([r["metric"][t] for r in singles])
                    sign = -1.0 if names[t] == "mse" else 1.0
                    gains[t] = float(sign * (m.mean() - ref.mean()))  # in the metric's units
                    per_seed = (ref - m) / ref if names[t] == "mse" else m - ref
                    shown[t] = float(per_seed.mean())  # relative for MSE, AUC points for AUC
                    spread[t] = float(per_seed.std(ddof=1)) if len(s.seeds) > 1 else 0.0
                    ddof = 1 if len(s.seeds) > 1 else 0
                    errors[t] = standard_error(
                        float(m.std(ddof=ddof)), len(m), float(ref.std(ddof=ddof)), len(ref)
                    )
                out[f"{key}|{model}|{method}"] = {
                    "gain": shown,
                    "gain_std": spread,
                    "verdict": label(judge(gains, errors)),
                    "seconds": float(np.mean([r["seconds"] for r in mine])),
                    "epoch_seconds": float(np.mean([r["epoch_seconds"] for r in mine])),
                }
    return out


def _fmt_gain(key: str, value: float, std: float) -> str:
    return f"{100 * value:+.1f}% ± {100 * std:.1f}" if key != "census" else f"{value:+.4f} ± {std:.4f}"


def markdown(s: Settings, summary: dict[str, Any], steps: dict[str, dict[str, float]], runs: list) -> str:
    tasks_of = {r["data"]: list(r["metric"]) for r in runs}
    lines = []
    for key in dataset_keys(s):
        tasks = tasks_of[key]
        lines += [f"### {key}", ""]
        head = ["model", "method", *(f"{t} gain" for t in tasks), "verdict", "s/epoch"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in s.models:
            for method in s.methods:
                row = summary[f"{key}|{model}|{method}"]
                cells = [_fmt_gain(key, row["gain"][t], row["gain_std"][t]) for t in tasks]
                lines.append(
                    f"| {LABELS[model]} | {LABELS.get(method, method)} | "
                    + " | ".join(cells)
                    + f" | {row['verdict']} | {row['epoch_seconds']:.2f} |"
                )
        lines.append("")
    if steps:
        lines += ["### Step time on census relative to equal weighting (median, side by side)", ""]
        head = [
            "method",
            *(f"{LABELS[m]} ms/step" for m in s.models),
            *(f"{LABELS[m]} x equal" for m in s.models),
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in s.methods:
            ms = [f"{1000 * steps[m][method]:.2f}" for m in s.models]
            ratio = [f"{steps[m][method] / steps[m]['fixed']:.2f}" for m in s.models]
            lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(ms + ratio) + " |")
        lines.append("")
    return "\n".join(lines)


def goals(s: Settings, summary: dict[str, Any], steps: dict[str, dict[str, float]]) -> list[str]:
    """The issue's goals, checked on this run's numbers."""
    out = []
    synth = [k for k in dataset_keys(s) if k != "census"]
    if "ple" in s.models and synth:
        ok = [m for m in s.methods if all(min(summary[f"{k}|ple|{m}"]["gain"].values()) >= 0 for k in synth)]
        out.append(
            "PLE non-negative mean gain on both tasks at every correlation: "
            + (", ".join(LABELS.get(m, m) for m in ok) if ok else "no method")
        )
    grad = [m for m in s.methods if m in ("pcgrad", "cagrad", "nash_mtl", "upgrad", "mgda")]
    if steps and grad:
        worst = {m: max(steps[model][m] / steps[model]["fixed"] for model in s.models) for m in grad}
        over = [f"{m} {r:.2f}x" for m, r in worst.items() if r > 2.0]
        out.append(
            "gradient methods at most 2x equal weighting's step on census: "
            + (f"yes (worst {', '.join(f'{m} {r:.2f}x' for m, r in worst.items())})" if not over else "no: ")
            + ", ".join(over)
        )
    return out


def plot(s: Settings, summary: dict[str, Any], runs: list, path: Path) -> None:
    keys = dataset_keys(s)
    tasks_of = {r["data"]: list(r["metric"]) for r in runs}
    fig, axes = plt.subplots(
        len(s.models), len(keys), figsize=(4.2 * len(keys), 3.6 * len(s.models)), squeeze=False
    )
    x = np.arange(len(s.methods))
    for i, model in enumerate(s.models):
        for j, key in enumerate(keys):
            ax = axes[i][j]
            scale = 1.0 if key == "census" else 100.0
            for k, t in enumerate(tasks_of[key]):
                g = [scale * summary[f"{key}|{model}|{m}"]["gain"][t] for m in s.methods]
                e = [scale * summary[f"{key}|{model}|{m}"]["gain_std"][t] for m in s.methods]
                ax.bar(x + (k - 0.5) * 0.38, g, 0.38, yerr=e, capsize=2, label=t)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([LABELS.get(m, m) for m in s.methods], rotation=60, fontsize=7)
            ax.set_title(f"{LABELS[model]} — {key}", fontsize=9)
            ax.set_ylabel("test AUC gain" if key == "census" else "test MSE reduction (%)", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"Gain over single-task by balancing method (mean ± std over {len(s.seeds)} seed(s); "
        "above 0 is better)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(s: Settings, payload: dict[str, Any], out_dir: Path) -> str:
    runs, steps = payload["runs"], payload["step_times"]
    summary = summarise(s, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(s, summary, runs, out_dir / "balancing.png")
    before, after = payload["load_average_before_after"]
    text = "\n".join(
        [
            "# Task balancing benchmark" + (" (--quick: smoke size, not a result)" if s.quick else ""),
            "",
            f"- date: {payload['started']} (start); command: `{payload['command']}`",
            f"- machine: {payload['machine']}; 1-min load average before / after: {before:.2f} / {after:.2f}",
            f"- whole benchmark: {payload['total_seconds'] / 60:.1f} min ({payload['jobs']} fits at once)",
            f"- synthetic: make_synthetic(n={s.n:,}, d={s.d}), Adam lr {s.lr:g}, batch {s.batch_size}, up to "
            f"{s.epochs} epochs, patience {s.patience}",
            f"- census-income group 1: Adam lr 0.001, batch {s.census_batch_size}, up to {s.census_epochs} "
            f"epochs, patience {s.patience}"
            + (f", first {s.census_max_rows} train rows" if s.census_max_rows else ""),
            f"- seeds {list(s.seeds)}; each method with its default options; gains against the same seed's "
            "single-task models (synthetic: relative test-MSE reduction; census: test AUC difference)",
            f"- {RULE}",
            "",
            *(f"- goal: {g}" for g in goals(s, summary, steps)),
            "",
            markdown(s, summary, steps, runs),
        ]
    )
    (out_dir / "balancing.md").write_text(text)
    (out_dir / "balancing.json").write_text(json.dumps({**payload, "summary": summary}, indent=2))
    return text


def main(argv: Sequence[str] | None = None) -> None:
    s, out_dir, from_json, jobs, data_dir = parse_args(argv)
    if from_json is not None:
        payload = json.loads(from_json.read_text())
        s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["settings"].items()})
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("mtlsearch").setLevel(logging.WARNING)
        importlib.import_module("torch._dynamo")  # one-time import outside the timings
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        dd = str(data_dir) if data_dir else None
        runs = run_all(s, jobs, dd)
        steps = step_times(s, dd) if s.census else {}
        cpu = " ".join(filter(None, [platform.machine(), platform.processor()]))
        payload = {
            "started": started,
            "command": "benchmarks/balancing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "settings": dataclasses.asdict(s),
            "sizes": SIZES,
            "jobs": jobs,
            "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per fit",
            "load_average_before_after": [load_before, os.getloadavg()[0]],
            "total_seconds": time.perf_counter() - t0,
            "runs": runs,
            "step_times": steps,
        }
    text = write_outputs(s, payload, out_dir)
    print(text)
    print(f"wrote balancing.md, balancing.json and balancing.png in {out_dir}")
    if any(not math.isfinite(v) for r in payload["runs"] for v in r["metric"].values()):
        raise SystemExit("some fits gave a non-finite test metric; see the table")


if __name__ == "__main__":
    main()
