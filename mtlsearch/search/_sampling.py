"""What the samplers see of a study: pruned trials as results, references left out of NSGA-II.

What Optuna 5.0's samplers do with PRUNED trials in a multi-objective study (read in
``optuna/samplers/_tpe/sampler.py`` and ``optuna/samplers/_ga/_base.py``):

* TPE uses them, but ranks them only by their last *intermediate value* (``trial.report``),
  which multi-objective studies cannot have; every pruned trial then scores alike, after
  every complete one, and fills the "good" group in trial-number order whenever there are
  fewer complete trials than the group's size.
* NSGA-II ignores them altogether: its populations, generations and parents are COMPLETE
  trials only, so a region whose trials are all stopped stays as likely as before.

:class:`PrunedAsComplete` wraps the study's sampler and shows it a view of the study in
which a PRUNED trial whose last measured values are known appears COMPLETE with those
values: the task metrics at the rung where it stopped (``rung_values[stopped_rung]``, or the
last ``epoch_values`` entry for the dominance rule), its parameter count for ``params``
(user attr ``n_params``, recorded when it is pruned) and, for a cost it never measured
(``latency``), the worst value among complete trials. Low-fidelity values are worse than
final ones as a rule, so both samplers now rank stopped configurations low, by how low they
were when stopped. The front, the export and the reference comparison read the storage, not
this view: they keep using COMPLETE trials only.

Second, for NSGA-II the view leaves out the enqueued reference trials, which carry no
sampled parameters: Optuna's intersection search space of all complete trials is empty as
soon as one of them completes, so NSGA-II sampled every parameter at random (no crossover
at all), and a reference could not be a parent anyway. TPE keeps seeing them (its start-up
count includes them, see ``SAMPLERS``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search._objectives import Objective
from mtlsearch.search._pruning import EPOCH_ATTR
from mtlsearch.search._rungs import RUNG_VALUES_ATTR, STOPPED_RUNG_ATTR


def last_measured(trial: FrozenTrial) -> list[float] | None:
    """A pruned trial's task-objective values where it stopped: its rung values at the rung
    it stopped at, else its last per-epoch values; None when it recorded neither."""
    rung = trial.user_attrs.get(STOPPED_RUNG_ATTR)
    if rung is not None:
        values = (trial.user_attrs.get(RUNG_VALUES_ATTR) or {}).get(str(rung))
        if values is not None:
            return [float(v) for v in values]
    history = trial.user_attrs.get(EPOCH_ATTR)
    return [float(v) for v in history[-1]] if history else None


def pruned_values(
    trial: FrozenTrial, objectives: Sequence[Objective], worst_costs: dict[str, float]
) -> list[float] | None:
    """The full objective vector shown for a pruned trial (module docstring), or None when
    a value is unknown or not finite (the trial is then shown as it is, PRUNED)."""
    task = last_measured(trial)
    if task is None or len(task) != sum(not o.is_cost for o in objectives):
        return None
    it = iter(task)
    out = []
    for o in objectives:
        if o.is_cost:
            value = trial.user_attrs.get("n_params") if o.name == "params" else None
            value = worst_costs.get(o.name) if value is None else float(value)
            if value is None:
                return None
            out.append(value)
        else:
            out.append(next(it))
    return out if all(math.isfinite(v) for v in out) else None


def _as_complete(trial: FrozenTrial, values: Sequence[float]) -> FrozenTrial:
    return FrozenTrial(
        number=trial.number,
        state=TrialState.COMPLETE,
        value=None,
        values=list(values),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values,
        trial_id=trial._trial_id,
    )


class _StudyView:
    """The study as the inner sampler sees it; everything but the trial lists is the study's."""

    def __init__(self, study: optuna.Study, sampler: PrunedAsComplete) -> None:
        self._study = study
        self._sampler = sampler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._sampler.view(self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache))
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states, use_cache=False)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PrunedAsComplete(BaseSampler):
    """Wraps ``inner`` so that it sees pruned trials as complete with their last measured
    values (module docstring). ``objectives``: the study's, in order. ``hide_unsampled``:
    leave trials without sampled parameters (the enqueued references) out of the view
    (for NSGA-II). Without pruned trials and with ``hide_unsampled`` False the view is the
    study itself, and ``inner`` samples exactly what it samples unwrapped."""

    def __init__(
        self, inner: BaseSampler, objectives: Sequence[Objective], hide_unsampled: bool = False
    ) -> None:
        self.inner = inner
        self.objectives = tuple(objectives)
        self.hide_unsampled = hide_unsampled

    def view(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """``trials`` as the inner sampler sees them (same order)."""
        if self.hide_unsampled:
            trials = [t for t in trials if t.distributions or not t.state.is_finished()]
        if not any(t.state == TrialState.PRUNED for t in trials):
            return trials
        worst: dict[str, float] = {}
        for i, o in enumerate(self.objectives):
            if o.is_cost:
                seen = [t.values[i] for t in trials if t.state == TrialState.COMPLETE and t.values]
                seen = [v for v in seen if math.isfinite(v)]
                if seen:
                    worst[o.name] = max(seen)  # costs are minimised
        out = []
        for t in trials:
            values = pruned_values(t, self.objectives, worst) if t.state == TrialState.PRUNED else None
            out.append(t if values is None else _as_complete(t, values))
        return out

    def _study(self, study: optuna.Study) -> Any:
        return _StudyView(study, self)

    # -- BaseSampler, delegated with the view --
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._study(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self._study(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(self._study(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._study(study), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(self._study(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
