"""What ``mtlsearch search`` says and returns when the search itself cannot succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def _search(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", "--space", str(ROOT / "search_spaces/quick.yaml")]
    cmd += ["--dataset", "synthetic", "-o", "n=600", "-o", "d=20", "--study", "x", "--no-mlflow"]
    cmd += ["--storage", f"sqlite:///{tmp_path / 's.db'}", *extra]
    return subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600
    )


def test_n_jobs_below_one_is_refused_before_anything_is_written(tmp_path):
    for value in ("0", "-2"):
        proc = _search(tmp_path, "--n-jobs", value)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: --n-jobs: must be >= 1, got {value}"
    assert not (tmp_path / "s.db").exists()


def test_a_search_whose_every_trial_fails_exits_1_with_a_summary_and_no_traceback(tmp_path):
    # Every trial needs more than 1 KiB: each fails at once with the memory estimate.
    env = {"MTLSEARCH_MAX_MEMORY": "1024"}
    proc = _search(tmp_path, "--n-trials", "3", "--quiet", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(
        "error: every trial of study x failed (3): "
        "3 x MemoryLimitExceeded (trial 0: MemoryLimitExceeded: model "
    ), errors[0]
    study = optuna.load_study(study_name="x", storage=f"sqlite:///{tmp_path / 's.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    # The traceback is kept with the trial, not printed.
    assert all("MemoryLimitExceeded" in t.user_attrs["fail_traceback"] for t in trials)
    assert all("Traceback (most recent call last)" in t.user_attrs["fail_traceback"] for t in trials)


def test_with_verbose_the_failing_trials_traceback_is_logged(tmp_path):
    space = str(ROOT / "search_spaces/quick.yaml")
    cmd = [sys.executable, str(ROOT / "cli.py"), "-v", "search", "--space", space, "--dataset", "synthetic"]
    cmd += ["-o", "n=600", "-o", "d=20", "--study", "v", "--no-mlflow", "--quiet", "--n-trials", "1"]
    cmd += ["--storage", f"sqlite:///{tmp_path / 's.db'}"]
    env = {**os.environ, "MTLSEARCH_MAX_MEMORY": "1024"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr


def test_bad_environment_settings_are_refused_before_anything_is_written(tmp_path):
    """Found by the first trial instead, they would fail (and use up) the whole budget."""
    cases = [
        ({"MTLSEARCH_GRACE_PERIOD": "inf"}, "$MTLSEARCH_GRACE_PERIOD: must be between 1 and 604800 seconds"),
        ({"MTLSEARCH_HEARTBEAT_INTERVAL": "1e400"}, "$MTLSEARCH_HEARTBEAT_INTERVAL: must be between"),
        (
            {"MTLSEARCH_HEARTBEAT_INTERVAL": "10", "MTLSEARCH_GRACE_PERIOD": "3"},
            "$MTLSEARCH_GRACE_PERIOD: 3 s is less than twice the heartbeat interval",
        ),
        ({"MTLSEARCH_STORAGE_RETRY": "abc"}, "$MTLSEARCH_STORAGE_RETRY: expected a number of seconds"),
        ({"MTLSEARCH_MAX_MEMORY": "abc"}, "MTLSEARCH_MAX_MEMORY: expected a size"),
    ]
    for env, message in cases:
        proc = _search(tmp_path, "--n-trials", "1", "--quiet", env=env)
        assert proc.returncode == 2, (env, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (env, proc.stderr)
        assert not (tmp_path / "s.db").exists(), env
