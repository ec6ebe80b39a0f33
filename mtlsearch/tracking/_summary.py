"""What the tracker and the report show of a study: points with ranks, the front's rows,
the hypervolume history, and the one naming scheme of parameters and metrics. Plain data,
computed from the study alone (no MLflow).

Names: a trial's architecture and training are named by their path in the experiment
config, as MLflow shows them (``model.levels.0.n_shared``, ``training.lr``); per-task values
are named by task (``model.levels.0.n_specific.y1``, ``model.towers.y1.hidden``), never by
position. The search space's Optuna parameters (``l0.n_shared``) are shown under the same
names (:func:`param_name`); ``*`` stands for every task where one value is shared
(``model.towers.*.hidden``)."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search import (
    CONFIG_ATTR,
    Objective,
    describe_config,
    front_table,
    gain,
    hypervolume,
    pareto_ranks,
    reference_point,
)
from mtlsearch.search._front import PRESET_ATTR, _feasible, _loss_matrix
from mtlsearch.search._objectives import METRIC_DIRECTIONS
from mtlsearch.train._verdict import label as verdict_label

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
        """What a plot writes beside the point: the trial number, and the preset if any."""
        return f"{self.number} {self.preset}" if self.preset else str(self.number)


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
        row["architecture"] = describe_config(t.user_attrs.get(CONFIG_ATTR))
        row.update({o.name: r.values[o.name] for o in objectives})
        row.update({f"gain {name}": g for name, g in r.gains.items()})
        row["verdict"] = verdict_label(r.verdict)
        if not any(o.name == "params" for o in objectives):  # else the same number twice
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


# ---- one naming scheme ------------------------------------------------------------------------
_PER_TASK_LEVEL_KEYS = frozenset({"n_specific"})  # level fields holding one value per task


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.levels.0.n_shared": "2", ...}`` (MLflow params are
    strings); a list of plain values (a layer-width list) becomes ``"16,8"``."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list | tuple) and any(isinstance(v, dict | list | tuple) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
    elif isinstance(obj, list | tuple):
        out[prefix] = ",".join(str(v) for v in obj) if obj else "[]"
    else:
        out[prefix] = "" if obj is None else str(obj)
    return out


def _task_names(model: dict[str, Any]) -> list[str]:
    tasks = model.get("tasks")
    if not isinstance(tasks, list | tuple):
        return []
    return [str(t["name"]) for t in tasks if isinstance(t, dict) and "name" in t]


def _keyed_by_task(model: dict[str, Any]) -> dict[str, Any]:
    """The model section with per-task lists (a level's ``n_specific``, the towers) turned
    into mappings by task name, so that flattening names them by task."""
    tasks = _task_names(model)
    out = {k: v for k, v in model.items() if k not in ("inputs", "tasks")}
    if not tasks:
        return out

    def per_task(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) == len(tasks):
            return dict(zip(tasks, value, strict=True))
        return value

    levels = out.get("levels")
    if isinstance(levels, list | tuple):
        out["levels"] = [
            {k: per_task(v) if k in _PER_TASK_LEVEL_KEYS else v for k, v in lv.items()}
            if isinstance(lv, dict)
            else lv
            for lv in levels
        ]
    if "towers" in out:
        out["towers"] = per_task(out["towers"])
    return out


def _input_params(model: dict[str, Any]) -> dict[str, str]:
    """The searchable parts of the input encoder (the feature list is the data's)."""
    inputs = model.get("inputs")
    if not isinstance(inputs, dict):
        return {}
    out = {}
    if "embed_init_std" in inputs:
        out["model.inputs.embed_init_std"] = str(inputs["embed_init_std"])
    dims = sorted(
        {c.get("embed_dim") for c in inputs.get("categorical") or [] if isinstance(c, dict)} - {None}
    )
    if dims:
        out["model.inputs.embedding_dim"] = ",".join(str(d) for d in dims)
    return out


def trial_params(config: dict[str, Any], preset: str | None) -> dict[str, str]:
    """The architecture and training of a trial as flat params (see the module docstring
    for the names). The feature and task lists are left out: they are the same in every
    trial and can be long."""
    model = config.get("model", {})
    params = {"preset": preset or "searched", "n_levels": str(len(model.get("levels", [])))}
    params.update(flatten(_keyed_by_task(model), "model"))
    params.update(_input_params(model))
    params.update(flatten(_options_by_method(config.get("training", {})), "training"))
    return params


def _options_by_method(training: dict[str, Any]) -> dict[str, Any]:
    """The training section with a balancing method's own options nested under the method's
    name (``training.loss_weighting.gradnorm.alpha``), as the search space names them, so
    that two methods' ``alpha`` never share one MLflow column."""
    lw = training.get("loss_weighting")
    if not isinstance(lw, dict) or "method" not in lw:
        return training
    shared = {k: v for k, v in lw.items() if k in ("method", "weights", "gamma")}
    options = {k: v for k, v in lw.items() if k not in shared}
    if options:
        shared[str(lw["method"])] = options
    return {**training, "loss_weighting": shared}


#: Search-space (Optuna) parameter names -> config names, first match wins.
_SPACE_NAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"levels", "n_levels"),
        (r"l(\d+)\.n_specific\.(.+)", r"model.levels.\1.n_specific.\2"),
        (r"l(\d+)\.n_specific", r"model.levels.\1.n_specific.*"),
        (r"l(\d+)\.(.+)", r"model.levels.\1.\2"),
        (r"tower\.(.+)", r"model.towers.*.\1"),
        (r"embedding_dim", "model.inputs.embedding_dim"),
        (r"embed_init_std", "model.inputs.embed_init_std"),
    )
)


