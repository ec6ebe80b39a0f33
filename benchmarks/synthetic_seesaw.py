"""Benchmark (not a test): the seesaw on the MMoE paper's synthetic data, by task correlation.

Why: the claim behind the whole MMoE/CGC/PLE family is about *task relatedness*. The MMoE
paper (Ma et al., KDD 2018, section 3.2) built a generator whose two regression tasks
have a tunable correlation, and the PLE paper (Tang et al., RecSys 2020, section 5.2,
Figure 7) used it to show that hard sharing and MMoE trade one task against the other
(the *seesaw*: one task better than its single-task model, the other worse) while PLE
gains on both. This script measures our presets on that generator, so the docs can put
our numbers beside the papers' findings, whatever they turn out to be. Nothing here is
tuned per model: every model gets the same optimiser, batch size, epoch budget, early
stopping and (about) the same number of parameters.

What it does: for each correlation ``p`` (the cosine of the tasks' weight vectors)
and each seed, it draws a data set with ``mtlsearch.data.make_synthetic`` (the seed fixes
the generator's directions, sines and inputs, so for one seed the correlations differ only
in ``w2``; the same seed also initialises and shuffles the training), trains the
single-task references with ``mtlsearch.train.run_baselines`` (one network per task,
each selected on its own validation MSE) and each multi-task preset with
``mtlsearch.train.fit`` (selected on the mean validation R^2 of the two tasks), and
records each task's test MSE. The gain of a model on a task is the relative MSE reduction
over the single-task model of the same seed, ``(MSE_single - MSE_model) / MSE_single``,
averaged over seeds (paired, so that the seed-to-seed spread of task difficulty cancels).

Outputs, in ``--out-dir``: ``synthetic_seesaw.md`` (settings and the table: test MSE
mean ± std over seeds per task, gains, verdict), ``synthetic_seesaw.json`` (settings,
every run's numbers, the summary) and ``synthetic_seesaw.png`` (each model's gain per
task against the correlation; 0 is single-task).

Usage::

    .venv/bin/python benchmarks/synthetic_seesaw.py [--quick] [--seeds 5] [--out-dir DIR]
    .venv/bin/python benchmarks/synthetic_seesaw.py --from-json DIR/synthetic_seesaw.json --out-dir DIR2

The full size (defaults): 50,000 rows, d = 100, correlations 0/0.25/0.5/0.75/1, 5 seeds,
Adam lr 3e-3, batch 256, at most 40 epochs with patience 5; 150 fits, 52 minutes at one
torch thread on a shared 2-core machine (docs/benchmarks-synthetic-seesaw.md).
``--from-json`` redraws the table and plot of an earlier run without training.

``--quick`` is a seconds-long smoke size (2 correlations, 1 seed, 2 models, 2 epochs on
2,000 rows) for tests/test_bench_synthetic_seesaw.py; its numbers mean nothing.
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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # files only; no display on the benchmark machines
import matplotlib.pyplot as plt

from mtlsearch.arch import preset
from mtlsearch.data import MTLDataset, make_synthetic
from mtlsearch.train import (
    SINGLE_TASK,
    ExperimentConfig,
    TrainConfig,
    classify_gains,
    fit,
    run_baselines,
)

log = logging.getLogger("benchmark")

TASKS = ("y1", "y2")
MODELS = ("single_task", "shared_bottom", "mmoe", "cgc", "ple")
CORRELATIONS = (0.0, 0.25, 0.5, 0.75, 1.0)

#: Per-model sizes for about equal capacity: every model has 128 hidden units in its
#: first layer on the 100 inputs (most of the parameters): single-task 2 x 64
#: (one network per task), shared-bottom one bottom of 128, MMoE 8 shared experts of 16
#: (the MMoE paper's synthetic setup: 8 single-layer experts of 16 units, towers of 8),
#: CGC 4 shared + 2 per task experts of 16, PLE the same per level on 2 levels (its second
#: level adds ~3k parameters on the 16-dim expert outputs). Towers: one layer of 8 units.
SIZES: dict[str, dict[str, Any]] = {
    "single_task": {"expert_hidden": (64,), "tower": (8,)},
    "shared_bottom": {"expert_hidden": (128,), "tower": (8,)},
    "mmoe": {"n_experts": 8, "expert_hidden": (16,), "tower": (8,)},
    "cgc": {"n_experts": 4, "n_specific": 2, "expert_hidden": (16,), "tower": (8,)},
    "ple": {"n_experts": 4, "n_specific": 2, "expert_hidden": (16,), "tower": (8,), "n_levels": 2},
}

LABELS = {
    "single_task": "single-task",
    "shared_bottom": "shared-bottom",
    "mmoe": "MMoE",
    "cgc": "CGC",
    "ple": "PLE",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (written into both outputs)."""

    correlations: tuple[float, ...]
    seeds: tuple[int, ...]
    models: tuple[str, ...]
    n: int
    d: int
    epochs: int
    patience: int | None
    batch_size: int
    lr: float
    threads: int
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, Path, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke-test size (seconds; numbers mean nothing)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 5)")
    parser.add_argument("--correlations", type=float, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--n", type=int, default=None, help="rows per data set, split 80/10/10")
    parser.add_argument("--d", type=int, default=100, help="input dimension (the MMoE paper's 100)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the table and plot from an earlier run's synthetic_seesaw.json (no training)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    models = tuple(args.models or (("single_task", "mmoe") if quick else MODELS))
    if SINGLE_TASK not in models:
        models = (SINGLE_TASK, *models)  # the reference every gain is measured against
    settings = Settings(
        correlations=tuple(args.correlations or ((0.0, 1.0) if quick else CORRELATIONS)),
        seeds=tuple(range(args.seeds if args.seeds is not None else (1 if quick else 5))),
        models=models,
        n=args.n or (2_000 if quick else 50_000),
        d=args.d,
        epochs=args.epochs or (2 if quick else 40),
        patience=args.patience if args.patience is not None else (None if quick else 5),
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        quick=quick,
    )
    if not settings.seeds:
        parser.error("--seeds must be at least 1")
    return settings, args.out_dir, args.from_json


def train_one(data: MTLDataset, model: str, training: TrainConfig) -> dict[str, Any]:
    """Train ``model`` on ``data``; its test MSE per task, best epochs, size and time."""
    if model == SINGLE_TASK:
        report = run_baselines(data, training, presets=(), sizes=SIZES[SINGLE_TASK], progress=False)
        run = report.runs_of(SINGLE_TASK)[0]
        return {
            "mse": {t: run.test[t]["mse"] for t in TASKS},
            "best_epoch": dict(run.best_epoch),
            "n_params": run.n_params,
            "seconds": run.seconds,
            "epoch_seconds": run.epoch_seconds,
        }
    config = ExperimentConfig(
        model=preset(model, data.input_spec(), data.tasks, **SIZES[model]), training=training
    )
    result = fit(config, data, progress=False)
    return {
        "mse": {t: result.test[t]["mse"] for t in TASKS},
        "best_epoch": {t: result.best_epoch for t in TASKS},
        "n_params": result.n_params,
        "seconds": result.seconds,
        "epoch_seconds": float(np.mean(result.epoch_seconds)),
    }


def run_all(s: Settings) -> tuple[list[dict[str, Any]], dict[float, list[float]]]:
    """Every (correlation, seed, model) run, and the label Pearson correlation of each data set."""
    runs: list[dict[str, Any]] = []
    label_corr: dict[float, list[float]] = {}
    for p in s.correlations:
        for seed in s.seeds:
            data = make_synthetic(n=s.n, d=s.d, correlation=p, seed=seed)
            y = torch.stack([data.train.labels[t] for t in TASKS]).numpy()
            label_corr.setdefault(p, []).append(float(np.corrcoef(y)[0, 1]))
            training = TrainConfig(
                optimizer="adam",
                lr=s.lr,
                batch_size=s.batch_size,
                epochs=s.epochs,
                patience=s.patience,
                monitor="mean",
                seed=seed,
            )
            for model in s.models:
                run = {"correlation": p, "seed": seed, "model": model, **train_one(data, model, training)}
                runs.append(run)
                log.info(
                    "p=%.2f seed %d %-13s test MSE %s, best epoch %s, %.0f s",
                    p, seed, model, {t: round(v, 4) for t, v in run["mse"].items()},
                    run["best_epoch"], run["seconds"],
                )  # fmt: skip
    return runs, label_corr


def summarise(s: Settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and stds over seeds, as arrays indexed [correlation, model, seed, task]."""
    shape = (len(s.correlations), len(s.models), len(s.seeds), len(TASKS))
    mse = np.full(shape, np.nan)
    for r in runs:
        idx = (s.correlations.index(r["correlation"]), s.models.index(r["model"]), s.seeds.index(r["seed"]))
        mse[idx] = [r["mse"][t] for t in TASKS]
    single = mse[:, [s.models.index(SINGLE_TASK)]]  # (C, 1, S, T), broadcasts over models
    gain = (single - mse) / single  # relative MSE reduction, paired by seed
    ddof = 1 if len(s.seeds) > 1 else 0
    seesaw_seeds = ((gain > 0).any(-1) & (gain < 0).any(-1)).sum(-1)  # (C, M)
    mean_gain = gain.mean(2)
    return {
        "mse_mean": mse.mean(2),
        "mse_std": mse.std(2, ddof=ddof),
        "gain_mean": mean_gain,
        "gain_std": gain.std(2, ddof=ddof),
        "gain": gain,
        "seesaw_seeds": seesaw_seeds,
        "verdict": [[classify_gains(mean_gain[c, m]) for m in range(len(s.models))] for c in range(shape[0])],
    }


def markdown_table(
    s: Settings, summary: dict[str, Any], runs: list[dict[str, Any]], label_corr: dict[float, list[float]]
) -> str:
    """One row per (correlation, model): test MSE mean ± std and gain mean ± std per task."""
    head = ["p", "label corr", "model", "params"]
    for t in TASKS:
        head += [f"{t} test MSE", f"{t} gain"]
    head += ["verdict", "seesaw seeds", "best epoch", "s/fit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, p in enumerate(s.correlations):
        for m, model in enumerate(s.models):
            mine = [r for r in runs if r["correlation"] == p and r["model"] == model]
            row = [f"{p:.2f}", f"{np.mean(label_corr[p]):.3f}", LABELS[model], f"{mine[0]['n_params']:,}"]
            for k in range(len(TASKS)):
                row.append(f"{summary['mse_mean'][c, m, k]:.4f} ± {summary['mse_std'][c, m, k]:.4f}")
                gain, spread = 100 * summary["gain_mean"][c, m, k], 100 * summary["gain_std"][c, m, k]
                row.append("" if model == SINGLE_TASK else f"{gain:+.1f}% ± {spread:.1f}")
            verdict = "reference" if model == SINGLE_TASK else summary["verdict"][c][m]
            seesaw = "" if model == SINGLE_TASK else f"{summary['seesaw_seeds'][c, m]}/{len(s.seeds)}"
            best = "/".join(f"{np.mean([r['best_epoch'][t] for r in mine]) + 1:.0f}" for t in TASKS)
            row += [verdict, seesaw, best, f"{np.mean([r['seconds'] for r in mine]):.1f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


#: Lowest gain the plot shows (%): a gain of -100% is twice the single-task MSE. One collapsed
#: run (a network stuck at predicting the mean) is far below; on an axis scaled to it, every
#: other difference, seesaw included, would be flattened to a line. Lower values are drawn at
#: the bottom edge with their value written beside them.
PLOT_FLOOR = -100.0


def plot(s: Settings, summary: dict[str, Any], path: Path) -> None:
    """Gain over single-task (relative MSE reduction, %) per task against the correlation:
    mean ± std over seeds (markers, bars) and each seed's gain (faint dots)."""
    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4.9), sharey=True)
    x = np.asarray(s.correlations)
    # side by side, so that the models' error bars and dots do not overlap
    offsets = 0.02 * (np.arange(len(s.models)) - (len(s.models) - 1) / 2) * max(np.ptp(x), 0.25)
    gain, mean, std = (100 * np.asarray(summary[k]) for k in ("gain", "gain_mean", "gain_std"))
    floor = max(PLOT_FLOOR, float(np.min(gain)) - 5)
    for k, (ax, task) in enumerate(zip(axes, TASKS, strict=True)):
        ax.axhline(0.0, color="black", linewidth=1.0, label="single-task")
        for m, model in enumerate(s.models):
            if model == SINGLE_TASK:
                continue
            xm = x + offsets[m]
            shown = np.clip(mean[:, m, k], floor, None)
            bars = ax.errorbar(xm, shown, yerr=std[:, m, k], marker="o", capsize=3, label=LABELS[model])
            color = bars.lines[0].get_color()
            seeds = gain[:, m, :, k]  # (C, S)
            ax.scatter(
                np.repeat(xm, seeds.shape[1]),
                np.clip(seeds, floor, None).ravel(),
                s=9,
                alpha=0.35,
                color=color,
            )
            for c in np.flatnonzero(mean[:, m, k] < floor):
                ax.plot(xm[c], floor, marker="v", color=color, markersize=8)
                ax.annotate(
                    f"mean {mean[c, m, k]:+.0f}%",
                    (xm[c], floor),
                    textcoords="offset points",
                    xytext=(-6, 8),
                    ha="right",
                    fontsize=7,
                    color=color,
                )
        ax.set_ylim(floor - 3, 100)
        ax.set_title(f"task {task}")
        ax.set_xlabel("correlation p (cosine of the task weight vectors)")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{p:g}" for p in x])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test MSE reduction vs single-task (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(
        f"MMoE synthetic data (d={s.d}, n={s.n:,}): gain over single-task; mean ± std over "
        f"{len(s.seeds)} seed(s), dots: single seeds (below {PLOT_FLOOR:.0f}% drawn at the edge); "
        "above 0 is better",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(s: Settings, payload: dict[str, Any], out_dir: Path) -> str:
    """The table, the raw JSON and the plot, all from ``payload`` (runs and run metadata)."""
    runs = payload["runs"]
    label_corr = {float(p): v for p, v in payload["label_correlation"].items()}
    summary = summarise(s, runs)
    if not np.isfinite(summary["mse_mean"]).all():
        raise SystemExit("some runs gave no finite test MSE; see the log")
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "synthetic_seesaw.png"
    plot(s, summary, png)
    before, after = payload["load_average_before_after"]
    total_s = payload["total_seconds"]
    params = ", ".join(f"{LABELS[m]} {SIZES[m]}" for m in s.models)
    text = "\n".join(
        [
            "# Synthetic seesaw benchmark" + (" (--quick: smoke size, not a result)" if s.quick else ""),
            "",
            f"- date: {payload['started']} (start)",
            f"- machine: {payload['machine']}; 1-min load average before / after: {before:.2f} / {after:.2f}",
            f"- whole benchmark: {total_s:.0f} s ({total_s / 60:.1f} min)",
            f"- data: make_synthetic(n={s.n:,}, d={s.d}), split 80/10/10; seeds {list(s.seeds)}",
            f"- training: Adam lr {s.lr:g}, batch {s.batch_size}, up to {s.epochs} epochs, "
            f"patience {s.patience}; single-task selected on its own task, MTL on mean R^2",
            f"- sizes: {params}",
            "- gain: relative test-MSE reduction over the same seed's single-task model "
            "(mean ± std over seeds); 'seesaw seeds': seeds with one gain > 0 and one < 0; "
            "'best epoch': the selected epoch (1-based, mean over seeds) per task",
            "",
            markdown_table(s, summary, runs, label_corr),
            "",
        ]
    )
    (out_dir / "synthetic_seesaw.md").write_text(text)
    payload = {
        **payload,
        "summary": {
            "axes": {"correlation": s.correlations, "model": s.models, "task": TASKS},
            **{k: np.asarray(v).tolist() for k, v in summary.items()},
        },
    }
    (out_dir / "synthetic_seesaw.json").write_text(json.dumps(payload, indent=2))
    return text


def main(argv: Sequence[str] | None = None) -> None:
    s, out_dir, from_json = parse_args(argv)
    if from_json is not None:  # re-render the outputs of an earlier run; no training
        payload = json.loads(from_json.read_text())
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["settings"].items()}
        s = Settings(**saved)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("mtlsearch").setLevel(logging.WARNING)  # one line per fit, not per epoch
        torch.set_num_threads(s.threads)
        # The optimisers import torch._dynamo on their first step (seconds); do it here so the
        # one-time cost is not charged to the first model's first epoch.
        importlib.import_module("torch._dynamo")
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        runs, label_corr = run_all(s)
        cpu = " ".join(filter(None, [platform.machine(), platform.processor()]))
        payload = {
            "started": started,
            "settings": dataclasses.asdict(s),
            "sizes": SIZES,
            "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} thread(s)",
            "load_average_before_after": [load_before, os.getloadavg()[0]],
            "total_seconds": time.perf_counter() - t0,
            "label_correlation": {str(p): v for p, v in label_corr.items()},
            "runs": runs,
        }
    text = write_outputs(s, payload, out_dir)
    print(text)
    print(f"wrote synthetic_seesaw.md, synthetic_seesaw.json and synthetic_seesaw.png in {out_dir}")


if __name__ == "__main__":
    main()
