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
``mtlsearch export`` downloads. A model is named ``<study>-trial-<n>`` and linked to its
run's metrics at the trial's *final* step (the best epoch, where the final ``valid.*``,
``test.*``, ``objective.*`` and ``gain.*`` metrics are logged), not at step 0 (the first
epoch). Its ``pareto_front``/``pareto_rank`` tags are kept current at every front sync, so
a model whose trial left the front says so.

For comparing in the UI (:func:`front_runs_url` gives the link): every child carries a
``compare`` tag, ``true`` on the front members and on the named reference architectures,
so one filter (``tags.compare = 'true'``) shows both, even for a one-trial front; a metric
``trial_number`` (the tag sorts as text) and ``gain.<task>.<metric>`` over the single-task
reference trial. The parent run holds the study's settings as ``setting.*`` tags and
``settings.json``, not as params: a comparison of the filtered runs holds trials only.

Tracking must never stop a search: every hook catches its errors and logs a warning (once
per hook, then at debug level). MLflow is imported on the first hook, not at import time:
it takes seconds.

Tracking stores stall: a SQLite ``mlflow.db`` shared by several worker processes is locked
for everyone while one worker is stopped in the middle of a write, and a tracking server
restarts. So every ``MlflowClient`` call is retried on *transient* errors (see :func:`is_transient`)
with exponential back-off and jitter for up to ``retry_seconds`` in total (default 60 s,
``$MTLSEARCH_TRACKING_RETRY_SECONDS``); after that the call gives up with the warning above.
After one give-up the following calls get a single attempt each until one succeeds again,
so a tracker that is down for an hour costs the search one retry window, not one per call.
Creating a run is the one write that is not idempotent: each run carries a random
``mtlsearch.create_id`` tag, and a retry first looks for a run with it, so a create whose
answer was lost is not made twice. ``mlflow.pytorch.log_model`` is not retried (a retry could
log a second model); a front member whose model could not be logged has none.

What the retries do not cover, the front sync repairs: after every finished trial the worker
makes MLflow agree with the study storage (which is the truth). Every COMPLETE trial gets
exactly one child run: a missing one is made from the trial's user attributes (params,
config, final metrics, utilisation; not the per-epoch history, which only its worker had)
and tagged ``repaired = true``; of several, the one named by the trial's ``mlflow_run_id``
attribute (else the earliest) is kept and the others deleted; one left open or failed gets
its final metrics and FINISHED. Runs of failed and pruned trials left RUNNING are closed.

A trial stopped early (PRUNED) ends KILLED with the tag ``state = PRUNED`` and, when it
stopped at a MOASHA rung, ``stopped_rung``, ``stopped_epoch`` and ``rung_values`` (its task
objectives there, JSON) plus ``pruned_reason`` (:func:`pruned_tags`); it never joins the
front (``compare = false``), which holds full-fidelity (COMPLETE) trials only.
When nothing is wrong this costs nothing beyond the one listing of the children that
re-tagging needs anyway.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch._errors import UserError
from mtlsearch.search import CONFIG_ATTR, FAIL_ATTR, count_finished, hypervolume, pareto_ranks
from mtlsearch.search._front import PRESET_ATTR
from mtlsearch.tracking import _figures
from mtlsearch.tracking._summary import (
    PRUNED_REASON_ATTR,
    RUN_ID_ATTR,
    UTILISATION_ATTR,
    front_records,
    gain_metrics,
    json_safe,
    pruning_text,
    records_csv,
    single_task_valid,
    stop_decision,
    stopped_rung,
    trial_points,
    utilisation_csv,
)
from mtlsearch.tracking._summary import flatten as flatten  # re-exported: the naming scheme
from mtlsearch.tracking._summary import metric_key as _metric_key
from mtlsearch.tracking._summary import trial_params as trial_params

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
TAG_REPAIRED = "repaired"
TAG_CREATE = "mtlsearch.create_id"
TAG_COMPARE = "compare"  # "true" on front members and named references: one filter shows both
TAG_PRESET = "preset"
TAG_SETTING = "setting."  # prefix of the parent's study-setting tags
TAG_STOPPED_RUNG = "stopped_rung"  # a PRUNED trial's rung (MOASHA), as text: filter tags.stopped_rung = '0'
TAG_STOPPED_EPOCH = "stopped_epoch"  # the rung's epoch, 1-based
TAG_RUNG_VALUES = "rung_values"  # JSON: task objective -> its validation value at that rung
TAG_PRUNED_REASON = "pruned_reason"
TRIAL_METRIC = "trial_number"  # the trial number as a metric: sorts as a number in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens GenAI traces unless told
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
CHECKPOINT_DIR = "checkpoint"
WORKER_ATTR = "worker"  # the trial attribute naming the process that ran it (set by the search)

#: Why a failed trial without a reason of its own ended (its result never came).
LOST_REASON = "worker lost (no heartbeat); the trial was retried"
INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM); the trial will be run again"

