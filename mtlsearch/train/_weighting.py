"""Task balancing: how per-task losses (or their gradients) become one update.

A method is a small ``nn.Module`` (it may learn parameters, as uncertainty weighting does)
registered by name. The training loop only calls ``attach(model)`` once, then
``start_epoch(t)``, ``backward(losses, counts)`` per batch and ``end_epoch(task_losses)``,
so adding a method is one decorated class and never touches the loop::

    @register_loss_weighting("mine")
    class Mine(LossWeighting):
        options: ClassVar[dict[str, Option]] = {"temperature": Option(2.0, minimum=0.0, exclusive=True)}

        def forward(self, losses): ...

Loss-level methods combine the losses into one scalar (``forward``) and the default
``backward`` differentiates it; gradient-level methods (:mod:`mtlsearch.train._gradient`)
override ``backward`` to combine per-task gradients instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from mtlsearch._errors import UserError, as_float
from mtlsearch.arch import TaskSpec

if TYPE_CHECKING:
    from mtlsearch.train._config import LossWeightingConfig


@dataclass(frozen=True)
class Option:
    """One numeric hyper-parameter of a method: its default and bounds (``integer`` for a
    count). ``check`` returns the validated value or raises a one-line :class:`UserError`
    naming ``path``."""

    default: float
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False  # the minimum itself is not allowed
    integer: bool = False

    def check(self, value: Any, path: str) -> float:
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{path}: expected an integer, got {value!r}")
            number: float = value
        else:
            number = as_float(value, path)
        if self.minimum is not None and (
            number < self.minimum or (self.exclusive and number == self.minimum)
        ):
            raise UserError(f"{path}: must be {'>' if self.exclusive else '>='} {self.minimum}, got {number}")
        if self.maximum is not None and number > self.maximum:
            raise UserError(f"{path}: must be <= {self.maximum}, got {number}")
        return number


class LossWeighting(nn.Module):
    """Base class.

    ``accepts`` names the :class:`LossWeightingConfig` fields a method reads (``weights``,
    ``gamma``); ``options`` its own hyper-parameters; the config rejects the others.
    ``needs_model``: the method reads the model's parameters (gradient-level methods,
    GradNorm), so ``attach`` must be called before the first ``backward``.
    ``scale_invariant_backward``: an overridden ``backward`` given ``S * L_k`` accumulates
    exactly ``S`` times its gradients for ``L_k`` (degree-1 homogeneous), so fp16's loss
    scaling may run it (see :mod:`mtlsearch.train._precision`).
    """

    accepts: ClassVar[frozenset[str]] = frozenset()
    options: ClassVar[dict[str, Option]] = {}
    needs_model: ClassVar[bool] = False
    scale_invariant_backward: ClassVar[bool] = False

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.task_names = tuple(t.name for t in tasks)
        self.config = config

    @classmethod
    def check_config(cls, config: LossWeightingConfig) -> None:
        """Extra validation at config time (a missing optional extra, say): raise
        :class:`UserError` naming ``training.loss_weighting...``."""

    @classmethod
    def check_model(cls, model: Any) -> None:
        """Validation against the architecture config (an ``ArchConfig``) when an
        experiment is built, so a network the method cannot train is refused before any
        training: raise :class:`UserError` naming ``training.loss_weighting...``."""

    def option(self, name: str) -> Any:
        """This method's option ``name``: the config's value or the default."""
        return self.config.option(name)

    def attach(self, model: nn.Module) -> None:
        """Called once with the network before training (methods that read its
        parameters keep what they need here)."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); schedules update here."""

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        """Called after each epoch's training pass with each task's mean training loss per
        row (NaN for a task with no row)."""

    def after_step(self, recompute: Callable[[], dict[str, Tensor]]) -> None:
        """Called after each optimiser step. ``recompute()`` gives the batch's per-task losses
        again, with the updated network and without a graph (one more forward pass: call it
        only if the method needs it, as FAMO does)."""

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        """Accumulate this step's gradients into ``.grad`` (the caller zeroed them and
        steps the optimiser) and return the combined loss for reporting, detached.

        ``losses``: each task's mean loss over its rows of the batch (a zero with a graph
        where ``counts`` is 0: a masked task with no row). The default differentiates
        ``forward(losses)``.
        """
        total = self(losses)
        if math.isfinite(total.item()):  # a non-finite total is reported, never applied
            total.backward()
        return total.detach()

    def current_weights(self) -> dict[str, float]:
        """The effective weight of each task's loss now (reported per epoch)."""
        raise NotImplementedError