def param_name(space_name: str) -> str:
    """A search-space parameter under its config name, as MLflow shows it:
    ``l0.n_shared`` -> ``model.levels.0.n_shared``, ``l1.n_specific.y1`` ->
    ``model.levels.1.n_specific.y1``, ``tower.hidden`` -> ``model.towers.*.hidden``,
    ``levels`` -> ``n_levels``; ``training.*`` names are already config names."""
    for pattern, replacement in _SPACE_NAMES:
        if pattern.fullmatch(space_name):
            return pattern.sub(replacement, space_name)
    return space_name


def metric_key(*parts: str) -> str:
    """MLflow metric names: letters, digits, ``_-./`` and spaces."""
    return ".".join(re.sub(r"[^\w\-./ ]", "_", p) for p in parts)


def gain_metrics(
    valid: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """``gain.<task>.<metric>``: the MTL gain over the single-task reference's validation
    metric (positive = better, whatever the metric's direction), for every metric both have."""
    out = {}
    for task, metrics in valid.items():
        for name, value in metrics.items():
            ref = (reference.get(task) or {}).get(name)
            if name in METRIC_DIRECTIONS and ref is not None:
                g = gain(float(value), float(ref), METRIC_DIRECTIONS[name])
                if math.isfinite(g):
                    out[metric_key("gain", task, name)] = g
    return out


def single_task_valid(trials: Sequence[FrozenTrial]) -> dict[str, dict[str, float]] | None:
    """The validation metrics of the study's completed single-task reference trial."""
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get(PRESET_ATTR) == "single_task":
            valid = t.user_attrs.get("valid")
            return valid if isinstance(valid, dict) else None
    return None


# ---- early stopping (MOASHA rungs) -------------------------------------------------------------
#: Trial attributes the pruners write: the task-objective vector after each epoch; each rung
#: decision ``{"rung": k, "epoch": e (1-based), "values": [...], "seen": [...], "decision":
#: "continue" | "stop"}``; the rung a stopped (PRUNED) trial stopped at; a readable reason.
EPOCH_VALUES_ATTR = "epoch_values"
RUNG_DECISIONS_ATTR = "rung_decisions"
STOPPED_RUNG_ATTR = "stopped_rung"
PRUNED_REASON_ATTR = "pruned_reason"


@dataclass(frozen=True)
class RungCount:
    """One rung of a study: its epoch (1-based; ``None`` if no decision recorded it), how many
    trials stopped there and how many were judged there and went on."""

    rung: int
    epoch: int | None
    stopped: int
    continued: int


def _decisions(t: FrozenTrial) -> list[dict[str, Any]]:
    raw = t.user_attrs.get(RUNG_DECISIONS_ATTR)
    return [d for d in raw if isinstance(d, dict) and isinstance(d.get("rung"), int)] if raw else []


def stopped_rung(t: FrozenTrial) -> int | None:
    """The rung a PRUNED trial stopped at (``stopped_rung``); ``None`` for a trial that did not
    stop at a rung (complete, failed, or pruned by another rule)."""
    k = t.user_attrs.get(STOPPED_RUNG_ATTR)
    return k if t.state == TrialState.PRUNED and isinstance(k, int) and not isinstance(k, bool) else None


def stop_decision(t: FrozenTrial) -> dict[str, Any] | None:
    """The rung decision that stopped ``t`` (rung, epoch, its values there), or None."""
    k = stopped_rung(t)
    if k is None:
        return None
    return next((d for d in reversed(_decisions(t)) if d["rung"] == k), None)


def rung_counts(trials: Sequence[FrozenTrial]) -> list[RungCount]:
    """Per rung, in order: trials stopped there (PRUNED with ``stopped_rung`` k) and trials
    judged there that went on (a ``continue`` decision at k). Empty when no trial was judged
    at a rung (no MOASHA pruning)."""
    epochs: dict[int, int] = {}
    stopped: dict[int, int] = {}
    continued: dict[int, set[int]] = {}
    for t in trials:
        for d in _decisions(t):
            if isinstance(d.get("epoch"), int):
                epochs.setdefault(d["rung"], d["epoch"])
            if d.get("decision") == "continue":
                continued.setdefault(d["rung"], set()).add(t.number)
        k = stopped_rung(t)
        if k is not None:
            stopped[k] = stopped.get(k, 0) + 1
    rungs = sorted(set(epochs) | set(stopped) | set(continued))
    return [RungCount(k, epochs.get(k), stopped.get(k, 0), len(continued.get(k, ()))) for k in rungs]


def rung_text(counts: Sequence[RungCount]) -> str:
    """``rung 0 (epoch 1): 3, rung 1 (epoch 3): 2`` -- trials stopped per rung (rungs where
    none stopped are left out); empty when none stopped at a rung."""
    return ", ".join(
        f"rung {c.rung}" + (f" (epoch {c.epoch})" if c.epoch is not None else "") + f": {c.stopped}"
        for c in counts
        if c.stopped
    )


def pruning_text(pruning: Mapping[str, Any] | None) -> str:
    """The study's pruning setting in words: ``moasha (min_epochs 1, eta 3)``, ``dominance
    (margin 0.01)`` (settings without a method are the dominance rule; unset keys are left
    out), or ``off``."""
    if not pruning:
        return "off"
    method = str(pruning.get("method", "dominance"))
    rest = ", ".join(f"{k} {v}" for k, v in pruning.items() if k != "method" and v is not None)
    return f"{method} ({rest})" if rest else method


def rung_epochs(
    trials: Sequence[FrozenTrial], max_epochs: int, pruning: Mapping[str, Any] | None = None
) -> list[tuple[int, int]]:
    """``(rung, epoch)`` pairs (epoch 1-based) to mark on plots: as the trials' rung
    decisions recorded them; before any decision, from a MOASHA setting ``pruning`` (the
    study's ``{"method": "moasha", "min_epochs": r, "eta": eta}``: rung k at epoch
    ``r * eta**k``, up to ``max_epochs``); none without MOASHA."""
    seen = sorted(
        {(d["rung"], d["epoch"]) for t in trials for d in _decisions(t) if isinstance(d.get("epoch"), int)}
    )
    if seen or not pruning or pruning.get("method") != "moasha":
        return seen
    r, eta = pruning.get("min_epochs"), pruning.get("eta")
    if not isinstance(r, int) or not isinstance(eta, int) or r < 1 or eta < 2:
        return []
    out: list[tuple[int, int]] = []
    while r * eta ** len(out) <= max_epochs:
        out.append((len(out), r * eta ** len(out)))
    return out


@dataclass(frozen=True)
class EpochPath:
    """A trial's task objectives after each epoch (``values[e - 1]`` after epoch e), how it
    ended, and where it stopped (``stopped_rung``, ``None`` unless stopped at a rung)."""

    number: int
    preset: str | None
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING
    values: tuple[tuple[float, ...], ...]
    on_front: bool
    stopped_rung: int | None

    @property
    def label(self) -> str:
        return f"{self.number} {self.preset}" if self.preset else str(self.number)


def epoch_paths(study: optuna.Study, objectives: Sequence[Objective]) -> list[EpochPath]:
    """Every trial that recorded per-epoch values, with its front membership (the front holds
    COMPLETE trials only: a stopped trial is never on it, whatever its partial values)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = {t.number for t, r in zip(complete, pareto_ranks(complete, objectives), strict=True) if r == 0}
    width = sum(not o.is_cost for o in objectives)
    out = []
    for t in trials:
        raw = t.user_attrs.get(EPOCH_VALUES_ATTR)
        if not isinstance(raw, list) or not raw:
            continue
        rows = tuple(
            tuple(float(v) for v in row) for row in raw if isinstance(row, list | tuple) and len(row) == width
        )
        if rows:
            out.append(
                EpochPath(
                    t.number,
                    t.user_attrs.get(PRESET_ATTR),
                    t.state.name,
                    rows,
                    t.number in front,
                    stopped_rung(t),
                )
            )
    return out
