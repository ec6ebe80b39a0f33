"""Study storages with one liveness contract, and storage calls that survive outages.

Every storage mtlsearch opens gives its running trials a *lease*: the worker running a trial
records a heartbeat every ``MTLSEARCH_HEARTBEAT_INTERVAL`` seconds (default 10), and a trial
whose heartbeat has not moved for ``MTLSEARCH_GRACE_PERIOD`` seconds (default 30) is failed
and its ticket re-enqueued by whichever worker notices first (every worker checks on a timer,
see :mod:`mtlsearch.search._worker`).

- RDB storages (SQLite, PostgreSQL, MySQL) use Optuna's own heartbeat table; the database's
  clock decides staleness.
- The Redis journal storage has no heartbeat in Optuna (its trials stay RUNNING for ever when a
  worker dies), so :class:`LeasedJournalStorage` builds one on a trial system attribute
  (``mtlsearch:heartbeat``, a counter the worker bumps). A reaper calls a lease stale when the
  counter has not changed for the grace period *as measured by the reaper's own monotonic
  clock*, so clocks of different machines never need to agree.

:class:`RetryingStorage` wraps either storage: a call that fails because the server is
unreachable (connection refused or reset, a dropped PostgreSQL connection, a Redis timeout)
is retried with exponential back-off for ``MTLSEARCH_STORAGE_RETRY`` seconds (default 300);
after that :class:`StorageUnavailable` is raised, which the CLI reports in one line (exit 3).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from mtlsearch._errors import StorageUnavailable, UserError

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 30  # seconds without a heartbeat after which a running trial is lost
STORAGE_RETRY = 300.0  # seconds a worker keeps retrying an unreachable storage
MAX_SECONDS = 7 * 24 * 3600.0  # a week: the largest lease or retry window a setting may ask for
MAX_RETRY = 3  # times a lost trial's configuration is retried before its ticket is re-sampled
HEARTBEAT_ATTR = "mtlsearch:heartbeat"
TICKET_ATTR = "ticket"
PRESET_ATTR = "preset"


# ---- settings from the environment ----------------------------------------------------------
def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"${name}: expected a number of seconds, got {raw!r}") from None
    if not minimum <= value <= MAX_SECONDS:  # also refuses nan and inf
        raise UserError(f"${name}: must be between {minimum:g} and {MAX_SECONDS:g} seconds, got {raw!r}")
    return value


def heartbeat_interval() -> int:
    """Seconds between heartbeats (``$MTLSEARCH_HEARTBEAT_INTERVAL``, default 10)."""
    return int(_env_number("MTLSEARCH_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL, 1))


def grace_period() -> int:
    """Seconds without a heartbeat after which a running trial counts as lost
    (``$MTLSEARCH_GRACE_PERIOD``, default ``max(30, 3 x interval)``).

    Raises :class:`UserError` when it is below twice the heartbeat interval: a healthy worker
    would then lose its own trials between two heartbeats."""
    interval = heartbeat_interval()
    grace = int(_env_number("MTLSEARCH_GRACE_PERIOD", max(GRACE_PERIOD, 3 * interval), 1))
    if grace < 2 * interval:
        raise UserError(
            f"$MTLSEARCH_GRACE_PERIOD: {grace} s is less than twice the heartbeat interval "
            f"($MTLSEARCH_HEARTBEAT_INTERVAL = {interval} s); healthy workers would lose their trials"
        )
    return grace


def storage_retry_seconds() -> float:
    """How long a worker retries an unreachable storage (``$MTLSEARCH_STORAGE_RETRY``)."""
    return _env_number("MTLSEARCH_STORAGE_RETRY", STORAGE_RETRY, 0)


# ---- retrying a lost trial ----------------------------------------------------------------------
def retry_lost_trial(
    study: optuna.Study, trial: FrozenTrial, why: str = "lost its worker (no heartbeat)"
) -> None:
    """Re-enqueue a trial whose worker was lost, as a fresh ticket.

    The retry keeps what defines the trial (its sampled parameters, its ticket and preset) and
    nothing its dead worker wrote (``worker``, per-epoch values, the MLflow run id, the config
    it was building), so the retry starts clean. Its ``failed_trial`` / ``retry_history``
    system attributes name the original, like Optuna's ``RetryHeartbeatStaleTrialCallback``.
    After :data:`MAX_RETRY` losses of the same configuration the ticket is not re-enqueued with
    it: the worker tops the budget up with a fresh sample instead (a configuration that kills
    its worker every time must not kill every worker in turn).
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        logger.warning(
            "trial %d was lost %d times (its worker died each time); its ticket gets a new sample",
            trial.number, len(history),
        )  # fmt: skip
        return
    keep = {k: v for k, v in trial.user_attrs.items() if k in (TICKET_ATTR, PRESET_ATTR)}
    system = {
        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
        "retry_history": history,
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=keep,
            system_attrs=system,
        )
    )
    logger.info("trial %d %s; re-enqueued for retry", trial.number, why)


