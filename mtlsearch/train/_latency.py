"""Inference latency on the CPU: a cost objective for the search."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from mtlsearch.data import MTLDataset


@torch.no_grad()
def measure_latency(
    model: nn.Module, data: MTLDataset, rows: int = 1000, *, repeats: int = 7, warmup: int = 2
) -> float:
    """Milliseconds per 1,000 rows for one CPU forward pass over ``rows`` rows.

    Rows come from the test split (repeated if it is smaller). The median of ``repeats``
    timed passes after ``warmup`` untimed ones damps the noise of a shared machine. The
    model is copied to the CPU if it lives elsewhere; its mode is restored afterwards.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    split = data.test if len(data.test) else data.valid
    head = next(iter(split.batches(rows)))  # its first rows (a streamed split reads one batch)
    idx = torch.arange(rows) % len(head)
    numeric = head.numeric[idx].cpu()
    categorical = head.categorical[idx].cpu()
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    net = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = net.training
    net.eval()
    try:
        for _ in range(warmup):
            net(numeric, categorical)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(numeric, categorical)
            times.append(time.perf_counter() - t0)
    finally:
        net.train(was_training)
    return statistics.median(times) * 1000.0 * (1000.0 / rows)
