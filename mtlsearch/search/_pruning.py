"""Epoch-level pruning rules for multi-objective studies, chosen from a registry.

Optuna does not prune multi-objective studies (``trial.report`` raises there), so the search
does it itself: :class:`PruningCallback`, a trainer epoch callback, records each epoch's
vector of task metrics (user attr ``epoch_values``) and asks the study's rule whether to
stop; a stop is ``optuna.TrialPruned`` with a one-line ``pruned_reason``. The rules
(:data:`PRUNERS`, selected by ``SearchSettings.pruning = {"method": ..., ...}``):

``none``
    Never stops a trial (the default).
``dominance``
    :class:`DominancePruning`: after each epoch the vector is compared with the vectors that
    finished trials had at the same epoch; if at least ``min_dominating`` of them beat it by
    a relative ``margin`` on every task, the trial stops. A stored pruning dict without
    ``"method"`` (studies made before the registry) means this rule.
``moasha``
    :class:`~mtlsearch.search._rungs.MOASHAPruning`: multi-objective asynchronous successive
    halving (Schmucker et al. 2021) on rungs at ``r * eta**k`` epochs.

Whatever the rule, a trial is never stopped at its last epoch: its result is complete.
All state lives in the trials' user attributes, so every rule works across worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import optuna
from optuna.trial import TrialState

from mtlsearch._errors import UserError
from mtlsearch.search._objectives import Objective
from mtlsearch.search._rungs import PRUNED_REASON_ATTR, MOASHAPruning
from mtlsearch.search._storage import PRESET_ATTR

logger = logging.getLogger(__name__)

EPOCH_ATTR = "epoch_values"  # user attr: list (per epoch) of task-objective values


@dataclass
class EpochState:
    """What a rule sees after one epoch: the trial, the 0-based ``epoch``, the task-objective
    ``values`` at that epoch (in the order of ``objectives``, task objectives only), the
    trial's epoch budget ``epochs`` (None: unknown) and the finished trials' per-epoch
    vectors (read lazily, once per trial). ``reference``: the trial is a named reference
    architecture (``--references``), which no rule stops (the comparison with it must be
    complete); a rule may still record what it saw."""

    trial: optuna.Trial
    epoch: int
    values: list[float]
    epochs: int | None
    objectives: Sequence[Objective]
    finished: Callable[[], list[list[list[float]]]] = field(default=lambda: [])
    reference: bool = False


class PruningRule(Protocol):
    """A pruning rule: ``check`` returns a one-line reason to stop the trial, or None (always
    None for a reference trial, ``state.reference``)."""

    method: ClassVar[str]

    def check(self, state: EpochState) -> str | None: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DominancePruning:
    """``margin``: relative margin by which every task metric must be worse (0.01 = 1%);
    ``min_dominating``: how many finished trials must dominate; ``warmup``: epochs never
    pruned."""

    method: ClassVar[str] = "dominance"
    margin: float = 0.01
    min_dominating: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.margin, bool) or not isinstance(self.margin, int | float) or not self.margin >= 0:
            raise UserError(f"--prune-margin: must be a number >= 0, got {self.margin!r}")
        for name in ("min_dominating", "warmup"):
            value = getattr(self, name)
            low = 1 if name == "min_dominating" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"pruning.{name}: must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> DominancePruning:
        known = {"margin", "min_dominating", "warmup"}
        unknown = sorted(set(spec) - known - {"method"})
        if unknown:
            raise UserError(
                f"pruning.{unknown[0]}: unknown setting of --pruner dominance; expected {sorted(known)}"
            )
        return cls(**{k: spec[k] for k in known if k in spec})

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "margin": self.margin,
            "min_dominating": self.min_dominating,
            "warmup": self.warmup,
        }

    def dominated_by(
        self, values: Sequence[float], others: Sequence[Sequence[float]], objectives: Sequence[Objective]
    ) -> int:
        """How many of ``others`` beat ``values`` by the margin on every objective."""
        signs = [o.sign() for o in objectives]
        count = 0
        for other in others:
            if all(s * (o - v) > self.margin * abs(v) for s, o, v in zip(signs, other, values, strict=True)):
                count += 1
        return count

    def should_prune(
        self,
        epoch: int,
        values: Sequence[float],
        finished: Sequence[Sequence[Sequence[float]]],
        objectives: Sequence[Objective],
    ) -> tuple[bool, int]:
        if epoch < self.warmup:
            return False, 0
        at_epoch = [h[epoch] for h in finished if len(h) > epoch]
        n = self.dominated_by(values, at_epoch, objectives)
        return n >= self.min_dominating, n

    def check(self, state: EpochState) -> str | None:
        if state.reference:
            return None
        prune, n = self.should_prune(state.epoch, state.values, state.finished(), state.objectives)
        if not prune:
            return None
        return f"dominated at epoch {state.epoch + 1} by {n} finished trials (margin {self.margin:.1%})"


# ---- the registry ----------------------------------------------------------------------------
PRUNERS: dict[str, Callable[[Mapping[str, Any]], PruningRule | None]] = {
    "none": lambda spec: None,
    "dominance": DominancePruning.from_dict,
    "moasha": MOASHAPruning.from_dict,
}


def make_pruning(spec: Mapping[str, Any] | None) -> PruningRule | None:
    """The rule a ``SearchSettings.pruning`` dict names (None or method ``none``: no rule).
    A dict without ``"method"`` is a dominance rule (studies stored before the registry).
    Raises :class:`UserError` (one line) for an unknown method or a bad setting."""
    if not spec:
        return None
    method = spec.get("method", "dominance")
    if method not in PRUNERS:
        raise UserError(f"--pruner: unknown {method!r}; expected one of {sorted(PRUNERS)}")
    return PRUNERS[method](spec)


def normalize_pruning(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stored form of a pruning setting: None for no pruning, else the rule's full dict
    with ``"method"`` and every default written out (checked as :func:`make_pruning`)."""
    rule = make_pruning(spec)
    return None if rule is None else rule.to_dict()