# ---- the Redis journal storage with a lease ----------------------------------------------------
def _journal_classes() -> tuple[type, type]:
    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    return JournalStorage, JournalRedisBackend


class LeasedJournalStorage(BaseHeartbeat):
    """A journal storage whose running trials hold a lease (see the module docstring).

    Built by :func:`leased_journal_storage` (the journal classes are imported lazily).
    ``record_heartbeat`` bumps the ``mtlsearch:heartbeat`` system attribute; on a trial that
    another worker has already failed it raises ``UpdateFinishedTrialError``, which is how a
    paused worker learns that its trial was taken over.
    """

    _heartbeat_interval: int
    _grace_period: int
    _stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None

    def _lease_init(self, interval: int, grace: int, callback: Any) -> None:
        self._heartbeat_interval = interval
        self._grace_period = grace
        self._stale_callback = callback
        self._beats: dict[int, int] = {}
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (heartbeat, first seen)
        self._lease_lock = threading.Lock()

    def record_heartbeat(self, trial_id: int) -> None:
        with self._lease_lock:
            beat = self._beats.get(trial_id, 0) + 1
            self._beats[trial_id] = beat
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, beat)  # type: ignore[attr-defined]

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))  # type: ignore[attr-defined]
        stale = []
        with self._lease_lock:
            alive = set()
            for t in running:
                alive.add(t._trial_id)
                beat = t.system_attrs.get(HEARTBEAT_ATTR)
                seen = self._seen.get(t._trial_id)
                if seen is None or seen[0] != beat:
                    self._seen[t._trial_id] = (beat, now)
                elif now - seen[1] > self._grace_period:
                    stale.append(t._trial_id)
            for trial_id in set(self._seen) - alive:
                del self._seen[trial_id]
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def leased_journal_storage(url: str, interval: int, grace: int, callback: Any) -> BaseStorage:
    """A :class:`LeasedJournalStorage` on Redis at ``url``, with socket timeouts so that a
    silently dropped connection raises instead of blocking for ever."""
    journal, backend_cls = _journal_classes()
    cls = type("LeasedJournalStorage", (LeasedJournalStorage, journal), {})
    if "socket_timeout" not in url:
        url += ("&" if "?" in url else "?") + "socket_timeout=30&socket_connect_timeout=10"
    with warnings.catch_warnings():  # "experimental" since 3.1
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = cls(backend_cls(url))
    storage._lease_init(interval, grace, callback)
    return storage


