"""Benchmark (not a test): how fast could the large PLE's training step run on a GPU at best?
A roofline bound computed from the step's own operations, on the CPU.

Why (issue 13): the goal "the large PLE's step at >= 50 % of the device's bf16 matmul
throughput" was measured at 2.5 % eager and 9.7 % under CUDA graphs on an H200
(``benchmarks/accelerator.py``). Before writing kernels for it, this script asks whether the
network's step *can* reach half the chip at all, and with what: it records every aten
operation of one training step (forward, loss, backward and Adam, under autocast in the
chosen precision) of the ``large`` network of ``benchmarks/accelerator.py`` (128 numeric
inputs, 2 binary tasks, 2 levels of 2 shared + 2 specific experts per task of widths
[512, 256], towers [256], batch 8192) with a ``TorchDispatchMode`` and gives each one

* its FLOPs, from ``torch.utils.flop_counter``'s registry (matrix operations only: mm,
  addmm, bmm, ...; what ``accelerator.py`` counts as the step's work), and
* the bytes it must move at least: the sizes of its tensor inputs plus its outputs (a view
  moves nothing; an in-place operation reads and writes its target, also one that returns
  nothing, such as fused Adam and the ``_foreach`` ops).

An operation on a device of ``P`` FLOP/s and ``B`` bytes/s takes at least
``max(flops / P, bytes / B)`` (the roofline model, Williams et al., CACM 2009). Three bounds
on the step's share of the device's matmul throughput, ``(matrix FLOPs / P) / step time``:

``as recorded``
    every operation of today's graph at its own roofline, one after the other (no launch or
    host cost at all: what a perfect CUDA graph of today's kernels could do);
``matrix ops only``
    every non-matrix operation fused away into the matrix kernels (free), each matrix
    operation at its roofline with its own operands: what fused expert kernels could do;
``compute only``
    no memory traffic at all: 100 % by construction, the ceiling.

``P`` and ``B`` are inputs, not measurements (defaults: the H200's bf16 matmul rate that
``accelerator.py`` measured, 803.2 TFLOP/s, and fp32 51.0 TFLOP/s; HBM3e bandwidth 4.8 TB/s,
NVIDIA's figure for the H200 SXM). The graph recorded on the CPU is that of CPU autocast,
which casts the same operations (linear, matmul, bmm) to bf16 as CUDA autocast; Adam is
``torch.optim.Adam(fused=True)`` as in ``accelerator.py``. The bounds ignore caches (every
tensor goes to and from HBM once per operation that touches it; an H200's 50 MB L2 can keep
a few of this step's smaller tensors), so they are a model: a kernel can beat the ``as
recorded`` bound only by not writing an intermediate, which is what fusion means.

Usage::

    .venv/bin/python benchmarks/step_roofline.py [--precision bf16 fp32] [--batch 8192]
        [--bf16-tflops 803.2] [--fp32-tflops 51.0] [--bandwidth-tbs 4.8]

Prints, per precision, the step's matrix FLOPs and bytes, the three bounds and the operations
that move the most bytes; then one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _large_ple import TASKS, large_ple
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from mtlsearch.arch import count_parameters


def _nbytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class OpRecorder(TorchDispatchMode):
    """Records ``(op name, matrix FLOPs, bytes)`` for every aten call under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        schema = func._schema
        returns = schema.returns
        is_view = bool(returns) and all(
            r.alias_info is not None and not r.alias_info.is_write for r in returns
        )
        name = str(func.overloadpacket.__name__)
        if is_view or name.startswith(("empty", "_local_scalar_dense", "_unsafe_view")):
            moved = 0  # a view shares its input's storage; empty allocates without writing
        else:
            moved = _nbytes((args, kwargs)) + _nbytes(out)
            if not returns:  # an in-place op that returns nothing (fused Adam, foreach): its writes
                written = [
                    a for a, arg in zip(args, schema.arguments, strict=False)
                    if arg.alias_info is not None and arg.alias_info.is_write
                ]  # fmt: skip
                moved += _nbytes(written)
        flops = 0
        counter: Callable[..., int] | None = flop_registry.get(func.overloadpacket)
        if counter is not None:
            flops = int(counter(*args, **kwargs, out_val=out))
        self.ops.append((name, flops, moved))
        return out


