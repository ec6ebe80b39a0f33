"""Entire-space chained tasks: a binary task declared as the product of other tasks.

ESMM (Ma et al., SIGIR 2018, "Entire Space Multi-Task Model: An Effective Approach for
Estimating Post-Click Conversion Rate") predicts the post-click conversion rate ``p(cvr)``
without the sample-selection bias of training it on clicked rows only: the network has a
CTR tower and a CVR tower, and the task trained over *all* impressions is their product,
``p(ctcvr) = p(ctr) * p(cvr)``. In a config this is a task with ``product_of``::

    tasks:
      - {name: ctr, kind: binary}
      - {name: cvr, kind: binary, loss: none}          # ESMM: no direct loss
      - {name: ctcvr, kind: binary, product_of: [ctr, cvr]}

A product task has no tower, experts or gate of its own (levels' ``n_specific`` and the
``towers`` list count the other tasks only) and no parameters. Its raw output is the
*logit* of the product probability, computed in log space from the factors' logits
``z_k`` (so it is finite for every finite ``z_k``, with no clamp)::

    log P       = sum_k log sigmoid(z_k)
    log (1 - P) = logsumexp_k [ sum_{j<k} log sigmoid(z_j) + log sigmoid(-z_k) ]
    logit P     = log P - log (1 - P)

(``1 - prod_k p_k = sum_k (prod_{j<k} p_j)(1 - p_k)``). The binary task kind's
``sigmoid`` then gives ``P`` for predictions and metrics, and its
``binary_cross_entropy_with_logits`` is exactly ``-(y log P + (1 - y) log(1 - P))``: the BCE
on the product of probabilities, stable. A factor may itself be a product (chains such as
click -> cart -> buy); cycles are refused.

A factor's own loss (``TaskSpec.loss``): ``direct`` (the default: its loss over its sample
space, e.g. conversion on clicked rows), ``none`` (ESMM: trained only through the product)
or ``ips`` (ESCM², Wang et al., SIGIR 2022, "ESCM²: Entire Space Counterfactual Multi-Task
Model for Post-Click Conversion Rate Estimation"): the counterfactual regulariser
``ips_weight * (1/N) sum_{i in the factor's sample space} BCE_i / max(q_i, ips_clip)`` over
the product's ``N`` rows, where the propensity ``q_i`` is the product of the factors listed
*before* this one (``p(ctr)`` for ``cvr`` in ``[ctr, cvr]``), detached (a weight, not a
target: with a gradient the CTR tower would learn to inflate ``q`` to shrink the term).
The trainer computes it (:mod:`mtlsearch.train._chained`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from mtlsearch.arch._config import TaskSpec

#: A factor's own loss: its direct loss (masked to its sample space), none (ESMM), or
#: ESCM²'s inverse-propensity-weighted one.
FACTOR_LOSSES = ("direct", "none", "ips")
#: ``ips_weight`` / ``ips_clip`` when a task with ``loss: ips`` leaves them out.
DEFAULT_IPS_WEIGHT = 1.0
DEFAULT_IPS_CLIP = 0.01


class ChainError(ValueError):
    """A chained-task declaration that cannot hold; ``path`` is the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def check_chains(tasks: Sequence[TaskSpec]) -> None:
    """Cross-task checks of ``product_of`` and ``loss`` (per-task ones are in
    ``TaskSpec.validate``). Raises :class:`ChainError` naming ``tasks[i].<field>``:
    a factor that is unknown, the task itself, listed twice or not binary; a cycle; a
    ``loss`` other than ``direct`` on a task that is no factor; ``ips`` on a first factor
    (it has no propensity), on a factor of several products, or under a product that has
    no loss itself."""
    index = {t.name: i for i, t in enumerate(tasks)}
    for i, t in enumerate(tasks):
        seen: set[str] = set()
        for j, f in enumerate(t.product_of):
            path = f"tasks[{i}].product_of[{j}]"
            if f == t.name:
                raise ChainError(path, f"task {t.name!r} cannot be a factor of itself")
            if f not in index:
                raise ChainError(path, f"unknown task {f!r}; the tasks are {list(index)}")
            if f in seen:
                raise ChainError(path, f"task {f!r} is listed twice")
            seen.add(f)
            kind = tasks[index[f]].kind
            if kind != "binary":
                raise ChainError(path, f"task {f!r} is {kind}; a product's factors must be binary tasks")
    _check_acyclic(tasks, index)
    owners: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        for f in t.product_of:
            owners.setdefault(f, []).append(i)
    for i, t in enumerate(tasks):
        if t.loss == "direct":
            continue
        path = f"tasks[{i}].loss"
        if t.name not in owners:
            raise ChainError(
                path, f"{t.loss!r} is only for a factor of a product task (product_of); {t.name!r} is none"
            )
        if t.loss != "ips":
            continue
        if len(owners[t.name]) > 1:
            names = [tasks[k].name for k in owners[t.name]]
            raise ChainError(path, f"'ips' needs one propensity, but {t.name!r} is a factor of {names}")
        product = tasks[owners[t.name][0]]
        if product.product_of.index(t.name) == 0:
            raise ChainError(
                path,
                f"'ips' weighs by the factors before {t.name!r} in {product.name}.product_of "
                f"{list(product.product_of)}, and it is the first",
            )
        if product.loss == "none":
            raise ChainError(
                path, f"'ips' needs the product {product.name!r} trained, but its loss is 'none'"
            )


