"""The Pareto front of a study, its hypervolume, and each point's gain over single-task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search._objectives import Objective
from mtlsearch.train._verdict import BEATS, SEESAW, judge

PRESET_ATTR = "preset"


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _loss_matrix(trials: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> np.ndarray:
    """Values turned into losses (lower is better) for every objective."""
    signs = np.array([-o.sign() for o in objectives])
    return np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(objectives)) * signs


def _feasible(t: FrozenTrial) -> bool:
    """All constraints set with ``trial.set_constraint`` are <= 0 (Optuna's convention)."""
    values = [v for k, v in t.system_attrs.items() if k.startswith("constraints:") and v is not None]
    return all(v <= 0 for v in values)


def pareto_ranks(trials: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> list[int]:
    """Non-domination rank of each trial (0 = on the front); infeasible trials rank after all."""
    if not trials:
        return []
    losses = _loss_matrix(trials, objectives)
    feasible = np.array([_feasible(t) for t in trials])
    ranks = np.full(len(trials), -1)
    remaining = np.where(feasible)[0].tolist()
    rank = 0
    while remaining:
        sub = losses[remaining]
        front = [
            i
            for j, i in enumerate(remaining)
            if not np.any(np.all(sub <= sub[j], axis=1) & np.any(sub < sub[j], axis=1))
        ]
        ranks[front] = rank
        remaining = [i for i in remaining if i not in front]
        rank += 1
    ranks[~feasible] = rank
    return ranks.tolist()


def pareto_front(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrozenTrial]:
    trials = completed(study)
    ranks = pareto_ranks(trials, objectives)
    return [t for t, r in zip(trials, ranks, strict=True) if r == 0]


def reference_point(objectives: Sequence[Objective], worst: np.ndarray | None = None) -> np.ndarray:
    """Reference point in loss space: AUC/accuracy 0.5 (chance) for maximised metrics; for
    minimised ones the worst value seen times 1.1 (MSE and costs have no natural bound)."""
    ref = []
    for i, o in enumerate(objectives):
        if o.direction == "maximize":
            ref.append(-0.5 if o.metric in ("auc", "accuracy") else 0.0)
        else:
            ref.append(float(worst[i]) * 1.1 if worst is not None else 1.0)
    return np.array(ref)


def hypervolume(
    trials: Sequence[FrozenTrial], objectives: Sequence[Objective], ref: np.ndarray | None = None
) -> float:
    """Hypervolume of the completed feasible trials w.r.t. ``ref`` (loss space)."""
    from optuna._hypervolume import compute_hypervolume

    trials = [t for t in trials if t.state == TrialState.COMPLETE and _feasible(t)]
    if not trials:
        return 0.0
    losses = _loss_matrix(trials, objectives)
    if ref is None:
        ref = reference_point(objectives, losses.max(axis=0))
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))


@dataclass(frozen=True)
class FrontRow:
    """One front member: its objective values, each task objective's MTL gain over the
    single-task reference trial (``None`` without one) and the verdict of
    :func:`mtlsearch.train._verdict.judge` (a code; ``_verdict.label`` writes it out)."""

    trial: int
    name: str
    values: dict[str, float]
    gains: dict[str, float | None]  # per task objective: MTL gain over single-task
    verdict: str

    @property
    def seesaw(self) -> bool:
        return self.verdict == SEESAW

    @property
    def beats_single(self) -> bool:
        return self.verdict == BEATS


def gain(value: float, reference: float, direction: str) -> float:
    """The PLE paper's MTL gain: M_mtl - M_single if higher is better, else the reverse."""
    return value - reference if direction == "maximize" else reference - value


def front_table(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrontRow]:
    """The current front, each member with its gain over the single-task reference trial.

    A search trains every trial with one seed, so there is no noise estimate for a gain and
    the verdict is ``one_seed`` (the shared rule will not call +0.0002 AUC a win), or
    ``no_reference`` when the study has no single-task trial."""
    trials = completed(study)
    single = next((t for t in trials if t.user_attrs.get(PRESET_ATTR) == "single_task"), None)
    rows = []
    for t in pareto_front(study, objectives):
        gains: dict[str, float | None] = {}
        for i, o in enumerate(objectives):
            if o.is_cost:
                continue
            gains[o.name] = None if single is None else gain(t.values[i], single.values[i], o.direction)
        rows.append(
            FrontRow(
                trial=t.number,
                name=t.user_attrs.get(PRESET_ATTR, "searched"),
                values={o.name: v for o, v in zip(objectives, t.values, strict=True)},
                gains=gains,
                verdict=judge(gains, None),  # one seed per trial: no standard errors
            )
        )
    return sorted(rows, key=lambda r: r.trial)
