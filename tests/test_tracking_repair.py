"""Every COMPLETE trial ends with exactly one FINISHED MLflow run, whatever the tracking store
does: retries with back-off for a store that is busy for a while, and the front sync's repair
for writes that were lost anyway (missing, duplicated or unclosed runs).

Each test drives :class:`MlflowObserver` directly, the way a worker does, on Optuna studies in
SQLite (two ``Study`` objects on one file play two worker processes) and a real SQLite MLflow
store; no training. The store errors are the ones MLflow's SQL store raises for a locked
database, or a real ``BEGIN EXCLUSIVE`` lock from another connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
import sqlalchemy.exc
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from optuna.trial import TrialState

from mtlsearch._errors import UserError
from mtlsearch.search import Objective
from mtlsearch.tracking import PARENT_ATTR, RUN_ID_ATTR, MlflowObserver, _mlflow

WINDOW = 0.4  # seconds of retries in these tests (60 by default)

CONFIG = {
    "model": {"levels": [{"n_shared": 1, "n_specific": 2}], "towers": [], "inputs": [], "tasks": []},
    "training": {"lr": 0.01, "epochs": 3},
}
UTILISATION = {"level0/a": {"shared0": 0.25, "a0": 0.75}, "level0/b": {"shared0": 0.5, "b0": 0.5}}


class _Config:
    """The part of an ExperimentConfig the observer reads."""

    def to_dict(self):
        return CONFIG

    def to_yaml(self):
        return yaml.safe_dump(CONFIG, sort_keys=False)


def _context(n_trials: int | None = None):
    objectives = (Objective("a:auc", "maximize", "a", "auc"), Objective("b:auc", "maximize", "b", "auc"))
    settings = None
    if n_trials is not None:  # what the parent run's params are made of
        settings = SimpleNamespace(
            dataset="synthetic", dataset_options={}, objectives=("a", "b"), sampler="random", seed=0,
            n_trials=n_trials, space_source="quick.yaml", max_params=None, space_text="levels: []\n",
        )  # fmt: skip
    return SimpleNamespace(objectives=objectives, settings=settings, data=None)


def _attrs(values):
    """What the search stores in a trial that completed (mtlsearch.search.make_objective)."""
    a, b = values
    return {
        "worker": "elsewhere:4242",
        "valid": {"a": {"auc": a}, "b": {"auc": b}},
        "test": {"a": {"auc": a - 0.01}, "b": {"auc": b - 0.02}},
        "n_params": 1234,
        "best_epoch": 2,
        "seconds": 1.5,
        "costs": {"params": 1234.0},
        "utilisation": UTILISATION,
    }


def _result(values):
    """A TrainResult as the observer reads it (no model: no latency, no logged model)."""
    attrs = _attrs(values)
    return SimpleNamespace(
        valid=attrs["valid"], test=attrs["test"], n_params=1234, best_epoch=2, seconds=1.5,
        utilisation=UTILISATION, model=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module (its tables take seconds to create); every test logs
    its own study, hence its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _reset_mlflow_globals():
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def _study(storage):
    name = f"repair-{uuid.uuid4().hex[:8]}"
    return optuna.create_study(study_name=name, storage=storage, directions=["maximize", "maximize"])


def _observer(study, uri, ctx=None, retry=WINDOW):
    observer = MlflowObserver(tracking_uri=uri, retry_seconds=retry, log_models=False)
    observer.on_study(study, ctx or _context())
    assert observer.parent_run_id is not None
    return observer


def _trial(study, observer, values, *, end=True, result=True):
    """One trial as a worker runs it: start (run created), attributes, tell, end."""
    trial = study.ask()
    trial.set_user_attr("config", CONFIG)
    observer.on_trial_start(trial, _Config())
    for k, v in _attrs(values).items():
        trial.set_user_attr(k, v)
    frozen = study.tell(trial, values)
    if end:
        observer.on_trial_end(study, frozen, _result(values) if result else None)
    return study.trials[frozen.number]


def _runs(uri, study):
    """Active child runs of the study's parent, by trial number."""
    client = MlflowClient(uri)
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    found = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
    )
    out: dict[int, list] = {}
    for run in found:
        out.setdefault(int(run.data.tags["trial_number"]), []).append(run)
    return out


def _locked_error() -> MlflowException:
    """What MLflow's SQL store raises when SQLite's lock outlasts its busy timeout."""
    cause = sqlalchemy.exc.OperationalError(
        "INSERT INTO runs ...", {}, sqlite3.OperationalError("database is locked")
    )
    exc = MlflowException(message=cause, error_code=TEMPORARILY_UNAVAILABLE)
    exc.__cause__ = cause
    return exc


