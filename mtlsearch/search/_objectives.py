"""Study objectives: one per task metric (validation split), optionally model cost.

An objective is named ``<task>`` (its primary metric), ``<task>:<metric>``, ``params``
(parameter count) or ``latency`` (CPU inference ms per 1,000 rows). Each knows its direction
and how to read its value from a training result, so the study, the pruner, the front and
the trackers all agree on one list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec

# Direction of every metric the trainer reports.
METRIC_DIRECTIONS = {
    "auc": "maximize",
    "logloss": "minimize",
    "mse": "minimize",
    "mae": "minimize",
    "accuracy": "maximize",
}
COST_OBJECTIVES = {"params": "minimize", "latency": "minimize"}


@dataclass(frozen=True)
class Objective:
    name: str  # as shown and stored: "income:auc", "params"
    direction: str  # "maximize" | "minimize"
    task: str | None = None
    metric: str | None = None

    @property
    def is_cost(self) -> bool:
        return self.task is None

    def sign(self) -> float:
        """+1 if larger is better: multiply by this to get a higher-is-better value."""
        return 1.0 if self.direction == "maximize" else -1.0


def parse_objectives(specs: Sequence[str] | None, tasks: Sequence[TaskSpec]) -> tuple[Objective, ...]:
    """The study's objectives from ``--objectives`` items (each may hold several, separated by
    commas); default: every task's primary validation metric.

    Raises :class:`UserError` (one line) for an unknown task, a metric the task's kind does
    not report (``income:mse`` on a binary task), a repeated objective, or no task metric.
    """
    from mtlsearch.train import PRIMARY_METRICS, TASK_KINDS

    by_name = {t.name: t for t in tasks}
    if not specs:
        specs = [t.name for t in tasks]
    out: list[Objective] = []
    for spec in specs:
        for part in [s.strip() for s in spec.split(",") if s.strip()]:
            if part in COST_OBJECTIVES:
                out.append(Objective(part, COST_OBJECTIVES[part]))
                continue
            task, _, metric = part.partition(":")
            if task not in by_name:
                raise UserError(
                    f"--objectives: unknown task {task!r}; tasks are {sorted(by_name)} "
                    f"(or cost objectives {sorted(COST_OBJECTIVES)})"
                )
            metric = metric or PRIMARY_METRICS[by_name[task].kind][0]
            kind = by_name[task].kind
            reported = sorted(TASK_KINDS[kind].metrics)
            if metric not in METRIC_DIRECTIONS or metric not in reported:
                raise UserError(
                    f"--objectives {part}: task {task!r} is {kind}, its metrics are {reported}, "
                    f"not {metric!r}"
                )
            out.append(Objective(f"{task}:{metric}", METRIC_DIRECTIONS[metric], task, metric))
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise UserError(f"--objectives: repeated objective in {names}")
    if not any(not o.is_cost for o in out):
        raise UserError("--objectives: needs at least one task metric")
    return tuple(out)


def objective_values(
    objectives: Sequence[Objective], metrics: dict[str, dict[str, float]], costs: dict[str, float]
) -> list[float]:
    """The study's value vector from per-task metrics and the cost measurements."""
    return [
        costs[o.name] if o.is_cost else metrics[o.task][o.metric]  # type: ignore[index]
        for o in objectives
    ]


def to_dict(objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    return [o.__dict__.copy() for o in objectives]


def from_dict(items: Sequence[dict[str, Any]]) -> tuple[Objective, ...]:
    return tuple(Objective(**i) for i in items)