# ---- outages -------------------------------------------------------------------------------------
def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage server is out of reach (worth retrying), as opposed
    to a refused or invalid operation (not worth retrying)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):  # builtins, incl. refused/reset
            return True
        module = type(current).__module__
        name = type(current).__name__
        if module.startswith("redis") and name in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
            return True
        if module.startswith("sqlalchemy") and name in (
            "OperationalError",
            "InterfaceError",
            "DisconnectionError",
        ):
            return True
        if module.startswith("psycopg2") and name in ("OperationalError", "InterfaceError"):
            return True
        if getattr(current, "connection_invalidated", False):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Delegates to a storage and retries calls that fail while the server is unreachable.

    ``retry_seconds``: total time one call keeps retrying (exponential back-off from 0.5 s to
    10 s with jitter), then :class:`StorageUnavailable`. Everything else is passed through
    unchanged, so Optuna sees the wrapped storage's behaviour (and its heartbeat, if any).

    A retried write may have reached the server before its connection dropped: the callers
    treat a trial that is already in the state they set as set (see ``_worker.finish``).
    """

    def __init__(self, inner: BaseStorage, retry_seconds: float) -> None:
        self._inner = inner
        self._retry_seconds = retry_seconds

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._inner, name)
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.5
        failures = 0
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageUnavailable(
                        f"the study storage was unreachable for {self._retry_seconds:g} s "
                        f"({_first_line(exc)})"
                    ) from None
                if failures == 1:
                    logger.warning(
                        "study storage unreachable (%s); retrying for up to %g s",
                        _first_line(exc), self._retry_seconds,
                    )  # fmt: skip
                time.sleep(min(delay * (0.5 + random.random()), left))
                delay = min(delay * 2, 10.0)
                continue
            if failures:
                logger.warning("study storage reachable again after %d failed attempts", failures)
            return result

    def __getattr__(self, name: str) -> Any:  # anything not in the storage API
        if name == "_inner":  # during unpickling
            raise AttributeError(name)
        return getattr(self._inner, name)

    # BaseHeartbeat: only if the inner storage has one.
    def get_heartbeat_interval(self) -> int | None:
        if isinstance(self._inner, BaseHeartbeat):
            return self._inner.get_heartbeat_interval()
        return None


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    return method


# Every method of the storage and heartbeat API goes through ``_call`` (the inner storage
# may override the base class's defaults, e.g. a cached get_n_trials).
_SKIP = {"get_heartbeat_interval", "get_failed_trial_callback"}
for _name, _attr in {**vars(BaseHeartbeat), **vars(BaseStorage)}.items():
    if callable(_attr) and not _name.startswith("__") and _name not in _SKIP:
        setattr(RetryingStorage, _name, _delegate(_name))
RetryingStorage.__abstractmethods__ = frozenset()


# ---- opening a storage ---------------------------------------------------------------------------
def is_journal_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def _driver_hint(url: str, exc: BaseException) -> str:
    """For a plain ``postgresql://`` URL whose driver is missing: SQLAlchemy 2.1 maps it to
    psycopg 3, while the driver mtlsearch installs is psycopg2 (``postgresql+psycopg2://``)."""
    if not (isinstance(exc, ImportError) and url.startswith("postgresql://")):
        return ""
    import importlib.util

    fixed = "postgresql+psycopg2://" + url[len("postgresql://") :]
    if importlib.util.find_spec("psycopg2") is not None:
        return f"; SQLAlchemy 2.1 reads postgresql:// as psycopg 3, psycopg2 is installed: use {fixed}"
    return f"; SQLAlchemy 2.1 reads postgresql:// as psycopg 3: install it, or psycopg2 and use {fixed}"


def open_storage(url: str, heartbeat: bool = True, retry_seconds: float | None = None) -> BaseStorage:
    """An Optuna storage for ``url`` with the lease contract and outage retries.

    ``url``: ``sqlite:///...``, ``postgresql+psycopg2://...`` (SQLAlchemy 2.1 reads a plain
    ``postgresql://`` as psycopg 3), ``mysql://...`` (RDB, Optuna's heartbeat) or
    ``redis://host:port`` (journal, :class:`LeasedJournalStorage`). A SQLite file is put in
    write-ahead-log mode with ``synchronous=NORMAL`` (:func:`_fast_sqlite`: commits without
    fsync; what that gives up is said there).
    ``heartbeat``: False for read-only use (reports, export) — no lease, no retry callback.
    ``retry_seconds``: outage retry window (default :func:`storage_retry_seconds`).

    Raises :class:`~mtlsearch._errors.UserError` (one line) for a bad URL, a missing driver or
    a server that refuses at opening.
    """
    retry = storage_retry_seconds() if retry_seconds is None else retry_seconds
    interval, grace = heartbeat_interval(), grace_period()
    try:
        with warnings.catch_warnings():  # heartbeats and the journal are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if is_journal_url(url):
                inner: BaseStorage = leased_journal_storage(
                    url, interval, grace, retry_lost_trial
                ) if heartbeat else _plain_journal(url)  # fmt: skip
                inner.get_all_studies()  # connect now: a bad host is a one-line error here
            else:
                engine_kwargs: dict[str, Any] = {}
                if url.startswith("sqlite"):
                    engine_kwargs["connect_args"] = {"timeout": 60}
                else:  # a server: notice dead pooled connections instead of failing on them
                    engine_kwargs["pool_pre_ping"] = True
                    if url.startswith("postgres"):
                        engine_kwargs["connect_args"] = {"connect_timeout": 10}
                kwargs: dict[str, Any] = {}
                if heartbeat:
                    kwargs = dict(
                        heartbeat_interval=interval,
                        grace_period=grace,
                        heartbeat_stale_trial_callback=retry_lost_trial,
                    )
                rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
                if url.startswith("sqlite"):
                    _fast_sqlite(rdb.engine)
                inner = optuna.storages._CachedStorage(rdb)
    except Exception as exc:  # bad URL, server down, missing driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"--storage {url}: cannot open ({type(exc).__name__}: {first}){_driver_hint(url, exc)}"
        ) from None
    return RetryingStorage(inner, retry)


