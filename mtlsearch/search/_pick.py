"""Rules that pick one trial of a finished study: the model a user exports.

A search ends with a front, not a model; these rules turn a preference into one trial so
that the choice is written down (``--pick knee``) rather than made by eye:

``trial:N``
    trial number N (it must have completed).
``knee``
    the front member closest (Euclidean) to the ideal point once every objective is
    normalised to [0, 1] over the front (0 = the front's best value, 1 = its worst).
``weights:w1,w2,...``
    the front member with the largest weighted sum of normalised objectives (1 = best);
    one non-negative weight per objective, in the study's objective order.
``constraint:CLAUSE,CLAUSE,...``
    the best completed trial on one metric subject to bounds on others. Clauses:
    ``best=METRIC`` (in the metric's own direction), ``max=METRIC`` or ``min=METRIC`` (the
    goal, exactly one), and ``METRIC>=V`` / ``METRIC<=V`` (bounds, any number). METRIC is
    an objective (``income:auc``, ``params``, ``latency``), a task name (its objective), or
    any validation metric ``task:metric``. Example:
    ``constraint:best=income:auc,marital:auc>=0.93,params<=20000``.

Every rule reads validation metrics only: test metrics are for reporting, never selection.
Ties (scores equal to 1e-9 relative) are broken by :data:`TIE_BREAK`: fewer parameters, then
the higher mean normalised task metric over the front, then the lower trial number — so a
two-member front (where the knee is always a tie) does not fall to whichever trial ran first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch._errors import UserError
from mtlsearch.search._front import _feasible, completed, pareto_front
from mtlsearch.search._objectives import COST_OBJECTIVES, METRIC_DIRECTIONS, Objective

#: How :func:`pick_trial` breaks ties between equally scored trials, in order.
TIE_BREAK = "fewer parameters, then higher mean normalised task metric, then lower trial number"
_TIE_TOLERANCE = 1e-9

PICK_RULES = ("trial:N", "knee", "weights:w1,w2,...", "constraint:best=METRIC,METRIC>=V,...")
_BOUND = re.compile(r"^\s*(?P<name>[^<>=]+?)\s*(?P<op>>=|<=)\s*(?P<value>\S+)\s*$")


@dataclass(frozen=True)
class Bound:
    """``metric >= value`` or ``metric <= value`` on a validation metric or a cost."""

    metric: str
    op: str  # ">=" | "<="
    value: float

    def holds(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class PickRule:
    """A parsed ``--pick`` rule (names are resolved against a study when it is applied)."""

    kind: str  # "trial" | "knee" | "weights" | "constraint"
    text: str
    trial: int | None = None
    weights: tuple[float, ...] = ()
    goal: str | None = None
    goal_direction: str | None = None  # "maximize" | "minimize" | None = the metric's own
    bounds: tuple[Bound, ...] = ()


@dataclass(frozen=True)
class Pick:
    """The chosen trial and why: ``score`` is the rule's number for it (distance to the
    ideal point, weighted sum, or the goal metric; None for ``trial:N``)."""

    trial: FrozenTrial
    rule: PickRule
    score: float | None
    candidates: int
    tied: tuple[int, ...] = ()  # trial numbers that tied with the pick on score (pick included)

    def explain(self) -> str:
        """One line: the rule, the pick's score and, when several trials tied, how the tie
        was broken (e.g. ``knee: trial 4, score 0.7071; tied with trial 0, broken by fewer
        parameters, then ...``)."""
        text = f"{self.rule.text}: trial {self.trial.number}"
        if self.score is not None:
            text += f", score {self.score:.6g} of {self.candidates} candidates"
        others = [n for n in self.tied if n != self.trial.number]
        if others:
            text += f"; tied with trial {', '.join(map(str, others))}, broken by {TIE_BREAK}"
        return text


def _number(text: str, what: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--pick {rule}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"--pick {rule}: {what} {text!r} is not a finite number")
    return value


def parse_pick(text: str) -> PickRule:
    """Parse a ``--pick`` rule; a malformed one is a UserError naming it."""
    rule = text.strip()
    kind, _, arg = rule.partition(":")
    kind = kind.strip().lower()
    if kind == "knee" and not arg:
        return PickRule("knee", rule)
    if kind == "trial":
        if not arg.strip().isdigit():
            raise UserError(f"--pick {rule}: expected trial:N with N a trial number")
        return PickRule("trial", rule, trial=int(arg))
    if kind == "weights":
        parts = [p for p in arg.split(",") if p.strip()]
        if not parts:
            raise UserError(f"--pick {rule}: expected weights:w1,w2,... (one per objective)")
        weights = tuple(_number(p.strip(), "weight", rule) for p in parts)
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise UserError(f"--pick {rule}: weights must be >= 0 and not all zero")
        return PickRule("weights", rule, weights=weights)
    if kind == "constraint":
        return _parse_constraint(rule, arg)
    raise UserError(f"--pick {rule}: unknown rule; expected one of {', '.join(PICK_RULES)}")


def _parse_constraint(rule: str, arg: str) -> PickRule:
    goal = direction = None
    bounds: list[Bound] = []
    for clause in [c.strip() for c in arg.split(",") if c.strip()]:
        key, eq, name = clause.partition("=")
        if eq and key.strip().lower() in ("best", "max", "min") and not name.startswith("="):
            if goal is not None:
                raise UserError(f"--pick {rule}: more than one goal (best=, max= or min=)")
            goal = name.strip()
            direction = {"best": None, "max": "maximize", "min": "minimize"}[key.strip().lower()]
            if not goal:
                raise UserError(f"--pick {rule}: {key}= needs a metric name")
            continue
        match = _BOUND.match(clause)
        if not match:
            raise UserError(
                f"--pick {rule}: cannot read {clause!r}; expected best=METRIC, METRIC>=V or METRIC<=V"
            )
        value = _number(match["value"], f"bound of {match['name']}", rule)
        bounds.append(Bound(match["name"].strip(), match["op"], value))
    if goal is None:
        raise UserError(f"--pick {rule}: no goal; add best=METRIC (e.g. best=income:auc)")
    return PickRule("constraint", rule, goal=goal, goal_direction=direction, bounds=tuple(bounds))


# ---- reading a metric of a trial -------------------------------------------------------------
@dataclass(frozen=True)
class _Metric:
    name: str
    direction: str
    objective: int | None  # index into trial.values, or None: read the user attrs


def _resolve(name: str, objectives: Sequence[Objective], rule: str) -> _Metric:
    for i, o in enumerate(objectives):
        if name == o.name:
            return _Metric(o.name, o.direction, i)
    by_task = [(i, o) for i, o in enumerate(objectives) if o.task == name]
    if len(by_task) == 1:
        i, o = by_task[0]
        return _Metric(o.name, o.direction, i)
    if name in COST_OBJECTIVES:
        return _Metric(name, COST_OBJECTIVES[name], None)
    task, _, metric = name.partition(":")
    if task and metric in METRIC_DIRECTIONS:
        return _Metric(name, METRIC_DIRECTIONS[metric], None)
    known = [o.name for o in objectives]
    raise UserError(
        f"--pick {rule}: unknown metric {name!r}; use an objective {known}, params, latency "
        "or a validation metric task:metric"
    )


def _value(trial: FrozenTrial, metric: _Metric) -> float:
    """The metric's value for a completed trial (NaN if the trial did not record it)."""
    if metric.objective is not None:
        return float(trial.values[metric.objective])
    if metric.name == "params":
        return float(trial.user_attrs.get("n_params", math.nan))
    if metric.name in COST_OBJECTIVES:
        return float(trial.user_attrs.get("costs", {}).get(metric.name, math.nan))
    task, _, name = metric.name.partition(":")
    return float(trial.user_attrs.get("valid", {}).get(task, {}).get(name, math.nan))


