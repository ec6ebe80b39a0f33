"""Training precision: ``fp32`` (default), ``bf16`` or ``fp16`` mixed precision.

A registry of small classes, one per precision; the training loop only calls
``autocast()`` around the forward pass and the loss, ``backward(weighting, losses, counts)``,
``scale(aux)`` for the gates' auxiliary loss, and ``step(optimizer)``. Parameters, optimiser
state and checkpoints stay float32 in every precision.

* ``fp32``: nothing changes; the loop runs exactly as without this module.
* ``bf16``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around forward and loss
  (CPU and CUDA). bfloat16 has float32's exponent range, so no loss scaling is needed and
  every loss weighting works unchanged.
* ``fp16``: autocast to float16 plus ``torch.amp.GradScaler`` (float16 gradients underflow
  without it; Micikevicius et al., "Mixed Precision Training", ICLR 2018). The scaler
  multiplies the loss by ``S`` before backward, divides the gradients by ``S`` before the
  step, and skips a step whose gradients overflowed (then halves ``S``).

Loss scaling and the loss weightings. A weighting does its own backward
(``weighting.backward(losses, counts)``, :mod:`mtlsearch.train._weighting`), and for many
methods the update depends on the loss *values* (uncertainty, DWA, GLS, FAMO, GradNorm, the
gradient methods' aggregators). Multiplying the *losses* by ``S`` would change those updates,
so this module scales only where the result is exactly ``S`` times the unscaled gradient:

1. a method that keeps the default ``backward`` (it differentiates ``forward(losses)``):
   the loop's total ``forward(losses)`` is computed from the true losses and ``S * total``
   is differentiated, which is ``S`` times the method's gradient whatever ``forward`` does
   (fixed, dynamic, uncertainty, DWA, RLW);
2. a method whose ``backward`` is positively homogeneous of degree 1 in the losses (its
   class sets ``scale_invariant_backward = True``: ``backward(S * L)`` accumulates exactly
   ``S`` times the gradients of ``backward(L)``): it is given ``S * L_k`` (GLS: the geometric
   mean of ``S * L_k`` is ``S`` times theirs);
3. any other method (FAMO, GradNorm and the gradient-level methods) is refused under fp16
   when the config is built, with a one-line error naming the method: use bf16 there.

fp16 works on the CPU too (torch's CPU autocast has float16 kernels and the CPU GradScaler);
it is slower than fp32 there and meant for checking a setup before a GPU run.

Metrics are always computed in float32: evaluation and prediction run the network outside
autocast (in float32, as a saved checkpoint does) and cast the outputs to float32 before any
metric (:mod:`mtlsearch.train._evaluate`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlsearch._errors import UserError


class Precision:
    """Base class: full float32 (no autocast, no scaling). Subclasses override what differs."""

    name: ClassVar[str] = "fp32"
    dtype: ClassVar[torch.dtype | None] = None  # autocast's dtype; None: no autocast
    help: ClassVar[str] = "float32 everywhere (bitwise reproducible on the CPU)"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @classmethod
    def check_method(cls, method: str, where: str = "training.precision") -> None:
        """Refuse a loss weighting this precision cannot train correctly (a one-line
        :class:`UserError` naming ``where`` and the method)."""

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Around the forward pass and the losses."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def autocasting(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` run under :meth:`autocast` (the loss recomputation FAMO asks for)."""

        @functools.wraps(fn)
        def run() -> Any:
            with self.autocast():
                return fn()

        return run

    def scale(self, loss: Tensor) -> Tensor:
        """A loss about to be differentiated directly by the loop (the gates' auxiliary loss)."""
        return loss

    def backward(self, weighting: Any, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        """Accumulate the step's gradients (scaled as :meth:`step` expects) and return the
        method's combined loss, detached and unscaled."""
        return weighting.backward(losses, counts)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()


PRECISIONS: dict[str, type[Precision]] = {}


def register_precision(cls: type[Precision]) -> type[Precision]:
    PRECISIONS[cls.name] = cls
    return cls


register_precision(Precision)


@register_precision
class BFloat16(Precision):
    name = "bf16"
    dtype = torch.bfloat16
    help = "autocast to bfloat16 (CPU and CUDA); no loss scaling"


@register_precision
class Float16(Precision):
    name = "fp16"
    dtype = torch.float16
    help = "autocast to float16 with a GradScaler (loss scaling)"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.scaler = torch.amp.GradScaler(device.type)

    @classmethod
    def check_method(cls, method: str, where: str = "training.precision") -> None:
        from mtlsearch.train._weighting import LOSS_WEIGHTINGS

        if not fp16_supported(LOSS_WEIGHTINGS[method]):
            ok = sorted(n for n, c in LOSS_WEIGHTINGS.items() if fp16_supported(c))
            raise UserError(
                f"{where} fp16: loss weighting {method!r} does its own backward, which fp16's loss "
                f"scaling would change; use bf16 or fp32 with it, or one of {ok}"
            )

    def scale(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss)

    def backward(self, weighting: Any, losses: dict[str, Tensor], counts: dict[str, int]) -> Tensor:
        from mtlsearch.train._weighting import LossWeighting

        if type(weighting).backward is LossWeighting.backward:
            total = weighting(losses)
            if torch.isfinite(total).item():  # a non-finite total is reported, never applied
                self.scaler.scale(total).backward()
            return total.detach()
        s = self.scaler.scale(torch.ones((), device=self.device))  # S, as a tensor (made on first use)
        scaled = weighting.backward({k: v * s for k, v in losses.items()}, counts)
        return scaled / s

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)  # skipped when a gradient overflowed
        self.scaler.update()


def fp16_supported(weighting_cls: type) -> bool:
    """Whether fp16's loss scaling leaves a weighting's update unchanged (see the module
    docstring): it keeps the default backward, or declares its backward homogeneous."""
    from mtlsearch.train._weighting import LossWeighting

    return weighting_cls.backward is LossWeighting.backward or bool(
        getattr(weighting_cls, "scale_invariant_backward", False)
    )


def check_precision_text(text: object, where: str = "--precision") -> str:
    """``text`` if it names a precision; else a one-line :class:`UserError` naming ``where``."""
    if not isinstance(text, str) or text.strip().lower() not in PRECISIONS:
        raise UserError(f"{where}: unknown precision {text!r}; expected one of {list(PRECISIONS)}")
    return text.strip().lower()


def make_precision(name: str, device: torch.device) -> Precision:
    """The precision object for a run on ``device`` (``name`` already checked)."""
    return PRECISIONS[name](device)
