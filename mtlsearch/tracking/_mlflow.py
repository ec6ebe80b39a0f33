"""Every trial of a study in MLflow, and the live Pareto front, by a search observer.

Layout in MLflow: one experiment per study (named after it); one *parent* run for the
study, whose id is kept in the study's user attributes so that every worker process (and
machine) logs under it; one *child* run per trial, created with the ``mlflow.parentRunId``
tag, which is how MLflow nests runs across processes (the deprecated Optuna
``MLflowCallback`` makes no parent at all).

After every finished trial the worker that ran it recomputes the front over the study's
objectives (from the study storage, which holds every worker's trials), re-tags every child
``pareto_front = true/false`` and ``pareto_rank``, and refreshes the parent's hypervolume
metric and front artifacts. Workers race: one may compute from a study that another then
extends. So a worker re-reads the study after writing and repeats while the set of
completed trials changed meanwhile; the last writer always saw the latest trials.

Front members get their model logged (``mlflow.pytorch.log_model``, torch.export format,
with a signature and an input example) plus an mtlsearch checkpoint directory, which
``mtlsearch export`` downloads.

Tracking must never stop a search: every hook catches its errors and logs a warning (once
per hook, then at debug level). MLflow is imported on the first hook, not at import time:
it takes seconds.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search import FAIL_ATTR, count_finished, hypervolume, pareto_ranks
from mtlsearch.search._front import PRESET_ATTR
from mtlsearch.tracking import _figures
from mtlsearch.tracking._summary import (
    RUN_ID_ATTR,
    front_records,
    json_safe,
    records_csv,
    trial_points,
    utilisation_csv,
)

logger = logging.getLogger(__name__)

#: Study user attributes the tracker keeps (any worker reads them).
PARENT_ATTR = "mlflow_parent_run_id"
URI_ATTR = "mlflow_tracking_uri"
EXPERIMENT_ATTR = "mlflow_experiment_id"
UID_ATTR = "uid"

#: Tags on runs.
TAG_ROLE = "mtlsearch.role"
TAG_UID = "mtlsearch.study_uid"
TAG_FRONT = "pareto_front"
TAG_RANK = "pareto_rank"
TAG_TRIAL = "trial_number"
TAG_STUDY = "study_name"
TAG_MODEL = "model_logged"
MODEL_NAME = "model"
CHECKPOINT_DIR = "checkpoint"

_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
_MAX_TAG = 4000


def default_tracking_uri(storage_url: str | None) -> str:
    """``sqlite:///<folder of the study's SQLite file>/mlflow.db``; for a study on a server
    (PostgreSQL, Redis) or in memory, ``mlflow.db`` in the working directory."""
    folder = Path.cwd()
    if storage_url and storage_url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(storage_url).database
        if database and database != ":memory:":
            folder = Path(database).expanduser().resolve().parent
    return f"sqlite:///{folder / 'mlflow.db'}"


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite-tracked experiment go on local disk beside the database
    (MLflow's own default is a folder in whatever directory the process runs in)."""
    if not tracking_uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        return None
    safe = re.sub(r"[^\w.-]+", "_", experiment) or "study"
    return (Path(database).expanduser().resolve().parent / "mlartifacts" / safe).as_uri()


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.levels.0.n_shared": "2", ...}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list | tuple) and any(isinstance(v, dict | list | tuple) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
    elif isinstance(obj, list | tuple):
        out[prefix] = ",".join(str(v) for v in obj) if obj else "[]"
    else:
        out[prefix] = "" if obj is None else str(obj)
    return out


def trial_params(config: dict[str, Any], preset: str | None) -> dict[str, str]:
    """The architecture and training of a trial as flat params. The data-defined parts
    (inputs, task list) are left out: they are the same in every trial and can be long."""
    model = {k: v for k, v in config.get("model", {}).items() if k not in ("inputs", "tasks")}
    params = {"preset": preset or "searched", "n_levels": str(len(model.get("levels", [])))}
    params.update(flatten(model, "model"))
    params.update(flatten(config.get("training", {}), "training"))
    return params


def _metric_key(*parts: str) -> str:
    """MLflow metric names: letters, digits, ``_-./`` and spaces."""
    return ".".join(re.sub(r"[^\w\-./ ]", "_", p) for p in parts)