class _Stalled:
    """An MlflowClient behind a locked database while ``stalled`` is set: every call fails
    the way MLflow's SQL store fails then. ``calls`` counts the attempts per method."""

    def __init__(self, client):
        self.client = client
        self.stalled = True
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.stalled:
                raise _locked_error()
            return method(*args, **kwargs)

        return call


def _assert_complete_run(run, trial, values):
    """The run holds the final metrics and params written out from the trial's attributes."""
    a, b = values
    assert run.info.status == "FINISHED"
    assert run.data.tags["state"] == "COMPLETE"
    metrics = run.data.metrics
    assert metrics["valid.a.auc"] == a and metrics["valid.b.auc"] == b
    assert metrics["test.a.auc"] == a - 0.01 and metrics["test.b.auc"] == b - 0.02
    assert metrics["objective.a_auc"] == a and metrics["objective.b_auc"] == b
    assert (metrics["n_params"], metrics["best_epoch"], metrics["seconds"]) == (1234, 2, 1.5)
    params = run.data.params
    assert params["preset"] == "searched" and params["n_levels"] == "1"
    assert params["model.levels.0.n_specific"] == "2" and params["training.lr"] == "0.01"
    assert params["training.epochs"] == "3"
    assert "model.inputs" not in params  # data-defined parts are left out, as for any run
    assert run.data.tags["trial_number"] == str(trial.number)


# ---- (a) a run that was never created is made at the next sync ------------------------------
def test_a_trial_whose_run_was_never_created_gets_one_repaired_run(tracking_uri, storage, caplog):
    study_a = _study(storage)
    worker_a = _observer(study_a, tracking_uri)
    study_b = optuna.load_study(study_name=study_a.study_name, storage=storage)
    worker_b = _observer(study_b, tracking_uri)  # joins: same experiment, same parent
    assert worker_b.parent_run_id == worker_a.parent_run_id

    stalled = _Stalled(worker_a._client.raw)
    worker_a._client.raw = stalled  # worker A's store stays locked for its whole trial
    with caplog.at_level(logging.WARNING, logger="mtlsearch.tracking"):
        lost = _trial(study_a, worker_a, (0.7, 0.6))
    # retried with back-off before giving up; each retry first looks for a stored create
    assert stalled.calls["create_run"] == 1 and stalled.calls["search_runs"] >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("starting a trial's run failed" in w and "database is locked" in w for w in warnings)
    assert lost.state == TrialState.COMPLETE and RUN_ID_ATTR not in lost.user_attrs
    assert lost.number not in _runs(tracking_uri, study_a)  # nothing in MLflow yet

    stalled.stalled = False
    normal = _trial(study_b, worker_b, (0.8, 0.5))  # another worker's next trial syncs the front

    runs = _runs(tracking_uri, study_a)
    assert sorted(runs) == [lost.number, normal.number]
    assert len(runs[lost.number]) == 1 and len(runs[normal.number]) == 1
    repaired = runs[lost.number][0]
    _assert_complete_run(repaired, lost, (0.7, 0.6))
    assert repaired.data.tags["repaired"] == "true"
    assert repaired.data.tags["worker"] == "elsewhere:4242"  # who ran it, not who repaired it
    assert repaired.data.tags["pareto_front"] == "true" and repaired.data.tags["pareto_rank"] == "0"
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # artifact calls resolve runs in the global store
    config = Path(client.download_artifacts(repaired.info.run_id, "config.yaml"))
    assert yaml.safe_load(config.read_text()) == CONFIG
    names = {a.path for a in client.list_artifacts(repaired.info.run_id, "utilisation")}
    assert names == {f"utilisation/utilisation.{x}" for x in ("csv", "json", "png")}

    ok = runs[normal.number][0]
    _assert_complete_run(ok, normal, (0.8, 0.5))
    assert "repaired" not in ok.data.tags and ok.info.run_id == normal.user_attrs[RUN_ID_ATTR]

    # the parent's front names the repaired run, although the trial cannot record it any more
    parent = study_a.user_attrs[PARENT_ATTR]
    front = Path(client.download_artifacts(parent, "front/front.json"))
    rows = {r["trial"]: r for r in json.loads(front.read_text())}
    assert rows[lost.number]["mlflow_run_id"] == repaired.info.run_id

    # and the worker whose writes were lost sees the same: nothing left to repair
    _trial(study_a, worker_a, (0.1, 0.1))
    assert [len(r) for r in _runs(tracking_uri, study_a).values()] == [1, 1, 1]


