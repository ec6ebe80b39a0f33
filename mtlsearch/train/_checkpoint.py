"""Checkpoints: a directory that scores raw rows on its own.

Layout (all plain, inspectable formats; no pickle anywhere)::

    model.pt             state_dict only (torch.save); loaded with weights_only=True
    config.yaml          the ExperimentConfig (architecture + training)
    preprocessing.json   the fitted preprocessing, so predict reads raw CSV/Parquet rows, and
                         "label_scaling": {task: {"mean", "std"}} for regression tasks
                         learned standardised: raw output z means z * std + mean
    metrics.json         valid/test metrics, history, utilisation, versions

A checkpoint is written into a temporary sibling directory and renamed into place at the
end, so a failure leaves nothing behind and a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

import mtlsearch
from mtlsearch._errors import UserError
from mtlsearch._fs import make_temp_dir, recover, replace_dir
from mtlsearch.arch import TaskSpec, build_model
from mtlsearch.data import MTLDataset, Preprocessor
from mtlsearch.train._config import ExperimentConfig
from mtlsearch.train._evaluate import raw_outputs, unscale
from mtlsearch.train._fit import TrainResult
from mtlsearch.train._tasks import TASK_KINDS

WEIGHTS, CONFIG, PREPROCESSING, METRICS = (
    "model.pt",
    "config.yaml",
    "preprocessing.json",
    "metrics.json",
)
_FORMAT = 1


class RowTransform(Protocol):
    """What predict needs from a preprocessor: raw rows -> (numeric float32, categorical int64)."""

    def transform(self, df: pd.DataFrame, source: str = ...) -> tuple[Tensor, Tensor]: ...

    def to_dict(self) -> dict[str, Any]: ...


class ColumnSelector:
    """The preprocessing of data that needs none (generated data, already numeric): pick the
    feature columns by name, in order. Categorical columns must already hold integer codes."""

    def __init__(self, numeric: list[str], categorical: list[tuple[str, int]]) -> None:
        self.numeric = list(numeric)
        self.categorical = [(str(n), int(c)) for n, c in categorical]

    def transform(self, df: pd.DataFrame, source: str = "rows") -> tuple[Tensor, Tensor]:
        wanted = self.numeric + [n for n, _ in self.categorical]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise UserError(f"{source}: missing feature column(s) {missing[:5]}{more}")
        try:
            numeric = df[self.numeric].to_numpy(dtype=np.float32, copy=True)
        except (TypeError, ValueError):
            bad = [c for c in self.numeric if not pd.api.types.is_numeric_dtype(df[c])]
            raise UserError(f"{source}: column {bad[0] if bad else '?'}: expected numbers") from None
        try:
            codes = df[[n for n, _ in self.categorical]].to_numpy(dtype=np.int64, copy=True)
        except (TypeError, ValueError):
            raise UserError(f"{source}: categorical columns must hold integer codes") from None
        for j, (name, card) in enumerate(self.categorical):
            if codes.size and (codes[:, j].min() < 0 or codes[:, j].max() >= card):
                raise UserError(f"{source}: column {name}: codes must lie in [0, {card})")
        # Row-major like the training tensors: a column-major input would take another GEMM
        # kernel and change the last bits of the predictions.
        numeric = np.ascontiguousarray(numeric)
        codes = np.ascontiguousarray(codes.reshape(len(df), -1))
        return torch.from_numpy(numeric), torch.from_numpy(codes)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": [list(c) for c in self.categorical]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnSelector:
        return cls(data["numeric"], [tuple(c) for c in data["categorical"]])


def _preprocessing_to_dict(data: MTLDataset, label_scaling: dict[str, tuple[float, float]]) -> dict[str, Any]:
    scaling = {k: {"mean": m, "std": s} for k, (m, s) in label_scaling.items()}
    if data.preprocessor is None:
        selector = ColumnSelector(list(data.numeric_features), [tuple(c) for c in data.categorical_features])
        return {"format": _FORMAT, "kind": "columns", "state": selector.to_dict(), "label_scaling": scaling}
    return {
        "format": _FORMAT,
        "kind": "fitted",
        "state": data.preprocessor.to_dict(),
        "label_scaling": scaling,
    }


def _label_scaling(raw: Any) -> dict[str, tuple[float, float]]:
    """``{task: (mean, std)}`` from preprocessing.json (absent in older checkpoints: none)."""
    out: dict[str, tuple[float, float]] = {}
    for task, v in (raw or {}).items():
        mean, std = float(v["mean"]), float(v["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"label_scaling of task {task!r}: mean {mean}, std {std}")
        out[str(task)] = (mean, std)
    return out


_PREPROCESSING_KINDS = {"columns": ColumnSelector.from_dict, "fitted": Preprocessor.from_dict}


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null: metrics.json stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (CPU, eval mode) and what it needs to score rows."""

    path: Path
    model: nn.Module
    config: ExperimentConfig
    preprocessor: RowTransform
    metrics: dict[str, Any]
    #: ``{task: (mean, std)}``: the regression tasks whose raw output is a standardised
    #: label; ``predict`` (and any serving program) returns ``z * std + mean``.
    label_scaling: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return self.config.model.tasks


