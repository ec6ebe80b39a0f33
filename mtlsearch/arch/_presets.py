"""Named members of the MTL family, each just a config of the one builder."""

from __future__ import annotations

from collections.abc import Callable

from mtlsearch.arch._config import ArchConfig, InputSpec, LevelConfig, TaskSpec, TowerConfig


def _arch(name, inputs, tasks, levels, tower) -> ArchConfig:
    return ArchConfig(
        inputs=inputs,
        tasks=tuple(tasks),
        levels=tuple(levels),
        towers=(TowerConfig(hidden=tuple(tower)),) * len(tasks),
        name=name,
    )


def single_task(inputs, tasks, *, expert_hidden=(64,), tower=(32,), **_) -> ArchConfig:
    """One private bottom per task and no sharing: T single-task models side by side."""
    lv = LevelConfig(
        n_shared=0,
        n_specific=(1,) * len(tasks),
        expert_hidden=tuple(expert_hidden),
        select="own+shared",
        gate_kind="none",
    )
    return _arch("single_task", inputs, tasks, [lv], tower)


def shared_bottom(inputs, tasks, *, expert_hidden=(64,), tower=(32,), **_) -> ArchConfig:
    """Hard sharing: one shared bottom, no gates."""
    lv = LevelConfig(
        n_shared=1,
        n_specific=(0,) * len(tasks),
        expert_hidden=tuple(expert_hidden),
        select="shared",
        gate_kind="none",
    )
    return _arch("shared_bottom", inputs, tasks, [lv], tower)


def omoe(inputs, tasks, *, n_experts=4, expert_hidden=(64,), tower=(32,), **_) -> ArchConfig:
    """One-gate mixture of experts: shared experts, one gate for all tasks."""
    lv = LevelConfig(
        n_shared=n_experts,
        n_specific=(0,) * len(tasks),
        expert_hidden=tuple(expert_hidden),
        select="shared",
        gate_sharing="single",
    )
    return _arch("omoe", inputs, tasks, [lv], tower)


def mmoe(inputs, tasks, *, n_experts=4, expert_hidden=(64,), tower=(32,), **_) -> ArchConfig:
    """Multi-gate mixture of experts: shared experts, one gate per task."""
    lv = LevelConfig(
        n_shared=n_experts,
        n_specific=(0,) * len(tasks),
        expert_hidden=tuple(expert_hidden),
        select="shared",
    )
    return _arch("mmoe", inputs, tasks, [lv], tower)


def ml_mmoe(inputs, tasks, *, n_experts=4, expert_hidden=(64,), tower=(32,), n_levels=2, **_) -> ArchConfig:
    """Multi-level MMoE: stacked MMoE levels linked by a shared gate."""
    levels = [
        LevelConfig(
            n_shared=n_experts,
            n_specific=(0,) * len(tasks),
            expert_hidden=tuple(expert_hidden),
            select="shared",
            shared_gate=i < n_levels - 1,
        )
        for i in range(n_levels)
    ]
    return _arch("ml_mmoe", inputs, tasks, levels, tower)


def cgc(inputs, tasks, *, n_experts=2, n_specific=2, expert_hidden=(64,), tower=(32,), **_) -> ArchConfig:
    """Customized gate control: PLE with one level."""
    lv = LevelConfig(
        n_shared=n_experts,
        n_specific=(n_specific,) * len(tasks),
        expert_hidden=tuple(expert_hidden),
        select="own+shared",
    )
    return _arch("cgc", inputs, tasks, [lv], tower)


def ple(
    inputs, tasks, *, n_experts=2, n_specific=2, expert_hidden=(64,), tower=(32,), n_levels=2, **_
) -> ArchConfig:
    """Progressive layered extraction: CGC levels with a shared gate below the top."""
    levels = [
        LevelConfig(
            n_shared=n_experts,
            n_specific=(n_specific,) * len(tasks),
            expert_hidden=tuple(expert_hidden),
            select="own+shared",
            shared_gate=i < n_levels - 1,
        )
        for i in range(n_levels)
    ]
    return _arch("ple", inputs, tasks, levels, tower)


PRESETS: dict[str, Callable[..., ArchConfig]] = {
    "single_task": single_task,
    "shared_bottom": shared_bottom,
    "omoe": omoe,
    "mmoe": mmoe,
    "ml_mmoe": ml_mmoe,
    "cgc": cgc,
    "ple": ple,
}


def preset(name: str, inputs: InputSpec, tasks: tuple[TaskSpec, ...], **sizes) -> ArchConfig:
    """The named architecture for these inputs and tasks; ``sizes`` override the defaults."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](inputs, tuple(tasks), **sizes)
