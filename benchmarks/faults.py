"""Benchmark of record (not a test): a search that survives the faults a cluster sees daily.

Why: an operator running ``mtlsearch worker`` on many machines needs to know what a killed,
paused, cut-off or terminated worker costs the study. This script runs one scripted search per
storage (PostgreSQL and Redis on 127.0.0.1) with three workers, injects the faults for real,
and counts what happened to every ticket and every MLflow run.

Scenario, per storage (``--trials`` tickets, default 20; the lease defaults: heartbeat every
10 s, grace 30 s; the storage retry window the default 300 s):

1. three ``mtlsearch worker`` processes start; worker 2 reaches the storage through a TCP proxy
   on 127.0.0.1 that can cut its connections. All log to one default MLflow store
   (``mlflow.db``, SQLite, in the run's folder), as three workers of one machine would;
2. once two trials are complete: **SIGKILL** worker 0 mid-trial (a replacement starts, as a
   scheduler would restart it);
3. **SIGSTOP** worker 1 mid-trial for grace + 15 s, then SIGCONT; while it sleeps,
4. **cut** worker 2's storage connection mid-trial for ``--cut`` seconds (default 90), and
   while both last,
5. **SIGKILL** the first replacement mid-trial (a second replacement starts), and
6. **SIGTERM** the second replacement mid-trial (a third replacement starts); then the pause
   and the cut end;
7. wait until every worker has exited.

Printed per storage: tickets requested; trials complete / failed for a reason of their own /
lost and retried; **duplicated** (two COMPLETE trials from one ticket), **lost** (tickets
neither counted nor pending at the end), **stuck** (WAITING or RUNNING at the end); MLflow
runs per COMPLETE trial (how many have exactly one FINISHED run); each worker's exit code and
whether its log holds a traceback; and for each killed trial the seconds from the kill until
its retry was enqueued, against grace + 10 s.

Run from the repository root (PostgreSQL and Redis must be up; about 5 minutes a storage)::

    .venv/bin/python benchmarks/faults.py --out /tmp/bench/faults.md

``--quick`` is a short run for a smoke test (fewer tickets, a 10 s cut, a 2/6 s lease).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the cuttable TCP proxy is shared with the fault tests

import optuna  # noqa: E402
from _proxy import CuttableProxy  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from mtlsearch.search import SearchSettings, count_finished, create_or_resume, open_storage  # noqa: E402

URLS = {
    "postgresql": ("postgresql+psycopg2://postgres@127.0.0.1:5432/test", ("127.0.0.1", 5432)),
    # A database of its own: Optuna's Redis journal keeps every study of a database in one
    # log that each worker replays, so the tests' studies in database 0 would slow it down.
    "redis": ("redis://127.0.0.1:6379/13", ("127.0.0.1", 6379)),
}


class Run:
    """One storage's scripted search."""

    def __init__(self, backend: str, folder: Path, args: argparse.Namespace) -> None:
        self.backend, self.folder, self.args = backend, folder, args
        self.url, self.target = URLS[backend]
        self.name = f"faults-{backend}-{uuid.uuid4().hex[:8]}"
        self.proxy = CuttableProxy(self.target)
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.storage = open_storage(self.url, heartbeat=False)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.quick:
            self.env.update({"MTLSEARCH_HEARTBEAT_INTERVAL": "2", "MTLSEARCH_GRACE_PERIOD": "6"})
        self.grace = 6 if args.quick else 30
        self.kills: list[tuple[int, float]] = []  # (trial number, seconds from kill to retry)
        self.events: list[str] = []

    # -- processes --
    def start(self, label: str, via_proxy: bool = False) -> subprocess.Popen:
        url = self.proxy.url_for(self.url) if via_proxy else self.url
        cmd = [sys.executable, str(ROOT / "cli.py"), "worker", "--study", self.name, "--storage", url]
        cmd += ["--tracking-uri", f"sqlite:///{self.folder / 'mlflow.db'}", "--quiet"]
        log = self.folder / f"{self.backend}-{label}.log"
        proc = subprocess.Popen(
            cmd, cwd=self.folder, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        self.procs.append((label, proc, log))
        return proc

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage)

    def wait_for(self, what: str, check, limit: float = 900) -> object:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise SystemExit(f"{self.backend}: timed out waiting for {what}")

    def mid_trial(self, proc: subprocess.Popen) -> int | None:
        for t in self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{proc.pid}") and t.user_attrs.get("epoch_values"):
                return t.number
        return None

    def note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(f"[{self.backend}] {text}", flush=True)

    # -- the scenario --
    def run(self) -> dict:
        space = (
            (ROOT / "search_spaces" / "quick.yaml")
            .read_text()
            .replace("epochs: 3", f"epochs: {self.args.epochs}")
        )
        settings = SearchSettings(
            space_text=space,
            space_source="quick.yaml",
            dataset="synthetic",
            dataset_options={"n": self.args.rows, "d": 20},
            sampler="tpe",
            seed=0,
            n_trials=self.args.trials,
        )
        create_or_resume(self.name, self.url, settings, heartbeat=False)
        started = time.monotonic()
        w = [self.start("w0"), self.start("w1"), self.start("w2", via_proxy=True)]
        complete = lambda n: sum(t.state == TrialState.COMPLETE for t in self.study().get_trials()) >= n  # noqa: E731

        self.wait_for("two complete trials", lambda: complete(2))
        r1 = self.kill(w[0], "w0", signal.SIGKILL, replacement="r1")

        # The pause and the cut overlap, and the second kill and the SIGTERM land while they
        # last: the faults must hit trials before the 20 tickets are used up.
        number = self.wait_for("w1 mid-trial", lambda: self.mid_trial(w[1]))
        w[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        self.note(f"SIGSTOP w1 in trial {number} for {self.grace + 15} s")
        number = self.wait_for("w2 mid-trial", lambda: self.mid_trial(w[2]))
        self.proxy.cut()
        cut = time.monotonic()
        self.note(f"storage cut for w2 (trial {number}) for {self.args.cut:g} s")

        r2 = self.kill(r1, "r1", signal.SIGKILL, replacement="r2")
        self.kill(r2, "r2", signal.SIGTERM, replacement="r3")

        time.sleep(max(0.0, stopped + self.grace + 15 - time.monotonic()))
        w[1].send_signal(signal.SIGCONT)
        self.note("SIGCONT w1")
        time.sleep(max(0.0, cut + self.args.cut - time.monotonic()))
        self.proxy.restore()
        self.note("storage restored for w2")

        for label, proc, _ in self.procs:
            try:
                proc.wait(timeout=1800)
            except subprocess.TimeoutExpired:
                self.note(f"{label} still running after 30 min: killed")
                proc.kill()
                proc.wait()
        wall = time.monotonic() - started
        self.proxy.close()
        return self.measure(wall)

    def kill(
        self, proc: subprocess.Popen, label: str, sig: signal.Signals, replacement: str
    ) -> subprocess.Popen:
        """Send ``sig`` to ``proc`` mid-trial and start a replacement at once (as a scheduler
        restarts a worker); for SIGKILL, time how long until the trial's retry is enqueued."""
        number = self.wait_for(f"{label} mid-trial", lambda: self.mid_trial(proc))
        proc.send_signal(sig)
        at = time.monotonic()
        self.note(f"{sig.name} {label} in trial {number}")
        proc.wait(timeout=120)
        new = self.start(replacement)
        if sig == signal.SIGKILL:
            self.wait_for(
                f"retry of trial {number}",
                lambda: any(
                    t.system_attrs.get("retry_history", [None])[-1] == number
                    for t in self.study().get_trials()
                ),
            )
            self.kills.append((number, time.monotonic() - at))
            self.note(f"trial {number} retried {time.monotonic() - at:.1f} s after the kill")
        return new

    # -- the verdict --
    def measure(self, wall: float) -> dict:
        study = self.study()
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        origins = [t.system_attrs.get("failed_trial", t.number) for t in complete]
        failed_own = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
        lost_retried = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs]
        stuck = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        counted = count_finished(study)
        runs = self.mlflow_runs(complete)
        exits = {label: proc.returncode for label, proc, _ in self.procs}
        tracebacks = {label: "Traceback" in log.read_text() for label, _, log in self.procs}
        return {
            "backend": self.backend,
            "requested": self.args.trials,
            "complete": len(complete),
            "failed": len(failed_own),
            "lost_and_retried": len(lost_retried),
            "duplicated": len(origins) - len(set(origins)),
            "lost": max(0, self.args.trials - counted - len(stuck)),
            "stuck": len(stuck),
            "one_finished_run": runs["one_finished"],
            "runs_detail": runs["detail"],
            "exits": exits,
            "tracebacks": [k for k, v in tracebacks.items() if v],
            "retry_seconds": [round(s, 1) for _, s in self.kills],
            "grace": self.grace,
            "wall": wall,
            "events": self.events,
        }

    def mlflow_runs(self, complete: list) -> dict:
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{self.folder / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(self.name)
        if experiment is None:
            return {"one_finished": 0, "detail": "no experiment"}
        runs = client.search_runs(
            [experiment.experiment_id], "tags.`mtlsearch.role` = 'trial'", max_results=5000
        )
        by_trial: dict[str, list[str]] = {}
        for r in runs:
            by_trial.setdefault(r.data.tags.get("trial_number", "?"), []).append(r.info.status)
        ok = sum(by_trial.get(str(t.number), []) == ["FINISHED"] for t in complete)
        bad = {
            n: s for n, s in by_trial.items() if int(n) in {t.number for t in complete} and s != ["FINISHED"]
        }
        return {"one_finished": ok, "detail": bad or "every COMPLETE trial: one FINISHED run"}


def report(results: list[dict], args: argparse.Namespace, started: str) -> str:
    load = os.getloadavg()
    lines = [
        f"Run {started} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}), load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        f"Command: `.venv/bin/python benchmarks/faults.py {' '.join(sys.argv[1:])}`",
        "",
        "| storage | requested | complete | failed (own reason) | lost and retried | duplicated | lost "
        "| stuck | COMPLETE with one FINISHED run | worker exits | tracebacks | kill -> retry (s) "
        "| goal (grace + 10 s) | wall |",
        "|" + " --- |" * 14,
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['requested']} | {r['complete']} | {r['failed']} "
            f"| {r['lost_and_retried']} | {r['duplicated']} | {r['lost']} | {r['stuck']} "
            f"| {r['one_finished_run']} / {r['complete']} "
            f"| {', '.join(f'{k}={v}' for k, v in r['exits'].items())} "
            f"| {', '.join(r['tracebacks']) or 'none'} "
            f"| {', '.join(map(str, r['retry_seconds']))} | {r['grace'] + 10} | {r['wall']:.0f} s |"
        )
    for r in results:
        lines += ["", f"{r['backend']} events:", ""] + [f"    {e}" for e in r["events"]]
        if r["runs_detail"] != "every COMPLETE trial: one FINISHED run":
            lines += ["", f"    MLflow runs not as expected: {r['runs_detail']}"]
    ok = all(
        r["lost"] == 0
        and r["duplicated"] == 0
        and r["stuck"] == 0
        and r["one_finished_run"] == r["complete"]
        and not r["tracebacks"]
        and all(s <= r["grace"] + 10 for s in r["retry_seconds"])
        for r in results
    )
    lines += ["", f"Goal {'met' if ok else 'NOT met'}: 0 lost, 0 duplicated, 0 stuck, one FINISHED run per "
              "COMPLETE trial, no traceback, every killed trial retried within grace + 10 s."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storages", default="postgresql,redis")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--epochs", type=int, default=40, help="epochs per trial (a trial must outlast a fault)"
    )
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--cut", type=float, default=90.0, help="seconds of the storage cut")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 tickets, 10 s cut, short lease")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the workers' logs and mlflow.db here (default: temp)"
    )
    args = parser.parse_args()
    if args.quick:
        args.trials, args.cut, args.epochs, args.rows = 8, 10.0, 12, 1500
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    results = []
    with tempfile.TemporaryDirectory(prefix="mtlsearch-faults-") as tmp:
        base = args.workdir or Path(tmp)
        for backend in args.storages.split(","):
            folder = base / backend
            folder.mkdir(parents=True, exist_ok=False)
            results.append(Run(backend, folder, args).run())
    text = report(results, args, started)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
