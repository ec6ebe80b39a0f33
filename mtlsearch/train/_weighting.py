"""Task balancing: how per-task losses (or their gradients) become one update.

A method is a small ``nn.Module`` (it may learn parameters, as uncertainty weighting does)
registered by name. The training loop only calls ``attach(model)`` once, then
``start_epoch(t)``, ``backward(losses, counts)`` per batch and ``end_epoch(task_losses)``,
so adding a method is one decorated class and never touches the loop::

    @register_loss_weighting("mine")
    class Mine(LossWeighting):
        options = {"temperature": Option(2.0, minimum=0.0, exclusive=True)}

        def forward(self, losses): ...

Loss-level methods combine the losses into one scalar (``forward``) and the default
``backward`` differentiates it; gradient-level methods (:mod:`mtlsearch.train._gradient`)
override ``backward`` to combine per-task gradients instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    """

    accepts: ClassVar[frozenset[str]] = frozenset()
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, tasks: tuple[TaskSpec, ...], config: LossWeightingConfig) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.task_names = tuple(t.name for t in tasks)
        self.config = config

    @classmethod
    def check_config(cls, config: LossWeightingConfig) -> None:
        """Extra validation at config time (a missing optional extra, say): raise
        :class:`UserError` naming ``training.loss_weighting...``."""

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
