"""Two ``mtlsearch worker`` processes logging one study to a real ``mlflow server``.

The server is started by the test on 127.0.0.1 (a free port, SQLite backend and artifact
store in a temp dir) and always terminated. The study is created without MLflow, so both
workers start together and race to create the study's parent run: they must settle on one.
The study itself lives in PostgreSQL, like the distributed-search tests' studies: SQLite
does not lock a waiting trial against a second process (it ignores SELECT ... FOR UPDATE),
so two processes on one SQLite file can take the same ticket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest
from _services import require_postgres
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.trial import TrialState

from mtlsearch.search import (
    SearchSettings,
    count_finished,
    create_or_resume,
    load_study,
    objectives_of,
    pareto_front,
)
from mtlsearch.tracking import PARENT_ATTR, RUN_ID_ATTR, URI_ATTR

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_executable() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    found = str(beside) if beside.exists() else shutil.which("mlflow")
    if not found:
        pytest.fail("the mlflow command is not installed (it comes with the mlflow package)")
    return found


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                _mlflow_executable(),
                "server",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'server.db'}",
                "--artifacts-destination",
                str(tmp_path / "server-artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with everything it spawns
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 120 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def _worker(name: str, storage: str, url: str, folder: Path) -> subprocess.Popen:
    log = open(folder / f"worker-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(ROOT / "cli.py"), "worker", "--study", name, "--storage", storage]
    return subprocess.Popen(
        [*cmd, "--tracking-uri", url, "--quiet"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _logs(folder: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in folder.glob("worker-*.log"))


@pytest.fixture(autouse=True)
def _reset_mlflow_globals():
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture
def storage():
    return require_postgres()  # before the server starts: a missing database skips at once


def test_two_workers_log_one_study_with_its_front_to_an_mlflow_server(storage, mlflow_server, tmp_path):
    name = f"served-{uuid.uuid4().hex[:8]}"
    settings = SearchSettings(
        space_text=(ROOT / "search_spaces" / "quick.yaml").read_text(),
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 1000, "d": 12},
        objectives=("y1", "params"),
        sampler="random",
        seed=5,
        n_trials=N_TRIALS,
    )
    create_or_resume(name, storage, settings)
    workers = [_worker(name, storage, mlflow_server, tmp_path) for _ in range(2)]
    try:
        for w in workers:
            assert w.wait(timeout=400) == 0, _logs(tmp_path)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    study = load_study(name, storage)
    assert count_finished(study) == N_TRIALS
    mlflow.set_tracking_uri(mlflow_server)  # artifact calls resolve runs in the global store
    assert study.user_attrs[URI_ATTR] == mlflow_server
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)

    # one parent: racing workers settled on the same run and deleted their own
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`mtlsearch.role` = 'study'", run_view_type=ViewType.ALL
    )
    active = [p for p in parents if p.info.lifecycle_stage == "active"]
    assert [p.info.run_id for p in active] == [study.user_attrs[PARENT_ATTR]]
    parent_id = active[0].info.run_id

    runs = client.search_runs([experiment.experiment_id], "tags.`mtlsearch.role` = 'trial'", max_results=1000)
    tracked = {t.number: t for t in study.trials if RUN_ID_ATTR in t.user_attrs}
    assert {t.number for t in study.trials if t.state == TrialState.COMPLETE} <= set(tracked)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == sorted(tracked)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent_id}
    assert len({r.data.tags["worker"] for r in runs}) == 2  # both workers logged trials

    front = client.search_runs([experiment.experiment_id], filter_string="tags.pareto_front = 'true'")
    numbers = sorted(int(r.data.tags["trial_number"]) for r in front)
    assert numbers == sorted(t.number for t in study.best_trials)
    assert numbers == sorted(t.number for t in pareto_front(study, objectives_of(study)))
    for run in front:  # artifacts went through the server to its artifact store
        files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/model.pt", "checkpoint/config.yaml"} <= files
    assert (tmp_path / "server-artifacts").is_dir()
    path = client.download_artifacts(parent_id, "front/front.json", str(tmp_path))
    assert sorted(r["trial"] for r in json.loads(Path(path).read_text())) == numbers

    # export fetches the picked model from the server the study recorded
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "export", "--study", name, "--storage", storage,
         "--pick", "knee", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "pick.json").read_text())
    assert info["checkpoint"] == "mlflow" and info["trial"] in numbers
    assert (out / "serving" / "model.pt2").is_file()