LOSS_WEIGHTINGS: dict[str, type[LossWeighting]] = {}


def register_loss_weighting(name: str) -> Callable[[type[LossWeighting]], type[LossWeighting]]:
    """Class decorator: make a weighting method available to configs under ``name``."""

    def deco(cls: type[LossWeighting]) -> type[LossWeighting]:
        if name in LOSS_WEIGHTINGS:
            raise ValueError(f"loss weighting {name!r} is already registered")
        LOSS_WEIGHTINGS[name] = cls
        return cls

    return deco


def make_loss_weighting(config: LossWeightingConfig, tasks: tuple[TaskSpec, ...]) -> LossWeighting:
    config.check_tasks(tuple(t.name for t in tasks))
    return LOSS_WEIGHTINGS[config.method](tuple(tasks), config)


@register_loss_weighting("fixed")
class FixedWeighting(LossWeighting):
    """``L = sum_k w_k L_k`` with constant weights (default 1 each: the plain sum)."""

    accepts = frozenset({"weights"})

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self.base = [float(config.weights.get(n, 1.0)) for n in self.task_names]
        self._weights = list(self.base)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(w * losses[n] for w, n in zip(self._weights, self.task_names, strict=True))  # type: ignore[return-value]

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._weights, strict=True))


@register_loss_weighting("dynamic")
class DynamicWeighting(FixedWeighting):
    """The PLE paper's schedule: ``w_k(t) = w_k0 * gamma_k ** t``, ``t`` the 0-based epoch.

    ``gamma_k < 1`` fades a task out (e.g. an auxiliary task), ``> 1`` fades it in.
    """

    accepts = frozenset({"weights", "gamma"})

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self.gamma = [float(config.gamma.get(n, 1.0)) for n in self.task_names]

    def weights_at(self, epoch: int) -> dict[str, float]:
        return {n: w0 * g**epoch for n, w0, g in zip(self.task_names, self.base, self.gamma, strict=True)}

    def start_epoch(self, epoch: int) -> None:
        self._weights = list(self.weights_at(epoch).values())


# Kendall, Gal & Cipolla (CVPR 2018), with s = log sigma^2 learned per task:
# regression (Gaussian likelihood)   1/(2 sigma^2) L + log sigma = 0.5 e^-s L + 0.5 s
# classification (scaled softmax)    1/sigma^2 L + log sigma     =     e^-s L + 0.5 s
_UNCERTAINTY_SCALE = {"regression": 0.5, "binary": 1.0, "multiclass": 1.0}