_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
_MAX_TAG = 4000

# ---- retrying a stalled tracking store ---------------------------------------------------------
RETRY_SECONDS = 60.0
RETRY_ENV = "MTLSEARCH_TRACKING_RETRY_SECONDS"
_FIRST_DELAY = 0.25  # seconds before the second attempt; doubled after each failure...
_MAX_DELAY = 8.0  # ...up to this
_RETRIED_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
_TRANSIENT_TEXT = re.compile(
    r"database (?:table )?is locked|database is busy|SQLITE_BUSY|connection (?:refused|reset|aborted)"
    r"|max retries exceeded|temporarily unavailable|service unavailable|bad gateway|gateway time-?out"
    r"|timed out|remote end closed|too many \d+ error responses|error code 5\d\d|failed with timeout",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = {
    "sqlalchemy": {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"},
    "sqlite3": {"OperationalError"},
    "requests": {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError"},
    "urllib3": {"MaxRetryError", "NewConnectionError", "ProtocolError", "TimeoutError", "ReadTimeoutError"},
}
_SERVER_STORAGES = ("postgresql", "postgres", "mysql", "mariadb", "redis", "rediss")
_ADVISED: set[str] = set()  # tracking URIs the multi-worker advice was given for (once per process)


class TrackingUnavailable(Exception):
    """A tracking call kept failing with transient errors for the whole retry window."""


def tracking_retry_seconds() -> float:
    """How long one tracking call is retried (``$MTLSEARCH_TRACKING_RETRY_SECONDS``, default 60)."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"${RETRY_ENV}: expected a number of seconds, got {raw!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise UserError(f"${RETRY_ENV}: must be a finite number >= 0, got {raw!r}")
    return value


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking store is busy or out of reach for now (worth
    retrying), as opposed to a refused or invalid request (not worth retrying).

    Transient: a locked or busy SQLite database (MLflow's SQL store raises it as an
    ``MlflowException`` with code ``TEMPORARILY_UNAVAILABLE``, chained to SQLAlchemy's
    ``OperationalError``), any SQLAlchemy ``OperationalError``, connection errors and
    timeouts, and a tracking server answering 5xx or not at all (connection refused).
    """
    from mlflow.exceptions import MlflowException, RestException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TrackingUnavailable):
            return False  # already retried for the whole window
        if isinstance(current, ConnectionError | TimeoutError):  # builtins, incl. refused/reset
            return True
        root = type(current).__module__.split(".", 1)[0]
        if type(current).__name__ in _TRANSIENT_TYPES.get(root, ()):
            return True
        if isinstance(current, MlflowException):
            if current.error_code in _RETRIED_CODES:
                return True
            if isinstance(current, RestException) and current.get_http_status_code() >= 500:
                return True
            if _TRANSIENT_TEXT.search(str(current.message)):
                return True
        current = current.__cause__ or current.__context__
    return False


def _handling_interrupt() -> bool:
    """Whether the code calling us runs inside an ``except`` for Ctrl-C or SIGTERM (the CLI's
    SIGTERM is a ``KeyboardInterrupt`` subclass): the search then releases its trials and
    calls ``on_trial_end`` on its way out, and tracking must not hold the exit up."""
    current = sys.exc_info()[1]
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt | SystemExit):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()


class _RetryingClient:
    """An ``MlflowClient`` whose methods go through the observer's retry policy.

    ``create_run`` is passed through with a single attempt: a retry could make a second
    run, so the observer creates runs through its own ``_create_run`` instead.
    """

    _SINGLE = frozenset({"create_run"})

    def __init__(self, client: Any, call: Callable[..., Any]) -> None:
        self.raw = client
        self._call = call

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name in self._SINGLE or name.startswith("_") or not callable(attr):
            return attr

        def retried(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, attr, *args, **kwargs)

        return retried


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


def model_name(study_name: str, number: int) -> str:
    """A logged model's name: ``<study>-trial-<n>`` (MLflow forbids ``/:.%"'`` in it)."""
    return re.sub(r"[/:.%\"'\s]+", "_", study_name) + f"-trial-{number}"


def front_filter() -> str:
    """The MLflow search filter that shows the front and the named references."""
    return f"tags.{TAG_COMPARE} = 'true'"


def front_runs_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI's runs view of an experiment filtered to the front and the named
    references, ordered by trial number (MLflow 3.17's route and query parameters:
    ``#/experiments/<id>/runs?searchFilter=...&orderByKey=...&orderByAsc=true``)."""
    from urllib.parse import quote

    query = (
        f"searchFilter={quote(front_filter(), safe='')}"
        f"&orderByKey={quote(f'metrics.`{TRIAL_METRIC}`', safe='')}&orderByAsc=true"
    )
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs?{query}"


def front_link(study: optuna.Study) -> str | None:
    """What ``search`` and ``front`` print under the front: the link to the runs view that
    compares the front with the references, and for a SQLite store how to start the UI;
    ``None`` for a study that was never tracked."""
    uri, experiment = study.user_attrs.get(URI_ATTR), study.user_attrs.get(EXPERIMENT_ATTR)
    if not uri or experiment is None:
        return None
    if str(uri).startswith(("http://", "https://")):
        return f"MLflow, the front beside the references: {front_runs_url(str(uri), str(experiment))}"
    return (
        f"MLflow, the front beside the references: {front_runs_url(DEFAULT_UI, str(experiment))} "
        f"(after: mlflow ui --backend-store-uri {uri})"
    )


def init_sqlite_store(tracking_uri: str) -> None:
    """Create (or upgrade) a SQLite tracking store's tables once, under a file lock.

    MLflow creates and migrates a SQLite store's schema when a process first opens it, with
    no lock between processes: workers that start together on a new ``mlflow.db`` run the
    migrations at once and leave it half-migrated (``table _alembic_tmp_metrics already
    exists``), after which no process can log. The lock (``<db>.init.lock`` beside it, an
    ``fcntl`` lock the OS drops with a dead process) makes the first process migrate and the
    others wait, then find the schema current. Not a SQLite file: nothing to do.
    """
    if not tracking_uri.startswith("sqlite"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        return
    path = Path(database).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    from mlflow import MlflowClient

    with open(f"{path}.init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)  # creates/migrates
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class MlflowObserver:
    """A :class:`~mtlsearch.search.SearchObserver` that logs a study to MLflow.

    ``tracking_uri``: any MLflow tracking URI. Without one, the URI the study already logs
    to (kept in its user attributes) is used, else :func:`default_tracking_uri` of
    ``storage_url``. ``log_models``: log the front members' models (the slow part).
    ``retry_seconds``: how long one tracking call is retried on transient errors (default
    ``$MTLSEARCH_TRACKING_RETRY_SECONDS``, else 60); it is also how long another worker's
    run is left open after its trial completed before the front sync closes it for it.

    ``mlflow.pytorch.log_model`` reads MLflow's process-wide tracking URI and experiment,
    so the observer sets both (one study per process; threads share them).

    Call :meth:`close` when the process stops searching (normally, on a timeout or on Ctrl-C).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        storage_url: str | None = None,
        log_models: bool = True,
        retry_seconds: float | None = None,
    ) -> None:
        self.requested_uri = tracking_uri
        self.storage_url = storage_url
        self.log_models = log_models
        self.retry_seconds = tracking_retry_seconds() if retry_seconds is None else max(0.0, retry_seconds)
        self.tracking_uri: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._context: Any = None
        self._study: optuna.Study | None = None
        self._study_name = ""
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._runs: dict[int, str] = {}  # trial number -> run id, while this process runs the trial
        self._finishing: set[str] = set()  # run ids on_trial_end is closing right now
        self._created: set[str] = set()  # run ids this observer created
        self._known: dict[int, str] = {}  # trial number -> its run, as of the last front sync
        self._lock = threading.RLock()
        self._disabled = False
        self._closed = False
        self._degraded = False  # a call gave up: single attempts until one succeeds
        self._warned: set[str] = set()
        self._logged_models: set[int] = set()
        self._models: dict[int, str] = {}  # trial number -> logged model id, as last seen
        self._rng = random.Random()  # jitter; the global generator may be seeded by the search

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

    def _budget(self) -> float:
        """Seconds the next call may keep retrying: none while the search is being
        interrupted (the user wants out) or after a call gave up (the store is down: the
        front sync repairs what is lost once it is back)."""
        if self._degraded or _handling_interrupt():
            return 0.0
        return self.retry_seconds

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried on transient errors with exponential back-off
        and jitter for up to :meth:`_budget` seconds in all; then :class:`TrackingUnavailable`.

        The window is checked between attempts: one attempt on a locked SQLite file waits
        MLflow's own busy timeout (20 s) and one to a server MLflow's own HTTP retries
        (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), so a give-up can come that much later.
        """
        budget = self._budget()
        start = time.monotonic()
        delay, attempts = _FIRST_DELAY, 0
        while True:
            attempts += 1
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                elapsed = time.monotonic() - start
                left = budget - elapsed
                if left <= 0:
                    self._degraded = True
                    raise TrackingUnavailable(
                        f"{what}: the tracking store stayed busy or unreachable "
                        f"({attempts} attempt{'s' * (attempts > 1)} in {elapsed:.1f} s; {_first_line(exc)})"
                    ) from exc
                level = logging.DEBUG if "retry" in self._warned else logging.INFO
                self._warned.add("retry")
                logger.log(level, "MLflow tracking: %s: %s; retrying for up to %.0f s",
                           what, _first_line(exc), left)  # fmt: skip
                time.sleep(min(left, delay * self._rng.uniform(0.5, 1.5)))
                delay = min(delay * 2, _MAX_DELAY)
                continue
            if self._degraded:
                self._degraded = False
                logger.info("MLflow tracking: the tracking store answers again")
            return out

    def _create_run(self, run_name: str, tags: dict[str, str]) -> Any:
        """``create_run`` with retries that never make two runs: the run carries a random
        ``mtlsearch.create_id`` tag, and every attempt after the first looks it up before
        creating (the first may have been stored although its answer was lost)."""
        client = self._client.raw
        token = uuid.uuid4().hex
        tags = {**tags, TAG_CREATE: token}
        sent = False

        def attempt() -> Any:
            nonlocal sent
            if sent:
                mine = f"tags.`{TAG_CREATE}` = '{token}'"
                found = client.search_runs([self.experiment_id], mine, max_results=1)
                if found:
                    return found[0]
            sent = True
            return client.create_run(self.experiment_id, run_name=run_name, tags=tags)

        run = self._call("create_run", attempt)
        with self._lock:
            self._created.add(run.info.run_id)
        return run

    # ---- the study ------------------------------------------------------------------------
    def on_study(self, study: optuna.Study, context: Any) -> None:
        """Open (or join) the study's experiment and parent run."""
        self._context = context
        self._study = study
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
        self._advise(self.tracking_uri)
        # log_model (fluent API) reads the global URI; the client does not.
        mlflow.set_tracking_uri(self.tracking_uri)
        init_sqlite_store(self.tracking_uri)
        client = _RetryingClient(MlflowClient(self.tracking_uri), self._call)
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

    def _advise(self, tracking_uri: str) -> None:
        """One warning when workers share a study on a database server but track into a local
        SQLite file: SQLite takes one writer at a time, so one stalled worker stops every
        other worker's tracking (the retries and the repair then have to make up for it), and
        workers on other machines each write a file of their own. The storage URL is not
        logged: it may hold a password."""
        scheme = (self.storage_url or "").split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in _SERVER_STORAGES or not tracking_uri.lower().startswith("sqlite:"):
            return
        if tracking_uri in _ADVISED:
            return
        _ADVISED.add(tracking_uri)
        logger.warning(
            "MLflow: the study is on a %s server but runs are tracked in the SQLite file %s, which "
            "one worker at a time can write; with several workers start a tracking server "
            "(mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000) "
            "and give every worker --tracking-uri http://127.0.0.1:5000",
            scheme, tracking_uri.split(":///", 1)[-1],
        )  # fmt: skip

    def _experiment(self, client: Any, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older version
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            # The kind makes the UI open the runs, not the (empty) GenAI traces page.
            return client.create_experiment(
                name,
                artifact_location=_artifact_location(self.tracking_uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # another worker created it first (or a retried create was stored)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _usable_parent(self, client: Any, run_id: str) -> bool:
        try:
            run = client.get_run(run_id)
        except TrackingUnavailable:
            raise
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
        run = self._create_run(study.study_name, tags)
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
            from mlflow.entities import RunTag

            # Tags, not params: params would put the parent (with no trial metrics) into
            # every comparison of the study's runs.
            values = {
                "dataset": settings.dataset,
                "dataset_options": str(settings.dataset_options),
                "objectives": ",".join(settings.objectives),
                "sampler": settings.sampler,
                "seed": str(settings.seed),
                "n_trials": str(settings.n_trials),
                "space": settings.space_source,
                "max_params": str(settings.max_params),
                "pruning": pruning_text(getattr(settings, "pruning", None)),
            }
            tags = [RunTag(TAG_SETTING + k, v[:_MAX_TAG]) for k, v in values.items()]
            client.log_batch(mine, tags=tags)
            client.log_dict(mine, json_safe(values), "settings.json")
            client.log_text(mine, settings.space_text, "search_space.yaml")
        return mine

    def close(self, status: str = "KILLED") -> None:
        """This process stops searching: end its runs that are still open with ``status``
        and, unless another worker is still running a trial of the study, the parent run:
        FINISHED when the budget is used up, else ``status`` (``KILLED`` for Ctrl-C and
        SIGTERM, ``FINISHED`` for a timeout; a worker that joins later sets it back to
        RUNNING). The parent is thus left RUNNING only while the study has budget left and
        trials running. Idempotent; later hooks do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._disabled or self._client is None:
            return
        from mlflow.entities import RunTag

        with self._lock:
            still_open = dict(self._runs)
            self._runs.clear()
        for number, run_id in still_open.items():
            with self._guard("closing a trial's run"):
                reason = "the worker stopped before the trial ended; the trial will be run again"
                self._client.log_batch(run_id, tags=[RunTag("fail_reason", reason)])
                self._client.set_terminated(run_id, status)
                logger.debug("MLflow: run of trial %d closed %s", number, status)
        study = self._study
        if study is None or self.parent_run_id is None:
            return
        with self._guard("closing the study's parent run"):
            trials = study.get_trials(deepcopy=False)
            settings = getattr(self._context, "settings", None)
            used_up = settings is not None and count_finished(study) >= settings.n_trials
            if used_up:
                final = "FINISHED"
            elif any(t.state == TrialState.RUNNING for t in trials):
                return  # other workers are on it; the last one closes it
            else:
                final = status
            if self._client.get_run(self.parent_run_id).info.status == "RUNNING":
                self._client.set_terminated(self.parent_run_id, final)

    # ---- a trial --------------------------------------------------------------------------
    def _trial_tags(self, number: int, preset: str | None, state: str, worker: str) -> dict[str, str]:
        return {
            "mlflow.parentRunId": str(self.parent_run_id),
            TAG_TRIAL: str(number),
            TAG_STUDY: self._study_name,
            TAG_ROLE: "trial",
            TAG_PRESET: preset or "searched",
            "state": state,
            "worker": worker,
            TAG_FRONT: "false",
            TAG_COMPARE: "true" if preset else "false",
        }

    def _log_config(self, run_id: str, config: dict[str, Any], preset: str | None, yaml_text: str) -> None:
        from mlflow.entities import Param

        params = trial_params(config, preset)
        items = [Param(k, v[:_MAX_TAG]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[start : start + 100])
        self._client.log_text(run_id, yaml_text, "config.yaml")

    def on_trial_start(self, trial: optuna.Trial, config: Any) -> None:
        if self._disabled or self._closed:
            return
        with self._guard("starting a trial's run"):
            self._start_trial(trial, config)

    def _start_trial(self, trial: optuna.Trial, config: Any) -> None:
        preset = trial.user_attrs.get(PRESET_ATTR)
        tags = self._trial_tags(trial.number, preset, "RUNNING", self._worker)
        name = f"trial-{trial.number}" + (f"-{preset}" if preset else "")
        run_id = self._create_run(name, tags).info.run_id
        with self._lock:
            self._runs[trial.number] = run_id
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        as_params = config.to_dict()
        if trial.user_attrs.get("device"):  # the worker's device (the config is stored without it)
            as_params["training"] = {**as_params["training"], "device": trial.user_attrs["device"]}
        self._log_config(run_id, as_params, preset, config.to_yaml())

    def on_epoch(self, trial: optuna.Trial, report: Any) -> None:
        if self._disabled or self._closed:
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
        """Close the trial's run and sync the front.

        ``trial`` is the trial as the storage holds it. A FAIL without a reason of its own
        means the result never counted: the worker was interrupted (the search releases the
        trial for a retry and calls this from its ``except`` for the interrupt: the run ends
        KILLED, as MLflow calls a run the user stopped, and the front sync is skipped so the
        process exits at once), or it was paused past the heartbeat grace period and another
        worker failed and retried the trial (FAILED, like the runs the front sync closes for
        dead workers). Neither logs final metrics.
        """
        if self._disabled or self._closed:
            return
        interrupted = trial.state != TrialState.COMPLETE and _handling_interrupt()
        with self._lock:
            run_id = self._runs.pop(trial.number, None) or trial.user_attrs.get(RUN_ID_ATTR)
            if run_id is not None:
                self._finishing.add(run_id)
        try:
            if run_id is not None:
                with self._guard("finishing a trial's run"):
                    status = reason = None
                    if trial.state == TrialState.FAIL and not trial.user_attrs.get(FAIL_ATTR):
                        status = "KILLED" if interrupted else "FAILED"
                        reason = INTERRUPTED_REASON if interrupted else LOST_REASON
                    self._finish_trial(study, trial, result, run_id, status=status, reason=reason)
        finally:
            with self._lock:
                self._finishing.discard(run_id)
        if interrupted:
            return
        with self._guard("updating the Pareto front"):
            ranks = self.sync_front(study)
            run_id = self._known.get(trial.number, run_id)  # the run the sync kept or made
            if run_id is not None and result is not None and ranks.get(trial.number) == 0:
                self._log_model(trial, result, run_id)

    def _final_values(self, study: optuna.Study, trial: FrozenTrial, result: Any | None) -> dict[str, float]:
        """The final metrics of a COMPLETE trial: from the training result when this worker
        has it, else from what the search stored in the trial's user attributes (the same
        numbers). Nothing for a trial that did not complete: its result did not count."""
        if trial.state != TrialState.COMPLETE:
            return {}
        attrs = trial.user_attrs
        values: dict[str, float] = {}
        for split in ("valid", "test"):
            source = getattr(result, split) if result is not None else attrs.get(split) or {}
            for task, metrics in source.items():
                values.update({_metric_key(split, task, m): v for m, v in metrics.items()})
        for name in ("n_params", "best_epoch", "seconds"):
            value = getattr(result, name) if result is not None else attrs.get(name)
            if value is not None:
                values[name] = float(value)
        costs = attrs.get("costs") or {}
        if "latency" in costs:
            values["latency_ms_per_1k"] = float(costs["latency"])
        elif result is not None:
            values["latency_ms_per_1k"] = self._latency(result)
        values[TRIAL_METRIC] = trial.number  # sorts as a number in the UI (the tag as text)
        if trial.values is not None:
            for o, v in zip(self._objectives(study), trial.values, strict=True):
                values[_metric_key("objective", o.name)] = v
        reference = single_task_valid(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        valid = result.valid if result is not None else attrs.get("valid") or {}
        if reference is not None or attrs.get(PRESET_ATTR) == "single_task":
            values.update(gain_metrics(valid, reference or valid))
        return {k: float(v) for k, v in values.items() if _finite(v)}

    def _finish_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        result: Any | None,
        run_id: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        repaired: bool = False,
    ) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client
        now = int(time.time() * 1000)
        tags = [RunTag("state", trial.state.name)]
        tags += [RunTag(k, v) for k, v in pruned_tags(trial, self._objectives(study)).items()]
        reason = trial.user_attrs.get(FAIL_ATTR) or reason
        if reason:
            tags.append(RunTag("fail_reason", str(reason)[:_MAX_TAG]))
        if repaired:
            tags += [RunTag(TAG_REPAIRED, "true"), RunTag("repaired_by", self._worker)]
        values = self._final_values(study, trial, result)
        step = _final_step(trial, result)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        utilisation = getattr(result, "utilisation", None) if result is not None else None
        if utilisation is None and trial.state == TrialState.COMPLETE:
            utilisation = trial.user_attrs.get(UTILISATION_ATTR)
        if utilisation:
            client.log_dict(run_id, json_safe(utilisation), "utilisation/utilisation.json")
            client.log_text(run_id, utilisation_csv(utilisation), "utilisation/utilisation.csv")
            png = _figures.utilisation_png(utilisation, f"trial {trial.number}: expert utilisation")
            self._log_bytes(run_id, png, "utilisation", "utilisation.png")
        client.set_terminated(run_id, status or _STATUS.get(trial.state, "FAILED"))

    def _latency(self, result: Any) -> float:
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
            model = ServingModel(result.model, label_scaling=getattr(result, "label_scaling", None)).eval()
            schema = serving_schema(result.model, data.numeric_features)
            rows = min(5, len(data.valid))
            head = next(iter(data.valid.batches(rows)))  # a streamed split reads one batch
            example = serving_input(head.numeric, head.categorical).cpu().numpy()
            # Unnamed tensors: pyfunc then passes a plain array (a named one becomes a dict,
            # which the PyTorch flavour rejects). Column names go into the metadata.
            signature = ModelSignature(
                inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.inputs)))]),
                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.outputs)))]),
            )
            import torch

            # The LoggedModel goes to the active experiment, not the run's: name it.
            mlflow.set_experiment(experiment_id=self.experiment_id)
            info = mlflow.pytorch.log_model(
                model,
                name=model_name(self._study_name, trial.number),
                signature=signature,
                input_example=example,
                run_id=run_id,
                # MLflow links the run's metrics of this one step to the model: the final
                # ones (step 0 would be the first epoch's)
                step=_final_step(trial, result),
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata={"inputs": list(schema.inputs), "outputs": list(schema.outputs)},
                tags={
                    TAG_TRIAL: str(trial.number),
                    TAG_STUDY: self._study_name,
                    TAG_FRONT: "true",  # kept current by every front sync
                    TAG_RANK: "0",
                },
                # the check loads and runs the model once more: a second or two per model
                validate_serving_input=False,
            )
            self._models[trial.number] = info.model_id
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
        """Make the children agree with the study (repairing lost runs), re-tag them and
        refresh the parent from the study's current trials; repeated while other workers
        completed trials meanwhile. Returns trial -> rank."""
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
                self._reconcile(study, trials, ranks)
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

    def _reconcile(self, study: optuna.Study, trials: list[FrozenTrial], ranks: dict[int, int]) -> None:
        """One listing of the children, then: duplicates of a finished trial deleted, every
        child re-tagged, open runs of finished trials closed, missing runs of COMPLETE trials
        made. Every worker may do this at once; they agree on which duplicate to keep (a
        choice from properties that never change), and duplicates two of them make for one
        missing run at the same moment go at the next sync."""
        by_number = {t.number: t for t in trials}
        reference = single_task_valid(trials)
        groups: dict[int, list[Any]] = {}
        children = self._children()
        models = self._sync_models(ranks) if any(r.data.tags.get(TAG_MODEL) for r in children) else {}
        for run in children:
            try:
                number = int(run.data.tags.get(TAG_TRIAL, ""))
            except ValueError:
                continue
            groups.setdefault(number, []).append(run)
        known: dict[int, str] = {}
        for number, runs in groups.items():
            trial = by_number.get(number)
            if len(runs) > 1 and trial is not None and trial.state.is_finished():
                keep = _keeper(trial, runs)
                for run in runs:
                    if run is not keep:
                        self._client.delete_run(run.info.run_id)
                        logger.info("MLflow: deleted run %s, a duplicate of trial %d's run %s",
                                    run.info.run_id, number, keep.info.run_id)  # fmt: skip
                runs = [keep]
            for run in runs:
                self._reconcile_run(study, run, trial, ranks)
                if trial is not None:
                    self._add_gains(run, trial, reference, models.get(number))
            known[number] = runs[0].info.run_id
        for trial in trials:
            if trial.state == TrialState.COMPLETE and trial.number not in groups:
                known[trial.number] = self._repair_missing(study, trial, ranks)
        self._known = known

    def _reconcile_run(
        self, study: optuna.Study, run: Any, trial: FrozenTrial | None, ranks: dict[int, int]
    ) -> None:
        from mlflow.entities import RunTag

        tags, run_id = run.data.tags, run.info.run_id
        number = int(tags[TAG_TRIAL])
        reference_arch = tags.get(TAG_PRESET, "searched") != "searched"
        want = {
            TAG_FRONT: "true" if ranks.get(number) == 0 else "false",
            TAG_COMPARE: "true" if ranks.get(number) == 0 or reference_arch else "false",
        }
        if number in ranks:
            want[TAG_RANK] = str(ranks[number])
        close = finalize = False
        if trial is not None and run_id not in self._finishing:
            if trial.state == TrialState.COMPLETE:
                # this process closes its own with the result right after telling the study
                finalize = run.info.status != "FINISHED" and run_id not in self._runs.values()
                finalize = finalize and self._abandoned(run, trial)
            elif trial.state.is_finished() and run.info.status == "RUNNING":
                # Its worker died, or was paused and the trial failed for it: closed now; a
                # paused worker that wakes closes it the same way (on_trial_end).
                close = True
                want["state"] = trial.state.name
                want.update(pruned_tags(trial, self._objectives(study)))
                if trial.state == TrialState.FAIL and not trial.user_attrs.get(FAIL_ATTR):
                    want["fail_reason"] = LOST_REASON
        changed = [RunTag(k, v) for k, v in want.items() if tags.get(k) != v]
        if changed:
            self._client.log_batch(run_id, tags=changed)
        if close:
            self._client.set_terminated(run_id, _STATUS.get(trial.state, "FAILED"))
        if finalize:
            logger.info("MLflow: trial %d completed but its run %s was left %s; closing it from the study",
                        number, run_id, run.info.status)  # fmt: skip
            self._finish_trial(study, trial, None, run_id, repaired=True)

    def _add_gains(
        self, run: Any, trial: FrozenTrial, reference: dict[str, Any] | None, model_id: str | None
    ) -> None:
        """A finished run of a COMPLETE trial that lacks its ``gain.*`` metrics (it finished
        before the single-task reference did) gets them, linked to its model if it has one."""
        if reference is None or trial.state != TrialState.COMPLETE or run.info.status != "FINISHED":
            return
        if run.info.run_id in self._finishing or any(k.startswith("gain.") for k in run.data.metrics):
            return
        from mlflow.entities import Metric

        gains = gain_metrics(trial.user_attrs.get("valid") or {}, reference)
        now, step = int(time.time() * 1000), _final_step(trial, None)
        metrics = [Metric(k, v, now, step, model_id=model_id) for k, v in gains.items()]
        if metrics:
            self._client.log_batch(run.info.run_id, metrics=metrics)

    def _sync_models(self, ranks: dict[int, int]) -> dict[int, str]:
        """Keep the logged models' ``pareto_front``/``pareto_rank`` tags current (a model
        stays when its trial leaves the front, tagged ``pareto_front = false``). Returns
        trial number -> model id."""
        client, found, token = self._client, [], None
        while True:
            page = client.search_logged_models([self.experiment_id], max_results=100, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                break
        models: dict[int, str] = {}
        for model in found:
            try:
                number = int(model.tags.get(TAG_TRIAL, ""))
            except ValueError:
                continue
            models[number] = model.model_id
            want = {TAG_FRONT: "true" if ranks.get(number) == 0 else "false"}
            if number in ranks:
                want[TAG_RANK] = str(ranks[number])
            changed = {k: v for k, v in want.items() if model.tags.get(k) != v}
            if changed:
                client.set_logged_model_tags(model.model_id, changed)
        self._models.update(models)
        return models

    def _abandoned(self, run: Any, trial: FrozenTrial) -> bool:
        """Whether the open (or failed) run of a COMPLETE trial is nobody's to close any more:
        this process's own (it is not writing it: its closing failed), one ended in another
        state, or another worker's that its worker has not closed within the retry window
        after the trial completed. Closing a run its worker is about to close would be
        harmless (the same values), but it would carry the ``repaired`` tag for nothing."""
        if run.info.status != "RUNNING" or run.info.run_id in self._created:
            return True
        done = trial.datetime_complete
        return done is None or (datetime.datetime.now() - done).total_seconds() > self.retry_seconds

    def _repair_missing(self, study: optuna.Study, trial: FrozenTrial, ranks: dict[int, int]) -> str:
        """A COMPLETE trial has no run (its worker's tracking writes were lost): make one
        from the study storage, with what ``_start_trial`` and ``_finish_trial`` log except
        the per-epoch history, which only that worker had."""
        attrs = trial.user_attrs
        preset = attrs.get(PRESET_ATTR)
        worker = str(attrs.get(WORKER_ATTR, ""))  # who ran the trial; repaired_by says who repaired
        tags = self._trial_tags(trial.number, preset, TrialState.COMPLETE.name, worker)
        tags[TAG_FRONT] = "true" if ranks.get(trial.number) == 0 else "false"
        tags[TAG_RANK] = str(ranks[trial.number])
        tags[TAG_REPAIRED] = "true"
        name = f"trial-{trial.number}" + (f"-{preset}" if preset else "")
        run_id = self._create_run(name, tags).info.run_id
        config = attrs.get(CONFIG_ATTR)
        if isinstance(config, dict):
            import yaml

            self._log_config(run_id, config, preset, yaml.safe_dump(config, sort_keys=False))
        self._finish_trial(study, trial, None, run_id, repaired=True)
        logger.info("MLflow: trial %d had no run (its worker's tracking writes were lost); "
                    "made %s from the study", trial.number, run_id)  # fmt: skip
        return run_id

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
        rows = front_records(study, objectives, run_ids=self._known)
        client.log_dict(parent, json_safe(rows), "front/front.json")
        client.log_text(parent, records_csv(rows), "front/front.csv")
        title = f"{study.study_name}: {len(complete)} completed trials"
        self._log_bytes(parent, _figures.pareto_png(points, objectives, title), "front", "pareto.png")
        client.log_text(parent, _figures.pareto_html(points, objectives, title), "front/pareto.html")
        settings = getattr(self._context, "settings", None)
        if settings is None:
            return
        status = client.get_run(parent).info.status
        if finished < settings.n_trials:
            if status != "RUNNING":  # another worker stopped (close) while this one goes on
                client.update_run(parent, status="RUNNING")
        elif status == "RUNNING" and not any(t.state == TrialState.RUNNING for t in trials):
            client.set_terminated(parent, "FINISHED")


def pruned_tags(trial: FrozenTrial, objectives: Sequence[Any]) -> dict[str, str]:
    """The tags that say where a PRUNED trial stopped: ``stopped_rung`` (k), ``stopped_epoch``
    (1-based), ``rung_values`` (JSON: each task objective's validation value at that rung,
    e.g. ``{"income:auc": 0.8812, "marital:auc": 0.9501}``) and ``pruned_reason``. Empty for
    any other trial; only ``pruned_reason`` for one pruned by a rule without rungs."""
    if trial.state != TrialState.PRUNED:
        return {}
    import json

    out: dict[str, str] = {}
    reason = trial.user_attrs.get(PRUNED_REASON_ATTR)
    if reason:
        out[TAG_PRUNED_REASON] = str(reason)[:_MAX_TAG]
    rung = stopped_rung(trial)
    if rung is None:
        return out
    out[TAG_STOPPED_RUNG] = str(rung)
    decision = stop_decision(trial) or {}
    if isinstance(decision.get("epoch"), int):
        out[TAG_STOPPED_EPOCH] = str(decision["epoch"])
    names = [o.name for o in objectives if not o.is_cost]
    values = decision.get("values")
    if isinstance(values, list) and len(values) == len(names) and all(_finite(v) for v in values):
        out[TAG_RUNG_VALUES] = json.dumps(dict(zip(names, map(float, values), strict=True)))[:_MAX_TAG]
    return out


def _keeper(trial: FrozenTrial, runs: Sequence[Any]) -> Any:
    """Of several runs of one finished trial, the one to keep: the run the trial names (its
    worker's, with the per-epoch history), else the earliest (start time, then id)."""
    named = trial.user_attrs.get(RUN_ID_ATTR)
    for run in runs:
        if run.info.run_id == named:
            return run
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _final_step(trial: FrozenTrial, result: Any | None) -> int:
    """The step of a trial's final metrics: its best epoch (whose weights the model has and
    whose validation metrics are the final ones), 0 when unknown."""
    best = getattr(result, "best_epoch", None) if result is not None else trial.user_attrs.get("best_epoch")
    try:
        return max(0, int(best))
    except (TypeError, ValueError):
        return 0


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
