"""Epoch-level pruning for multi-objective studies.

Optuna does not prune multi-objective studies (``trial.report`` raises there). This rule
does: after each epoch, a trial's vector of task metrics is compared with the vectors that
finished trials had at the same epoch; if at least ``min_dominating`` of them dominate it by
a margin on every task, the trial stops (``optuna.TrialPruned``). Each trial's per-epoch
vectors are kept in its user attributes, so the rule works across worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from mtlsearch.search._objectives import Objective

logger = logging.getLogger(__name__)

EPOCH_ATTR = "epoch_values"  # user attr: list (per epoch) of task-objective values


@dataclass(frozen=True)
class DominancePruning:
    """``margin``: relative margin by which every task metric must be worse (0.01 = 1%);
    ``min_dominating``: how many finished trials must dominate; ``warmup``: epochs never
    pruned."""

    margin: float = 0.01
    min_dominating: int = 3
    warmup: int = 1

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


class PruningCallback:
    """A trainer epoch callback: records the epoch's task metrics and applies the rule."""

    def __init__(
        self,
        trial: optuna.Trial,
        objectives: Sequence[Objective],
        rule: DominancePruning | None,
    ) -> None:
        self.trial = trial
        self.objectives = [o for o in objectives if not o.is_cost]
        self.rule = rule
        self.history: list[list[float]] = []
        self._finished: list[list[list[float]]] | None = None

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
        prune, n = self.rule.should_prune(report.epoch, values, self._finished_histories(), self.objectives)
        if prune:
            msg = f"dominated at epoch {report.epoch} by {n} finished trials (margin {self.rule.margin:.1%})"
            logger.info("trial %d pruned: %s", self.trial.number, msg)
            self.trial.set_user_attr("pruned_reason", msg)
            raise optuna.TrialPruned(msg)