class MlflowObserver:
    """A :class:`~mtlsearch.search.SearchObserver` that logs a study to MLflow.

    ``tracking_uri``: any MLflow tracking URI. Without one, the URI the study already logs
    to (kept in its user attributes) is used, else :func:`default_tracking_uri` of
    ``storage_url``. ``log_models``: log the front members' models (the slow part).

    ``mlflow.pytorch.log_model`` reads MLflow's process-wide tracking URI and experiment,
    so the observer sets both (one study per process; threads share them).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        storage_url: str | None = None,
        log_models: bool = True,
    ) -> None:
        self.requested_uri = tracking_uri
        self.storage_url = storage_url
        self.log_models = log_models
        self.tracking_uri: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._context: Any = None
        self._study_name = ""
        self._runs: dict[int, str] = {}
        self._lock = threading.RLock()
        self._disabled = False
        self._warned: set[str] = set()
        self._logged_models: set[int] = set()

    # ---- error policy ---------------------------------------------------------------------
    @contextmanager
    def _guard(self, hook: str) -> Iterator[None]:
        """Errors become a warning (once per hook), never an exception in the search."""
        try:
            yield
        except Exception as exc:
            level = logging.DEBUG if hook in self._warned else logging.WARNING
            self._warned.add(hook)
            logger.log(level, "MLflow tracking: %s failed (%s: %s); the search goes on", hook,
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")  # fmt: skip
            logger.debug("MLflow tracking: %s failed", hook, exc_info=True)

    # ---- the study ------------------------------------------------------------------------
    def on_study(self, study: optuna.Study, context: Any) -> None:
        """Open (or join) the study's experiment and parent run."""
        self._context = context
        self._study_name = study.study_name
        ok = False
        with self._guard("opening the study's parent run"):
            self._open(study)
            ok = True
        if not ok:
            self._disabled = True
            logger.warning("MLflow tracking is off for this process")

    def _open(self, study: optuna.Study) -> None:
        import mlflow
        from mlflow import MlflowClient

        attrs = study.user_attrs
        self.tracking_uri = (
            self.requested_uri or attrs.get(URI_ATTR) or default_tracking_uri(self.storage_url)
        )
        # log_model (fluent API) reads the global URI; the client does not.
        mlflow.set_tracking_uri(self.tracking_uri)
        client = MlflowClient(self.tracking_uri)
        self._client = client
        self.experiment_id = self._experiment(client, study.study_name)
        parent = attrs.get(PARENT_ATTR)
        if parent and self._usable_parent(client, parent):
            self.parent_run_id = parent
            settings = getattr(self._context, "settings", None)
            more = settings is not None and count_finished(study) < settings.n_trials
            if more and client.get_run(parent).info.status != "RUNNING":  # resumed with budget left
                client.update_run(parent, status="RUNNING")
        else:
            self.parent_run_id = self._new_parent(client, study)
        logger.info(
            "MLflow: study %r logs to %s (experiment %s, parent run %s)",
            study.study_name, self.tracking_uri, self.experiment_id, self.parent_run_id,
        )  # fmt: skip

    def _experiment(self, client: Any, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(self.tracking_uri, name)
            )
        except MlflowException:  # another worker created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _usable_parent(self, client: Any, run_id: str) -> bool:
        try:
            run = client.get_run(run_id)
        except Exception:  # the study moved to another tracking server
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def _uid(self, study: optuna.Study) -> str:
        uid = study.user_attrs.get(UID_ATTR)
        if uid:
            return str(uid)
        recipe = str(study.user_attrs.get("mtlsearch", ""))  # studies made before the uid
        return hashlib.sha1(f"{study.study_name}\n{recipe}".encode()).hexdigest()[:16]

    def _new_parent(self, client: Any, study: optuna.Study) -> str:
        """Create the parent run. Workers that start together may each create one: all of
        them then settle on the earliest (by start time, then id) and delete their own."""
        uid = self._uid(study)
        settings = getattr(self._context, "settings", None)
        tags = {TAG_ROLE: "study", TAG_UID: uid, TAG_STUDY: study.study_name}
        run = client.create_run(self.experiment_id, run_name=study.study_name, tags=tags)
        mine = run.info.run_id
        filter_string = f"tags.`{TAG_UID}` = '{uid}' and tags.`{TAG_ROLE}` = 'study'"
        found = client.search_runs([self.experiment_id], filter_string, max_results=100)
        winner = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if found else mine
        study.set_user_attr(PARENT_ATTR, winner)
        study.set_user_attr(URI_ATTR, self.tracking_uri)
        study.set_user_attr(EXPERIMENT_ATTR, self.experiment_id)
        if winner != mine:
            client.delete_run(mine)
            return winner
        if settings is not None:
            from mlflow.entities import Param

            params = {
                "dataset": settings.dataset,
                "dataset_options": str(settings.dataset_options),
                "objectives": ",".join(settings.objectives),
                "sampler": settings.sampler,
                "seed": str(settings.seed),
                "n_trials": str(settings.n_trials),
                "space": settings.space_source,
                "max_params": str(settings.max_params),
            }
            client.log_batch(mine, params=[Param(k, v[:_MAX_TAG]) for k, v in params.items()])
            client.log_text(mine, settings.space_text, "search_space.yaml")
        return mine

    # ---- a trial --------------------------------------------------------------------------
    def on_trial_start(self, trial: optuna.Trial, config: Any) -> None:
        if self._disabled:
            return
        with self._guard("starting a trial's run"):
            self._start_trial(trial, config)

    def _start_trial(self, trial: optuna.Trial, config: Any) -> None:
        from mlflow.entities import Param

        preset = trial.user_attrs.get(PRESET_ATTR)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            TAG_TRIAL: str(trial.number),
            TAG_STUDY: self._study_name,
            TAG_ROLE: "trial",
            "preset": preset or "searched",
            "state": "RUNNING",
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            TAG_FRONT: "false",
        }
        name = f"trial-{trial.number}" + (f"-{preset}" if preset else "")
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        with self._lock:
            self._runs[trial.number] = run_id
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        params = trial_params(config.to_dict(), preset)
        items = [Param(k, v[:_MAX_TAG]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[start : start + 100])
        self._client.log_text(run_id, config.to_yaml(), "config.yaml")

    def on_epoch(self, trial: optuna.Trial, report: Any) -> None:
        if self._disabled:
            return
        with self._guard("logging an epoch"):
            run_id = self._runs.get(trial.number)
            if run_id is None:
                return
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            step = int(report.epoch)
            # Validation metrics first: MLflow's compare view plots the first metric that
            # every run has by default, and a task metric is the one worth seeing there.
            values: dict[str, float] = {}
            for task, metrics in report.valid.items():
                values.update({_metric_key("epoch.valid", task, m): v for m, v in metrics.items()})
            values.update({"epoch.train_loss": report.train_loss, "epoch.score": report.score})
            values.update({_metric_key("epoch.loss", t): v for t, v in report.task_losses.items()})
            metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _finite(v)]
            self._client.log_batch(run_id, metrics=metrics)

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial, result: Any | None) -> None:
        if self._disabled:
            return
        with self._lock:
            run_id = self._runs.pop(trial.number, None) or trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is not None:
            with self._guard("finishing a trial's run"):
                self._finish_trial(trial, result, run_id)
        with self._guard("updating the Pareto front"):
            ranks = self.sync_front(study)
            if run_id is not None and result is not None and ranks.get(trial.number) == 0:
                self._log_model(trial, result, run_id)

    def _finish_trial(self, trial: FrozenTrial, result: Any | None, run_id: str) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client
        now = int(time.time() * 1000)
        tags = [RunTag("state", trial.state.name)]
        reason = trial.user_attrs.get(FAIL_ATTR)
        if reason:
            tags.append(RunTag("fail_reason", str(reason)[:_MAX_TAG]))
        values: dict[str, float] = {}
        if result is not None:
            for split in ("valid", "test"):
                for task, metrics in getattr(result, split).items():
                    values.update({_metric_key(split, task, m): v for m, v in metrics.items()})
            values["n_params"] = float(result.n_params)
            values["best_epoch"] = float(result.best_epoch)
            values["seconds"] = float(result.seconds)
            values["latency_ms_per_1k"] = self._latency(trial, result)
        if trial.values is not None and self._context is not None:
            for o, v in zip(self._context.objectives, trial.values, strict=True):
                values[_metric_key("objective", o.name)] = v
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        utilisation = getattr(result, "utilisation", None)
        if utilisation:
            client.log_dict(run_id, json_safe(utilisation), "utilisation/utilisation.json")
            client.log_text(run_id, utilisation_csv(utilisation), "utilisation/utilisation.csv")
            png = _figures.utilisation_png(utilisation, f"trial {trial.number}: expert utilisation")
            self._log_bytes(run_id, png, "utilisation", "utilisation.png")
        client.set_terminated(run_id, _STATUS.get(trial.state, "FAILED"))

    def _latency(self, trial: FrozenTrial, result: Any) -> float:
        costs = trial.user_attrs.get("costs", {})
        if "latency" in costs:
            return float(costs["latency"])
        data = getattr(self._context, "data", None)
        if data is None:
            return math.nan
        from mtlsearch.train import measure_latency

        return measure_latency(result.model, data)

    def _log_bytes(self, run_id: str, data: bytes, folder: str | None, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            self._client.log_artifact(run_id, str(path), folder)

    def _log_model(self, trial: FrozenTrial, result: Any, run_id: str) -> None:
        """The trained network (torch.export, one tensor in and out) and a checkpoint."""
        if not self.log_models or self._context is None or trial.number in self._logged_models:
            return
        with self._guard("logging a front member's model"):
            import mlflow
            import numpy as np
            from mlflow.models import ModelSignature
            from mlflow.types import Schema, TensorSpec

            from mtlsearch.tracking._serving import ServingModel, serving_input, serving_schema
            from mtlsearch.train import save_checkpoint

            data = self._context.data
            model = ServingModel(result.model).eval()
            schema = serving_schema(result.model, data.numeric_features)
            rows = min(5, len(data.valid))
            example = serving_input(data.valid.numeric[:rows], data.valid.categorical[:rows]).cpu().numpy()
            # Unnamed tensors: pyfunc then passes a plain array (a named one becomes a dict,
            # which the PyTorch flavour rejects). Column names go into the metadata.
            signature = ModelSignature(
                inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.inputs)))]),
                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.outputs)))]),
            )
            import torch

            # The LoggedModel goes to the active experiment, not the run's: name it.
            mlflow.set_experiment(experiment_id=self.experiment_id)
            mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                signature=signature,
                input_example=example,
                run_id=run_id,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata={"inputs": list(schema.inputs), "outputs": list(schema.outputs)},
                tags={TAG_TRIAL: str(trial.number), TAG_STUDY: self._study_name},
                # the check loads and runs the model once more: a second or two per model
                validate_serving_input=False,
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = save_checkpoint(result, data, Path(tmp) / CHECKPOINT_DIR)
                self._client.log_artifacts(run_id, str(path), CHECKPOINT_DIR)
            self._client.set_tag(run_id, TAG_MODEL, "true")
            self._logged_models.add(trial.number)

    # ---- the front --------------------------------------------------------------------------
    def _children(self) -> list[Any]:
        client, runs, token = self._client, [], None
        filter_string = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        while True:
            page = client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def sync_front(self, study: optuna.Study, rounds: int = 5) -> dict[int, int]:
        """Re-tag the children and refresh the parent from the study's current trials;
        repeated while other workers completed trials meanwhile. Returns trial -> rank."""
        ranks: dict[int, int] = {}
        with self._lock:
            for _ in range(rounds):
                trials = study.get_trials(deepcopy=False)
                complete = [t for t in trials if t.state == TrialState.COMPLETE]
                ranks = dict(
                    zip(
                        (t.number for t in complete),
                        pareto_ranks(complete, self._objectives(study)),
                        strict=True,
                    )
                )
                self._retag(trials, ranks)
                self._refresh_parent(study, trials)
                now = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
                if now == set(ranks):
                    break
        return ranks

    def _objectives(self, study: optuna.Study) -> Any:
        if self._context is not None:
            return self._context.objectives
        from mtlsearch.search import objectives_of

        return objectives_of(study)

    def _retag(self, trials: list[FrozenTrial], ranks: dict[int, int]) -> None:
        from mlflow.entities import RunTag

        by_number = {t.number: t for t in trials}
        for run in self._children():
            tags = run.data.tags
            try:
                number = int(tags.get(TAG_TRIAL, ""))
            except ValueError:
                continue
            want = {TAG_FRONT: "true" if ranks.get(number) == 0 else "false"}
            if number in ranks:
                want[TAG_RANK] = str(ranks[number])
            trial = by_number.get(number)
            stale = run.info.status == "RUNNING" and trial is not None and trial.state.is_finished()
            if stale:  # its worker died: the trial was failed by the heartbeat
                want["state"] = trial.state.name
                if trial.state == TrialState.FAIL and FAIL_ATTR not in trial.user_attrs:
                    want["fail_reason"] = "worker lost (no heartbeat); the trial was retried"
            changed = [RunTag(k, v) for k, v in want.items() if tags.get(k) != v]
            if changed:
                self._client.log_batch(run.info.run_id, tags=changed)
            if stale:
                self._client.set_terminated(run.info.run_id, _STATUS.get(trial.state, "FAILED"))

    def _refresh_parent(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        from mlflow.entities import Metric

        objectives = self._objectives(study)
        client, parent = self._client, self.parent_run_id
        finished = count_finished(study)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        now = int(time.time() * 1000)
        metrics = [Metric("finished_trials", float(finished), now, finished)]
        if complete:
            metrics.append(Metric("hypervolume", hypervolume(complete, objectives), now, finished))
        points = trial_points(study, objectives)
        metrics.append(Metric("front_size", float(sum(p.rank == 0 for p in points)), now, finished))
        client.log_batch(parent, metrics=metrics)
        rows = front_records(study, objectives)
        client.log_dict(parent, json_safe(rows), "front/front.json")
        client.log_text(parent, records_csv(rows), "front/front.csv")
        title = f"{study.study_name}: {len(complete)} completed trials"
        self._log_bytes(parent, _figures.pareto_png(points, objectives, title), "front", "pareto.png")
        client.log_text(parent, _figures.pareto_html(points, objectives, title), "front/pareto.html")
        settings = getattr(self._context, "settings", None)
        if settings is not None and finished >= settings.n_trials:
            running = any(t.state == TrialState.RUNNING for t in trials)
            if not running and client.get_run(parent).info.status == "RUNNING":
                client.set_terminated(parent, "FINISHED")


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