def save_checkpoint(result: TrainResult, data: MTLDataset, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write ``result`` (and ``data``'s fitted preprocessing) to ``out_dir``; return it.

    An existing ``out_dir`` is an error unless ``overwrite``. Nothing is left behind on failure.
    """
    out_dir = Path(out_dir)
    recover(out_dir)  # a replace killed half-way put the previous folder aside: restore it
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir}: already exists; choose another output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir)
    try:
        state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        result.config.save(tmp / CONFIG)
        (tmp / PREPROCESSING).write_text(
            json.dumps(_preprocessing_to_dict(data, result.label_scaling), indent=2)
        )
        metrics = {
            "dataset": data.name,
            "tasks": [{"name": t.name, "kind": t.kind} for t in result.config.model.tasks],
            **result.metrics_dict(),
            "versions": {"mtlsearch": mtlsearch.__version__, "torch": torch.__version__},
        }
        (tmp / METRICS).write_text(json.dumps(_json_safe(metrics), indent=2, allow_nan=False))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory; every problem is a UserError naming the file."""
    path = Path(path)
    if not path.exists():
        recover(path)  # a replace killed half-way put the previous folder aside
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint directory")
    for name in (WEIGHTS, CONFIG, PREPROCESSING, METRICS):
        if not (path / name).is_file():
            raise UserError(f"{path / name}: missing; is {path} a checkpoint directory?")
    config = ExperimentConfig.load(path / CONFIG)
    model = build_model(config.model, seed=0)  # seeded: leaves the global RNG alone
    try:
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # unreadable file, or weights of another architecture
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path / WEIGHTS}: cannot load the weights for {CONFIG} ({first})") from None
    model.eval()
    try:
        prep = json.loads((path / PREPROCESSING).read_text())
        kind = prep["kind"]
        loader = _PREPROCESSING_KINDS[kind]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path / PREPROCESSING}: not a preprocessing file of this version") from None
    try:
        preprocessor = loader(prep["state"])
        label_scaling = _label_scaling(prep.get("label_scaling"))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path / PREPROCESSING}: cannot restore the preprocessing ({exc})") from None
    try:
        metrics = json.loads((path / METRICS).read_text())
    except ValueError as exc:
        raise UserError(f"{path / METRICS}: not valid JSON ({exc})") from None
    return Checkpoint(
        path=path,
        model=model,
        config=config,
        preprocessor=preprocessor,
        metrics=metrics,
        label_scaling=label_scaling,
    )


def _class_names(preprocessor: Any) -> dict[str, tuple[str, ...]]:
    """Multiclass tasks' original class labels, where the preprocessing kept them."""
    return {
        enc.task.name: tuple(enc.classes)
        for enc in getattr(preprocessor, "tasks", ())
        if getattr(enc, "classes", None)
    }


def predict(checkpoint: Checkpoint, df: pd.DataFrame, *, source: str = "rows") -> pd.DataFrame:
    """Score raw rows: one column per task (binary: probability of the positive class;
    regression: the value, in the label's units; multiclass: the predicted class plus
    ``<task>_prob_<class>``).

    Rows go through the saved preprocessing, so unseen categories land in the OOV bucket
    and a missing feature column is a UserError naming it (and ``source``).
    """
    numeric, categorical = checkpoint.preprocessor.transform(df, source)
    inputs = checkpoint.config.model.inputs
    if numeric.shape[1] != inputs.n_numeric or categorical.shape[1] != len(inputs.categorical):
        raise UserError(
            f"{source}: the preprocessing gives {numeric.shape[1]} numeric / "
            f"{categorical.shape[1]} categorical columns, the model reads {inputs.n_numeric} / "
            f"{len(inputs.categorical)}"
        )
    outs = raw_outputs(checkpoint.model, numeric, categorical)
    classes = _class_names(checkpoint.preprocessor)
    columns: dict[str, np.ndarray] = {}
    for t in checkpoint.tasks:
        kind = TASK_KINDS[t.kind]
        if t.name not in outs:  # zero rows
            outs[t.name] = torch.empty((0, t.out_dim) if t.kind == "multiclass" else (0,))
        pred = unscale(kind.predict(outs[t.name]), checkpoint.label_scaling.get(t.name)).double().numpy()
        columns.update(kind.columns(t.name, pred, classes.get(t.name)))
    return pd.DataFrame(columns, index=df.index)
