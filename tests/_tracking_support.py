"""One small tracked study, built once per test session and shared by the tracking, report
and export tests (a search with MLflow logging takes a while on two cores).

It is made the way a user makes one: ``mtlsearch search`` in a subprocess, with the default
tracking URI (``mlflow.db`` beside the study's SQLite file) and two objectives with a real
trade-off (``y1`` and ``params``), so the front has several members.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 8
DATA_OPTIONS = {"n": 1500, "d": 20}
SEED = 7


@dataclass(frozen=True)
class TrackedStudy:
    folder: Path
    name: str
    storage: str
    tracking_uri: str

    def load(self) -> optuna.Study:
        from mtlsearch.search import load_study

        return load_study(self.name, self.storage)


_CACHE: dict[str, TrackedStudy] = {}


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        # the default tracking URI is under test: a URI from the environment would win
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )


def tracked_study(tmp_path_factory) -> TrackedStudy:
    """The shared study (built on first use)."""
    if "study" in _CACHE:
        return _CACHE["study"]
    folder = tmp_path_factory.mktemp("tracked")
    storage = f"sqlite:///{folder / 'study.db'}"
    options = [a for k, v in DATA_OPTIONS.items() for a in ("--data-option", f"{k}={v}")]
    proc = run_cli(
        "search",
        "--space",
        str(ROOT / "search_spaces" / "quick.yaml"),
        "--dataset",
        "synthetic",
        *options,
        "--n-trials",
        str(N_TRIALS),
        "--study",
        "tracked",
        "--storage",
        storage,
        "--sampler",
        "random",
        "--seed",
        str(SEED),
        "--objectives",
        "y1",
        "--objectives",
        "params",
        "--quiet",
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = TrackedStudy(folder, "tracked", storage, f"sqlite:///{folder / 'mlflow.db'}")
    _CACHE["study"] = study
    return study