def test_a_run_its_worker_could_not_close_gets_its_final_metrics(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    real = worker._client.raw.set_terminated
    failures = []
    locked_until = []

    def set_terminated(run_id, status=None, end_time=None):
        if not locked_until:  # locked for longer than the retry window from the first call
            locked_until.append(time.monotonic() + WINDOW + 0.2)
        if time.monotonic() < locked_until[0]:
            failures.append(run_id)
            raise _locked_error()
        return real(run_id, status, end_time)

    worker._client.raw.set_terminated = set_terminated
    trial = _trial(study, worker, (0.7, 0.6))
    assert len(failures) >= 2 and set(failures) == {trial.user_attrs[RUN_ID_ATTR]}
    # its own front sync found its own run still RUNNING and closed it from the study
    [run] = _runs(tracking_uri, study)[trial.number]
    _assert_complete_run(run, trial, (0.7, 0.6))
    assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR] and run.data.tags["repaired"] == "true"


def test_another_workers_open_run_is_closed_after_the_retry_window(tracking_uri, storage):
    study_a = _study(storage)
    worker_a = _observer(study_a, tracking_uri)
    study_b = optuna.load_study(study_name=study_a.study_name, storage=storage)
    worker_b = _observer(study_b, tracking_uri, retry=60)

    left_open = _trial(study_a, worker_a, (0.7, 0.6), end=False)  # A told the study, then died
    worker_b.sync_front(study_b)  # within the window: A may be closing it right now
    [run] = _runs(tracking_uri, study_a)[left_open.number]
    assert run.info.status == "RUNNING" and "repaired" not in run.data.tags

    worker_b.retry_seconds = 0.0  # the window is over
    worker_b.sync_front(study_b)
    [run] = _runs(tracking_uri, study_a)[left_open.number]
    _assert_complete_run(run, left_open, (0.7, 0.6))
    assert run.data.tags["repaired"] == "true"


