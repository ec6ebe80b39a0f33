"""Workers in separate processes against real PostgreSQL and Redis servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from _procs import stopped_when
from _services import require_postgres, require_redis
from optuna.trial import TrialState

from mtlsearch.search import SearchSettings, count_finished, create_or_resume

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()


def _create(url: str, n_trials: int, space_text: str = QUICK, n: int = 1500, refs: bool = True) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    settings = SearchSettings(
        space_text=space_text,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": n, "d": 20},
        sampler="tpe",
        seed=1,
        n_trials=n_trials,
        enqueue_references=refs,
    )
    create_or_resume(name, url, settings)
    return name


def _worker(name: str, url: str, tmp_path: Path, env_extra: dict | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "worker",
        "--study",
        name,
        "--storage",
        url,
        "--no-mlflow",
        "--quiet",
    ]
    env = {**os.environ, **(env_extra or {})}
    log = open(tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("worker-*.log"))


def _assert_exact(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials()
    assert count_finished(study) == n_trials
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Every ticket ran once: each complete trial was run by one worker, and no two
    # complete trials came from the same ticket (a retried ticket keeps its origin).
    assert all("worker" in t.user_attrs for t in complete)
    origins = [t.system_attrs.get("failed_trial", t.number) for t in complete]
    assert len(set(origins)) == len(origins)


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_two_workers_finish_exactly_the_budget(tmp_path, backend):
    url = require_postgres() if backend == "postgresql" else require_redis()
    name = _create(url, n_trials=7)
    procs = [_worker(name, url, tmp_path) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=1800) == 0, _logs(tmp_path)
    study = optuna.load_study(study_name=name, storage=create_storage(url))
    _assert_exact(study, 7)
    # Both workers took part (each ran at least one trial).
    workers = {t.user_attrs["worker"] for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert len(workers) == 2, workers


def create_storage(url: str):
    from mtlsearch.search import open_storage

    return open_storage(url, heartbeat=False)


def test_a_killed_worker_trial_fails_after_the_grace_period_and_is_retried(tmp_path):
    url = require_postgres()
    slow = QUICK.replace("epochs: 3", "epochs: 25")  # a trial lasts long enough to be killed
    name = _create(url, n_trials=3, space_text=slow, n=2000, refs=False)
    env = {"MTLSEARCH_HEARTBEAT_INTERVAL": "1", "MTLSEARCH_GRACE_PERIOD": "3"}
    victim = _worker(name, url, tmp_path, env)
    storage = create_storage(url)
    running_states = (TrialState.RUNNING,)
    running = stopped_when(  # mid-trial (at least one epoch reported), caught with the worker stopped
        victim,
        lambda: [
            t
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(states=running_states)
            if t.user_attrs.get("epoch_values")
        ],
        limit=120,
    )
    assert running, _logs(tmp_path)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed = running[0].number
    state = optuna.load_study(study_name=name, storage=storage).trials[killed].state
    assert state == TrialState.RUNNING, f"trial {killed} ended before the kill ({state})"

    survivor = _worker(name, url, tmp_path, env)
    assert survivor.wait(timeout=1800) == 0, _logs(tmp_path)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed].state == TrialState.FAIL
    assert "fail_reason" not in trials[killed].user_attrs  # lost, not failed on its own
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    _assert_exact(study, 3)
