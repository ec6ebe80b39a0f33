"""Workers that start together on a new SQLite MLflow store must not corrupt its schema.

Seen in benchmarks/faults.py: three workers opening a fresh ``mlflow.db`` at once ran MLflow's
schema migrations together and left it half-migrated (``table _alembic_tmp_metrics already
exists``); every worker then logged nothing. Real processes, released at the same moment.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
from pathlib import Path
go, uri, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
from mlflow import MlflowClient
from mtlsearch.tracking._mlflow import init_sqlite_store
while not go.exists():
    time.sleep(0.005)
init_sqlite_store(uri)
client = MlflowClient(uri)
experiment = client.create_experiment(name)
run = client.create_run(experiment)
client.log_metric(run.info.run_id, "m", 1.0)
client.set_terminated(run.info.run_id, "FINISHED")
"""


def test_four_processes_opening_a_new_store_at_once_all_log(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(go), uri, f"e{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(8)  # every process has imported MLflow and waits for the signal
    go.touch()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(o[-1500:] for o in outs)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
    assert names == ["e0", "e1", "e2", "e3"]
    runs = client.search_runs([client.get_experiment_by_name(n).experiment_id for n in names])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
