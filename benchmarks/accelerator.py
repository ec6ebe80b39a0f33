"""Benchmark (not a test): training throughput on CPU and GPU, fp32 and bf16, and 1 vs 2
process DDP on the CPU (issue 13).

Parts (``--parts``, default all that the machine can run):

``census``
    The census-income PLE of ``benchmarks/vs_torch_rechub.py`` (group 1, 2 levels, 2 shared +
    2 specific experts of width 64, towers 32, batch norm, embeddings of 8) trained by
    :func:`mtlsearch.train.fit` for ``--epochs`` epochs at each batch size of ``--batches``.
    Samples/s = training rows / the training pass of an epoch (validation excluded; the
    median over epochs after the first, which pays for warm-up and the first copies).

``large``
    A large synthetic PLE (128 numeric inputs, 2 binary tasks, 2 levels, 2 shared + 2
    specific experts per task of widths [512, 256], towers [256]) at batch 8192: the bare
    step (forward, loss, backward, Adam: the step ``fit`` runs, without its bookkeeping)
    timed over ``--steps`` steps, and its matrix FLOPs (``FlopCounterMode`` over one real
    step) turned into achieved TFLOP/s, beside the same device's matmul TFLOP/s measured in
    the same run (8192^3 on the GPU, 2048^3 on the CPU; bf16 and fp32). With ``--compile``
    the same step under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) is added;
    ``--compile-modes reduce-overhead max-autotune`` adds one row per mode (``max-autotune``:
    Inductor's Triton matmul templates with the pointwise work fused into them, which
    ``benchmarks/step_roofline.py`` says the step needs to reach half the bf16 matmul rate).

``ddp``
    ``mtlsearch train`` on the census table (``--ddp-rows`` training rows, the PLE of
    benchmarks/configs/census_ple_embed_init_0.01.yaml) with ``--nproc 1`` and ``--nproc 2``
    (gloo, CPU), one after the other, each with the machine's cores divided among its ranks:
    samples/s from each run's metrics.json (an epoch = training pass + validation on all
    ranks), and the test AUCs.

Run from the repository root::

    .venv/bin/python benchmarks/accelerator.py --data-dir ../shared/data

On a GPU machine without the project installed, ``PYTHONPATH=. python3
benchmarks/accelerator.py --parts census large`` works with torch, pandas, pyarrow,
scikit-learn, typer, rich and pyyaml. It prints markdown tables and then one JSON object
with every raw number; record them in docs/benchmarks.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

TASKS = ("income", "marital")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Mean rate of an n x n @ n x n matrix product on ``device`` in ``dtype``, TFLOP/s
    (after three warm-ups)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


# ---- census: fit() on the vs-torch-rechub network -----------------------------------------
def census_data(data_dir: Path | None) -> Any:
    from mtlsearch.data import load_dataset

    return load_dataset("census-income", data_dir=data_dir, group=1, seed=0)


def census_experiment(data: Any, batch: int, epochs: int, device: str, precision: str) -> Any:
    """The PLE of benchmarks/vs_torch_rechub.py (its headline settings: batch norm,
    embedding init std 0.01) with the given batch, device and precision."""
    from vs_torch_rechub import _mtl_experiment

    settings = {
        "numeric": list(data.numeric_features),
        "categorical": [[n, int(c)] for n, c in data.categorical_features],
        "embed_dim": 8,
        "embed_init_std": 0.01,
        "norm": "batch",
        "lr": 1e-3,
        "batch_size": batch,
        "epochs": epochs,
        "seed": 0,
    }
    experiment = _mtl_experiment(settings)
    training = dataclasses.replace(experiment.training, device=device, precision=precision)
    return dataclasses.replace(experiment, training=training)


def run_census(data: Any, batch: int, epochs: int, device: str, precision: str) -> dict[str, Any]:
    from mtlsearch.train import fit

    fit_module = importlib.import_module("mtlsearch.train._fit")
    train_s: list[float] = []
    inner = fit_module._train_epoch

    def timed(*args: Any, **kwargs: Any) -> Any:
        _sync(torch.device(device))
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        _sync(torch.device(device))
        train_s.append(time.perf_counter() - t0)
        return out

    fit_module._train_epoch = timed
    try:
        result = fit(census_experiment(data, batch, epochs, device, precision), data, progress=False)
    finally:
        fit_module._train_epoch = inner
    rows = len(data.train)
    steady = train_s[1:] or train_s
    return {
        "device": device,
        "precision": precision,
        "batch": batch,
        "train_rows": rows,
        "train_seconds": train_s,
        "samples_per_s": rows / statistics.median(steady),
        "test_auc": {t: float(result.test[t]["auc"]) for t in TASKS},
    }


# ---- large synthetic PLE: the bare step against the device's matmul ----------------------
def large_step(
    device: torch.device, precision: str, batch: int, steps: int, compile_mode: str | None
) -> dict[str, Any]:
    from _large_ple import TASKS as tasks
    from _large_ple import large_ple

    from mtlsearch.arch import count_parameters

    model = large_ple().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 128, device=device, generator=gen)
    cat = torch.zeros(batch, 0, dtype=torch.long, device=device)
    y = {t.name: torch.randint(0, 2, (batch,), device=device, generator=gen).float() for t in tasks}
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x, cat)
            loss = sum(
                F.binary_cross_entropy_with_logits(out[t.name].reshape(-1).float(), y[t.name]) for t in tasks
            )
        loss.backward()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        forward_backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        forward_backward()
    flops = counter.get_total_flops()
    run: Callable[[], None] = step
    if compile_mode is not None:
        run = torch.compile(step, mode=compile_mode)
    for _ in range(10):
        run()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    return {
        "device": str(device),
        "precision": precision,
        "compiled": compile_mode or False,
        "batch": batch,
        "params": count_parameters(model),
        "gflop_per_step": flops / 1e9,
        "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds,
        "achieved_tflops": flops / seconds / 1e12,
    }


# ---- DDP on the CPU: mtlsearch train --nproc 1 vs 2 --------------------------------------
def run_ddp(
    data_dir: Path | None, nproc: int, rows: int, epochs: int, batch: int, threads: int
) -> dict[str, Any]:
    """``mtlsearch train --nproc N`` on census-income group 1 with the PLE of
    benchmarks/configs/census_ple_embed_init_0.01.yaml (epochs and batch set here)."""
    import yaml

    config = yaml.safe_load((HERE / "configs" / "census_ple_embed_init_0.01.yaml").read_text())
    config["training"].update(epochs=epochs, batch_size=batch, patience=None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        path = Path(tmp) / "ple.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd = [
            sys.executable, "-m", "mtlsearch", "train", "--config", str(path), "--dataset", "census-income",
            "--max-rows", str(rows), "--out", str(out), "--nproc", str(nproc), "--threads", str(threads),
            "--device", "cpu", "--quiet",
        ]  # fmt: skip
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"nproc": nproc, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        metrics = json.loads((out / "metrics.json").read_text())
    epoch_s = metrics["epoch_seconds"]
    steady = epoch_s[1:] or epoch_s
    return {
        "nproc": nproc,
        "threads_per_rank": threads,
        "train_rows": rows,
        "epoch_seconds": epoch_s,
        "samples_per_s": rows / statistics.median(steady),
        "wall_s": wall,
        "test_auc": {t: metrics["test"][t]["auc"] for t in metrics["test"]},
    }


# ---- report ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--parts", nargs="+", choices=["census", "large", "ddp"], default=["census", "large", "ddp"]
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="folder holding census-income-kdd/")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--large-batch", type=int, default=8192)
    ap.add_argument(
        "--cpu-threads", type=int, default=None, help="torch threads on the CPU (default: all cores)"
    )
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU rows of census and large")
    ap.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="rows of census and large (default: all)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="add torch.compile(reduce-overhead) rows on the GPU"
    )
    ap.add_argument(
        "--compile-modes",
        nargs="+",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        default=None,
        help="torch.compile modes of the GPU rows of large (--compile: reduce-overhead)",
    )
    ap.add_argument("--ddp-rows", type=int, default=50_000)
    ap.add_argument("--ddp-epochs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    args = ap.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    cuda = torch.cuda.is_available()
    devices = ([] if args.no_cpu else ["cpu"]) + (["cuda"] if cuda else [])
    if args.devices is not None:
        devices = [d for d in devices if d in args.devices]
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name(0)}" if cuda else ", no GPU"),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "loadavg_before": list(os.getloadavg()),
        "command": " ".join(sys.argv),
    }
    if not cuda:
        print("no CUDA device: the GPU rows were not run")

    report["matmul_tflops"] = {}
    for dev in devices:
        n = 8192 if dev == "cuda" else 2048
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            report["matmul_tflops"][f"{dev}/{name}"] = matmul_tflops(torch.device(dev), dtype, n)
    if "census" in args.parts:
        data = census_data(args.data_dir)
        rows = []
        for dev in devices:
            for precision in ("fp32", "bf16") if dev == "cuda" else ("fp32",):
                for batch in args.batches:
                    rows.append(run_census(data, batch, args.epochs, dev, precision))
                    r = rows[-1]
                    print(
                        f"census {dev} {precision} batch {batch}: {r['samples_per_s']:,.0f} samples/s",
                        flush=True,
                    )
        report["census"] = rows
        print("\n| device | precision | batch | samples/s (train pass) | test AUC income | marital |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['device']} | {r['precision']} | {r['batch']} | {r['samples_per_s']:,.0f} | "
                f"{r['test_auc']['income']:.4f} | {r['test_auc']['marital']:.4f} |"
            )
    if "large" in args.parts:
        modes = args.compile_modes or (["reduce-overhead"] if args.compile else [])
        rows = []
        for dev in devices:
            for precision in ("fp32", "bf16"):
                for mode in [None, *(modes if dev == "cuda" else [])]:
                    rows.append(large_step(torch.device(dev), precision, args.large_batch, args.steps, mode))
        report["large"] = rows
        print(f"\nlarge PLE bare step, batch {args.large_batch}")
        print(
            "| device | precision | compiled | GFLOP/step | step ms | samples/s | TFLOP/s | "
            "matmul TFLOP/s | share |"
        )
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            ref = report["matmul_tflops"][f"{r['device']}/{r['precision']}"]
            r["share_of_matmul"] = r["achieved_tflops"] / ref
            print(
                f"| {r['device']} | {r['precision']} | {r['compiled']} | {r['gflop_per_step']:.1f} | "
                f"{r['step_ms']:.3f} | {r['samples_per_s']:,.0f} | {r['achieved_tflops']:.2f} | {ref:.1f} | "
                f"{100 * r['share_of_matmul']:.1f} % |"
            )
    if "ddp" in args.parts:
        cores = os.cpu_count() or 2
        rows = [
            run_ddp(args.data_dir, n, args.ddp_rows, args.ddp_epochs, 1024, max(1, cores // n))
            for n in (1, 2)
        ]
        report["ddp"] = rows
        print("\nDDP on the CPU (gloo), census-income, mtlsearch train --nproc N")
        print("| processes | threads per rank | samples/s | test AUC |")
        print("| ---: | ---: | ---: | --- |")
        for r in rows:
            if "error" in r:
                print(f"| {r['nproc']} | - | failed: {r['error']} | |")
                continue
            aucs = ", ".join(f"{t} {v:.4f}" for t, v in r["test_auc"].items())
            print(f"| {r['nproc']} | {r['threads_per_rank']} | {r['samples_per_s']:,.0f} | {aucs} |")
    report["loadavg_after"] = list(os.getloadavg())
    text = json.dumps(report)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