def _check_acyclic(tasks: Sequence[TaskSpec], index: Mapping[str, int]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            start = index[cycle[0]]
            raise ChainError(f"tasks[{start}].product_of", f"cycle {' -> '.join(cycle)}")
        state[name] = 1
        for f in tasks[index[name]].product_of:
            visit(f, [*trail, name])
        state[name] = 2

    for t in tasks:
        visit(t.name, [])


def product_order(tasks: Sequence[TaskSpec]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(product task, its factors)`` in an order where every factor comes first (the
    tasks are already checked by :func:`check_chains`)."""
    by_name = {t.name: t for t in tasks}
    done: set[str] = set()
    out: list[tuple[str, tuple[str, ...]]] = []

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for f in by_name[name].product_of:
            visit(f)
        if by_name[name].product_of:
            out.append((name, by_name[name].product_of))

    for t in tasks:
        visit(t.name)
    return tuple(out)


def log_probabilities(logit: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 - p))`` of ``p = sigmoid(logit)``, both finite for a finite logit."""
    return F.logsigmoid(logit), F.logsigmoid(-logit)


def product_logit(factors: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """The product of probabilities given as ``(log p_k, log(1 - p_k))`` pairs, each ``(B,)``.

    Returns ``(logit P, log P, log(1 - P))`` for ``P = prod_k p_k``, computed in log space:
    ``log(1 - P) = logsumexp_k [sum_{j<k} log p_j + log(1 - p_k)]``.
    """
    prefix = torch.zeros_like(factors[0][0])
    terms = []
    for log_p, log_q in factors:
        terms.append(prefix + log_q)
        prefix = prefix + log_p
    log_1m = torch.logsumexp(torch.stack(terms), dim=0)
    return prefix - log_1m, prefix, log_1m


def add_products(
    outputs: dict[str, Tensor], order: Sequence[tuple[str, tuple[str, ...]]]
) -> dict[str, Tensor]:
    """``outputs`` (``{task: logit (B,)}``) with every product task's logit added, in
    ``order`` (:func:`product_order`)."""
    if not order:
        return outputs
    logs: dict[str, tuple[Tensor, Tensor]] = {}
    out = dict(outputs)
    for name, factors in order:
        pairs = [logs[f] if f in logs else log_probabilities(out[f]) for f in factors]
        logit, log_p, log_1m = product_logit(pairs)
        logs[name] = (log_p, log_1m)
        out[name] = logit
    return out


__all__ = [
    "DEFAULT_IPS_CLIP",
    "DEFAULT_IPS_WEIGHT",
    "FACTOR_LOSSES",
    "ChainError",
    "add_products",
    "check_chains",
    "log_probabilities",
    "product_logit",
    "product_order",
]
