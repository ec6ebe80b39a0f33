"""The worker loop: take a ticket, run its trial under a lease, record the result — and stay up.

One worker runs one trial at a time (``mtlsearch search --n-jobs N`` runs N in threads). The
loop is Optuna's ask-and-tell, not ``Study.optimize``, so that every fault has one handling:

==============================  ============================================================
fault                           what the worker does
==============================  ============================================================
the trial raises                FAIL with ``fail_reason`` (one log line; the traceback goes
                                to the trial's ``fail_traceback`` attribute), next ticket
another worker died             its lease expires: the :class:`Reaper` thread of every worker
                                checks every few seconds, FAILs it (no reason of its own:
                                not counted) and re-enqueues its ticket, clean
this worker was paused past     its trial was taken over: the result is dropped with one log
the grace period (SIGSTOP,      line (the retry counts instead) and the worker takes the next
laptop lid, VM suspend)         ticket
the storage is unreachable      every call is retried with back-off for
                                ``$MTLSEARCH_STORAGE_RETRY`` s (default 300); then
                                :class:`~mtlsearch._errors.StorageUnavailable` (one line,
                                exit 75) and the lease expires for the others to recover
Ctrl-C / SIGTERM                the running trial is released at once (FAIL without a reason:
                                retried), observers close its run, the interrupt is re-raised
==============================  ============================================================
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from mtlsearch import _interrupt
from mtlsearch._errors import StorageUnavailable
from mtlsearch.search._storage import RetryingStorage, grace_period, heartbeat_interval, retry_lost_trial

logger = logging.getLogger(__name__)

WORKER_ATTR = "worker"
FAIL_ATTR = "fail_reason"
TRACEBACK_ATTR = "fail_traceback"
_MAX_TRACEBACK = 8000


def _direct(storage: Any) -> Any:
    """The storage without outage retries: background threads try again on their own timer
    instead of blocking in a retry loop."""
    return storage.inner if isinstance(storage, RetryingStorage) else storage


# ---- the lease of the running trial ----------------------------------------------------------
class Heartbeat:
    """Records the running trial's heartbeat every interval in a daemon thread.

    Unlike Optuna's heartbeat thread it never dies of an error: an unreachable storage is
    tried again at the next beat, and a trial that another worker has already failed sets
    :attr:`lost` (the journal storage tells at once; an RDB storage tells when the result is
    written).
    """

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._storage = _direct(storage)
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def start(self) -> Heartbeat:
        if isinstance(self._storage, BaseHeartbeat) and is_heartbeat_enabled(self._storage):
            self._thread.start()
        return self

    def _beat(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
                failing = False
            except UpdateFinishedTrialError:
                self.lost.set()
                return
            except Exception as exc:
                if not failing:
                    logger.debug("heartbeat of trial id %d failed (%s); trying again", self._trial_id, exc)
                failing = True
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)  # a beat blocked on a dead socket must not hold us


class Reaper:
    """Fails lost trials on a timer, in every worker, while trials run.

    Every ``period`` seconds (default ``min(5, interval)``): trials whose lease expired are
    failed and re-enqueued by :func:`~mtlsearch.search._storage.retry_lost_trial` (exactly one
    worker wins each: the storage refuses to fail a trial twice), and trials that were taken
    from the queue but never started (a worker killed between ``ask`` and its first heartbeat)
    likewise. A dead trial is thus retried within the grace period plus one period.
    """

    def __init__(self, ctx: Any, period: float | None = None, on_change: Callable[[], None] | None = None):
        self.ctx = ctx
        self.period = period if period is not None else min(5.0, float(heartbeat_interval()))
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                with _REAP_LOCK:  # a ticket not re-enqueued is topped up before anyone looks
                    if reap(self.ctx.study) and self.on_change is not None:
                        self.on_change()
            except Exception as exc:  # an outage: the next round tries again
                logger.debug("checking for lost trials failed: %s", exc)


#: Held while this process fails a lost trial and re-enqueues it: between the two steps the
#: study has neither a waiting nor a running trial, which must not end a worker's loop.
_REAP_LOCK = threading.RLock()


def reap(study: optuna.Study) -> int:
    """Fail (for retry) the study's lost trials now; returns how many this worker failed."""
    with _REAP_LOCK:
        return _reap(study)


def _reap(study: optuna.Study) -> int:
    storage = _direct(study._storage)
    failed = 0
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            failed += _fail_for_retry(study, storage, trial_id, "its worker stopped sending heartbeats")
    now, grace = datetime.datetime.now(), grace_period()
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        if WORKER_ATTR in t.user_attrs or started is None:
            continue
        if (now - started).total_seconds() > grace:
            failed += _fail_for_retry(study, storage, t._trial_id, "no worker ever started it")
    return failed


