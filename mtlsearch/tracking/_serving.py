"""A trained network as one tensor in, one tensor out: what MLflow and plain torch can serve.

MLflow's PyTorch flavour (and any serving stack) feeds a model a single float tensor and
expects a single tensor back, while :class:`~mtlsearch.arch.MTLNetwork` takes numeric and
categorical tensors and returns a dict of raw outputs. :class:`ServingModel` bridges the two:
input columns are the numeric features then the categorical codes (as floats, exact below
2**24), output columns are each task's prediction (binary: probability of the positive
class; regression: the value; multiclass: one probability per class).

:func:`export_program` traces it with ``torch.export`` into a ``.pt2`` file that loads with
``torch.export.load`` in a process where only torch is installed: no pickle of our classes,
no mtlsearch import.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Largest categorical code a float32 column carries exactly.
_MAX_EXACT_CODE = 2**24


@dataclass(frozen=True)
class ServingSchema:
    """Column names of a serving model's input and output tensors, in order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    n_numeric: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inputs": list(self.inputs), "outputs": list(self.outputs)}


class ServingModel(nn.Module):
    """``x (B, n_numeric + n_categorical) float32 -> predictions (B, n_outputs) float32``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        config = network.config  # an MTLNetwork
        self.network = network
        self.n_numeric = config.inputs.n_numeric
        self.kinds = tuple(t.kind for t in config.tasks)
        self.task_names = tuple(t.name for t in config.tasks)
        for feature in config.inputs.categorical:
            if feature.cardinality > _MAX_EXACT_CODE:
                raise ValueError(
                    f"categorical feature {feature.name!r} has {feature.cardinality} codes; "
                    "float32 serving input carries codes below 2**24 exactly"
                )

    def forward(self, x: Tensor) -> Tensor:
        numeric = x[:, : self.n_numeric]
        categorical = x[:, self.n_numeric :].round().long()
        outputs = self.network(numeric, categorical)
        columns = []
        for name, kind in zip(self.task_names, self.kinds, strict=True):
            y = outputs[name]
            if kind == "binary":
                columns.append(torch.sigmoid(y).unsqueeze(1))
            elif kind == "multiclass":
                columns.append(torch.softmax(y, dim=-1))
            else:
                columns.append(y.unsqueeze(1))
        return torch.cat(columns, dim=1)


def serving_schema(network: nn.Module, numeric_names: Sequence[str] | None = None) -> ServingSchema:
    """The column names of :class:`ServingModel` for ``network``.

    ``numeric_names`` are the data's numeric feature names (after preprocessing); without
    them the numeric columns are called ``numeric_<i>``.
    """
    config = network.config
    n = config.inputs.n_numeric
    names = list(numeric_names) if numeric_names is not None and len(numeric_names) == n else None
    inputs = (names or [f"numeric_{i}" for i in range(n)]) + [c.name for c in config.inputs.categorical]
    outputs: list[str] = []
    for t in config.tasks:
        if t.kind == "multiclass":
            outputs += [f"{t.name}_prob_{k}" for k in range(t.out_dim)]
        else:
            outputs.append(t.name)
    return ServingSchema(tuple(inputs), tuple(outputs), n)


def serving_input(numeric: Tensor, categorical: Tensor) -> Tensor:
    """The single float32 input tensor a :class:`ServingModel` reads."""
    return torch.cat([numeric.float(), categorical.float()], dim=1)


def export_program(model: ServingModel, example: Tensor) -> Any:
    """``torch.export`` the model with a dynamic batch dimension.

    ``example`` must have at least two rows (``torch.export`` fixes a size-1 dimension).
    """
    if example.shape[0] < 2:
        raise ValueError("the example input needs at least two rows for a dynamic batch size")
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def save_serving(model: ServingModel, example: Tensor, schema: ServingSchema, out_dir: Path) -> Path:
    """Write ``model.pt2`` (torch.export) and ``schema.json`` into ``out_dir`` (created).

    Load it anywhere torch is installed::

        program = torch.export.load("model.pt2")
        predictions = program.module()(x)  # x: (B, len(schema["inputs"])) float32
    """
    program = export_program(model, example)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".pt2", dir=out_dir)
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        umask = os.umask(0)
        os.umask(umask)
        Path(tmp).chmod(0o666 & ~umask)  # mkstemp makes it owner-only
        os.replace(tmp, out_dir / "model.pt2")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    doc = {
        **schema.to_dict(),
        "format": "torch.export (.pt2)",
        "load": "torch.export.load('model.pt2').module()(x)",
        "torch": torch.__version__,
    }
    (out_dir / "schema.json").write_text(json.dumps(doc, indent=2))
    return out_dir / "model.pt2"