# ---- the rules ---------------------------------------------------------------------------------
def _normalised_losses(front: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> np.ndarray:
    """Each objective as a loss scaled to [0, 1] over the front (0 = the front's best)."""
    signs = np.array([-o.sign() for o in objectives])
    losses = np.array([t.values for t in front], dtype=float) * signs
    low, high = losses.min(axis=0), losses.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (losses - low) / span


def _n_params(trial: FrozenTrial) -> float:
    value = trial.user_attrs.get("n_params")
    return float(value) if isinstance(value, int | float) else math.inf


def _argbest(
    scores: Sequence[float],
    trials: Sequence[FrozenTrial],
    lowest: bool,
    task_quality: Sequence[float] | None = None,
) -> tuple[int, tuple[int, ...]]:
    """Index of the best score and the trial numbers tied with it; ties are broken by
    :data:`TIE_BREAK` (``task_quality``: the mean normalised task metric, higher is better)."""
    signed = [s if lowest else -s for s in scores]
    best = min(signed)
    tol = _TIE_TOLERANCE * max(1.0, abs(best))
    tied = [i for i in range(len(trials)) if signed[i] - best <= tol]
    quality = task_quality if task_quality is not None else [0.0] * len(trials)
    i = min(tied, key=lambda i: (_n_params(trials[i]), -quality[i], trials[i].number))
    return i, tuple(sorted(trials[j].number for j in tied))


def pick_trial(study: optuna.Study, rule: PickRule | str, objectives: Sequence[Objective]) -> Pick:
    """Apply a rule to a study; an empty or all-failed study, or a rule that no trial
    satisfies, is a UserError saying so."""
    rule = parse_pick(rule) if isinstance(rule, str) else rule
    trials = study.get_trials(deepcopy=False)
    done = completed(study)
    if not done:
        states = {}
        for t in trials:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trials"
        raise UserError(f"--study {study.study_name}: no completed trial to pick from ({summary})")

    if rule.kind == "trial":
        by_number = {t.number: t for t in trials}
        if rule.trial not in by_number:
            raise UserError(f"--pick {rule.text}: the study has no trial {rule.trial} (0..{len(trials) - 1})")
        chosen = by_number[rule.trial]  # type: ignore[index]
        if chosen.state != TrialState.COMPLETE:
            reason = chosen.user_attrs.get("fail_reason")
            why = f": {reason}" if reason else ""
            raise UserError(f"--pick {rule.text}: trial {rule.trial} is {chosen.state.name.lower()}{why}")
        return Pick(chosen, rule, None, 1)

    if rule.kind in ("knee", "weights"):
        front = pareto_front(study, objectives)
        if not front:
            raise UserError(
                f"--pick {rule.text}: no feasible completed trial (every trial breaks a constraint)"
            )
        norm = _normalised_losses(front, objectives)
        task_cols = [k for k, o in enumerate(objectives) if not o.is_cost]
        quality = (1.0 - norm[:, task_cols]).mean(axis=1).tolist() if task_cols else None
        if rule.kind == "knee":
            scores = np.sqrt((norm**2).sum(axis=1)).tolist()
            i, tied = _argbest(scores, front, lowest=True, task_quality=quality)
        else:
            if len(rule.weights) != len(objectives):
                names = ", ".join(o.name for o in objectives)
                raise UserError(
                    f"--pick {rule.text}: expected {len(objectives)} weights, one per objective "
                    f"({names}), got {len(rule.weights)}"
                )
            scores = ((1.0 - norm) @ np.array(rule.weights)).tolist()
            i, tied = _argbest(scores, front, lowest=False, task_quality=quality)
        return Pick(front[i], rule, float(scores[i]), len(front), tied)

    # constraint
    goal = _resolve(rule.goal or "", objectives, rule.text)
    direction = rule.goal_direction or goal.direction
    bounds = [(b, _resolve(b.metric, objectives, rule.text)) for b in rule.bounds]
    candidates = [t for t in done if _feasible(t) and math.isfinite(_value(t, goal))]
    if not candidates:
        raise UserError(f"--pick {rule.text}: no feasible completed trial reports {goal.name}")
    for bound, metric in bounds:
        kept = [t for t in candidates if bound.holds(_value(t, metric))]
        if not kept:
            seen = [v for t in candidates if math.isfinite(v := _value(t, metric))]
            best = (max if bound.op == ">=" else min)(seen) if seen else None
            hint = f"; the best value among the remaining trials is {best:.6g}" if best is not None else ""
            raise UserError(
                f"--pick {rule.text}: no completed trial has {metric.name}{bound.op}{bound.value:g}{hint}"
            )
        candidates = kept
    scores = [_value(t, goal) for t in candidates]
    i, tied = _argbest(scores, candidates, lowest=direction == "minimize")
    return Pick(candidates[i], rule, float(scores[i]), len(candidates), tied)
