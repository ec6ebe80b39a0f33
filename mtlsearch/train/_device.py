"""Which torch device a run trains on: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

The text comes from ``--device`` or an experiment's ``training.device``. It is checked twice:
its form when a config is built (:func:`check_device_text`, no CUDA call), and whether the
device is present when training starts (:func:`resolve_device`), so a config written on a
GPU machine still loads (and predicts) on a laptop. A device that is not there is a one-line
:class:`~mtlsearch._errors.UserError` naming the flag or field and what this machine has.

``auto`` is CUDA device 0 where ``torch.cuda.is_available()``, else the CPU (never MPS:
its kernels differ enough that choosing it should be explicit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtlsearch._errors import UserError

#: What ``--device`` accepts, for help texts and error messages.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class _Kind:
    """One device type: whether it is present, and a line saying what is present."""

    present: Callable[[], bool]
    absent: str  # why it is not there, for the error message


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


#: The device types a run may name (a table: adding one is one entry).
DEVICE_KINDS: dict[str, _Kind] = {
    "cpu": _Kind(lambda: True, ""),
    "cuda": _Kind(lambda: torch.cuda.is_available(), "torch.cuda.is_available() is False"),
    "mps": _Kind(_mps_available, "torch.backends.mps.is_available() is False"),
}

_FORM = re.compile(r"^(auto|cpu|cuda|mps)(?::(\d+))?$")


def check_device_text(text: object, where: str = "--device") -> str:
    """``text`` if it has a device's form (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``),
    stripped and lower-cased; else a :class:`UserError` naming ``where``. Nothing is asked
    of CUDA here."""
    if not isinstance(text, str):
        raise UserError(f"{where}: expected a device ({DEVICE_CHOICES}), got {text!r}")
    clean = text.strip().lower()
    match = _FORM.match(clean)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"{where}: unknown device {text!r}; expected {DEVICE_CHOICES}")
    return clean


def resolve_device(text: str | None, where: str = "--device") -> torch.device:
    """The torch device ``text`` names (None or ``auto``: CUDA if available, else the CPU).

    Raises :class:`UserError` (one line, naming ``where`` and what is present) for a
    malformed text, a device type this machine lacks, or a CUDA index beyond the devices
    present, e.g. ``--device cuda:7: only 1 CUDA device is present (cuda:0)``.
    """
    clean = "auto" if text is None else check_device_text(text, where)
    if clean == "auto":
        return torch.device("cuda", 0) if DEVICE_KINDS["cuda"].present() else torch.device("cpu")
    device = torch.device(clean)
    kind = DEVICE_KINDS[device.type]
    if not kind.present():
        raise UserError(f"{where} {clean}: no {device.type.upper()} device is present ({kind.absent})")
    if device.type == "cuda":
        count = _cuda_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            present = ", ".join(f"cuda:{i}" for i in range(count))
            raise UserError(
                f"{where} {clean}: only {count} CUDA device{'s are' if count != 1 else ' is'} present "
                f"({present})"
            )
        device = torch.device("cuda", index)
    return device
