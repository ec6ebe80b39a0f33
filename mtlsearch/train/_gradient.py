"""Gradient-level task balancing: per-task gradients combined by a torchjd aggregator.

Loss-level methods (:mod:`mtlsearch.train._weighting`) weight the losses and differentiate
one scalar. The methods here differentiate each task's loss separately and resolve the
*conflicts* between the task gradients (two gradients with a negative inner product pull a
shared parameter in opposite directions) before the optimiser steps. The combination rule
is a `torchjd <https://torchjd.org>`_ aggregator; each registered class names its paper.

One training step, with ``m`` the number of tasks that have rows in the batch::

    J = d[L_k for present k] / d(theta)          # [m, n_params]: m backward passes (see Cost)
    shared = columns of J with a non-zero entry in >= 2 rows
    grad[shared]  = aggregator(J[:, shared])      # the method's rule, on shared parameters
    grad[~shared] = J[:, ~shared].sum(0)          # one task reaches it: that task's gradient

- *Shared* is decided per parameter **element**, at each step: the experts of a level are
  one batched tensor (``BatchedMLP``), so a task-specific expert and a shared expert live in
  the same parameter. An element only one present task's loss moves in this batch (its own
  expert, tower or gate; an embedding row that only appears in that task's rows) gets that
  task's plain gradient; an element no loss moves gets 0.
- A masked task with no row in the batch (``counts[task] == 0``) drops out of ``J`` for that
  step (``m`` shrinks by one). With one present task the update is that task's plain
  gradient (no aggregation); with none, nothing is accumulated.
- Stateful aggregators (Nash-MTL, GradVac) keep one state per set of present tasks, so a
  step without a masked task never mixes its statistics up with the full steps'.
- The scale follows torchjd: mean-based rules (UPGrad, MGDA, DualProj, IMTL-G, Aligned-MTL,
  CAGrad) give the shared elements about ``1/m`` of what sum-based rules (PCGrad, GradDrop,
  GradVac, ConFIG) give, while task-specific elements always get their task's full gradient
  (as in torchjd's ``mtl_backward``). Adam's per-element normalisation makes this nearly
  irrelevant.

Cost: about ``m`` times the gradient arithmetic of a plain backward, computed in one of two
ways (``GradientBalancing.vectorised``, chosen by the parameters' device at ``attach``):

- on the CPU, ``m`` backward passes over the retained graph, each written straight into
  its row of ``J``: memory ``m x n_params`` floats (plus one gradient). Measured on census
  (one thread, batch 1024, MMoE and PLE): the backward part took 2x a plain backward,
  against 3x for the vectorised pass, which ``vmap`` slows down on the CPU;
- on other devices (CUDA), one backward pass vectorised over the ``m`` rows (``torch.vmap``
  inside :func:`torchjd.autojac.jac`): fewer kernel launches, but the per-tensor Jacobians
  and their concatenation are both alive at the peak, ``2 x m x n_params`` floats
  (``JACOBIAN_COPIES``, what the memory estimate counts).

Then the shared columns' copy that the aggregator reads (at most ``m x n_params``) and the
aggregator itself (a few ``m x m`` operations, or a small solver call for CAGrad, Nash-MTL
and FairGrad). The methods have no parameters of their own.

The reported loss of a step is the plain sum of the task losses.

CAGrad and Nash-MTL solve a small convex program per step with cvxpy: the optional extra
``mtlsearch[cvx]``. Without it, the config is rejected with a one-line :class:`UserError`.
torchjd (and cvxpy, which it imports) is only imported when a gradient method is built,
so importing :mod:`mtlsearch.train` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec
from mtlsearch.train._weighting import LossWeighting, Option, register_loss_weighting

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

    from mtlsearch.train._config import LossWeightingConfig

#: Copies of the ``m x n_params`` Jacobian alive at a step's peak (read by the memory
#: estimate): the per-parameter Jacobians and their concatenation.
JACOBIAN_COPIES = 2


class GradientBalancing(LossWeighting):
    """Base of the gradient-level methods: subclasses only build their torchjd aggregator
    (:meth:`make_aggregator`); the step itself (see the module docstring) is shared.

    ``extra``/``requires``: the optional extra a method needs and the modules it provides;
    :meth:`check_config` imports them at config time. ``jacobian_copies``: how many
    ``m x n_params`` Jacobians a step holds at its peak (for the memory estimate).
    ``quiet``: patterns of warnings the aggregator emits at every step that say nothing
    to the user (silenced around its call).

    ``vectorised``: compute the Jacobian with one vmapped backward (torchjd) instead of
    ``m`` backward passes; ``None`` (default) decides at ``attach``: ``False`` on the CPU,
    ``True`` elsewhere (see the module docstring).

    After a step, ``last_tasks`` names the tasks whose losses formed the Jacobian's rows (in
    task order) and ``last_shared`` counts its shared columns (the aggregator's input is
    ``[len(last_tasks), last_shared]``; no aggregator runs with fewer than two rows).
    """

    extra: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    jacobian_copies: ClassVar[int] = JACOBIAN_COPIES
    quiet: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self._params: list[Tensor] = []
        # one aggregator per set of present tasks (plain dict: not submodules, no state_dict)
        self._aggregators: dict[tuple[int, ...], Aggregator] = {}
        self._captured: Tensor | None = None
        # the weight each task's gradient got at the last step it was present (0-d tensors,
        # read only when reported, so a step never waits on the device)
        self._weights: list[Tensor | float] = [1.0] * len(self.task_names)
        self.last_tasks: tuple[str, ...] = ()
        self.last_shared = 0
        self.vectorised: bool | None = None

    @classmethod
    def check_config(cls, config: LossWeightingConfig) -> None:
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                raise UserError(
                    f"training.loss_weighting.method: {config.method!r} needs the optional extra "
                    f"mtlsearch[{cls.extra}] ({module} is not installed); "
                    f"install it with: pip install 'mtlsearch[{cls.extra}]'"
                ) from None

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        """The torchjd aggregator for a Jacobian of ``n_tasks`` (>= 2) rows."""
        raise NotImplementedError

    def attach(self, model: nn.Module) -> None:
        self._params = [p for p in model.parameters() if p.requires_grad]
        if self.vectorised is None and self._params:
            self.vectorised = self._params[0].device.type != "cpu"

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        """The reported loss: the plain sum of the task losses (0-d tensor)."""
        return torch.stack([losses[n] for n in self.task_names]).sum()

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        """Accumulate the aggregated update into ``.grad`` of the attached model's
        parameters and return the plain sum of the losses, detached. A non-finite sum is
        returned without touching ``.grad`` (the loop reports it)."""
        if not self._params:
            raise RuntimeError(f"{type(self).__name__}.attach(model) must be called before backward")
        total = self(losses).detach()
        if not math.isfinite(total.item()):
            return total
        present = tuple(k for k, n in enumerate(self.task_names) if counts[n] > 0)
        self.last_tasks = tuple(self.task_names[k] for k in present)
        self.last_shared = 0
        if not present:
            return total
        update = self._update([losses[self.task_names[k]] for k in present], present)
        for p, g in zip(self._params, update.split([p.numel() for p in self._params]), strict=True):
            g = g.view_as(p)
            if p.grad is None:
                p.grad = g
            else:
                p.grad += g
        return total

    def _update(self, rows: list[Tensor], present: tuple[int, ...]) -> Tensor:
        """The flat update vector [n_params] from the present tasks' losses."""
        m = len(rows)
        matrix = _JACOBIANS[bool(self.vectorised)](rows, self._params)  # [m, n_params]
        update = matrix.sum(0)
        if m == 1:
            self._weights[present[0]] = 1.0
            return update
        shared = ((matrix != 0).sum(0, dtype=torch.int16) >= 2).nonzero().squeeze(1)
        self.last_shared = shared.numel()
        if not self.last_shared:
            for k in present:
                self._weights[k] = 1.0
            return update
        aggregator = self._aggregator(present)
        self._captured = None
        with warnings.catch_warnings() if self.quiet else contextlib.nullcontext():
            for pattern in self.quiet:
                warnings.filterwarnings("ignore", message=pattern)
            combined = aggregator(matrix.index_select(1, shared))
        update.index_copy_(0, shared, combined.to(update.dtype))
        weights = self._captured
        for i, k in enumerate(present):
            self._weights[k] = 1.0 if weights is None else weights[i]
        return update

    def _aggregator(self, present: tuple[int, ...]) -> Aggregator:
        aggregator = self._aggregators.get(present)
        if aggregator is None:
            from torchjd.aggregation import WeightedAggregator

            aggregator = self.make_aggregator(len(present))
            if isinstance(aggregator, WeightedAggregator):  # expose the weights it applies
                aggregator.weighting.register_forward_hook(self._capture)
            self._aggregators[present] = aggregator
        return aggregator

    def _capture(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._captured = output.detach()

    def current_weights(self) -> dict[str, float]:
        """Each task's weight on the shared elements at the last step it was present: the
        weights of weighting-based aggregators (UPGrad's, MGDA's, ...); 1.0 for those
        without weights (GradDrop, ConFIG) and before the first step."""
        return {n: float(w) for n, w in zip(self.task_names, self._weights, strict=True)}


def _sequential_jacobian(rows: list[Tensor], params: list[Tensor]) -> Tensor:
    """``[len(rows), n_params]``: one backward pass per row over the retained graph, each
    written into its row (a parameter a row does not reach gets zeros)."""
    first = params[0]
    matrix = torch.empty(len(rows), sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
    for i, row in enumerate(rows):
        grads = torch.autograd.grad(row, params, retain_graph=i < len(rows) - 1, materialize_grads=True)
        torch.cat([g.reshape(-1) for g in grads], out=matrix[i])
    return matrix


def _vectorised_jacobian(rows: list[Tensor], params: list[Tensor]) -> Tensor:
    """``[len(rows), n_params]``: one backward pass vmapped over the rows (torchjd)."""
    from torchjd.autojac import jac

    jacobians = jac(rows, params)  # each [m, *param.shape]
    return torch.cat([j.reshape(len(rows), -1) for j in jacobians], dim=1)


_JACOBIANS = {False: _sequential_jacobian, True: _vectorised_jacobian}


def _aggregation() -> Any:
    import torchjd.aggregation

    return torchjd.aggregation


@register_loss_weighting("upgrad")
class UPGradBalancing(GradientBalancing):
    """UPGrad: each task gradient projected onto the dual cone of all of them (the
    directions that conflict with none), averaged. Non-conflicting gradients: the mean.
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (arXiv:2406.16232,
    2024)."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().UPGrad()


@register_loss_weighting("mgda")
class MGDABalancing(GradientBalancing):
    """MGDA: the minimum-norm point of the convex hull of the task gradients (Frank-Wolfe
    solver). Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization" (C. R. Math. 2012); Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization" (NeurIPS 2018), Algorithm 2."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().MGDA()


@register_loss_weighting("pcgrad")
class PCGradBalancing(GradientBalancing):
    """PCGrad ("gradient surgery"): each task gradient loses its component along every other
    task gradient it conflicts with (random order), then they are summed. Non-conflicting
    gradients: the sum. Yu et al., "Gradient Surgery for Multi-Task Learning" (NeurIPS
    2020)."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().PCGrad()


@register_loss_weighting("cagrad")
class CAGradBalancing(GradientBalancing):
    """CAGrad: the update in the ball of radius ``c * |g0|`` around the mean gradient ``g0``
    that maximises the smallest task improvement; ``c = 0`` is the mean. Needs the extra
    ``mtlsearch[cvx]``. Liu et al., "Conflict-Averse Gradient Descent for Multi-task
    Learning" (NeurIPS 2021)."""

    options: ClassVar[dict[str, Option]] = {"c": Option(0.4, minimum=0.0)}
    extra: ClassVar[str | None] = "cvx"
    requires: ClassVar[tuple[str, ...]] = ("cvxpy", "clarabel")

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().CAGrad(c=float(self.option("c")))


@register_loss_weighting("nash_mtl")
class NashMTLBalancing(GradientBalancing):
    """Nash-MTL: weights ``alpha`` of the Nash bargaining solution, ``alpha_k g_k . d`` equal
    for every task (``d = sum alpha_k g_k``), solved every ``update_weights_every`` steps in
    ``optim_niter`` iterations; ``max_norm`` clips ``|d|`` (0: no clipping). Needs the extra
    ``mtlsearch[cvx]``. Navon et al., "Multi-Task Learning as a Bargaining Game" (ICML
    2022)."""

    options: ClassVar[dict[str, Option]] = {
        "update_weights_every": Option(1, minimum=1, integer=True),
        "optim_niter": Option(20, minimum=1, integer=True),
        "max_norm": Option(1.0, minimum=0.0),
    }
    extra: ClassVar[str | None] = "cvx"
    requires: ClassVar[tuple[str, ...]] = ("cvxpy", "ecos")
    # torchjd's problem is not DPP: cvxpy says so at every solve
    quiet: ClassVar[tuple[str, ...]] = ("You are solving a parameterized problem that is not DPP",)

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().NashMTL(
            n_tasks=n_tasks,
            max_norm=float(self.option("max_norm")),
            update_weights_every=int(self.option("update_weights_every")),
            optim_niter=int(self.option("optim_niter")),
        )


@register_loss_weighting("imtl_g")
class IMTLGBalancing(GradientBalancing):
    """IMTL-G: weights summing to 1 such that the update has the same projection on every
    task's unit gradient. Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021);
    torchjd's generalisation to linearly dependent gradients."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().IMTLG()


@register_loss_weighting("aligned_mtl")
class AlignedMTLBalancing(GradientBalancing):
    """Aligned-MTL: the task gradients made orthogonal and of equal norm (the smallest
    singular value's scale) through the eigendecomposition of their Gramian, then averaged.
    Senushkin et al., "Independent Component Alignment for Multi-Task Learning" (CVPR
    2023)."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().AlignedMTL()


@register_loss_weighting("graddrop")
class GradDropBalancing(GradientBalancing):
    """GradDrop: per element, keep only the positive or only the negative task gradients,
    chosen at random with the probability of the positive sign's purity; gradients of one
    sign: their sum. Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout" (NeurIPS 2020)."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().GradDrop()


@register_loss_weighting("gradvac")
class GradVacBalancing(GradientBalancing):
    """GradVac: like PCGrad, but each pair's gradients are corrected towards a target cosine
    similarity, an exponential moving average (decay ``beta``) of the observed ones, not
    towards 0 (the first step is PCGrad). Wang et al., "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models" (ICLR 2021)."""

    options: ClassVar[dict[str, Option]] = {"beta": Option(0.5, minimum=0.0, maximum=1.0)}

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().GradVac(beta=float(self.option("beta")))


@register_loss_weighting("dualproj")
class DualProjBalancing(GradientBalancing):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients (the
    closest update to the mean that conflicts with no task). Lopez-Paz & Ranzato, "Gradient
    Episodic Memory for Continual Learning" (NeurIPS 2017), eq. 11; as an aggregator in
    Quinton & Rey (arXiv:2406.16232)."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().DualProj()


@register_loss_weighting("config")
class ConFIGBalancing(GradientBalancing):
    """ConFIG: the direction at equal angles to every task's unit gradient, scaled to the
    sum of the gradients' projections on it. Liu et al., "ConFIG: Towards Conflict-free
    Training of Physics Informed Neural Networks" (ICLR 2025, arXiv:2408.11104), eq. 2."""

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().ConFIG()


@register_loss_weighting("fairgrad")
class FairGradBalancing(GradientBalancing):
    """FairGrad: alpha-fair resource allocation, weights ``w`` with ``g_k . d = w_k ** (-1 /
    alpha)`` (``d = sum w_k g_k``); ``alpha = 0`` is the mean, ``alpha = 1`` proportional
    fairness. Ban & Ji, "Fair Resource Allocation in Multi-Task Learning" (ICML 2024)."""

    options: ClassVar[dict[str, Option]] = {"alpha": Option(1.0, minimum=0.0)}

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return _aggregation().FairGrad(alpha=float(self.option("alpha")))


__all__ = ["JACOBIAN_COPIES", "GradientBalancing"]
