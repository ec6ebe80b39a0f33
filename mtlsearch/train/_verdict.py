"""The one verdict rule: is a multi-task model better than the single-task references?

Used by ``mtlsearch baselines`` (several seeds per model), the search's Pareto front and the
HTML report (one seed per trial), so that the three never disagree about the same numbers.

A task's *gain* is the PLE paper's MTL gain on that task (``M_mtl - M_single`` when higher is
better, else the reverse) of the means over seeds. It *counts* only when it exceeds
:data:`NOISE` standard errors of the difference of the two means,
``sqrt(s_m^2 / n_m + s_1^2 / n_1)`` (``s``: sample standard deviation over seeds, ``n``:
seeds); a smaller gain is a tie. With one seed on either side there is no noise estimate,
and a sign alone (+0.0002 AUC) says nothing: the verdict is :data:`ONE_SEED`.

Verdicts, from the tasks' counted gains:

============================  ===================================================
``beats_single_task``         better on every task
``partial_gain``              better on some tasks, tied on the rest
``seesaw``                    better on some tasks, worse on others
``no_gain``                   tied on every task
``partial_loss``              worse on some tasks, tied on the rest
``worse_on_all_tasks``        worse on every task
``one_seed``                  no noise estimate: no verdict
``no_reference``              no single-task reference to compare with
============================  ===================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

NOISE = 2.0  # standard errors a gain must exceed to count

BEATS = "beats_single_task"
PARTIAL = "partial_gain"
SEESAW = "seesaw"
NO_GAIN = "no_gain"
PARTIAL_LOSS = "partial_loss"
WORSE = "worse_on_all_tasks"
ONE_SEED = "one_seed"
NO_REFERENCE = "no_reference"

#: How each verdict is written in tables (the CLI, the report, the baselines markdown).
LABELS: dict[str, str] = {
    BEATS: "better on all tasks",
    PARTIAL: "better on some, tied on the rest",
    SEESAW: "seesaw",
    NO_GAIN: "tied on all tasks",
    PARTIAL_LOSS: "worse on some, tied on the rest",
    WORSE: "worse on all tasks",
    ONE_SEED: "one seed: no verdict",
    NO_REFERENCE: "no single-task reference",
}

#: The footnote every table with a verdict column prints under it.
RULE = (
    f"verdict: a task's gain over single-task counts only when it exceeds {NOISE:g} standard errors "
    "of the difference of the means over seeds, sqrt(s_mtl^2/n_mtl + s_single^2/n_single); smaller "
    "gains are ties; with one seed there is no noise estimate, hence no verdict "
    "(mtlsearch baselines --seeds 0,1,2 gives one)"
)


def standard_error(std_model: float, n_model: int, std_single: float, n_single: int) -> float | None:
    """Standard error of the difference of two means over seeds; ``None`` when either side
    has fewer than two seeds (no noise estimate). ``std_*``: sample standard deviations."""
    if n_model < 2 or n_single < 2:
        return None
    return math.sqrt(std_model**2 / n_model + std_single**2 / n_single)


def counted_gain(gain: float, std_error: float, noise: float = NOISE) -> float:
    """``gain`` if it exceeds ``noise`` standard errors, else 0.0 (a tie)."""
    return gain if abs(gain) > noise * std_error else 0.0


def classify_gains(gains: Iterable[float]) -> str:
    """The verdict of gains that already count (ties written as 0.0), by their signs alone."""
    gains = list(gains)
    better = sum(g > 0 for g in gains)
    worse = sum(g < 0 for g in gains)
    if better and worse:
        return SEESAW
    if better:
        return BEATS if better == len(gains) else PARTIAL
    if worse:
        return WORSE if worse == len(gains) else PARTIAL_LOSS
    return NO_GAIN


def judge(
    gains: Mapping[str, float | None],
    std_errors: Mapping[str, float | None] | None,
    noise: float = NOISE,
) -> str:
    """The verdict of one model against single-task (the rule in the module docstring).

    ``gains``: task -> MTL gain of the means over seeds (``None``: no reference for the
    task). ``std_errors``: task -> :func:`standard_error` of that gain (``None`` or a missing
    mapping: one seed). Returns one of the verdict codes; :data:`LABELS` writes it out.
    """
    if not gains or any(g is None for g in gains.values()):
        return NO_REFERENCE
    errors = std_errors or {}
    if any(errors.get(task) is None for task in gains):
        return ONE_SEED
    return classify_gains(counted_gain(float(g), float(errors[t]), noise) for t, g in gains.items())


def label(verdict: str) -> str:
    """The verdict as written in tables."""
    return LABELS.get(verdict, verdict)
