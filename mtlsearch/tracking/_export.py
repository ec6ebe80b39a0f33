"""``mtlsearch export``: the picked trial as files a user can train, load and serve.

The export folder::

    config.yaml        the trial's architecture + training, the builder's YAML schema
                       (``mtlsearch train --config config.yaml`` rebuilds it; with the
                       study's data and seed it reproduces the trial's metrics)
    pick.json          which trial, by which rule, its metrics, and the train command
    checkpoint/        the trained model (mtlsearch checkpoint: weights, preprocessing),
                       when MLflow has it (front members' models are logged) or --retrain
    serving/model.pt2  the model as a torch.export program: one float64 tensor in (the raw
                       numeric columns, NaN = missing, then the categorical codes), one
                       float64 tensor of predictions out (regression in the label's units);
                       the numeric preprocessing runs inside it. Loads with
                       ``torch.export.load`` where only torch is installed; checked to
                       hold no pickled entry
    serving/schema.json  the contract: input and output columns, dtype, what each holds
    serving/encode.py, serving/vocab.json
                       raw categorical values -> codes (pure Python + numpy)

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
from mtlsearch.tracking._serving import ServingModel, save_serving, serving_inputs, serving_schema
from mtlsearch.tracking._summary import RUN_ID_ATTR, json_safe
from mtlsearch.train import Checkpoint

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export wrote. ``checkpoint_source``: ``"mlflow"``, ``"retrained"`` or
    ``None`` (config only)."""

    out: Path
    trial: int
    checkpoint_source: str | None
    notes: list[str] = field(default_factory=list)
    reproduced: dict[str, dict[str, float]] | None = None

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"

    @property
    def checkpoint(self) -> Path | None:
        return self.out / CHECKPOINT_DIR if self.checkpoint_source else None

    @property
    def serving(self) -> Path | None:
        return self.out / "serving" / "model.pt2" if self.checkpoint_source else None


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


def _retrain(study: optuna.Study, config: Any, dst: Path) -> tuple[Path, dict[str, dict[str, float]]]:
    from mtlsearch.data import load_dataset
    from mtlsearch.train import fit, save_checkpoint

    settings = settings_of(study)
    data_dir = Path(settings.data_dir) if settings.data_dir else None
    data = load_dataset(settings.dataset, data_dir=data_dir, seed=settings.seed, **settings.dataset_options)
    result = fit(config, data, progress=False)
    return save_checkpoint(result, data, dst), result.valid


def export_serving(checkpoint: Checkpoint, out_dir: Path) -> Path:
    """Write the serving program of ``checkpoint`` into ``out_dir``: ``model.pt2`` (raw rows
    in: the numeric preprocessing, code validation and label scaling run inside it),
    ``schema.json`` (the contract), ``encode.py`` + ``vocab.json`` (raw categories -> codes,
    pure Python + numpy). Returns the ``model.pt2`` path.

    Raises ``UserError`` when the archive torch wrote stores anything as a pickle.
    """
    inputs = serving_inputs(checkpoint.preprocessor, checkpoint.label_scaling)
    model = ServingModel(checkpoint.model, inputs).eval()
    schema = serving_schema(checkpoint.model, inputs=inputs)
    example = torch.zeros(2, len(schema.inputs), dtype=torch.float64)  # code 0 is valid everywhere
    return save_serving(model, example, schema, out_dir)


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
) -> ExportResult:
    """Write the picked trial's config, checkpoint (from MLflow, or retrained when
    ``retrain`` and MLflow has none) and serving program to ``out``."""
    from mtlsearch.train import ExperimentConfig, load_checkpoint

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
    result = ExportResult(out=out, trial=trial.number, checkpoint_source=None)
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
            checkpoint, valid = _retrain(study, config, tmp / CHECKPOINT_DIR)
            result.checkpoint_source = "retrained"
            result.reproduced = valid
            diff = _max_difference(trial.user_attrs.get("valid", {}), valid)
            result.notes.append(
                "retrained: validation metrics match the trial's"
                if diff == 0
                else f"retrained: validation metrics differ from the trial's by up to {diff:.3g}"
            )
        if checkpoint is not None:
            export_serving(load_checkpoint(checkpoint), tmp / "serving")
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
