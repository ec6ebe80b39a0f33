"""Workers that survive real faults, on real PostgreSQL and Redis servers.

Every fault is made for real: worker processes (``mtlsearch worker``) are SIGKILLed,
SIGSTOPped past the grace period, cut off from the storage by a TCP proxy that drops their
connections, or sent SIGTERM. Waits are on events (a trial's state, a process's exit) with
limits far above any plausible time; nothing here asserts speed (benchmarks/faults.py
measures how fast dead trials come back).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from _procs import stopped_when
from _proxy import CuttableProxy
from _services import require_postgres, require_redis
from optuna.trial import FrozenTrial, TrialState

from mtlsearch.search import SearchSettings, count_finished, create_or_resume, open_storage

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()
LONG = QUICK.replace("epochs: 3", "epochs: 30")  # a trial lasts long enough to be hit mid-way
FAST_LEASE = {"MTLSEARCH_HEARTBEAT_INTERVAL": "1", "MTLSEARCH_GRACE_PERIOD": "4"}
LIMIT = 240  # seconds: far above any plausible wait; a hang fails instead of blocking CI


def _url(backend: str) -> str:
    return require_postgres() if backend == "postgresql" else require_redis()


def _create(url: str, n_trials: int, space_text: str = LONG) -> str:
    name = f"f-{uuid.uuid4().hex[:10]}"
    settings = SearchSettings(
        space_text=space_text,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 1500, "d": 20},
        sampler="random",
        seed=3,
        n_trials=n_trials,
        enqueue_references=False,
    )
    create_or_resume(name, url, settings, heartbeat=False)
    return name


class Workers:
    """``mtlsearch worker`` processes with their logs in tmp_path."""

    def __init__(self, tmp_path: Path, name: str, url: str) -> None:
        self.tmp_path, self.name, self.url = tmp_path, name, url
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(
        self, url: str | None = None, env: dict[str, str] | None = None, *extra: str
    ) -> subprocess.Popen:
        cmd = [sys.executable, str(ROOT / "cli.py"), "worker", "--study", self.name]
        cmd += ["--storage", url or self.url, "--no-mlflow", "--quiet", *extra]
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd,
            cwd=self.tmp_path,
            env={**os.environ, **FAST_LEASE, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def log(self, i: int) -> str:
        return self.logs[i].read_text()

    def all_logs(self) -> str:
        return "\n".join(f"--- worker {i}\n{p.read_text()[-3000:]}" for i, p in enumerate(self.logs))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


_STORAGES: dict[str, object] = {}


def _study(url: str, name: str) -> optuna.Study:
    """The study as the storage holds it now (one storage object per URL: each new one would
    open a connection pool or replay the whole journal)."""
    if url not in _STORAGES:
        _STORAGES[url] = open_storage(url, heartbeat=False)
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


def _wait(what: str, check: Callable[[], object], workers: Workers, limit: float = LIMIT) -> object:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{workers.all_logs()}")


def _mid_trial_of(study_fn: Callable[[], optuna.Study], pid: int) -> Callable[[], FrozenTrial | None]:
    """A check: the RUNNING trial of worker ``pid`` once it has reported an epoch."""

    def check() -> FrozenTrial | None:
        for t in study_fn().get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{pid}") and t.user_attrs.get("epoch_values"):
                return t
        return None

    return check


def _assert_exact(study: optuna.Study, n_trials: int) -> list[FrozenTrial]:
    """The budget is met exactly: nothing waiting or running, no ticket completed twice."""
    trials = study.get_trials()
    assert count_finished(study) == n_trials
    assert not [t.number for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    origins = [t.system_attrs.get("failed_trial", t.number) for t in complete]
    assert len(set(origins)) == len(origins), origins
    return trials


def _retries_of(study: optuna.Study, number: int) -> list[FrozenTrial]:
    return [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == number]


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_a_killed_workers_trial_is_failed_by_a_busy_worker_and_retried_clean(tmp_path, backend):
    """SIGKILL mid-trial. The survivor is itself mid-trial: its reaper thread (not its next
    ask) fails the dead trial, and the retry carries none of the dead worker's attributes."""
    url = _url(backend)
    name = _create(url, n_trials=3)
    w = Workers(tmp_path, name, url)
    try:
        # Both start together, so each takes one of the three tickets (a survivor that starts
        # late on a loaded machine could find every ticket taken and never be busy).
        victim, survivor = w.start(), w.start()
        study = lambda: _study(url, name)  # noqa: E731
        busy = _wait("the survivor mid-trial", _mid_trial_of(study, survivor.pid), w)
        dead = _wait("the victim mid-trial", _mid_trial_of(study, victim.pid), w)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert study().trials[dead.number].state == TrialState.RUNNING  # killed mid-trial
        retry = _wait("the dead trial's retry", lambda: _retries_of(study(), dead.number), w)[0]
        now = study().trials
        assert now[dead.number].state == TrialState.FAIL
        assert "fail_reason" not in now[dead.number].user_attrs  # lost, not failed on its own
        if now[busy.number].state == TrialState.RUNNING:  # the usual case: found while busy
            assert retry.state == TrialState.WAITING
        # The retry is clean: the dead worker's worker, epochs and config did not follow it.
        assert retry.params == dead.params
        if retry.state == TrialState.WAITING:
            assert set(retry.user_attrs) <= {"ticket", "preset"}, retry.user_attrs
        assert survivor.wait(timeout=LIMIT) == 0, w.all_logs()
        final = study()
        _assert_exact(final, 3)
        done = final.trials[retry.number]
        assert done.state == TrialState.COMPLETE
        assert done.user_attrs["worker"].endswith(f":{survivor.pid}")
        assert len(done.user_attrs["epoch_values"]) == 30  # its own epochs, not the dead one's
        assert "Traceback" not in w.log(1)
    finally:
        w.stop_all()


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_a_worker_paused_past_the_grace_period_drops_its_result_and_goes_on(tmp_path, backend):
    """SIGSTOP (laptop lid, VM suspend) past the grace period: another worker takes the trial
    over; the paused worker wakes, logs one line, drops its result and runs the next ticket."""
    url = _url(backend)
    name = _create(url, n_trials=4)
    w = Workers(tmp_path, name, url)
    try:
        sleeper = w.start()
        study = lambda: _study(url, name)  # noqa: E731
        paused = _wait("the sleeper mid-trial", _mid_trial_of(study, sleeper.pid), w)
        sleeper.send_signal(signal.SIGSTOP)
        other = w.start()
        _wait("the paused trial's retry", lambda: _retries_of(study(), paused.number), w)
        sleeper.send_signal(signal.SIGCONT)
        assert sleeper.wait(timeout=LIMIT) == 0, w.all_logs()
        assert other.wait(timeout=LIMIT) == 0, w.all_logs()
        log = w.log(0)
        assert "Traceback" not in log, log
        assert f"trial {paused.number} was taken over" in log
        final = study()
        trials = _assert_exact(final, 4)
        assert final.trials[paused.number].state == TrialState.FAIL
        # The sleeper went on after dropping its result (it recorded at least one more trial,
        # unless the other worker had already finished the budget).
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{sleeper.pid}")]
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in mine)
    finally:
        w.stop_all()


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_a_storage_outage_past_the_grace_period_is_survived(tmp_path, backend):
    """A worker's connection to the storage is cut mid-trial for longer than the grace
    period, then restored: it retries with back-off instead of dying, finds its trial
    taken over, drops it and finishes the budget with the other worker."""
    url = _url(backend)
    host_port = ("127.0.0.1", 5432 if backend == "postgresql" else 6379)
    name = _create(url, n_trials=4)
    proxy = CuttableProxy(host_port)
    w = Workers(tmp_path, name, url)
    try:
        cut_off = w.start(proxy.url_for(url), {"MTLSEARCH_STORAGE_RETRY": "120"})
        study = lambda: _study(url, name)  # noqa: E731
        hit = stopped_when(cut_off, _mid_trial_of(study, cut_off.pid), LIMIT)  # the worker stopped
        assert hit, f"the cut-off worker never seen mid-trial\n{w.all_logs()}"
        proxy.cut()
        cut_off.send_signal(signal.SIGCONT)
        other = w.start()
        _wait("the cut-off trial's retry", lambda: _retries_of(study(), hit.number), w)
        time.sleep(2)  # the outage outlasts the takeover
        proxy.restore()
        assert cut_off.wait(timeout=LIMIT) == 0, w.all_logs()
        assert other.wait(timeout=LIMIT) == 0, w.all_logs()
        log = w.log(0)
        assert "Traceback" not in log, log
        assert "study storage unreachable" in log
        _assert_exact(study(), 4)
    finally:
        proxy.close()
        w.stop_all()


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_an_outage_longer_than_the_retry_window_ends_the_worker_with_one_line(tmp_path, backend):
    url = _url(backend)
    host_port = ("127.0.0.1", 5432 if backend == "postgresql" else 6379)
    name = _create(url, n_trials=2, space_text=QUICK.replace("epochs: 3", "epochs: 12"))
    proxy = CuttableProxy(host_port)
    w = Workers(tmp_path, name, url)
    try:
        cut_off = w.start(proxy.url_for(url), {"MTLSEARCH_STORAGE_RETRY": "3"})
        study = lambda: _study(url, name)  # noqa: E731
        hit = stopped_when(cut_off, _mid_trial_of(study, cut_off.pid), LIMIT)  # the worker stopped
        assert hit, f"the cut-off worker never seen mid-trial\n{w.all_logs()}"
        proxy.cut()
        cut_off.send_signal(signal.SIGCONT)
        assert cut_off.wait(timeout=LIMIT) == 75, w.all_logs()
        log = w.log(0)
        assert "Traceback" not in log, log
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "unreachable for 3 s" in errors[0], log
        other = w.start()  # the trial comes back once its lease expires
        assert other.wait(timeout=LIMIT) == 0, w.all_logs()
        final = study()
        _assert_exact(final, 2)
        assert final.trials[hit.number].state == TrialState.FAIL
    finally:
        proxy.close()
        w.stop_all()


