"""Benchmark (not a test): streamed training at growing row counts (issue 12, memory flat).

For each N in ``--rows`` (default 1M and 4M; issue 12's 20M run takes about a quarter of an hour here):
``mtlsearch data generate`` writes N training rows (10 numeric, the ``--ids`` categorical id
columns, a click/conversion pair with the conversion masked to clicks) as Parquet shards,
plus fixed validation and test tables (``--eval-rows`` each); a ``stream: true`` spec reads
them (``shuffle_buffer`` rows, default 262144); ``mtlsearch train`` runs one epoch of a small
PLE in its own process with ``--threads 1``. Printed per N: the child's peak RSS (VmHWM,
from ``getrusage(RUSAGE_CHILDREN)``, which covers the one child of that run), the training
rows per second of the epoch (training plus one validation pass, from metrics.json's
``epoch_seconds``) and the wall time. Flat memory means the peak RSS at 4M rows stays
within a small factor of the one at 1M (the data, unlike the in-memory path, is not held).
With counted vocabularies (the default) the id columns' tables grow with the rows, as more
ids reach ``min_frequency`` (the ``params`` column); ``--hash-buckets N`` hashes them into
constant tables, which isolates the data's share of the memory.

Usage::

    .venv/bin/python benchmarks/stream_scale.py                    # 1M and 4M rows
    .venv/bin/python benchmarks/stream_scale.py --rows 200000,800000 --keep /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mtlsearch"]

EXPERIMENT = {
    "model": {
        "name": "ple",
        "levels": [{"n_shared": 2, "n_specific": 1, "expert_hidden": [32]}],
        "towers": {"hidden": [16]},
    },
    "training": {"lr": 1.0e-3, "batch_size": 2048, "epochs": 1, "seed": 0},
}


def _run(args: list[str]) -> tuple[float, float]:
    """Run one child; its wall seconds and peak RSS in MiB (ru_maxrss of the children so
    far: measured one child per process run, see main)."""
    t0 = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _generate(rows: int, out: Path, seed: int, ids: str) -> None:
    if (out / "generate.json").exists():
        return
    subprocess.run(
        [*CLI, "data", "generate", "--rows", str(rows), "--out", str(out), "--seed", str(seed),
         "--ids", ids, "--conversion", "--shard-rows", "500000", "-q"],
        check=True, cwd=REPO,
    )  # fmt: skip


def one_size(rows: int, folder: Path, args: argparse.Namespace) -> dict:
    """Generate, then train one epoch streamed in a fresh interpreter started by this one
    (``--child``), so that its peak RSS is its own."""
    data = folder / f"train-{rows}"
    _generate(rows, data, 0, args.ids)
    for name, seed in (("valid", 1), ("test", 2)):
        _generate(args.eval_rows, folder / name, seed, args.ids)
    ids = [c.split(":")[0] for c in args.ids.split(",")]
    spec = {
        "name": f"scale-{rows}",
        "files": {"train": str(data), "valid": str(folder / "valid"), "test": str(folder / "test")},
        "stream": True,
        "shuffle_buffer": args.shuffle_buffer,
        "features": {
            "numeric": [f"x{i}" for i in range(10)],
            "categorical": ids,
            **({"hash_buckets": {c: args.hash_buckets for c in ids}} if args.hash_buckets else {}),
        },
        "tasks": [
            {"name": "ctr", "label": "click", "kind": "binary"},
            {"name": "cvr", "label": "conversion", "kind": "binary", "where": {"click": 1}},
        ],
    }
    spec_path = folder / f"spec-{rows}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    exp = folder / "exp.yaml"
    exp.write_text(yaml.safe_dump(EXPERIMENT))
    out = folder / f"run-{rows}"
    child = [sys.executable, __file__, "--child", str(spec_path), str(exp), str(out)]
    proc = subprocess.run(child, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(spec: str, exp: str, out: str) -> None:
    wall, peak = _run([*CLI, "train", "-c", exp, "--data", spec, "--out", out, "--overwrite", "-q",
                       "--threads", "1"])  # fmt: skip
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    rows = yaml.safe_load(Path(spec).read_text())
    train_rows = json.loads((Path(rows["files"]["train"]) / "generate.json").read_text())
    n = int(train_rows["rows"])
    epoch = metrics["epoch_seconds"][0]
    result = {"rows": n, "peak_rss_mib": peak, "epoch_s": epoch, "rows_per_s": n / epoch, "wall_s": wall}
    print(json.dumps({**result, "n_params": metrics["n_params"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,4000000", help="comma-separated training row counts")
    parser.add_argument("--eval-rows", type=int, default=200_000)
    parser.add_argument("--ids", default="user:1000000,item:100000,cat:1000")
    parser.add_argument("--shuffle-buffer", type=int, default=262_144)
    parser.add_argument(
        "--hash-buckets", type=int, default=0,
        help="hash every id column into N buckets (constant embedding tables); 0: count the vocabulary",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="folder for the data (kept; reused)")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "EXP", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [int(float(x)) for x in args.rows.split(",")]
    if max(sizes) > 4_000_000:  # issue 12's 20M run: about 8 min to generate, 4 min per epoch here
        print(f"note: {max(sizes):,} rows take minutes per step on a 2-core machine", flush=True)
    with tempfile.TemporaryDirectory(prefix="stream-scale-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'rows':>10} {'peak RSS MiB':>13} {'epoch s':>9} {'rows/s':>9} {'wall s':>8} {'params':>10}")
        for n in sizes:
            r = one_size(n, folder, args)
            line = f"{r['rows']:>10,} {r['peak_rss_mib']:>13.0f} {r['epoch_s']:>9.1f}"
            print(f"{line} {r['rows_per_s']:>9,.0f} {r['wall_s']:>8.1f} {r['n_params']:>10,}", flush=True)


if __name__ == "__main__":
    main()