# ---- (b) a lock shorter than the retry window: no repair needed ---------------------------------
def test_a_real_sqlite_lock_shorter_than_the_window_delays_the_run_but_loses_nothing(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    database = tracking_uri.removeprefix("sqlite:///")
    held, release = threading.Event(), threading.Event()
    released_at = []

    def hold_lock():
        db = sqlite3.connect(database, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            held.set()
            release.wait(1.0)
            released_at.append(time.monotonic())
            db.execute("ROLLBACK")
        finally:
            db.close()

    locker = threading.Thread(target=hold_lock)
    locker.start()
    try:
        assert held.wait(10)
        trial = study.ask()
        trial.set_user_attr("config", CONFIG)
        worker.on_trial_start(trial, _Config())  # blocks on the lock, then goes through
        returned_at = time.monotonic()
    finally:
        release.set()
        locker.join()
    assert returned_at > released_at[0]  # it waited for the lock (else it would release it early)
    for k, v in _attrs((0.7, 0.6)).items():
        trial.set_user_attr(k, v)
    frozen = study.tell(trial, (0.7, 0.6))
    worker.on_trial_end(study, frozen, _result((0.7, 0.6)))

    [run] = _runs(tracking_uri, study)[trial.number]
    _assert_complete_run(run, frozen, (0.7, 0.6))
    assert run.info.run_id == study.trials[trial.number].user_attrs[RUN_ID_ATTR]
    assert "repaired" not in run.data.tags


@pytest.mark.parametrize("stored_before_failing", [False, True], ids=["refused", "answer-lost"])
def test_transient_errors_within_the_window_are_retried_and_never_make_two_runs(
    tracking_uri, storage, caplog, stored_before_failing
):
    study = _study(storage)
    worker = _observer(study, tracking_uri, retry=30)
    real = worker._client.raw.create_run
    attempts = []

    def create_run(*args, **kwargs):
        attempts.append(kwargs.get("tags", {}).get("mtlsearch.create_id"))
        if len(attempts) <= 2:
            if stored_before_failing:  # the write went through; its answer did not come back
                real(*args, **kwargs)
            raise _locked_error()
        return real(*args, **kwargs)

    worker._client.raw.create_run = create_run
    with caplog.at_level(logging.WARNING, logger="mtlsearch.tracking"):
        trial = _trial(study, worker, (0.7, 0.6))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # a stored create is found by its create_id before creating again
    assert len(attempts) == (1 if stored_before_failing else 3)
    assert len(set(attempts)) == 1  # one create_id: the same run each time
    [run] = _runs(tracking_uri, study)[trial.number]
    _assert_complete_run(run, trial, (0.7, 0.6))
    assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR] and "repaired" not in run.data.tags


# ---- (c) duplicates ------------------------------------------------------------------------------
def test_duplicate_runs_of_a_trial_are_reduced_to_one(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = worker.experiment_id
    tracked = _trial(study, worker, (0.7, 0.6))
    own = client.get_run(tracked.user_attrs[RUN_ID_ATTR])

    def duplicate(number, start_time):
        tags = {"mlflow.parentRunId": worker.parent_run_id, "trial_number": str(number)}
        return client.create_run(experiment, start_time=start_time, tags=tags).info.run_id

    # duplicates of a tracked trial, one older than its own run: the run the trial names stays
    older = duplicate(tracked.number, own.info.start_time - 1000)
    newer = duplicate(tracked.number, own.info.start_time + 1000)
    # an untracked trial that two workers repaired at the same moment: the earliest stays
    untracked = study.ask()
    for k, v in {"config": CONFIG, **_attrs((0.9, 0.1))}.items():
        untracked.set_user_attr(k, v)
    frozen = study.tell(untracked, (0.9, 0.1))
    repairs = [worker._repair_missing(study, frozen, {frozen.number: 0}) for _ in range(2)]
    first, second = sorted(repairs, key=lambda r: (client.get_run(r).info.start_time, r))

    _trial(study, worker, (0.5, 0.5))  # the next trial's sync
    runs = _runs(tracking_uri, study)
    assert [r.info.run_id for r in runs[tracked.number]] == [own.info.run_id]
    assert [r.info.run_id for r in runs[untracked.number]] == [first]
    for gone in (older, newer, second):
        assert client.get_run(gone).info.lifecycle_stage == "deleted"
    _assert_complete_run(runs[untracked.number][0], study.trials[untracked.number], (0.9, 0.1))
    everything = client.search_runs(
        [experiment], "tags.`mtlsearch.role` = 'trial'", run_view_type=ViewType.ACTIVE_ONLY
    )
    assert sorted(int(r.data.tags["trial_number"]) for r in everything) == [0, 1, 2]


# ---- (d) a dropped result, an interrupt, closing ---------------------------------------------------
def test_a_dropped_result_closes_the_run_failed_with_the_reason_and_no_metrics(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    trial = study.ask()
    trial.set_user_attr("config", CONFIG)
    worker.on_trial_start(trial, _Config())
    trial.set_user_attr("valid", {"a": {"auc": 0.7}, "b": {"auc": 0.6}})
    # this worker is paused; another one fails the trial for lack of heartbeat (and retries it)
    study.tell(trial.number, state=TrialState.FAIL)
    stored = study.trials[trial.number]
    worker.on_trial_end(study, stored, None)  # the worker wakes; its result is dropped

    [run] = _runs(tracking_uri, study)[trial.number]
    assert run.info.status == "FAILED"
    assert run.data.tags["state"] == "FAIL"
    assert run.data.tags["fail_reason"] == "worker lost (no heartbeat); the trial was retried"
    assert run.data.metrics == {}


def test_an_interrupted_trial_ends_its_run_killed_without_a_front_sync(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    trial = study.ask()
    trial.set_user_attr("config", CONFIG)
    worker.on_trial_start(trial, _Config())
    synced = []
    worker.sync_front = lambda study, rounds=5: synced.append(study) or {}
    try:
        raise KeyboardInterrupt  # Ctrl-C (the CLI's SIGTERM is a subclass)
    except KeyboardInterrupt:  # the search releases the trial and tells the observers
        study.tell(trial.number, state=TrialState.FAIL)
        worker.on_trial_end(study, study.trials[trial.number], None)

    [run] = _runs(tracking_uri, study)[trial.number]
    assert run.info.status == "KILLED"
    assert run.data.tags["state"] == "FAIL"
    assert run.data.tags["fail_reason"] == "interrupted (Ctrl-C or SIGTERM); the trial will be run again"
    assert synced == []  # the process exits at once


def test_close_ends_open_runs_and_the_parent_only_when_no_worker_is_left(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri, _context(n_trials=3))
    client = MlflowClient(tracking_uri)
    parent = worker.parent_run_id
    _trial(study, worker, (0.7, 0.6))
    assert client.get_run(parent).info.status == "RUNNING"  # budget left

    # another worker's trial is running: this worker's stop leaves the parent to it
    other = study.ask()
    open_trial = study.ask()
    worker.on_trial_start(open_trial, _Config())
    worker.close("KILLED")
    assert client.get_run(open_trial.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"
    assert client.get_run(parent).info.status == "RUNNING"
    worker.on_trial_start(study.ask(), _Config())  # closed: hooks do nothing any more
    assert len(_runs(tracking_uri, study)) == 2

    # the last worker stops with budget left: KILLED; one that joins later reopens it
    study.tell(other, state=TrialState.FAIL)
    study.tell(open_trial, state=TrialState.FAIL)
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    last = _observer(study, tracking_uri, _context(n_trials=3))
    assert client.get_run(parent).info.status == "RUNNING"
    last.close("KILLED")
    assert client.get_run(parent).info.status == "KILLED"
    again = _observer(study, tracking_uri, _context(n_trials=3))
    assert again.parent_run_id == parent and client.get_run(parent).info.status == "RUNNING"

    # the budget is used up: FINISHED, and closing changes nothing
    _trial(study, again, (0.8, 0.5))
    _trial(study, again, (0.5, 0.8))
    assert client.get_run(parent).info.status == "FINISHED"
    again.close("KILLED")
    assert client.get_run(parent).info.status == "FINISHED"


# ---- (e) advice for several workers ----------------------------------------------------------------
def test_sqlite_tracking_for_a_study_on_a_server_is_advised_against_once(
    tracking_uri, storage, caplog, monkeypatch
):
    monkeypatch.setattr(_mlflow, "_ADVISED", set())
    server = "postgresql+psycopg2://searcher:s3cret@db.internal:5432/studies"
    with caplog.at_level(logging.WARNING, logger="mtlsearch.tracking"):
        for _ in range(2):  # two observers in one process (n_jobs threads share one, but still)
            observer = MlflowObserver(tracking_uri=tracking_uri, storage_url=server, retry_seconds=WINDOW)
            observer.on_study(_study(storage), _context())
        plain = MlflowObserver(tracking_uri=tracking_uri, storage_url=storage, retry_seconds=WINDOW)
        plain.on_study(_study(storage), _context())  # a study in SQLite: one machine, no advice
    advice = [r.getMessage() for r in caplog.records if "tracking server" in r.getMessage()]
    assert len(advice) == 1
    line = advice[0]
    assert "\n" not in line and "s3cret" not in line
    assert "mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000" in line
    assert "--tracking-uri http://127.0.0.1:5000" in line
    assert [r.levelno for r in caplog.records if "tracking server" in r.getMessage()] == [logging.WARNING]


# ---- the retry policy ---------------------------------------------------------------------------------
def test_which_errors_are_retried():
    refused = MlflowException(
        "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
        "/api/2.0/mlflow/runs/create (Caused by NewConnectionError: [Errno 111] Connection refused)"
    )
    assert _mlflow.is_transient(_locked_error())
    assert _mlflow.is_transient(refused)
    assert _mlflow.is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert _mlflow.is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert _mlflow.is_transient(RestException({"error_code": "INTERNAL_ERROR", "message": "oops"}))  # 500
    assert _mlflow.is_transient(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")))
    assert not _mlflow.is_transient(
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"})
    )
    assert not _mlflow.is_transient(MlflowException("bad key", error_code=INVALID_PARAMETER_VALUE))
    assert not _mlflow.is_transient(RuntimeError("tracking server on fire"))
    assert not _mlflow.is_transient(_mlflow.TrackingUnavailable("already retried"))


def test_the_retry_window_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MTLSEARCH_TRACKING_RETRY_SECONDS", "2.5")
    assert MlflowObserver().retry_seconds == 2.5
    assert MlflowObserver(retry_seconds=7).retry_seconds == 7
    monkeypatch.delenv("MTLSEARCH_TRACKING_RETRY_SECONDS")
    assert MlflowObserver().retry_seconds == 60
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("MTLSEARCH_TRACKING_RETRY_SECONDS", bad)
        with pytest.raises(UserError, match="MTLSEARCH_TRACKING_RETRY_SECONDS"):
            MlflowObserver()


def test_after_a_give_up_calls_get_one_attempt_until_the_store_answers(tracking_uri, storage):
    study = _study(storage)
    worker = _observer(study, tracking_uri)
    stalled = _Stalled(worker._client.raw)
    worker._client.raw = stalled
    start = time.monotonic()
    with pytest.raises(_mlflow.TrackingUnavailable, match="database is locked"):
        worker._client.get_run(worker.parent_run_id)
    assert stalled.calls["get_run"] >= 2 and time.monotonic() - start >= WINDOW
    before = stalled.calls["get_run"]
    with pytest.raises(_mlflow.TrackingUnavailable):
        worker._client.get_run(worker.parent_run_id)
    assert stalled.calls["get_run"] == before + 1  # degraded: one attempt
    stalled.stalled = False
    assert worker._client.get_run(worker.parent_run_id).info.run_id == worker.parent_run_id
    assert not worker._degraded  # back to full retries
