"""The serving program as an ONNX model, checked against eager PyTorch when it is written.

:func:`save_onnx` exports a :class:`~mtlsearch.tracking._serving.ServingModel` with
``torch.onnx.export(..., dynamo=True)`` (opset :data:`OPSET`, a dynamic batch axis), runs the
file with ONNX Runtime on a batch of rows and compares the outputs with the eager model's;
above :data:`TOLERANCE` the export fails and nothing is written.

The ONNX model reads and returns what the ``.pt2`` program does (input ``x``: the encoded
tensor, ``(batch, n_inputs)``; output ``predictions``: ``(batch, n_outputs)``; float64 for
a raw-rows program). ONNX has no assertion operator, so where the ``.pt2`` program raises
(an infinite value in a standardised numeric column; an invalid code for data that came as
codes) the ONNX model returns NaN in every output column of that row instead
(:class:`OnnxServing`); every other row is unaffected.

``onnx``, ``onnxruntime`` and ``onnxscript`` are an optional extra (``pip install
'mtlsearch[onnx]'``), imported only here and only when an ONNX export is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlsearch._errors import UserError
from mtlsearch.tracking._serving import ServingModel

logger = logging.getLogger(__name__)

#: The ONNX opset the model is written in (ONNX Runtime reads it from 1.18 on).
OPSET = 21
#: Parity tolerance: an output ``y`` of ONNX Runtime passes when
#: ``|y - y_eager| <= TOLERANCE * max(1, |y_eager|)``: absolute for probabilities and
#: values up to 1, relative for larger ones (regression in the label's own units). The
#: network runs in float32, so two runtimes differ by a few float32 ulps (~1e-7).
TOLERANCE = 1e-4
INPUT_NAME = "x"
OUTPUT_NAME = "predictions"
ONNX_FILE = "model.onnx"
#: The packages of the ``onnx`` extra (import names).
_EXTRA = ("onnx", "onnxruntime", "onnxscript")
INSTALL_HINT = "pip install 'mtlsearch[onnx]'"


def require_onnx(what: str = "--format onnx") -> None:
    """Fail (``UserError``, one line naming ``what`` and the pip command) unless onnx,
    onnxruntime and onnxscript import."""
    missing = []
    for name in _EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"{what}: needs {', '.join(missing)} (not installed); {INSTALL_HINT}")


class OnnxServing(nn.Module):
    """``model`` with its input checks as data, for a runtime without assertions.

    ``x (B, n_inputs) -> predictions (B, n_outputs)``, in ``model``'s dtype. A row the
    ``.pt2`` program would refuse (an infinite value in a standardised numeric column;
    for a program without an out-of-vocabulary code, a code that is negative, ``>=`` the
    feature's cardinality, fractional or NaN) gets NaN in every output column; the
    offending value is replaced by 0 before it reaches ``model``, so no code ever reads
    another feature's embedding rows and the other rows of the batch are unaffected.
    """

    def __init__(self, model: ServingModel) -> None:
        super().__init__()
        self.model = model
        self.n_numeric = model.n_numeric
        scaled = [j for j, s in enumerate(model.scaled) if s]
        self.register_buffer("finite_cols", torch.tensor(scaled, dtype=torch.long), persistent=False)
        self.check_codes = not model.oov and len(model.cat_names) > 0

    def forward(self, x: Tensor) -> Tensor:
        numeric, codes = x[:, : self.n_numeric], x[:, self.n_numeric :]
        bad = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.finite_cols.numel():
            infinite = torch.zeros_like(numeric, dtype=torch.bool).index_fill(1, self.finite_cols, True)
            infinite = infinite & torch.isinf(numeric)
            bad = bad | infinite.any(dim=1)
            numeric = torch.where(infinite, torch.zeros_like(numeric), numeric)
        if self.check_codes:
            cardinality = self.model.cardinality
            valid = (codes >= 0) & (codes < cardinality) & (codes == torch.floor(codes))
            bad = bad | ~valid.all(dim=1)
            codes = torch.where(valid, codes, torch.zeros_like(codes))
        y = self.model(torch.cat([numeric, codes], dim=1))
        return torch.where(bad.unsqueeze(1), torch.full_like(y, math.nan), y)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings (torchvision ops it skips, pytree deprecations) are noise
    for a user of ``mtlsearch export``."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        onnx_logger.setLevel(level)


def to_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    """Write ``model`` as one ONNX file (weights inside) at ``path``: opset :data:`OPSET`,
    input :data:`INPUT_NAME` with a dynamic batch axis, output :data:`OUTPUT_NAME`.

    ``example``: at least two rows of valid input (``torch.export`` fixes a size-1 axis).
    """
    if example.shape[0] < 2:
        raise ValueError("the example input needs at least two rows for a dynamic batch size")
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model at ``path`` run by ONNX Runtime (CPU, torch's intra-op thread count)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def max_abs_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest ``|actual - expected|``; NaN in both at one place counts as equal, NaN in
    one only as an infinite difference."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return math.inf
    both = np.isnan(actual) & np.isnan(expected)
    diff = np.where(both, 0.0, np.abs(actual - expected))
    diff = np.where(np.isnan(diff), math.inf, diff)
    return float(diff.max()) if diff.size else 0.0


def within_tolerance(actual: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE) -> bool:
    """Whether every ``|actual - expected| <= tolerance * max(1, |expected|)`` (see
    :data:`TOLERANCE`; NaN as in :func:`max_abs_difference`)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return False
    both = np.isnan(actual) & np.isnan(expected)
    diff = np.abs(actual - expected)
    ok = both | (diff <= tolerance * np.maximum(1.0, np.abs(expected)))
    return bool(ok.all())


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`save_onnx` wrote: the file, the opset, and the parity check's result
    (``max_abs_difference`` between ONNX Runtime and eager PyTorch over ``rows`` rows)."""

    path: Path
    opset: int
    rows: int
    max_abs_difference: float

    def describe(self) -> dict[str, Any]:
        """The ``onnx`` entry of ``schema.json``."""
        import onnxruntime

        return {
            "file": self.path.name,
            "opset": self.opset,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "batch_axis": "dynamic (axis 0)",
            "load": f"onnxruntime.InferenceSession('{self.path.name}').run(None, {{'{INPUT_NAME}': x}})[0]",
            "refused_rows": (
                "where the .pt2 program raises (an infinite standardised numeric value, an invalid "
                "code for data that came as codes), every output of that row is NaN"
            ),
            "parity": {
                "against": "eager PyTorch, at export time",
                "rows": self.rows,
                "max_abs_difference": self.max_abs_difference,
                "tolerance": f"{TOLERANCE:g} x max(1, |eager|)",
            },
            "onnxruntime": onnxruntime.__version__,
        }


def save_onnx(model: ServingModel, batch: Tensor, out_dir: Path) -> OnnxExport:
    """Write ``out_dir/model.onnx`` (see the module docstring) after checking it on ``batch``.

    ``batch``: ``(rows >= 2, n_inputs)`` inputs in ``model``'s dtype that the eager model
    accepts; it is the example the exporter traces and the rows of the parity check.

    Raises ``UserError`` (one line, nothing written) when the onnx extra is missing or
    when ONNX Runtime's outputs differ from the eager model's beyond :data:`TOLERANCE`.
    """
    require_onnx()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    guarded = OnnxServing(model).eval()
    batch = batch.to(model.dtype)
    with torch.no_grad():
        expected = guarded(batch).numpy()
    fd, name = tempfile.mkstemp(prefix=".model.", suffix=".onnx", dir=out_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        to_onnx(guarded, batch, tmp)
        actual = run_onnx(tmp, batch.numpy())
        diff = max_abs_difference(actual, expected)
        logger.debug("ONNX Runtime vs eager: max abs difference %.3g over %d rows", diff, len(batch))
        if not within_tolerance(actual, expected):
            raise UserError(
                f"--format onnx: ONNX Runtime vs eager: max abs difference {diff:.3g} over "
                f"{len(batch)} rows, above the tolerance {TOLERANCE:g} x max(1, |eager|); "
                "no ONNX model written"
            )
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it owner-only
        os.replace(tmp, out_dir / ONNX_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return OnnxExport(out_dir / ONNX_FILE, OPSET, len(batch), diff)
