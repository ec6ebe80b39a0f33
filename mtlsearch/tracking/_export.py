"""``mtlsearch export``: the picked trial as files a user can train, load and serve.

The export folder::

    config.yaml        the trial's architecture + training, the builder's YAML schema
                       (``mtlsearch train --config config.yaml`` rebuilds it; with the
                       study's data and seed it reproduces the trial's metrics)
    pick.json          which trial, by which rule, its metrics, and the train command
    checkpoint/        the trained model (mtlsearch checkpoint: weights, preprocessing),
                       when MLflow has it (front members' models are logged) or --retrain
    serving/model.pt2  (``--format pt2`` or ``both``) the model as a torch.export program:
                       one float64 tensor in (the raw numeric columns, NaN = missing, then
                       the categorical codes), one float64 tensor of predictions out
                       (regression in the label's units); the numeric preprocessing runs
                       inside it. Loads with ``torch.export.load`` where only torch is
                       installed; checked to hold no pickled entry
    serving/model.onnx (``--format onnx`` or ``both``) the same program as ONNX (opset 21,
                       input ``x`` with a dynamic batch axis, output ``predictions``),
                       checked at export time against eager PyTorch with ONNX Runtime
                       (see :mod:`mtlsearch.tracking._onnx`)
    serving/schema.json  the contract: input and output columns, dtype, what each holds
    serving/encode.py, serving/vocab.json
                       raw categorical values -> codes (pure Python + numpy); a hashed
                       column (``hash_buckets``) is hashed there, as in training

The folder is assembled in a temporary sibling and renamed into place: an error leaves
nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from mtlsearch._errors import UserError
from mtlsearch._fs import make_temp_dir, recover, replace_dir
from mtlsearch.search import CONFIG_ATTR, Pick, objectives_of, settings_of
from mtlsearch.tracking._mlflow import CHECKPOINT_DIR, URI_ATTR
from mtlsearch.tracking._onnx import INPUT_NAME, ONNX_FILE, require_onnx, save_onnx
from mtlsearch.tracking._serving import (
    ServingModel,
    ServingSchema,
    save_serving,
    serving_inputs,
    serving_schema,
)
from mtlsearch.tracking._summary import RUN_ID_ATTR, json_safe
from mtlsearch.train import Checkpoint

logger = logging.getLogger(__name__)

#: ``--format`` values -> the serving programs written (``pt2``: ``model.pt2``, torch.export;
#: ``onnx``: ``model.onnx``).
FORMATS: dict[str, tuple[str, ...]] = {"pt2": ("pt2",), "onnx": ("onnx",), "both": ("pt2", "onnx")}
PT2_FILE = "model.pt2"
#: Rows of the batch the ONNX parity check runs (see :func:`parity_batch`).
PARITY_ROWS = 256


def parse_format(text: str) -> tuple[str, ...]:
    """The serving programs ``--format TEXT`` asks for (see :data:`FORMATS`).

    Raises ``UserError`` for an unknown value, or when ONNX is asked for and the onnx
    extra is not installed (the message names ``pip install 'mtlsearch[onnx]'``).
    """
    key = text.strip().lower()
    if key not in FORMATS:
        raise UserError(f"--format: unknown value {text!r}; expected one of {sorted(FORMATS)}")
    if "onnx" in FORMATS[key]:
        require_onnx(f"--format {key}")
    return FORMATS[key]


def _check_formats(formats: tuple[str, ...]) -> None:
    """Fail (``UserError``) unless ``formats`` names known programs and their packages
    import: before anything is trained or written."""
    known = {f for programs in FORMATS.values() for f in programs}
    unknown = [f for f in formats if f not in known]
    if unknown or not formats:
        raise UserError(f"--format: unknown program(s) {unknown}; expected some of {sorted(known)}")
    if "onnx" in formats:
        require_onnx()


@dataclass
class ExportResult:
    """What an export wrote. ``checkpoint_source``: ``"mlflow"``, ``"retrained"`` or
    ``None`` (config only)."""

    out: Path
    trial: int
    checkpoint_source: str | None
    notes: list[str] = field(default_factory=list)
    reproduced: dict[str, dict[str, float]] | None = None
    #: the serving programs asked for (``"pt2"``, ``"onnx"``)
    formats: tuple[str, ...] = ("pt2",)
    #: ``{format: max abs difference from eager PyTorch}`` of the export-time parity checks
    parity: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"

    @property
    def checkpoint(self) -> Path | None:
        return self.out / CHECKPOINT_DIR if self.checkpoint_source else None

    @property
    def serving(self) -> Path | None:
        """The ``.pt2`` program, or the ONNX model when only that was asked for."""
        if not self.checkpoint_source:
            return None
        return self.out / "serving" / (PT2_FILE if "pt2" in self.formats else ONNX_FILE)

    @property
    def onnx(self) -> Path | None:
        return self.out / "serving" / ONNX_FILE if self.checkpoint_source and "onnx" in self.formats else None


def train_command(study: optuna.Study, config_path: str = "config.yaml") -> list[str]:
    """The ``mtlsearch train`` command that retrains the exported config on the study's data
    with the study's split seed."""
    settings = settings_of(study)
    source = settings.dataset
    is_spec = "/" in source or source.endswith((".yaml", ".yml"))
    cmd = ["mtlsearch", "train", "--config", config_path, "--data" if is_spec else "--dataset", source]
    if settings.data_dir:
        cmd += ["--data-dir", settings.data_dir]
    for k, v in settings.dataset_options.items():
        cmd += ["--option", f"{k}={v}"]
    return [*cmd, "--data-seed", str(settings.seed)]


