"""Benchmark (not a test): PLE versus single-task on Census-Income (KDD), group 1.

Tasks: income > 50K (main) and marital status "never married" (auxiliary), the MMoE paper's
protocol (train file for training, test file halved into validation and test). For each
seed it trains one single-task network per task and one two-level PLE, all with the same
optimiser, batch size and epoch budget, and reports each task's test AUC (mean ± sample
std over seeds) and the wall time per epoch.

Settings (chosen to be paper-like and documented in docs/benchmarks.md):
* PLE: 2 extraction levels, per level 2 shared + 2 task-specific experts, each a
  single-layer network of 64 units (the PLE paper's experts are single layers); towers
  one hidden layer of 32; softmax gates; equal fixed loss weights; model selection on the
  mean of the tasks' normalised validation AUC.
* Single-task: a 64-unit bottom and a 32-unit tower per task, selected on its own task.
* Training: Adam, lr 1e-3, batch 1024, 10 epochs, early stopping with patience 3.

Usage::

    .venv/bin/python benchmarks/census_ple_vs_single.py --data-dir ../shared/data \\
        --out benchmarks/results/census_ple_vs_single.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mtlsearch.data import load_dataset
from mtlsearch.train import SINGLE_TASK, BaselineRun, TrainConfig, run_baselines

log = logging.getLogger("benchmark")

SIZES = {"n_experts": 2, "n_specific": 2, "expert_hidden": (64,), "tower": (32,), "n_levels": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding census-income-kdd/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the raw report (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    # The optimisers import torch._dynamo on their first step (seconds); do it here so the
    # one-time cost is not charged to the first model's first epoch.
    importlib.import_module("torch._dynamo")
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    data = load_dataset("census-income", data_dir=args.data_dir, group=1, seed=0)
    load_s = time.perf_counter() - t0
    log.info(
        "loaded %s in %.1f s: %d train / %d valid / %d test rows",
        data.name, load_s, len(data.train), len(data.valid), len(data.test),
    )  # fmt: skip
    training = TrainConfig(
        optimizer="adam",
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        patience=args.patience,
        monitor="mean",
    )

    def on_run(run: BaselineRun) -> None:
        aucs = {t: round(m["auc"], 4) for t, m in run.test.items()}
        log.info(
            "%s seed %d: test AUC %s, best epoch %s, %.2f s/epoch, %.0f s",
            run.model, run.seed, aucs, run.best_epoch, run.epoch_seconds, run.seconds,
        )  # fmt: skip

    report = run_baselines(data, training, presets=("ple",), sizes=SIZES, seeds=args.seeds, on_run=on_run)
    total_s = time.perf_counter() - t0

    print(f"date: {dt.date.today().isoformat()}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print(f"data load + preprocessing: {load_s:.1f} s; whole benchmark: {total_s / 60:.1f} min")
    print(
        "1-min load average before / after: "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (other work on the machine)"
    )
    print()
    print(report.to_markdown())
    print()
    print("| model | seed | income AUC | marital AUC | best epoch (0-based) | s/epoch | s |")
    print("|---|---|---|---|---|---|---|")
    for run in report.runs:
        epochs = ", ".join(f"{t} {e}" for t, e in run.best_epoch.items())
        print(
            f"| {run.model} | {run.seed} | {run.test['income']['auc']:.4f} | "
            f"{run.test['marital']['auc']:.4f} | {epochs} | {run.epoch_seconds:.2f} | "
            f"{run.seconds:.0f} |"
        )
    for model in report.models:
        per_epoch = [r.epoch_seconds for r in report.runs_of(model)]
        print(
            f"{model}: {statistics.fmean(per_epoch):.2f} s/epoch "
            f"({'sum of the per-task networks' if model == SINGLE_TASK else 'one network'})"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"report": report.to_dict(), "load_seconds": load_s, "total_seconds": total_s}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"raw report: {args.out}")


if __name__ == "__main__":
    main()