def record_step(precision: str, batch: int) -> tuple[list[tuple[str, int, int]], int]:
    """One training step of the large PLE on the CPU under the recorder (after one warm-up
    step, so Adam's state exists as in every later step)."""
    torch.manual_seed(0)
    model = large_ple()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 128)
    cat = torch.zeros(batch, 0, dtype=torch.long)
    y = {t.name: torch.randint(0, 2, (batch,)).float() for t in TASKS}
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x, cat)
            loss = sum(
                F.binary_cross_entropy_with_logits(out[t.name].reshape(-1).float(), y[t.name]) for t in TASKS
            )
        loss.backward()
        opt.step()

    step()
    recorder = OpRecorder()
    with recorder:
        step()
    return recorder.ops, count_parameters(model)


def bounds(ops: list[tuple[str, int, int]], peak_flops: float, bandwidth: float) -> dict[str, Any]:
    """The three bounds of the module docstring for one recorded step."""
    matrix_flops = sum(f for _, f, _ in ops)
    ideal = matrix_flops / peak_flops  # seconds of matrix work at the peak
    recorded = sum(max(f / peak_flops, b / bandwidth) for _, f, b in ops)
    matrix_only = sum(max(f / peak_flops, b / bandwidth) for _, f, b in ops if f > 0)
    by_op: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for name, f, b in ops:
        row = by_op[name]
        row[0] += 1
        row[1] += f
        row[2] += b
    return {
        "ops": len(ops),
        "matrix_ops": sum(1 for _, f, _ in ops if f > 0),
        "matrix_gflop": matrix_flops / 1e9,
        "gbytes": sum(b for _, _, b in ops) / 1e9,
        "matrix_gbytes": sum(b for _, f, b in ops if f > 0) / 1e9,
        "compute_only_ms": ideal * 1e3,
        "as_recorded_ms": recorded * 1e3,
        "matrix_only_ms": matrix_only * 1e3,
        "share_as_recorded": ideal / recorded,
        "share_matrix_only": ideal / matrix_only,
        "by_op": {k: {"calls": v[0], "gflop": v[1] / 1e9, "gbytes": v[2] / 1e9} for k, v in by_op.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--bf16-tflops", type=float, default=803.2, help="device bf16 matmul TFLOP/s")
    ap.add_argument("--fp32-tflops", type=float, default=51.0, help="device fp32 matmul TFLOP/s")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="device memory bandwidth, TB/s")
    ap.add_argument("--top", type=int, default=8, help="operations listed by bytes moved")
    args = ap.parse_args()
    torch.set_num_threads(1)

    peaks = {"bf16": args.bf16_tflops * 1e12, "fp32": args.fp32_tflops * 1e12}
    bandwidth = args.bandwidth_tbs * 1e12
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "batch": args.batch,
        "bandwidth_tbs": args.bandwidth_tbs,
        "precisions": {},
    }
    for precision in args.precision:
        ops, params = record_step(precision, args.batch)
        b = bounds(ops, peaks[precision], bandwidth)
        b["peak_tflops"] = peaks[precision] / 1e12
        report["params"] = params
        report["precisions"][precision] = b
        print(
            f"{precision}: batch {args.batch}, {params:,} parameters, {b['ops']} aten ops "
            f"({b['matrix_ops']} matrix), {b['matrix_gflop']:.1f} GFLOP of matrix work, "
            f"{b['gbytes']:.3f} GB moved ({b['matrix_gbytes']:.3f} GB by matrix ops); "
            f"device {b['peak_tflops']:g} TFLOP/s, {args.bandwidth_tbs:g} TB/s"
        )
        print("| bound | step ms | share of matmul throughput |\n| --- | ---: | ---: |")
        for label, key in (
            ("as recorded (each op at its roofline)", "as_recorded"),
            ("matrix ops only (the rest fused away)", "matrix_only"),
        ):
            print(f"| {label} | {b[key + '_ms']:.3f} | {b['share_' + key]:.1%} |")
        print(f"| compute only | {b['compute_only_ms']:.3f} | 100.0% |")
        top = sorted(b["by_op"].items(), key=lambda kv: -kv[1]["gbytes"])[: args.top]
        print("\n| op | calls | GB moved | GFLOP |\n| --- | ---: | ---: | ---: |")
        for name, row in top:
            print(f"| {name} | {row['calls']} | {row['gbytes']:.3f} | {row['gflop']:.1f} |")
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