#: Set on every SQLite connection a storage opens (see :func:`_fast_sqlite`).
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL")


def _fast_sqlite(engine: Any) -> None:
    """Make each SQLite commit cheap: write-ahead log, synced at checkpoints only.

    In SQLite's default mode (rollback journal, ``synchronous=FULL``) every commit waits for
    several fsyncs: about 10-13 ms on our machines, and a trial commits 30-35 writes (each
    suggested parameter, each user attribute, every epoch's values, the state), which made
    storage writes the largest part of a trial's fixed cost (``benchmarks/trial_overhead.py``).
    With ``journal_mode=WAL`` and ``synchronous=NORMAL`` a commit is an append to the log
    (about 0.01 ms plus SQLAlchemy's own work); readers no longer block the writer, which
    also helps several workers on one SQLite file.

    What it gives up (SQLite's documentation, "Write-Ahead Logging"): after a power loss or
    an operating-system crash the last transactions may be rolled back (the database stays
    consistent; a killed *process* loses nothing). WAL needs shared memory, so the file must
    not be on a network file system (SQLite discourages that anyway), and the folder must
    be writable even to read the study (SQLite's ``-wal`` and ``-shm`` files live beside it).
    The journal mode is stored in the file: once set, every later opener uses WAL.

    The engine's pooled connections (opened while Optuna created its tables) are dropped,
    so every connection from now on gets the pragmas. A pragma SQLite refuses (a read-only
    file, a database another process holds locked) is logged and left as it was.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                try:
                    cursor.execute(f"PRAGMA {pragma}")
                except Exception as exc:  # read-only or locked: keep SQLite's default
                    logger.debug("SQLite PRAGMA %s not applied: %s", pragma, exc)
        finally:
            cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()


def _plain_journal(url: str) -> BaseStorage:
    journal, backend_cls = _journal_classes()
    return journal(backend_cls(url))
