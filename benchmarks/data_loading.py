"""Benchmark (not a test): Census-Income loading + preprocessing, and one pass over all
training batches at batch size 1024, beside one PLE training epoch on the same batches.

Goal (issue 3): the batch pass -- a seeded shuffle and one index gather per tensor and
batch, from tensors already in memory -- adds under 5% to a training epoch. The epoch is
the smallest honest one: ``preset("ple", ...)`` (2 levels, 64-unit experts) and a plain
Adam loop with a masked BCE loss per task, so the ratio is pessimistic for bigger models.

Run from the repository root::

    .venv/bin/python benchmarks/data_loading.py --data-dir ../shared/data

It prints one line per measurement and, last, all raw numbers as one JSON object (also
written to ``--json PATH`` if given). Record them in docs/benchmarks.md with the date,
machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mtlsearch.arch import build_model, count_parameters, preset
from mtlsearch.data import MTLDataset, TensorSplit, census_files, census_spec, load_dataset
from mtlsearch.data._io import read_table


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall-clock seconds of ``repeats`` calls, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def batch_pass(split: TensorSplit, batch_size: int, seed: int) -> int:
    """One epoch's worth of batches, as a trainer draws them; returns the rows seen."""
    gen = torch.Generator().manual_seed(seed)
    rows = 0
    for batch in split.batches(batch_size, shuffle=True, generator=gen):
        rows += batch.numeric.shape[0]
    return rows


def ple_epoch(ds: MTLDataset, batch_size: int, seed: int) -> tuple[float, float, int]:
    """(seconds for one training epoch, seconds spent drawing its batches, parameters)."""
    torch.manual_seed(seed)
    model = build_model(preset("ple", ds.input_spec(), ds.tasks), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    drawing = 0.0
    t0 = time.perf_counter()
    it = iter(ds.train.batches(batch_size, shuffle=True, generator=gen))
    while True:
        t_draw = time.perf_counter()
        batch = next(it, None)
        drawing += time.perf_counter() - t_draw
        if batch is None:
            break
        out = model(batch.numeric, batch.categorical)
        loss = torch.zeros(())
        for task in ds.tasks:  # masked mean: the PLE paper's per-task sample space
            m = batch.masks[task.name].float()
            per_row = F.binary_cross_entropy_with_logits(
                out[task.name], batch.labels[task.name], reduction="none"
            )
            loss = loss + (per_row * m).sum() / m.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, drawing, count_parameters(model)


def tensor_bytes(split: TensorSplit) -> int:
    tensors = [split.numeric, split.categorical, *split.labels.values(), *split.masks.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the census files")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each step")
    p.add_argument("--epochs", type=int, default=3, help="PLE epochs timed (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_path, test_path = census_files(args.data_dir, download=True)
    files = census_spec(train_path, test_path).files
    read_s, _ = timed(lambda: (read_table(train_path, files), read_table(test_path, files)), args.repeats)
    load_s, ds = timed(lambda: load_dataset("census-income", data_dir=args.data_dir, seed=0), args.repeats)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    n_batches = -(-len(ds.train) // args.batch_size)
    pass_s, rows = timed(lambda: batch_pass(ds.train, args.batch_size, seed=0), args.repeats)
    assert rows == len(ds.train)
    ple_epoch(ds, args.batch_size, seed=0)  # warm-up: allocator, kernels
    epochs = [ple_epoch(ds, args.batch_size, seed=1 + e) for e in range(args.epochs)]
    epoch_s = [e[0] for e in epochs]
    draw_s = [e[1] for e in epochs]

    # min of each: on a shared machine the noise only ever adds time
    best_pass, best_epoch = min(pass_s), min(epoch_s)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            # other processes share the machine: the 1-minute load at the end of the run
            "load_average_1min": os.getloadavg()[0],
        },
        "rows": {"train": len(ds.train), "valid": len(ds.valid), "test": len(ds.test)},
        "inputs": {
            "numeric": len(ds.numeric_features),
            "categorical": len(ds.categorical_features),
        },
        "train_tensor_mib": tensor_bytes(ds.train) / 2**20,
        "peak_rss_mib": rss_mib,
        "read_csv_s": read_s,
        "load_and_preprocess_s": load_s,
        "batch_size": args.batch_size,
        "batches_per_epoch": n_batches,
        "batch_pass_s": pass_s,
        "ple_params": epochs[0][2],
        "ple_epoch_s": epoch_s,
        "ple_epoch_batch_draw_s": draw_s,
        "batch_pass_share_of_epoch": best_pass / best_epoch,
        "goal_met": best_pass / best_epoch < 0.05,
    }

    def secs(ts: list[float], scale: float = 1.0) -> str:
        return ", ".join(f"{t * scale:.{3 if scale == 1 else 1}f}" for t in ts)

    print(f"census-income: {len(ds.train):,} / {len(ds.valid):,} / {len(ds.test):,} rows")
    print(f"read both CSV files  min {min(read_s):7.3f} s   (all: {secs(read_s)})")
    print(f"load + preprocess    min {min(load_s):7.3f} s   (all: {secs(load_s)})")
    print(f"train tensors {result['train_tensor_mib']:.1f} MiB; peak RSS {rss_mib:.0f} MiB")
    print(
        f"batch pass ({n_batches} x {args.batch_size})  min {best_pass * 1e3:7.1f} ms"
        f"  (all: {secs(pass_s, 1e3)})"
    )
    print(
        f"PLE epoch ({epochs[0][2]:,} params)  min {best_epoch:7.3f} s   (all: {secs(epoch_s)});"
        f" drawing its batches min {min(draw_s) * 1e3:.1f} ms"
    )
    share = 100 * result["batch_pass_share_of_epoch"]
    print(f"batch pass / PLE epoch: {share:.2f}% (goal < 5%)")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
