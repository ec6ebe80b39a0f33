"""MOASHA: multi-objective asynchronous successive halving, as an epoch-level stopping rule.

Schmucker, Donini, Perrone, Archambeau, "Multi-objective multi-fidelity hyperparameter
optimization with application to fairness" (2021), and Salinas et al. (NAS workshop, ICLR
2021), as implemented in Syne Tune's ``MOASHA`` scheduler: ASHA (Li et al., 2020) whose
rung comparison ranks *vectors* of task metrics instead of one number.

Rungs
    Rung ``k`` sits at epoch ``r * eta**k`` (1-based; ``r`` = ``min_epochs``, ``eta`` the
    reduction factor), for every ``k`` whose epoch is strictly below the trial's epoch
    budget. A rung at the last epoch would only decide whether to throw away a finished
    result, so there is none: a trial is never stopped after its last epoch.

Decision (the *stopping* variant of ASHA, as Syne Tune's MOASHA)
    A trial reaching rung ``k`` (1) writes its vector of task metrics at that epoch to the
    shared storage (user attr ``rung_values[str(k)]``, after ``rung_times[str(k)]``), then
    (2) reads every vector recorded at rung ``k`` by trials that are running, complete or
    pruned at that moment (itself included; failed trials are no evidence, and a lost trial
    is retried and records again), and (3) goes on iff its position in the ranking below is
    within the first ``ceil(n / eta)`` of the ``n`` vectors it saw. Because each trial writes
    before it reads, of two trials deciding at once at least one sees the other, on any
    storage that makes a write visible once it returns (PostgreSQL, MySQL, SQLite, the Redis
    journal). Decisions are final: a trial stopped early on little evidence is not revived.

Ranking
    Non-dominated sorting of the vectors (Deb et al. 2002; all objectives turned into losses,
    a NaN counts as the worst value), fronts first; inside a front by *crowding distance*,
    larger first; then by trial number, lower first (an exact tie keeps the earlier trial).
    Crowding distance rather than hypervolume contribution: it needs no reference point
    (MSE and log-loss have no natural bound, and a reference taken from the worst value seen
    would move with every arrival and could reverse earlier comparisons), it is invariant
    to each metric's scale (it normalises each objective by its range in the front), it is
    what Optuna's NSGA-II sampler ranks by, and it is exact in O(m n log n). Syne Tune
    breaks in-front ties by an epsilon-net instead; both prefer the spread of the front.

Small ``n``
    ``ceil(n / eta)`` go on: the first trial at a rung always goes on (there is nothing to
    compare it with), the second only if it ranks first of the two (``eta`` >= 2), and when
    ``eta`` divides ``n`` exactly ``n / eta`` go on, the paper's "top 1/eta". ASHA's
    promotion count ``floor(n / eta)`` promotes nobody until ``eta`` trials have arrived,
    which in a stopping variant would stop the first ``eta - 1`` arrivals unseen; Syne Tune's
    rule (stop iff ``position / n > 1 / eta``) lets ``floor(n / eta) + 1`` go on, one more
    than the fraction whenever ``eta`` divides ``n``. Rounding up errs on the side of
    continuing: a trial continued by mistake costs epochs, one stopped by mistake may lose
    a front point for good.

References
    A named reference architecture (``--references``: the trial's ``preset`` attribute) is
    never stopped: the comparison of the front with the references must be complete. It
    records its rung values (they count in other trials' rankings) and its decisions, as
    ``continue`` with ``"reference": true``.

Every decision is recorded in the trial's ``rung_decisions`` (rung, 1-based epoch, values,
the trial numbers seen in arrival order, ``continue`` | ``stop``), so :func:`replay` can
recompute each one in a single process from the storage alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from optuna.trial import FrozenTrial, TrialState

from mtlsearch._errors import UserError

if TYPE_CHECKING:
    from mtlsearch.search._objectives import Objective
    from mtlsearch.search._pruning import EpochState

logger = logging.getLogger(__name__)

RUNG_VALUES_ATTR = "rung_values"  # {str(k): [task-objective values at rung k]}
RUNG_TIMES_ATTR = "rung_times"  # {str(k): unix seconds when the values were written}
RUNG_DECISIONS_ATTR = "rung_decisions"  # [{"rung", "epoch", "values", "seen", "decision"}]
STOPPED_RUNG_ATTR = "stopped_rung"  # k, on a trial stopped at rung k
PRUNED_REASON_ATTR = "pruned_reason"

#: Trials whose rung values count: a FAIL trial is no evidence (a lost one is retried).
_COUNTED_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


# ---- the schedule ----------------------------------------------------------------------------
def rung_epochs(min_epochs: int, eta: int, epochs: int | None, limit: int = 64) -> list[int]:
    """The 1-based epochs of rungs 0, 1, ...: ``min_epochs * eta**k`` strictly below ``epochs``
    (the trial's last epoch is never a rung). ``epochs`` None (budget unknown): the first
    ``limit`` rungs.

    >>> rung_epochs(1, 3, 10), rung_epochs(1, 3, 3), rung_epochs(2, 2, 17)
    ([1, 3, 9], [1], [2, 4, 8, 16])
    """
    out, e = [], min_epochs
    while (epochs is None or e < epochs) and len(out) < limit:
        out.append(e)
        e *= eta
    return out


# ---- non-dominated sorting and crowding distance ------------------------------------------------
def as_losses(values: Sequence[Sequence[float]], signs: Sequence[float]) -> list[list[float]]:
    """Vectors turned into losses (lower is better): ``-sign * v``; NaN becomes +inf (worst)."""
    out = []
    for v in values:
        row = []
        for s, x in zip(signs, v, strict=True):
            x = float(x)
            row.append(math.inf if math.isnan(x) else -s * x)
        out.append(row)
    return out


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_indices(losses: Sequence[Sequence[float]]) -> list[int]:
    """Non-domination front of each loss vector: 0 for the non-dominated ones, 1 for those
    dominated only by front 0, ... (Deb et al. 2002, the O(m n^2) fast sort). Equal vectors
    do not dominate each other and share a front."""
    n = len(losses)
    dominated_by = [0] * n  # how many dominate i
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(losses[i], losses[j]):
                dominates[i].append(j)
                dominated_by[j] += 1
            elif _dominates(losses[j], losses[i]):
                dominates[j].append(i)
                dominated_by[i] += 1
    front = [-1] * n
    current = [i for i in range(n) if dominated_by[i] == 0]
    level = 0
    while current:
        nxt = []
        for i in current:
            front[i] = level
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current, level = nxt, level + 1
    return front


def crowding_distances(
    losses: Sequence[Sequence[float]], members: Sequence[int], numbers: Sequence[int] | None = None
) -> dict[int, float]:
    """NSGA-II crowding distance of each of ``members`` (indices into ``losses``, one front).

    For each objective the members are sorted by it (ties by ``numbers``, else index); the
    two ends get +inf, each other member adds ``(next - previous) / (max - min)``. An
    objective whose range in the front is zero or infinite adds nothing to interior members.
    A front of one or two members is all +inf.
    """
    dist = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    key_of = numbers if numbers is not None else range(len(losses))
    for m in range(len(losses[members[0]])):
        order = sorted(members, key=lambda i: (losses[i][m], key_of[i]))
        lo, hi = losses[order[0]][m], losses[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = hi - lo
        if not math.isfinite(span) or span <= 0:
            continue
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            if math.isfinite(dist[i]):
                dist[i] += (losses[b][m] - losses[a][m]) / span
    return dist


def ranking(losses: Sequence[Sequence[float]], numbers: Sequence[int]) -> list[tuple[int, int, float]]:
    """The vectors best first, as ``(index, front, crowding distance)``: by front, then by
    crowding distance (larger first), then by trial number (lower first)."""
    fronts = front_indices(losses)
    crowd: dict[int, float] = {}
    for level in sorted(set(fronts)):
        crowd.update(crowding_distances(losses, [i for i, f in enumerate(fronts) if f == level], numbers))
    order = sorted(range(len(losses)), key=lambda i: (fronts[i], -crowd[i], numbers[i]))
    return [(i, fronts[i], crowd[i]) for i in order]


# ---- one decision --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RungDecision:
    """What a trial decided at a rung. ``seen``: trial numbers whose values at this rung it
    saw, in arrival order (itself included); ``position``: its 0-based place in the ranking
    of those; ``quota``: how many go on (``ceil(len(seen) / eta)``)."""

    number: int
    rung: int
    epoch: int  # 1-based
    values: tuple[float, ...]
    seen: tuple[int, ...]
    position: int
    quota: int
    front: int
    crowding: float

    @property
    def goes_on(self) -> bool:
        return self.position < self.quota

    @property
    def decision(self) -> str:
        return "continue" if self.goes_on else "stop"

    def to_attr(self) -> dict[str, Any]:
        """The ``rung_decisions`` entry (JSON-safe)."""
        return {
            "rung": self.rung,
            "epoch": self.epoch,
            "values": list(self.values),
            "seen": list(self.seen),
            "decision": self.decision,
        }

    def reason(self) -> str:
        """One readable line for ``pruned_reason``."""
        crowd = "inf" if math.isinf(self.crowding) else f"{self.crowding:.3g}"
        return (
            f"MOASHA rung {self.rung} (epoch {self.epoch}): ranked {self.position + 1} of {len(self.seen)} "
            f"trials there (front {self.front + 1}, crowding {crowd}); only the top {self.quota} go on"
        )


def decide(
    number: int,
    seen: Sequence[tuple[int, Sequence[float]]],
    signs: Sequence[float],
    eta: int,
    rung: int,
    epoch: int,
) -> RungDecision:
    """The decision of trial ``number`` at ``rung`` given the ``(trial number, values)`` pairs
    it saw there, in arrival order (its own pair must be among them). ``signs``: +1 for a
    maximised objective, -1 for a minimised one. Pure: the same inputs give the same
    decision in any process, which is what :func:`replay` checks."""
    numbers = [n for n, _ in seen]
    if number not in numbers:
        raise ValueError(f"trial {number} is not among the trials seen at rung {rung}: {numbers}")
    losses = as_losses([v for _, v in seen], signs)
    order = ranking(losses, numbers)
    position = next(p for p, (i, _, _) in enumerate(order) if numbers[i] == number)
    _, front, crowd = order[position]
    own = dict(seen)[number]
    return RungDecision(
        number=number,
        rung=rung,
        epoch=epoch,
        values=tuple(float(x) for x in own),
        seen=tuple(numbers),
        position=position,
        quota=math.ceil(len(seen) / eta),
        front=front,
        crowding=crowd,
    )


def values_at_rung(trials: Sequence[FrozenTrial], rung: int) -> list[tuple[int, list[float]]]:
    """``(trial number, values)`` of every counted trial (running, complete, pruned) that
    recorded values at ``rung``, in arrival order (time written, then number)."""
    key = str(rung)
    found = []
    for t in trials:
        if t.state not in _COUNTED_STATES:
            continue
        values = (t.user_attrs.get(RUNG_VALUES_ATTR) or {}).get(key)
        if values is None:
            continue
        when = (t.user_attrs.get(RUNG_TIMES_ATTR) or {}).get(key, math.inf)
        found.append((float(when), t.number, list(values)))
    found.sort(key=lambda x: (x[0], x[1]))
    return [(n, v) for _, n, v in found]


# ---- the rule ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MOASHAPruning:
    """MOASHA's stopping rule (see the module docstring). ``min_epochs``: epoch of rung 0
    (``r``); ``eta``: reduction factor (rung ``k`` at ``r * eta**k``; the top ``1/eta`` go on);
    ``rung_fraction``: if set, the epochs up to rung 0 train on a seeded subsample of this
    fraction of the training rows (a data-fraction fidelity; same rows for every trial)."""

    method: ClassVar[str] = "moasha"
    min_epochs: int = 1
    eta: int = 3
    rung_fraction: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or self.min_epochs < 1:
            raise UserError(f"--min-epochs: must be an integer >= 1, got {self.min_epochs!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise UserError(f"--eta: must be an integer >= 2, got {self.eta!r}")
        f = self.rung_fraction
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 0 < f <= 1
        ):
            raise UserError(f"--rung-fraction: must be a number in (0, 1], got {f!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> MOASHAPruning:
        known = {"min_epochs", "eta", "rung_fraction"}
        unknown = sorted(set(spec) - known - {"method"})
        if unknown:
            raise UserError(
                f"pruning.{unknown[0]}: unknown setting of --pruner moasha; expected {sorted(known)}"
            )
        return cls(**{k: spec[k] for k in known if k in spec})

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "min_epochs": self.min_epochs,
            "eta": self.eta,
            "rung_fraction": self.rung_fraction,
        }

    def rungs(self, epochs: int | None) -> list[int]:
        """1-based rung epochs for a trial of ``epochs`` epochs (see :func:`rung_epochs`)."""
        return rung_epochs(self.min_epochs, self.eta, epochs)

    def fraction_epochs(self, epochs: int | None) -> int:
        """How many leading epochs train on the ``rung_fraction`` subsample: those up to and
        including rung 0, when the trial has that rung and a fraction is set; else 0."""
        if self.rung_fraction is None or self.rung_fraction >= 1 or not self.rungs(epochs):
            return 0
        return self.min_epochs

    def check(self, state: EpochState) -> str | None:
        """At a rung epoch: record, read, decide (module docstring); returns the reason to
        stop, or None to go on. Off-rung epochs write nothing."""
        epoch = state.epoch + 1
        rungs = self.rungs(state.epochs)
        if epoch not in rungs:
            return None
        rung = rungs.index(epoch)
        trial, key = state.trial, str(rung)
        attrs = trial.user_attrs
        times = {**(attrs.get(RUNG_TIMES_ATTR) or {}), key: time.time()}
        trial.set_user_attr(RUNG_TIMES_ATTR, times)
        recorded = {**(attrs.get(RUNG_VALUES_ATTR) or {}), key: [float(v) for v in state.values]}
        trial.set_user_attr(RUNG_VALUES_ATTR, recorded)  # written before anything is read
        trials = trial.study.get_trials(deepcopy=False, states=_COUNTED_STATES)
        seen = values_at_rung(trials, rung)
        if all(n != trial.number for n, _ in seen):  # its own write is visible to itself; to be safe
            seen.append((trial.number, recorded[key]))
        signs = [o.sign() for o in state.objectives]
        decision = decide(trial.number, seen, signs, self.eta, rung, epoch)
        entry = decision.to_attr()
        if state.reference:  # a named reference goes on whatever its rank (its values still count)
            entry.update(decision="continue", reference=True)
        history = [*(attrs.get(RUNG_DECISIONS_ATTR) or []), entry]
        trial.set_user_attr(RUNG_DECISIONS_ATTR, history)
        logger.debug(
            "trial %d at rung %d (epoch %d): %s, position %d of %d, quota %d",
            trial.number, rung, epoch, decision.decision, decision.position + 1, len(seen), decision.quota,
        )  # fmt: skip
        if decision.goes_on or state.reference:
            return None
        trial.set_user_attr(STOPPED_RUNG_ATTR, rung)
        return decision.reason()


# ---- replay ----------------------------------------------------------------------------------
def replay(
    trials: Sequence[FrozenTrial], objectives: Sequence[Objective], eta: int
) -> list[tuple[int, dict[str, Any], str]]:
    """Recompute, in this process, every decision recorded in ``trials``' ``rung_decisions``
    from the values the deciding trial saw (each seen trial's ``rung_values``, which never
    change once written). Returns the mismatches as ``(trial number, recorded entry,
    recomputed decision)``: empty when every decision is reproduced."""
    signs = [o.sign() for o in objectives if not o.is_cost]
    by_number = {t.number: t for t in trials}
    wrong = []
    for t in trials:
        for entry in t.user_attrs.get(RUNG_DECISIONS_ATTR) or []:
            key = str(entry["rung"])
            seen = [(n, by_number[n].user_attrs[RUNG_VALUES_ATTR][key]) for n in entry["seen"]]
            again = decide(t.number, seen, signs, eta, entry["rung"], entry["epoch"])
            expected = "continue" if entry.get("reference") else again.decision  # references go on
            if expected != entry["decision"] or list(again.values) != list(entry["values"]):
                wrong.append((t.number, entry, again.decision))
    return wrong
