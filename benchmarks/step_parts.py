"""Benchmark (not a test): the parts of a training step the builder and trainer chose between.

Why: docs/benchmarks.md explains mtlsearch's step time by a few implementation choices
(how embeddings are looked up, how a level's experts read their inputs, which Adam kernel
runs, batched vs looped expert GEMMs). Each choice is timed here against its alternative,
forward + backward where there is a backward, on census-income-sized tensors, so those
figures come from a committed script rather than from a scratch session.

Parts (batch 1024, 2 threads by default; per variant the best of ``--repeats`` medians of
``--steps`` calls, the variants of a part alternating repeat by repeat):

* ``embedding``: 31 categorical columns, one shared 503 x 8 table (census group 1 at
  embedding size 8): ``F.embedding`` (backward: ``embedding_dense_backward``) vs
  ``weight.index_select`` (backward: ``index_add``), which mtlsearch uses.
* ``expert_inputs``: a level-2 layer of 6 experts of 64 units (2 specific per task + 2
  shared) reading 3 inputs of 64: stack the inputs, gather one copy per expert and
  ``baddbmm`` (before) vs one GEMM per input written side by side (mtlsearch now).
* ``model_step``: forward + backward of the whole census PLE (below) with level 2's
  experts reading their inputs each of those two ways (the layout of the experts' output
  decides whether the gate mixing and batch norm downstream copy it).
* ``adam``: one optimizer step over the census PLE with batch norm (35 parameter
  tensors): ``torch.optim.Adam`` default (for-loop on CPU), ``foreach=True``,
  ``fused=True`` (what ``mtlsearch.train.fit`` builds).
* ``expert_gemm``: 6 experts 1024 x 128 -> 64 as one ``baddbmm``, as a loop of 6 ``mm``,
  and one ``mm`` of equal FLOPs.

Usage::

    .venv/bin/python benchmarks/step_parts.py            # full: 200 steps, best of 5
    .venv/bin/python benchmarks/step_parts.py --quick    # smoke size, a few seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
import types
from collections.abc import Callable

import torch
from torch import nn

from mtlsearch.arch import (
    ArchConfig,
    BatchedMLP,
    CategoricalFeature,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
)

BATCH = 1024


def time_us(variants: dict[str, Callable[[], object]], steps: int, repeats: int) -> dict[str, float]:
    """Per variant, the best over ``repeats`` of the median call time (µs) of ``steps`` calls.

    The variants alternate within each repeat, so a burst of load on this shared VM hits
    them alike instead of one variant's whole measurement.
    """
    for fn in variants.values():
        for _ in range(max(3, steps // 10)):
            fn()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], statistics.median(times))
    return {name: t * 1e6 for name, t in best.items()}


def embedding_parts(gen: torch.Generator) -> dict[str, Callable[[], object]]:
    table = nn.Parameter(torch.randn(503, 8, generator=gen))
    codes = torch.randint(0, 503, (BATCH, 31), generator=gen)
    grad = torch.randn(BATCH, 31 * 8, generator=gen)

    def embedding() -> None:
        nn.functional.embedding(codes, table).flatten(1).backward(grad)

    def index_select() -> None:
        table.index_select(0, codes.flatten()).view(BATCH, -1).backward(grad)

    return {"F.embedding": embedding, "index_select (mtlsearch)": index_select}


def expert_input_parts(gen: torch.Generator) -> dict[str, Callable[[], object]]:
    mlp = BatchedMLP(6, 64, (64,))
    inputs = [torch.randn(BATCH, 64, generator=gen).requires_grad_() for _ in range(3)]
    source = torch.tensor([0, 0, 1, 1, 2, 2])

    def stack_gather() -> None:
        x = torch.stack(inputs).index_select(0, source)
        mlp(x).sum().backward()

    def grouped() -> None:
        mlp(inputs, (2, 2, 2)).sum().backward()

    return {"stack + gather + baddbmm": stack_gather, "GEMM per input (mtlsearch)": grouped}


def model_step_parts(gen: torch.Generator) -> dict[str, Callable[[], object]]:
    """The whole census PLE step (forward + backward, no optimizer) with level 2's experts
    reading their inputs either way: the layout of the experts' output also decides
    whether the gate mixing and batch norm downstream copy it."""

    def stacked_inputs(level: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        groups = level._input_groups[: len(inputs)]
        source = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(groups))
        return level.experts(torch.stack(inputs[: len(groups)]).index_select(0, source))

    numeric = torch.randn(BATCH, 7, generator=gen)
    out = {}
    for label, patch in (("stack + gather + baddbmm", True), ("GEMM per input (mtlsearch)", False)):
        model = census_ple()
        categorical = torch.stack(
            [
                torch.randint(0, c.cardinality, (BATCH,), generator=gen)
                for c in model.config.inputs.categorical
            ],
            1,
        )
        if patch:
            for level in list(model.levels)[1:]:
                level._expert_outputs = types.MethodType(stacked_inputs, level)

        def step(model: nn.Module = model, categorical: torch.Tensor = categorical) -> None:
            sum(y.sum() for y in model(numeric, categorical).values()).backward()

        out[label] = step
    return out


def census_ple(norm: str = "batch") -> nn.Module:
    # census-income group 1's 31 vocabularies (OOV bucket included), 503 codes in all
    cards = [10, 52, 48, 4, 25, 16, 6, 11, 3, 4, 7, 9, 7, 7, 52, 33, 9, 11, 10, 11, 4, 5, 6, 44, 44, 44]
    cards += [6, 4, 4, 4, 3]
    inputs = InputSpec(
        n_numeric=7,
        categorical=tuple(CategoricalFeature(f"c{i}", c, 8) for i, c in enumerate(cards)),
        embed_init_std=1e-4,
    )
    level = {"n_shared": 2, "n_specific": (2, 2), "expert_hidden": (64,), "norm": norm}
    config = ArchConfig(
        inputs=inputs,
        tasks=(TaskSpec("income", "binary"), TaskSpec("marital", "binary")),
        levels=(LevelConfig(**level, shared_gate=True), LevelConfig(**level)),
        towers=(TowerConfig(hidden=(32,), norm=norm),) * 2,
    )
    return build_model(config, seed=0)


def adam_parts(gen: torch.Generator) -> dict[str, Callable[[], object]]:
    model = census_ple()
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    out = {}
    variants = {
        "default (for-loop)": {},
        "foreach=True": {"foreach": True},
        "fused=True (mtlsearch)": {"fused": True},
    }
    for label, kwargs in variants.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
        out[label] = opt.step
    return out


def expert_gemm_parts(gen: torch.Generator) -> dict[str, Callable[[], object]]:
    x = torch.randn(6, BATCH, 128, generator=gen)
    w = torch.randn(6, 128, 64, generator=gen)
    b = torch.randn(6, 1, 64, generator=gen)
    flat_x, flat_w = torch.randn(BATCH, 128 * 6, generator=gen), torch.randn(128 * 6, 64, generator=gen)
    return {
        "baddbmm of 6 experts": lambda: torch.baddbmm(b, x, w),
        "loop of 6 mm": lambda: [x[e] @ w[e] + b[e] for e in range(6)],
        "one mm of equal FLOPs": lambda: flat_x @ flat_w,
    }


PARTS = {
    "embedding": embedding_parts,
    "expert_inputs": expert_input_parts,
    "model_step": model_step_parts,
    "adam": adam_parts,
    "expert_gemm": expert_gemm_parts,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke size: 10 steps, 1 repeat")
    parser.add_argument("--out-json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 10, 1
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads"
    )
    print(
        f"best of {args.repeats} medians of {args.steps} steps; load average before {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| part | variant | µs per call |")
    print("| --- | --- | ---: |")
    for part, make in PARTS.items():
        for variant, us in time_us(make(gen), args.steps, args.repeats).items():
            rows.append({"part": part, "variant": variant, "us": us})
            print(f"| {part} | {variant} | {us:.0f} |", flush=True)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    if args.out_json:
        with open(args.out_json, "w") as fh:
            json.dump(
                {"threads": args.threads, "steps": args.steps, "repeats": args.repeats, "rows": rows},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