def _download_checkpoint(run_id: str, tracking_uri: str, dst: Path) -> Path | None:
    """The run's checkpoint folder, or None when the run has none (not a front member)."""
    import mlflow
    from mlflow import MlflowClient

    # Through the run's artifact URI, never ``runs:/<id>`` (which MlflowClient.list_artifacts
    # uses too): MLflow resolves that form in its global store, whatever URI it was given,
    # which may be another database, created in the working directory if missing.
    root = MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri.rstrip("/")
    uri = f"{root}/{CHECKPOINT_DIR}"
    if not mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=tracking_uri):
        return None
    with _env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):  # a bar per file is noise here
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
        )
    return Path(path)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _retrain(
    study: optuna.Study, config: Any, dst: Path, device: str | None = None
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Train ``config`` again on the study's data (on ``device``, a torch device text such
    as ``"cuda"``; None: the config's, else torch's default) and save its checkpoint."""
    from dataclasses import replace

    from mtlsearch.data import load_dataset
    from mtlsearch.train import fit, save_checkpoint

    if device is not None:
        config = replace(config, training=replace(config.training, device=device))
    settings = settings_of(study)
    data_dir = Path(settings.data_dir) if settings.data_dir else None
    data = load_dataset(settings.dataset, data_dir=data_dir, seed=settings.seed, **settings.dataset_options)
    result = fit(config, data, progress=False)
    return save_checkpoint(result, data, dst), result.valid


@dataclass(frozen=True)
class ServingExport:
    """What :func:`write_serving` wrote: ``files`` by format (``"pt2"``, ``"onnx"``) and the
    parity checks' max abs difference from eager PyTorch by format."""

    files: dict[str, Path]
    parity: dict[str, float]