@register_loss_weighting("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic-uncertainty weights (one log-variance per task, init 0)."""

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self.log_var = nn.Parameter(torch.zeros(len(tasks)))
        self.register_buffer(
            "scale", torch.tensor([_UNCERTAINTY_SCALE[t.kind] for t in tasks]), persistent=False
        )

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        return (self.scale * torch.exp(-self.log_var) * stacked + 0.5 * self.log_var).sum()

    def current_weights(self) -> dict[str, float]:
        w = (self.scale * torch.exp(-self.log_var.detach())).tolist()
        return dict(zip(self.task_names, w, strict=True))


def _apply(total: Tensor) -> Tensor:
    """Differentiate ``total`` if it is finite (a non-finite total is reported, never
    applied: the loop stops on it) and return it detached, as ``backward`` must."""
    if math.isfinite(total.item()):
        total.backward()
    return total.detach()


@register_loss_weighting("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019, eq. 7).

    ``L = sum_k w_k(t) L_k`` with, at epoch ``t`` (0-based)::

        w_k(t) = K exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T)
        r_k(t-1) = L_k(t-1) / L_k(t-2)

    ``L_k(t)``: task k's mean training loss per row in epoch ``t`` (what the loop passes to
    ``end_epoch``). The weights are constant within an epoch and sum to ``K``; ``w_k = 1``
    until two epochs have ended (epochs 0 and 1). A task whose epoch loss is NaN (it had
    no row) or zero keeps ratio ``r_k = 1``. Option ``temperature`` (``T``, > 0, default
    2.0 as in the paper): larger means more uniform weights.

    ``torchjd.scalarization.DWA`` averages per-batch losses (not per row) and has no
    notion of a task without rows, hence this one.
    """

    options: ClassVar[dict[str, Option]] = {"temperature": Option(2.0, minimum=0.0, exclusive=True)}

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self.temperature = float(self.option("temperature"))
        self._history: list[dict[str, float]] = []  # the last two epochs' mean losses
        self._weights = [1.0] * len(self.task_names)

    def weights_from(self, older: dict[str, float], newer: dict[str, float]) -> list[float]:
        """The weights after epochs with mean losses ``older`` then ``newer``."""
        ratios = []
        for n in self.task_names:
            r = newer[n] / older[n] if older[n] != 0 else math.nan
            ratios.append(r if math.isfinite(r) else 1.0)
        w = torch.softmax(torch.tensor(ratios, dtype=torch.float64) / self.temperature, dim=0)
        return (len(ratios) * w).tolist()

    def start_epoch(self, epoch: int) -> None:
        if len(self._history) == 2:
            self._weights = self.weights_from(*self._history)

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        self._history = [*self._history, dict(task_losses)][-2:]

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(w * losses[n] for w, n in zip(self._weights, self.task_names, strict=True))  # type: ignore[return-value]

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._weights, strict=True))


@register_loss_weighting("rlw")
class RandomLossWeighting(LossWeighting):
    """Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022, Algorithm 2 with a normal draw).

    Every batch: ``z ~ N(0, I_K)``, ``w = softmax(z)``, ``L = sum_k w_k L_k``. ``z`` comes
    from torch's global RNG on the losses' device (the loop seeds it with the training
    seed, so a seed gives the same weights; on CPU these are the draws of
    ``torch.randn(K)``). All ``K`` values are drawn even when a task has no row in the
    batch, so the draws never depend on the masks. ``current_weights`` reports the
    expectation, ``1/K`` each (the drawn weights change every batch).
    """

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        z = torch.randn(stacked.shape, device=stacked.device, dtype=stacked.dtype)
        return (torch.softmax(z, dim=0) * stacked).sum()

    def current_weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0 / len(self.task_names))


@register_loss_weighting("gls")
class GeometricLossStrategy(LossWeighting):
    """Geometric Loss Strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

    ``L = (prod_{k in P} L_k) ** (1 / |P|)`` over the tasks ``P`` present in the batch
    (``counts > 0``): a task with no row leaves the product instead of zeroing it. Its
    gradient weights task k by ``L / (|P| L_k)``, so a task with a small loss is pushed
    harder. Computed as ``exp(mean_k log L_k)`` (no underflow of the product) with each
    ``L_k`` clamped at the smallest positive float, so an exactly zero loss gives a total
    of about zero and finite gradients instead of NaN. ``forward`` alone takes every task as
    present. ``current_weights`` reports ``L / (K L_k)`` at the last epoch's mean losses
    (``1/K`` each before the first epoch ends, or while a task's loss is undefined).
    """

    scale_invariant_backward = True  # the geometric mean of S * L_k is S times theirs

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self._weights = [1.0 / len(self.task_names)] * len(self.task_names)

    def geometric_mean(self, losses: dict[str, Tensor], present: list[str]) -> Tensor:
        stacked = torch.stack([losses[n] for n in present])
        floor = torch.finfo(stacked.dtype).tiny
        return torch.exp(torch.log(stacked.clamp_min(floor)).mean())

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return self.geometric_mean(losses, list(self.task_names))

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        present = [n for n in self.task_names if counts[n] > 0]
        # An absent task's loss is a zero with a graph: adding it keeps its parameters'
        # gradients zero (not None), as under the other methods, without changing the total.
        absent = sum(losses[n] for n in self.task_names if counts[n] == 0)
        if not present:
            return _apply(absent)  # type: ignore[arg-type]
        return _apply(self.geometric_mean(losses, present) + absent)

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        values = [task_losses[n] for n in self.task_names]
        if all(math.isfinite(v) and v > 0 for v in values):
            mean = math.exp(sum(math.log(v) for v in values) / len(values))
            self._weights = [mean / (len(values) * v) for v in values]

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._weights, strict=True))


def shared_expert_layer(model: nn.Module) -> tuple[nn.Parameter, Tensor, int]:
    """The last layer shared by the tasks: ``(weight, experts, level)``.

    ``weight`` is the expert output-layer weight tensor ``(E, in, out)`` of extraction
    level ``level`` (all its experts are one batched tensor), ``experts`` the indices of
    the experts in it that at least two task gates read. Levels are searched from the
    top: the top level's shared experts are read by every task gate, so they are the
    last layer every task's gradient passes through. Per preset:

    - PLE / CGC: the top level's shared experts (not the task-specific ones);
    - MMoE / OMoE / multi-level MMoE: every expert of the top level;
    - shared-bottom: the one bottom MLP's last layer.

    Raises :class:`UserError` naming ``training.loss_weighting.method`` when no level
    has an expert read by two tasks (the ``single_task`` preset, or a network of one
    task), and ``TypeError`` for a module that is not an :class:`MTLNetwork`.
    """
    levels = getattr(model, "levels", None)
    if levels is None:
        raise TypeError(f"expected an MTLNetwork with extraction levels, got {type(model).__name__}")
    li, shared = shared_experts([lv.cfg for lv in levels], len(model.task_names))  # type: ignore[attr-defined]
    return levels[li].experts.weights[-1], torch.tensor(shared), li


def shared_experts(levels: Sequence[Any], n_tasks: int) -> tuple[int, list[int]]:
    """From the level configs alone: the top level having experts that two task gates
    read, and those experts' indices (see :func:`shared_expert_layer`)."""
    for li in range(len(levels) - 1, -1, -1):
        cfg = levels[li]
        single = cfg.gate_sharing == "single"
        readers = [0] * cfg.n_experts
        for k in range(n_tasks):
            for e in cfg.task_selection(0 if single else k):
                readers[e] += 1
        shared = [e for e, r in enumerate(readers) if r >= 2]
        if shared:
            return li, shared
    raise UserError(
        "training.loss_weighting.method: this method needs a layer the tasks share, but no "
        f"extraction level of this {n_tasks}-task network has an expert read by two task gates"
    )


@register_loss_weighting("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing
    in Deep Multitask Networks", ICML 2018, Algorithm 1).

    Learned weights ``w_k`` (an ``nn.Parameter``, init 1; the loop's optimiser steps them
    in their own group without weight decay). Each ``backward``:

    1. under ``no_grad``, renormalise ``w <- K w / sum_j w_j`` (after clamping each
       ``w_k`` at 1e-6, so a weight the optimiser pushed below zero never flips a task's
       gradient), so ``sum_k w_k = K``;
    2. the network gets the gradient of ``sum_k w_k L_k`` with ``w`` detached;
    3. with ``G_k = ||grad_W (w_k L_k)||_2 = w_k ||grad_W L_k||_2``,
       ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))`` and
       ``target_k = stopgrad(mean_j G_j * r_k ** alpha)``, ``w`` gets the gradient of
       ``sum_k |G_k - target_k|`` (no second-order term: ``grad_W L_k`` does not depend on
       ``w``).

    ``W`` is the last shared layer, found by :func:`shared_expert_layer` in ``attach``: the
    output-layer weights of the top extraction level's shared experts (PLE/CGC), of all
    its experts (MMoE/OMoE), of the bottom (shared-bottom); a network with nothing shared
    raises :class:`UserError`. With one task there is nothing to balance: ``w = 1`` and no
    ``W`` is needed. ``L_k(0)`` is task k's loss in the first batch where it has rows. Step
    3 runs over the tasks present in the batch (``counts > 0``, ``L_k(0)`` known): means are
    over them, an absent task's weight gets no gradient, and with fewer than two present
    tasks ``w`` gets none. Option ``alpha`` (>= 0, default 1.5, the paper's value for
    NYUv2): the strength of the pull back to a common training rate.
    """

    options: ClassVar[dict[str, Option]] = {"alpha": Option(1.5, minimum=0.0)}
    needs_model = True
    _FLOOR: ClassVar[float] = 1e-6

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        self.alpha = float(self.option("alpha"))
        self.weight = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial_losses", torch.full((len(tasks),), math.nan), persistent=False)
        self._shared: tuple[nn.Parameter, Tensor] | None = None  # a tuple: not registered here
        #: ``sum_k |G_k - target_k|`` at the last step that computed it (None before)
        self.last_balance_loss: Tensor | None = None

    @classmethod
    def check_model(cls, model: Any) -> None:
        if len(model.tower_tasks) >= 2:  # product tasks (ESMM) have no gate
            shared_experts(model.levels, len(model.tower_tasks))

    def attach(self, model: nn.Module) -> None:
        if len(self.task_names) < 2:
            return
        weight, experts, _ = shared_expert_layer(model)
        self._shared = (weight, experts.to(weight.device))

    def _renormalise(self) -> None:
        with torch.no_grad():
            self.weight.clamp_(min=self._FLOOR)
            self.weight.mul_(len(self.task_names) / self.weight.sum())

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum_k w_k L_k`` with ``w`` detached (what the network is trained on)."""
        stacked = torch.stack([losses[n] for n in self.task_names])
        return (self.weight.detach() * stacked).sum()

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        self._renormalise()
        stacked = torch.stack([losses[n] for n in self.task_names])
        total = (self.weight.detach() * stacked).sum()
        if not math.isfinite(total.item()):
            return total.detach()
        present = [k for k, n in enumerate(self.task_names) if counts[n] > 0]
        with torch.no_grad():  # L_k(0): the first batch where task k has rows
            rows = torch.tensor([counts[n] > 0 for n in self.task_names], device=stacked.device)
            first = rows & torch.isnan(self.initial_losses)
            self.initial_losses.copy_(torch.where(first, stacked.detach(), self.initial_losses))
        if self._shared is not None and len(present) >= 2:
            self._weight_gradient(stacked, present)
        total.backward()
        return total.detach()

    def _weight_gradient(self, stacked: Tensor, present: list[int]) -> None:
        """Accumulate the gradient of ``sum_k |G_k - target_k|`` into ``self.weight.grad``."""
        assert self._shared is not None
        param, experts = self._shared
        norms = []
        for k in present:
            (grad,) = torch.autograd.grad(stacked[k], param, retain_graph=True, allow_unused=True)
            norms.append(grad[experts].norm() if grad is not None else param.new_zeros(()))
        idx = torch.tensor(present, device=stacked.device)
        g = self.weight[idx] * torch.stack(norms)  # G_k, differentiable in w only
        ratio = stacked.detach()[idx] / self.initial_losses[idx]
        r = ratio / ratio.mean()
        target = (g.mean() * r**self.alpha).detach()
        balance = (g - target).abs().sum()
        self.last_balance_loss = balance.detach()
        (grad_w,) = torch.autograd.grad(balance, self.weight)
        if torch.isfinite(grad_w).all():
            self.weight.grad = grad_w if self.weight.grad is None else self.weight.grad + grad_w

    def current_weights(self) -> dict[str, float]:
        w = self.weight.detach().clamp(min=self._FLOOR)
        return dict(zip(self.task_names, (len(self.task_names) * w / w.sum()).tolist(), strict=True))


