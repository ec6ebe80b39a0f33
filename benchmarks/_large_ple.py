"""The ``large`` synthetic PLE that benchmarks/accelerator.py, gpu_step_profile.py and
step_roofline.py measure: 128 numeric inputs, 2 binary tasks, 2 levels of 2 shared + 2
specific experts per task of widths [512, 256], towers [256] (about 2.9M parameters)."""

from __future__ import annotations

import torch

from mtlsearch.arch import InputSpec, TaskSpec, build_model, preset

TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))
N_NUMERIC = 128


def large_ple() -> torch.nn.Module:
    """The network, built with seed 0 on the CPU."""
    config = preset(
        "ple", InputSpec(n_numeric=N_NUMERIC), TASKS, n_experts=2, n_specific=2,
        expert_hidden=(512, 256), tower=(256,), n_levels=2,
    )  # fmt: skip
    return build_model(config, seed=0)