def parity_batch(model: ServingModel, rows: int = PARITY_ROWS, seed: int = 0) -> torch.Tensor:
    """``(rows, n_inputs)`` inputs every program accepts, drawn from the contract (the
    checkpoint holds no data rows): numeric columns ``mean + std * N(0, 1)`` with the
    fitted statistics (a tenth missing, NaN, in the standardised columns), categorical codes
    uniform over ``[0, cardinality)`` (a program with an out-of-vocabulary code also gets
    some invalid codes, -1 and ``cardinality``, which it reads as 0). Same seed, same rows.
    """
    gen = torch.Generator().manual_seed(seed)
    inputs = model.inputs
    numeric = torch.randn(rows, model.n_numeric, generator=gen, dtype=torch.float64)
    if inputs is not None and inputs.numeric:
        mean = torch.tensor([n.mean for n in inputs.numeric], dtype=torch.float64)
        std = torch.tensor([n.std for n in inputs.numeric], dtype=torch.float64)
        scaled = torch.tensor([n.scaled for n in inputs.numeric])
        numeric = mean + std * numeric
        missing = (torch.rand(rows, len(inputs.numeric), generator=gen) < 0.1) & scaled
        numeric = numeric.masked_fill(missing, math.nan)
    cardinality = model.cardinality.double()
    codes = torch.floor(torch.rand(rows, len(cardinality), generator=gen, dtype=torch.float64) * cardinality)
    if model.oov and rows >= 8:
        codes[3::8] = -1.0
        codes[5::8] = cardinality
    return torch.cat([numeric, codes], dim=1).to(model.dtype)


def write_serving(
    model: ServingModel, schema: ServingSchema, out_dir: Path, formats: tuple[str, ...] = ("pt2",)
) -> ServingExport:
    """Write ``model``'s serving folder in ``out_dir``: the programs ``formats`` names
    (``model.pt2``, ``model.onnx``), ``schema.json`` (the contract, with an ``onnx`` entry
    when there is an ONNX model) and, for a raw-rows program, ``encode.py`` + ``vocab.json``.

    The ONNX model is checked at export time: ONNX Runtime and the eager model score
    :func:`parity_batch`; above :data:`mtlsearch.tracking._onnx.TOLERANCE` the export fails.
    Raises ``UserError`` (one line) for an unknown format, a missing onnx extra, a failed
    parity check or a ``.pt2`` archive that would unpickle on load.
    """
    _check_formats(formats)
    out_dir = Path(out_dir)
    example = torch.zeros(2, len(schema.inputs), dtype=model.dtype)  # code 0 is valid everywhere
    # save_serving writes the .pt2 program with the contract; an ONNX-only export drops it
    files = {"pt2": save_serving(model, example, schema, out_dir)}
    parity: dict[str, float] = {}
    doc = json.loads((out_dir / "schema.json").read_text())
    if "onnx" in formats:
        written = save_onnx(model, parity_batch(model), out_dir)
        files["onnx"], parity["onnx"] = written.path, written.max_abs_difference
        doc["onnx"] = written.describe()
    if "pt2" not in formats:
        files.pop("pt2").unlink()
        doc.update(format="ONNX (.onnx)", load=doc["onnx"]["load"])
        if model.inputs is not None:
            doc["load"] = (
                "x = encode.Encoder.load().encode(rows); "
                f"onnxruntime.InferenceSession('{ONNX_FILE}').run(None, {{'{INPUT_NAME}': x}})[0]"
            )
    (out_dir / "schema.json").write_text(json.dumps(doc, indent=2))
    return ServingExport(files, parity)


def export_serving(
    checkpoint: Checkpoint, out_dir: Path, formats: tuple[str, ...] = ("pt2",)
) -> ServingExport:
    """Write the serving folder of ``checkpoint`` into ``out_dir`` (:func:`write_serving`):
    the programs (raw rows in: the numeric preprocessing, code validation and label
    scaling run inside them), ``schema.json`` (the contract), ``encode.py`` +
    ``vocab.json`` (raw categories -> codes, pure Python + numpy).

    Raises ``UserError`` when the archive torch wrote stores anything as a pickle, or
    when the ONNX model fails its parity check.
    """
    inputs = serving_inputs(checkpoint.preprocessor, checkpoint.label_scaling)
    model = ServingModel(checkpoint.model, inputs).eval()
    schema = serving_schema(checkpoint.model, inputs=inputs)
    return write_serving(model, schema, out_dir, formats)


