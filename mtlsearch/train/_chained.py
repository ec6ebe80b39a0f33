"""The trainer's side of entire-space chained tasks (ESMM / ESCM², see
:mod:`mtlsearch.arch._chained`).

A product task (``ctcvr = ctr x cvr``) needs nothing here: the network outputs the logit of
the product, so the binary kind's loss (``binary_cross_entropy_with_logits``) *is* the BCE
on the product of probabilities, over the task's sample space (all impressions). What
depends on the chain is a factor's own loss (``TaskSpec.loss``):

* ``direct``: the task's loss over its sample space, as for any task (conversion on the
  clicked rows).
* ``none`` (ESMM): no loss of its own; the task is left out of the loss weighting and is
  trained only through the product. Its metrics are still reported (on its sample space).
* ``ips`` (ESCM², Wang et al., SIGIR 2022, eq. 8): the counterfactual regulariser

      L = ips_weight * (1/N) * sum_{i in S} BCE(z_i, y_i) / max(q_i, ips_clip)

  over the ``N`` rows of the product's sample space in the batch, ``S`` those of them in
  the factor's own sample space (the clicked rows), ``q_i`` the product of the
  probabilities of the factors listed before this one (``p(ctr)``), detached. With
  ``q_i`` the true click probability its expectation is the factor's mean loss over the
  entire space (inverse propensity weighting). Its "row count" is ``N``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlsearch._errors import UserError
from mtlsearch.arch import ArchConfig, TaskSpec
from mtlsearch.arch._chained import DEFAULT_IPS_CLIP, DEFAULT_IPS_WEIGHT
from mtlsearch.data import TensorSplit
from mtlsearch.train._tasks import TASK_KINDS


def loss_tasks(config: ArchConfig) -> tuple[TaskSpec, ...]:
    """The tasks with a loss (all but ``loss: none``), in task order: what the loss
    weighting balances and the training loop reports."""
    return tuple(t for t in config.tasks if t.loss != "none")


def _product_of(task: TaskSpec, tasks: Sequence[TaskSpec]) -> TaskSpec:
    for t in tasks:
        if task.name in t.product_of:
            return t
    raise UserError(f"task {task.name!r}: loss 'ips' needs the product task it is a factor of")


def count_mask(task: TaskSpec, tasks: Sequence[TaskSpec], masks: Mapping[str, Tensor]) -> Tensor:
    """The rows (a bool mask over the batch) that make ``task``'s loss a mean: the task's own
    rows, or for ``loss: ips`` the product's sample space (its ``N``, all impressions), which
    is what DDP's per-rank loss rescaling must count. ``tasks`` must hold that product."""
    if task.loss == "ips":
        return masks[_product_of(task, tasks).name]
    return masks[task.name]


def ips_loss(
    outputs: dict[str, Tensor],
    batch: TensorSplit,
    task: TaskSpec,
    tasks: Sequence[TaskSpec],
    class_weight: Tensor | None = None,
) -> tuple[Tensor, int]:
    """ESCM²'s inverse-propensity-weighted loss of factor ``task`` on one batch (the module
    docstring gives the formula) and its row count ``N``. ``tasks`` must hold the product
    ``task`` is a factor of (the config's checks guarantee one, with a loss of its own).
    A task with row weights is refused (UserError)."""
    if task.name in batch.weights:
        raise UserError(
            f"task {task.name!r}: loss 'ips' does not take row weights (the data's weight column)"
        )
    product = _product_of(task, tasks)
    space = batch.masks[product.name]
    n = int(space.sum())
    rows = (batch.masks[task.name] & space).nonzero(as_tuple=True)[0]
    out = outputs[task.name]
    if n == 0 or rows.numel() == 0:
        return out.sum() * 0.0, n
    with torch.no_grad():  # the propensity is a weight, not a target
        before = product.product_of[: product.product_of.index(task.name)]
        q = torch.ones_like(out[rows], dtype=torch.float32)
        for f in before:
            q = q * torch.sigmoid(outputs[f][rows].float())
        clip = task.ips_clip if task.ips_clip is not None else DEFAULT_IPS_CLIP
        inverse = 1.0 / q.clamp_min(clip)
    weight = task.ips_weight if task.ips_weight is not None else DEFAULT_IPS_WEIGHT
    per_row = TASK_KINDS[task.kind].loss(out[rows], batch.labels[task.name][rows], class_weight)
    return weight * (per_row * inverse).sum() / n, n


__all__ = ["count_mask", "ips_loss", "loss_tasks"]