def test_sigterm_releases_the_trial_closes_its_mlflow_run_and_exits_143(tmp_path):
    """What a scheduler sends: like Ctrl-C, the trial is released for an immediate retry
    (FAIL without a reason of its own), its MLflow run is closed, the exit code is 143."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    (tmp_path / "long.yaml").write_text(LONG)
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", "--space", str(tmp_path / "long.yaml")]
    cmd += ["--dataset", "synthetic", "-o", "n=1500", "-o", "d=20", "--n-trials", "2", "--no-references"]
    cmd += ["--study", "t", "--storage", url, "--quiet"]
    log = tmp_path / "search.log"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    w = Workers(tmp_path, "t", url)
    w.logs.append(log)
    try:
        study = lambda: optuna.load_study(study_name="t", storage=url)  # noqa: E731

        def started():
            try:
                return _mid_trial_of(study, proc.pid)()
            except KeyError:  # not created yet
                return None

        hit = _wait("the search mid-trial", started, w)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=LIMIT) == 143, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text and "terminated (SIGTERM)" in text, text
        trial = study().trials[hit.number]
        assert trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs
        # Its ticket went back at once, with its configuration: no one waits for a lease.
        retry = _retries_of(study(), hit.number)
        assert len(retry) == 1 and retry[0].state == TrialState.WAITING
        assert retry[0].params == hit.params and set(retry[0].user_attrs) <= {"ticket", "preset"}
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("t")
        runs = client.search_runs([experiment.experiment_id], f"tags.trial_number = '{hit.number}'")
        assert len(runs) == 1 and runs[0].info.status in ("KILLED", "FAILED"), [r.info for r in runs]
    finally:
        w.stop_all()