@register_loss_weighting("famo")
class FastAdaptiveMultitask(LossWeighting):
    """FAMO (Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023), through torchjd's maintained ``torchjd.scalarization.FAMO``.

    The network gets the gradient of ``c sum_k z_k log(L_k + eps)``, ``z = softmax(w)``,
    ``c = (sum_k z_k / (L_k + eps))^-1`` (a constant), which decreases every task's loss at
    about the same rate from the loss values alone (no per-task gradients). After the
    optimiser step the batch's losses are recomputed (one extra forward pass, in training
    mode: batch-norm running statistics see the batch twice) and the logits ``w`` take one
    Adam step (``lr``, ``weight_decay``: the paper's 0.025 and 1e-3) along
    ``log L_before - log L_after``.

    A batch in which some task has no row (a masked task) is combined with the current
    weights ``z`` over the present tasks, as a plain weighted sum, and the logits are not
    updated on it (FAMO needs every task's loss before and after the step).
    """

    options = {  # noqa: RUF012 (a read-only table, as in the base)
        "lr": Option(0.025, minimum=0.0),
        "weight_decay": Option(1e-3, minimum=0.0),
    }

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__(tasks, config)
        from torchjd.scalarization import FAMO

        lr, decay = float(self.option("lr")), float(self.option("weight_decay"))
        self.famo = FAMO(len(tasks), lr=lr, weight_decay=decay)
        self._update = False

    def _weights(self) -> Tensor:
        return torch.softmax(self.famo._w.detach().flatten(), dim=0)

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        present = [counts[n] > 0 for n in self.task_names]
        self._update = all(present)
        if self._update:
            scalar = self.famo(stacked)
        else:  # a task without rows: the current weights over the present tasks, no update
            mask = stacked.new_tensor(present, dtype=torch.bool)
            z = torch.where(mask, self._weights(), torch.zeros_like(stacked))
            scalar = (z / z.sum().clamp(min=1e-12) * stacked).sum()
        if math.isfinite(scalar.item()):
            scalar.backward()
        return scalar.detach()

    def after_step(self, recompute: Callable[[], dict[str, Tensor]]) -> None:
        if not self._update:
            return
        losses = recompute()
        after = torch.stack([losses[n] for n in self.task_names])
        if torch.isfinite(after).all():
            self.famo.update(after)

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._weights().tolist(), strict=True))
