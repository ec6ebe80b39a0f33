"""Per-trial overhead cuts (issue 14): the SQLite storage's journal settings and the worker
loop's single read. The timings themselves are in benchmarks/trial_overhead.py."""

from __future__ import annotations

import sqlite3

import optuna
from optuna.trial import TrialState

from mtlsearch.search import open_storage
from mtlsearch.search._storage import TICKET_ATTR
from mtlsearch.search._study import _state_counts, count_finished
from mtlsearch.search._worker import FAIL_ATTR, progress

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_sqlite_study_uses_a_write_ahead_log_synced_at_checkpoints(tmp_path):
    path = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{path}", heartbeat=True)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("n", 1, 4)), n_trials=3)
    # the journal mode is stored in the file: any other opener (sqlite3 here) sees WAL
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the storage's own connections: synchronous NORMAL (1), not SQLite's default FULL (2)
    engine = storage.inner._backend.engine
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # a second storage on the same file (another worker) reads what the first wrote
    again = optuna.load_study(study_name="s", storage=open_storage(f"sqlite:///{path}", heartbeat=False))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 3


def test_worker_progress_is_count_finished_and_state_counts_from_one_read(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, directions=["maximize"])

    def add(state, **attrs):
        values = [0.5] if state == TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs=attrs))

    add(TrialState.COMPLETE)
    add(TrialState.COMPLETE)
    add(TrialState.PRUNED)
    add(TrialState.FAIL, **{FAIL_ATTR: "ValueError: bad"})  # failed for a reason of its own: counted
    add(TrialState.FAIL)  # lost with its worker (retried): not counted
    study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})
    study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})
    study.ask()  # one of the two tickets is now RUNNING

    finished, counts = progress(study)
    assert finished == 4  # 2 complete + 1 pruned + 1 failed with a reason
    assert counts == {
        TrialState.COMPLETE: 2,
        TrialState.PRUNED: 1,
        TrialState.FAIL: 2,
        TrialState.WAITING: 1,
        TrialState.RUNNING: 1,
    }
    assert (finished, counts) == (count_finished(study), _state_counts(study))