def pruning_method(spec: Mapping[str, Any] | None) -> str:
    return "none" if not spec else str(spec.get("method", "dominance"))


# ---- the trainer callback ----------------------------------------------------------------------
class PruningCallback:
    """A trainer epoch callback: records the epoch's task metrics and applies the rule.

    ``epochs``: the trial's epoch budget; at that epoch (the last) no rule is consulted, so a
    finished result is never thrown away (None: unknown, every epoch is checked).
    """

    def __init__(
        self,
        trial: optuna.Trial,
        objectives: Sequence[Objective],
        rule: PruningRule | None,
        epochs: int | None = None,
    ) -> None:
        self.trial = trial
        self.objectives = [o for o in objectives if not o.is_cost]
        self.rule = rule
        self.epochs = epochs
        self.history: list[list[float]] = []
        self._finished: list[list[list[float]]] | None = None
        # a named reference architecture trains its whole budget whatever the rule says
        self.reference = rule is not None and bool(trial.user_attrs.get(PRESET_ATTR))

    def _finished_histories(self) -> list[list[list[float]]]:
        if self._finished is None:  # read once per trial: finished trials do not change
            trials = self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._finished = [t.user_attrs[EPOCH_ATTR] for t in trials if EPOCH_ATTR in t.user_attrs]
        return self._finished

    def __call__(self, report) -> None:
        values = [report.valid[o.task][o.metric] for o in self.objectives]
        self.history.append(values)
        self.trial.set_user_attr(EPOCH_ATTR, self.history)
        if self.rule is None:
            return
        if self.epochs is not None and report.epoch + 1 >= self.epochs:
            return  # the last epoch: the result is complete, keep it
        state = EpochState(
            self.trial,
            report.epoch,
            values,
            self.epochs,
            self.objectives,
            self._finished_histories,
            reference=self.reference,
        )
        reason = self.rule.check(state)
        if reason is not None and not self.reference:
            logger.debug("trial %d pruned: %s", self.trial.number, reason)  # the worker logs it at INFO
            self.trial.set_user_attr(PRUNED_REASON_ATTR, reason)
            raise optuna.TrialPruned(reason)
