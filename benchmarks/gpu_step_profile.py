"""Benchmark (not a test): where the large PLE's bf16 step spends its time on a GPU.

The network and batch of ``benchmarks/accelerator.py``'s ``large`` part (128 numeric inputs,
2 binary tasks, 2 levels of 2 shared + 2 specific experts of widths [512, 256], towers
[256], batch 8192), one eager bf16 step (autocast) profiled over 10 steps with
``torch.profiler`` (CPU and CUDA activities): the table of the 30 ops with the most CUDA
time, the CPU and CUDA totals, and three timings (forward under no_grad, a whole step, a
forward with the weights cast to bf16 once, outside autocast). Needs a CUDA device::

    PYTHONPATH=. python3 benchmarks/gpu_step_profile.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _large_ple import TASKS, large_ple
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to profile")
    dev = torch.device("cuda")
    tasks = TASKS
    model = large_ple().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    batch = 8192
    x = torch.randn(batch, 128, device=dev)
    cat = torch.zeros(batch, 0, dtype=torch.long, device=dev)
    y = {t.name: torch.randint(0, 2, (batch,), device=dev).float() for t in tasks}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, cat)
            loss = sum(
                F.binary_cross_entropy_with_logits(out[t.name].reshape(-1).float(), y[t.name]) for t in tasks
            )
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))

    def ms(fn, n: int = 20) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e3

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, cat)

    print(f"fwd no_grad ms {ms(forward)}")
    print(f"step ms {ms(step)}")
    m16, x16 = model.to(torch.bfloat16), x.to(torch.bfloat16)

    def forward16() -> None:
        with torch.no_grad():
            m16(x16, cat)

    print(f"pure bf16 fwd ms {ms(forward16)}")


if __name__ == "__main__":
    main()
