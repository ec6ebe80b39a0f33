"""What the tracker and the report show of a study: points with ranks, the front's rows,
the hypervolume history. Plain data, computed from the study alone (no MLflow)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search import Objective, front_table, hypervolume, pareto_ranks, reference_point
from mtlsearch.search._front import PRESET_ATTR, _feasible, _loss_matrix

RUN_ID_ATTR = "mlflow_run_id"
UTILISATION_ATTR = "utilisation"


@dataclass(frozen=True)
class TrialPoint:
    """A completed trial as the plots see it."""

    number: int
    preset: str | None  # a named reference architecture, or None for a searched one
    values: tuple[float, ...]
    rank: int  # 0 = on the Pareto front
    feasible: bool

    @property
    def label(self) -> str:
        return self.preset or f"trial {self.number}"


def trial_points(study: optuna.Study, objectives: Sequence[Objective]) -> list[TrialPoint]:
    """Every completed trial with its non-domination rank."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranks = pareto_ranks(trials, objectives)
    return [
        TrialPoint(t.number, t.user_attrs.get(PRESET_ATTR), tuple(t.values), r, _feasible(t))
        for t, r in zip(trials, ranks, strict=True)
    ]


def finished_in_order(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials (complete, pruned, failed on their own) in the order they finished."""
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
    ]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start or 0, t.number))


def hypervolume_history(study: optuna.Study, objectives: Sequence[Objective]) -> list[tuple[int, float]]:
    """``(finished trials, hypervolume)`` after each finished trial, against one reference
    point (from all completed trials), so the curve only goes up."""
    order = finished_in_order(study)
    complete = [t for t in order if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    ref = reference_point(objectives, _loss_matrix(complete, objectives).max(axis=0))
    out = []
    seen: list[FrozenTrial] = []
    for k, t in enumerate(order, start=1):
        if t.state == TrialState.COMPLETE:
            seen.append(t)
        out.append((k, hypervolume(seen, objectives, ref) if seen else 0.0))
    return out


def front_records(
    study: optuna.Study, objectives: Sequence[Objective], run_ids: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """The front as flat rows (CSV/JSON): values, gains over single-task, verdicts, size,
    test metrics and the MLflow run of each member.

    ``run_ids`` (trial number -> run id, from the tracker's last look at MLflow) wins over
    the trial's ``mlflow_run_id`` attribute: a run the tracker had to make for a trial after
    it completed cannot be recorded in the trial any more (Optuna freezes finished trials)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for r in front_table(study, objectives):
        t = by_number[r.trial]
        row: dict[str, Any] = {"trial": r.trial, "model": r.name}
        row.update({o.name: r.values[o.name] for o in objectives})
        row.update({f"gain {name}": g for name, g in r.gains.items()})
        row["seesaw"] = r.seesaw
        row["beats_single_task"] = r.beats_single
        row["n_params"] = t.user_attrs.get("n_params")
        for task, metrics in sorted(t.user_attrs.get("test", {}).items()):
            row.update({f"test {task}:{m}": v for m, v in metrics.items()})
        row["mlflow_run_id"] = (run_ids or {}).get(r.trial) or t.user_attrs.get(RUN_ID_ATTR)
        rows.append(row)
    return rows


def records_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """NaN/inf become None, numpy scalars plain numbers: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def utilisation_matrix(
    utilisation: dict[str, dict[str, float]],
) -> list[tuple[str, list[str], list[str], np.ndarray]]:
    """Per level: (level name, gate names, expert names, gates x experts weights; NaN where a
    gate may not select the expert)."""
    levels: dict[str, dict[str, dict[str, float]]] = {}
    for key, weights in utilisation.items():
        level, _, gate = key.partition("/")
        levels.setdefault(level, {})[gate or key] = weights
    out = []
    for level in sorted(levels, key=lambda s: (len(s), s)):
        gates = levels[level]
        experts: list[str] = []
        for weights in gates.values():
            experts += [e for e in weights if e not in experts]
        names = list(gates)
        matrix = np.full((len(names), len(experts)), np.nan)
        for i, g in enumerate(names):
            for j, e in enumerate(experts):
                if e in gates[g]:
                    matrix[i, j] = gates[g][e]
        out.append((level, names, experts, matrix))
    return out


def utilisation_csv(utilisation: dict[str, dict[str, float]]) -> str:
    lines = ["gate,expert,weight"]
    for gate, weights in utilisation.items():
        lines += [f"{gate},{expert},{w:.6g}" for expert, w in weights.items()]
    return "\n".join(lines) + "\n"