def _max_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    diffs = [abs(a[t][m] - b.get(t, {}).get(m, math.nan)) for t in a for m in a[t]]
    return max(diffs) if diffs else math.nan


def export_pick(
    study: optuna.Study,
    pick: Pick,
    out: str | Path,
    *,
    tracking_uri: str | None = None,
    retrain: bool = False,
    overwrite: bool = False,
    formats: tuple[str, ...] = ("pt2",),
    device: str | None = None,
) -> ExportResult:
    """Write the picked trial's config, checkpoint (from MLflow, or retrained when
    ``retrain`` and MLflow has none) and serving programs (``formats``: ``"pt2"``,
    ``"onnx"``; see :data:`FORMATS`) to ``out``. ``device``: where a retrain trains (the
    written config keeps no device; the precision is the trial's own)."""
    from mtlsearch.train import ExperimentConfig, load_checkpoint

    formats = tuple(formats)
    _check_formats(formats)
    out = Path(out)
    trial = pick.trial
    recover(out)  # a replace killed half-way put the previous folder aside: restore it
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: already exists; pass --overwrite or choose another folder")
    raw = trial.user_attrs.get(CONFIG_ATTR)
    if not raw:
        raise UserError(f"--pick {pick.rule.text}: trial {trial.number} has no recorded config")
    config = ExperimentConfig.from_dict(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    result = ExportResult(out=out, trial=trial.number, checkpoint_source=None, formats=formats)
    try:
        config.save(tmp / "config.yaml")
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        uri = tracking_uri or study.user_attrs.get(URI_ATTR)
        checkpoint: Path | None = None
        if run_id and uri:
            try:
                checkpoint = _download_checkpoint(run_id, uri, tmp)
            except Exception as exc:  # server down, run deleted
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                result.notes.append(f"could not fetch the model from MLflow ({first})")
            if checkpoint is not None:
                result.checkpoint_source = "mlflow"
            else:
                result.notes.append(f"MLflow run {run_id} has no logged model (not on the front when it ran)")
        elif not run_id:
            result.notes.append("the trial was not tracked in MLflow")
        if checkpoint is None and retrain:
            checkpoint, valid = _retrain(study, config, tmp / CHECKPOINT_DIR, device)
            result.checkpoint_source = "retrained"
            result.reproduced = valid
            diff = _max_difference(trial.user_attrs.get("valid", {}), valid)
            result.notes.append(
                "retrained: validation metrics match the trial's"
                if diff == 0
                else f"retrained: validation metrics differ from the trial's by up to {diff:.3g}"
            )
        if checkpoint is not None:
            result.parity = export_serving(load_checkpoint(checkpoint), tmp / "serving", formats).parity
        elif not retrain:
            result.notes.append("no model exported; pass --retrain to train the config again")
        objectives = objectives_of(study)
        info = {
            "study": study.study_name,
            "trial": trial.number,
            "rule": pick.rule.text,
            "score": pick.score,
            "candidates": pick.candidates,
            "model": trial.user_attrs.get("preset", "searched"),
            "objectives": {o.name: v for o, v in zip(objectives, trial.values, strict=True)},
            "valid": trial.user_attrs.get("valid"),
            "test": trial.user_attrs.get("test"),
            "n_params": trial.user_attrs.get("n_params"),
            "mlflow_run_id": run_id,
            "tracking_uri": uri,
            "checkpoint": result.checkpoint_source,
            "formats": list(formats) if checkpoint is not None else [],
            "parity_max_abs_difference": result.parity,  # vs eager PyTorch, by format
            "train_command": shlex.join(train_command(study)),
            "notes": result.notes,
        }
        (tmp / "pick.json").write_text(json.dumps(json_safe(info), indent=2))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in result.notes:
        logger.debug("export: %s", note)
    return result