def _fail_for_retry(study: optuna.Study, storage: Any, trial_id: int, why: str) -> int:
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return 0
    except UpdateFinishedTrialError:  # another worker got there first
        return 0
    trial = storage.get_trial(trial_id)
    logger.info("trial %d lost (%s); failed for retry", trial.number, why)
    retry_lost_trial(study, trial)
    return 1


# ---- running trials ----------------------------------------------------------------------------
class TrialRunner:
    """Runs one ticket at a time for :func:`run_worker`; shared by the threads of one process
    so that an interrupt can release every trial the process holds."""

    def __init__(self, ctx: Any, objective: Callable[[optuna.Trial], Sequence[float]]) -> None:
        self.ctx = ctx
        self.objective = objective
        self._running: dict[int, optuna.Trial] = {}  # thread id -> trial
        self._released: set[int] = set()  # trial ids this process released (interrupt)
        self._lock = threading.Lock()

    # -- bookkeeping --
    def running(self) -> list[optuna.Trial]:
        with self._lock:
            return list(self._running.values())

    def release_all(self) -> None:
        """Fail every trial this process runs (no reason of its own: retried) and let the
        observers close their runs. Called on Ctrl-C / SIGTERM."""
        for trial in self.running():
            self._release(trial)

    def _release(self, trial: optuna.Trial) -> None:
        study = self.ctx.study
        storage = _direct(study._storage)
        try:
            released = False
            if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                try:
                    released = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                except UpdateFinishedTrialError:  # a reaper got there first and re-enqueued it
                    released = False
            frozen = storage.get_trial(trial._trial_id)
            if released:  # its ticket goes back now, with its configuration: no one waits for it
                retry_lost_trial(study, frozen, "was interrupted (Ctrl-C or SIGTERM)")
            self._notify_end(frozen, None)
        except Exception as exc:  # the storage may be what the interrupt broke
            logger.warning("could not release interrupted trial %d: %s", trial.number, exc)
        with self._lock:
            self._released.add(trial._trial_id)
            self._running = {k: v for k, v in self._running.items() if v is not trial}

    def _notify_end(self, frozen: FrozenTrial, result: Any | None) -> None:
        for obs in self.ctx.observers:
            obs.on_trial_end(self.ctx.study, frozen, result)

    # -- one trial --
    def run_one(self) -> FrozenTrial | None:
        """Ask for a ticket, run it, tell the result. Returns the recorded trial, or None when
        the result was dropped because another worker took the trial over."""
        study = self.ctx.study
        with warnings.catch_warnings():  # "supposed to be used with Study.optimize": we lease it
            warnings.simplefilter("ignore")
            trial = study.ask()
        with self._lock:
            self._running[threading.get_ident()] = trial
        heartbeat = Heartbeat(study._storage, trial._trial_id, heartbeat_interval()).start()
        state, values, error = TrialState.FAIL, None, None
        try:
            values = self.objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except StorageUnavailable:
            raise
        except Exception as exc:  # recorded below, with the traceback kept in the trial
            error = exc
        except BaseException:  # Ctrl-C, SIGTERM: release the trial for an immediate retry
            heartbeat.stop()
            self._release(trial)
            raise
        finally:
            heartbeat.stop()
        try:
            return self._finish(trial, state, values, error, heartbeat.lost.is_set())
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted while recording: release it too
                self._release(trial)
            raise
        finally:
            with self._lock:
                self._running.pop(threading.get_ident(), None)

    def _finish(
        self,
        trial: optuna.Trial,
        state: TrialState,
        values: Sequence[float] | None,
        error: Exception | None,
        lost: bool,
    ) -> FrozenTrial | None:
        study = self.ctx.study
        with self._lock:
            released = trial._trial_id in self._released
        if released:  # this process gave it back (Ctrl-C with several workers): nothing to say
            self.ctx.results.pop(trial.number, None)
            return None
        stored = study._storage.get_trial(trial._trial_id)
        if lost or stored.state != TrialState.RUNNING:
            return self._dropped(stored)
        if error is not None and trial.user_attrs.get("surplus"):
            logger.debug("trial %d: no ticket left (another worker took the last one)", trial.number)
        elif error is not None:  # a failure of its own: counted, with its reason and traceback
            reason = trial.user_attrs.get(FAIL_ATTR) or f"{type(error).__name__}: {error}"
            text = "".join(traceback.format_exception(error))
            try:
                if FAIL_ATTR not in trial.user_attrs:
                    trial.set_user_attr(FAIL_ATTR, reason)
                trial.set_user_attr(TRACEBACK_ATTR, text[-_MAX_TRACEBACK:])
            except UpdateFinishedTrialError:
                return self._dropped(study._storage.get_trial(trial._trial_id))
            logger.warning("trial %d failed: %s", trial.number, str(reason).splitlines()[0])
            logger.debug("trial %d failed:\n%s", trial.number, text)
        try:
            frozen = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        except (UpdateFinishedTrialError, ValueError) as exc:
            again = study._storage.get_trial(trial._trial_id)
            ours = again.state == state and (
                state != TrialState.COMPLETE or _same(again.values, values)
            )  # a retried write that had reached the server before its connection dropped
            if not ours:
                if again.state == TrialState.RUNNING:
                    raise exc
                return self._dropped(again)
            frozen = again
        if state == TrialState.COMPLETE:
            logger.info("trial %d finished: %s", trial.number, [round(v, 6) for v in frozen.values or []])
        elif state == TrialState.PRUNED:
            logger.info("trial %d pruned: %s", trial.number, trial.user_attrs.get("pruned_reason", ""))
        self._notify_end(frozen, self.ctx.results.pop(trial.number, None))
        return frozen

    def _dropped(self, stored: FrozenTrial) -> None:
        logger.warning(
            "trial %d was taken over while this worker was unreachable or paused (now %s); "
            "its result is dropped and the retried trial counts instead",
            stored.number, stored.state.name,
        )  # fmt: skip
        self.ctx.results.pop(stored.number, None)
        self._notify_end(stored, None)
        return None


def _same(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    return a is not None and b is not None and [float(x) for x in a] == [float(x) for x in b]


def progress(study: optuna.Study) -> tuple[int, dict[TrialState, int]]:
    """The study's counted trials (``count_finished``) and trials per state, from one read.

    The worker loop asks both before every ticket; with the tickets of the budget waiting in
    the storage, each read re-reads every unfinished trial (Optuna's cache keeps finished
    ones only), so two reads cost twice (``benchmarks/trial_overhead.py``, column ``loop``)."""
    from mtlsearch.search._study import _is_counted

    counts: dict[TrialState, int] = {}
    finished = 0
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
        finished += _is_counted(t)
    return finished, counts


def run_worker(
    ctx: Any,
    timeout: float | None = None,
    poll: float = 2.0,
    runner: TrialRunner | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the study's tickets until its budget is used up, ``timeout`` seconds pass or
    ``stop`` is set. Returns the number of trials this worker recorded.

    Raises :class:`~mtlsearch._errors.StorageUnavailable` when the storage stays out of reach
    past the retry window, and re-raises ``KeyboardInterrupt`` (and the CLI's SIGTERM
    subclass of it) after releasing the running trial.
    """
    from mtlsearch.search._study import _state_counts, _top_up_tickets, count_finished, make_objective

    study = ctx.study
    runner = runner or TrialRunner(ctx, make_objective(ctx))
    reaper = Reaper(ctx, on_change=lambda: _top_up_tickets(ctx)).start() if ctx.heartbeat else None
    start, ran = time.monotonic(), 0
    try:
        if ctx.heartbeat and reap(study):  # a resumed study: lost trials go back at once
            _top_up_tickets(ctx)
        while stop is None or not stop.is_set():
            _interrupt.check()  # a Ctrl-C/SIGTERM whose raise was swallowed (see _interrupt)
            if timeout is not None and time.monotonic() - start > timeout:
                logger.info("timeout reached after %d trials", ran)
                break
            finished, counts = progress(study)  # one read of the study per ticket
            if finished >= ctx.settings.n_trials:
                break
            if counts.get(TrialState.WAITING, 0) == 0:
                if counts.get(TrialState.RUNNING, 0) == 0:
                    with _REAP_LOCK:  # not between failing a lost trial and re-enqueuing it
                        counts = _state_counts(study)
                    if counts.get(TrialState.WAITING, 0) or counts.get(TrialState.RUNNING, 0):
                        continue
                    if count_finished(study) < ctx.settings.n_trials:  # another thread may just have ended it
                        logger.info("no trial left to run; `mtlsearch search --study` tops the budget up")
                    break
                time.sleep(poll)  # others are running; one may be lost and come back
                continue
            if runner.run_one() is not None:
                ran += 1
    finally:
        if reaper is not None:
            reaper.stop()
    return ran
