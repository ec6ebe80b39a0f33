"""Benchmark (not a test): where a search trial's fixed cost goes (issue 14, "per-trial overhead").

Why: ``benchmarks/search_cost.py`` found that at 10,000 training rows a trial costs about
2.2 s on top of its epochs (0.47 s per epoch), so stopping a trial after one epoch (MOASHA)
saves little. This script runs a short search the way ``search_cost.py`` does (a fresh SQLite
study in a temporary folder, no MLflow, one worker, one torch thread, the worker's
``TrialRunner`` asking, running and telling one ticket at a time; the census space with
``training.epochs`` set and early stopping removed, no reference architectures) and splits
each trial's wall time into:

===================  ==========================================================================
column               what is inside (exclusive time: a storage call made by the sampler counts
                     as storage, not sampler)
===================  ==========================================================================
``sampler``          the study's sampler: before_trial, infer_relative_search_space,
                     sample_relative, sample_independent, after_trial (TPE's density fits)
``st_read``          storage reads (get_trial, get_all_trials, user attrs, ...) on SQLite
``st_write``         storage writes (create/pop trial, set_trial_param, set_trial_user_attr,
                     set_trial_state_values, ...)
``optuna``           the rest of ``study.ask`` / ``study.tell`` (Optuna's own bookkeeping)
``suggest``          ``SearchSpace.suggest`` itself (turning samples into a config)
``prune``            the pruning callback and the rule (MOASHA's ranking), storage excluded
``prep``             data preparation in ``fit``: split_to, scale_labels, class weights, the
                     Evaluator set-up (both splits), compatibility and memory checks
``build``            build_model, the loss weighting, the optimiser
``epochs``           the epochs: training (``_train_epoch``) plus each epoch's validation
``test``             the final test evaluation and the expert utilisation
``loop``             the worker loop's between-trial checks (``count_finished``, state counts,
                     as ``run_worker`` does before each ticket)
``other``            wall minus all of the above (configs, result bookkeeping, best weights)
``fixed``            wall minus ``epochs``: what a trial costs on top of its epochs
===================  ==========================================================================

Output: one line per trial, then the mean per trial by block of ten trials (so a cost that
grows with the study's history shows), and the totals. ``--json FILE`` writes every trial's
state, parameters and values, so that two runs (before / after a change) can be compared
for identical results (``--compare FILE``). ``--profile FILE`` also writes a cProfile of
the trial loop (read with ``python -m pstats FILE``) and prints its top functions.

A before/after comparison of the package code: run the script once against a copy of the
package with the old files (``PYTHONPATH=/copy``) and once against the working tree, with
``--json`` and ``--compare``. ``--sqlite-default`` turns the storage's SQLite settings off
(:data:`mtlsearch.search._storage.SQLITE_PRAGMAS`) for an A/B of that cut alone.
Results are in ``docs/benchmarks.md`` ("Per-trial overhead").

Usage::

    .venv/bin/python benchmarks/trial_overhead.py [--dataset census|synthetic] [--trials 40] \\
        [--epochs 2] [--pruner moasha|none|dominance] [--sampler tpe] [--json F] [--compare F] \\
        [--profile F] [--sqlite-default]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import search_cost as sc  # noqa: E402  (the benchmark whose trials this one takes apart)

COLUMNS = (
    "sampler", "st_read", "st_write", "optuna", "suggest", "prune", "prep", "build", "epochs", "test",
    "loop", "other",
)  # fmt: skip
READS = ("get_", "_get_", "read_trials", "check_trial_is_updatable", "is_heartbeat_enabled")


class Timers:
    """Exclusive wall time per category on the main thread: a timed call inside another
    timed call is charged to its own category and subtracted from its caller's."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.by_caller: dict[tuple[str, str], float] = defaultdict(float)  # (category, caller)
        self.methods: dict[str, int] = defaultdict(int)  # storage method -> calls (all trials)
        self._stack: list[list[Any]] = []
        self._main = threading.get_ident()

    def reset(self) -> dict[str, float]:
        out = dict(self.acc)
        self.acc.clear()
        return out

    def wrap(self, category: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._main:
                return fn(*args, **kwargs)
            cat = category(*args, **kwargs) if callable(category) else category
            self._stack.append([cat, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                _, inner = self._stack.pop()
                self.acc[cat] += spent - inner
                self.calls[cat] += 1
                caller = self._stack[-1][0] if self._stack else "-"
                self.by_caller[(cat, caller)] += spent - inner
                if self._stack:
                    self._stack[-1][1] += spent

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def patch(obj: Any, name: str, timers: Timers, category: str | Callable[..., str]) -> None:
    original = getattr(obj, name, None)
    if original is None:
        return
    setattr(obj, name, timers.wrap(category, original))


def _named(timers: Timers, kind: str, name: str) -> Callable[..., str]:
    """A category that also counts the storage method's calls (``Timers.methods``)."""

    def category(*args: Any, **kwargs: Any) -> str:
        timers.methods[f"{kind} {name}"] += 1
        return kind

    return category


def instrument(ctx: Any, timers: Timers) -> None:
    """Wrap the study's storage and sampler (this study object only) and the trainer's and
    the search's steps (module functions: this process only)."""
    from optuna.storages import BaseStorage
    from optuna.storages._heartbeat import BaseHeartbeat

    import mtlsearch.search._pruning as pruning
    import mtlsearch.search._study as study_mod
    import mtlsearch.train._evaluate as evaluate
    import mtlsearch.train._fit as fit_mod
    from mtlsearch.search._space import SearchSpace

    study = ctx.study
    storage = study._storage
    names = {n for n in {**vars(BaseStorage), **vars(BaseHeartbeat)} if not n.startswith("__")}
    for name in sorted(names):
        if callable(getattr(storage, name, None)):
            kind = "st_read" if name.startswith(READS) else "st_write"
            patch(storage, name, timers, _named(timers, kind, name))
    for name in ("before_trial", "infer_relative_search_space", "sample_relative", "sample_independent",
                 "after_trial"):  # fmt: skip
        patch(study.sampler, name, timers, "sampler")
    patch(study, "ask", timers, "optuna")
    patch(study, "tell", timers, "optuna")
    patch(SearchSpace, "suggest", timers, "suggest")
    patch(pruning.PruningCallback, "__call__", timers, "prune")
    for name in ("split_to", "scale_labels", "class_weight_tensors", "check_compatible", "check_memory",
                 "Evaluator"):  # fmt: skip
        patch(fit_mod, name, timers, "prep")
    for name in ("build_model", "make_loss_weighting", "_make_optimizer"):
        patch(fit_mod, name, timers, "build")
    patch(fit_mod, "_train_epoch", timers, "epochs")
    patch(
        evaluate.Evaluator,
        "evaluate",
        timers,
        lambda self, model, epoch=None: "epochs" if epoch is not None else "test",
    )
    patch(evaluate.Evaluator, "utilisation", timers, "test")
    patch(study_mod, "estimate_memory", timers, "prep")  # used with --max-params only


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mtlsearch.search import SearchSettings, _worker, create_or_resume
    from mtlsearch.search._storage import TICKET_ATTR
    from mtlsearch.search._study import _state_counts, count_finished, make_objective
    from mtlsearch.search._worker import TrialRunner

    if hasattr(_worker, "progress"):  # what run_worker asks before each ticket
        between: Callable[[Any], Any] = _worker.progress
    else:  # before: two reads, count_finished then _state_counts
        between = lambda study: (count_finished(study), _state_counts(study))  # noqa: E731

    pruning = {
        "none": None,
        "dominance": {"method": "dominance"},
        "moasha": {"method": "moasha", "min_epochs": 1, "eta": 3, "rung_fraction": None},
    }[a.pruner]
    bench = sc.Settings(
        seeds=(a.seed,), strategies=(), budget_s=0.0, train_rows=a.train_rows, eval_rows=a.eval_rows,
        epochs=a.epochs, min_epochs=1, eta=3, space=str(a.space), target_trials=0,
        study_trials=a.study_trials, zoom_margin=0.0, quick=False,
    )  # fmt: skip
    if a.sqlite_default:  # the A side of an A/B: no pragmas on the study's connections
        import mtlsearch.search._storage as storage_mod

        storage_mod.SQLITE_PRAGMAS = ()
    sc._init_process(bench, a.verbose)  # one torch thread, quiet logs, the data loader, warm imports
    if a.dataset == "census":
        dataset, options = "census-income", {"group": 1, "max_rows": a.train_rows}
        data_dir = str(a.data_dir)
    else:  # 80/10/10: train_rows training rows
        dataset, options, data_dir = "synthetic", {"n": a.train_rows * 10 // 8}, None
    settings = SearchSettings(
        space_text=sc.space_text(a.space, a.epochs),
        space_source=str(a.space),
        dataset=dataset,
        dataset_options=options,
        data_dir=data_dir,
        sampler=a.sampler,
        seed=a.seed,
        n_trials=a.study_trials,
        enqueue_references=False,
        pruning=pruning,
    )
    timers = Timers()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mtlsearch-overhead-") as tmp:
        t0 = time.perf_counter()
        ctx = create_or_resume("overhead", f"sqlite:///{Path(tmp) / 'study.db'}", settings,
                               heartbeat=False, threads=1)  # fmt: skip
        sc._warm_trainer(ctx.data)
        setup_s = time.perf_counter() - t0
        instrument(ctx, timers)
        runner = TrialRunner(ctx, make_objective(ctx))
        tickets = a.study_trials
        profiler = cProfile.Profile() if a.profile else None
        with profiler if profiler is not None else contextlib.nullcontext():
            for i in range(a.trials):
                if i >= tickets:
                    ctx.study.enqueue_trial({}, user_attrs={TICKET_ATTR: True}, skip_if_exists=False)
                    tickets += 1
                timers.reset()
                start = time.perf_counter()
                timers.wrap("loop", between)(ctx.study)
                frozen = runner.run_one()
                wall = time.perf_counter() - start
                parts = timers.reset()
                parts["other"] = wall - sum(parts.values())
                epochs_done = len((frozen.user_attrs.get("epoch_values") or []) if frozen else [])
                rows.append(
                    {
                        "number": frozen.number if frozen else None,
                        "state": frozen.state.name if frozen else "DROPPED",
                        "n_epochs": epochs_done,
                        "wall": wall,
                        **{c: parts.get(c, 0.0) for c in COLUMNS},
                        "params": dict(frozen.params) if frozen else {},
                        "values": list(frozen.values) if frozen and frozen.values else None,
                        "epoch_values": frozen.user_attrs.get("epoch_values") if frozen else None,
                        "stopped_rung": frozen.user_attrs.get("stopped_rung") if frozen else None,
                    }
                )
        if profiler is not None:
            profiler.dump_stats(a.profile)
    by_caller = {f"{c} <- {p}": v for (c, p), v in sorted(timers.by_caller.items(), key=lambda x: -x[1])}
    methods = dict(sorted(timers.methods.items(), key=lambda x: -x[1]))
    return {
        "methods": methods,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "setup_s": setup_s,
        "torch_threads": torch.get_num_threads(),
        "trials": rows,
        "by_caller": by_caller,
    }


def render(out: dict[str, Any], a: argparse.Namespace) -> str:
    rows = out["trials"]
    lines = [
        f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine {platform.machine()}, "
        f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"torch threads {out['torch_threads']}",
        "command: " + " ".join(["benchmarks/trial_overhead.py", *sys.argv[1:]]),
        f"set-up (data, study, warm-up) {out['setup_s']:.1f} s; seconds per trial below",
        "",
    ]
    head = ["trial", "state", "ep", "wall", *COLUMNS, "fixed"]
    lines.append(" ".join(f"{h:>8}" for h in head))
    for r in rows:
        fixed = r["wall"] - r["epochs"]
        cells = [str(r["number"]), r["state"][:8], str(r["n_epochs"]), f"{r['wall']:.3f}"]
        cells += [f"{r[c]:.3f}" for c in COLUMNS] + [f"{fixed:.3f}"]
        lines.append(" ".join(f"{c:>8}" for c in cells))
    lines += ["", "mean seconds per trial, by block of trials:", ""]
    lines.append("| trials | " + " | ".join([*COLUMNS, "epochs/trial", "wall", "fixed"]) + " |")
    lines.append("|---" * (len(COLUMNS) + 4) + "|")
    blocks = [(i, min(i + 10, len(rows))) for i in range(0, len(rows), 10)]
    blocks += [(0, len(rows))] if len(blocks) > 1 else []
    for lo, hi in blocks:
        part = rows[lo:hi]
        n = len(part)
        if not n:
            continue
        mean = {c: sum(r[c] for r in part) / n for c in (*COLUMNS, "wall", "n_epochs")}
        fixed = mean["wall"] - mean["epochs"]
        label = f"{lo}-{hi - 1}" if (lo, hi) != (0, len(rows)) else f"all {n}"
        cells = [f"{mean[c]:.3f}" for c in COLUMNS] + [f"{mean['n_epochs']:.2f}", f"{mean['wall']:.3f}"]
        lines.append(f"| {label} | " + " | ".join([*cells, f"**{fixed:.3f}**"]) + " |")
    epochs = sum(r["n_epochs"] for r in rows)
    if epochs:
        per_epoch = sum(r["epochs"] for r in rows) / epochs
        lines.append(f"\nepoch cost: {per_epoch:.3f} s per epoch (train + valid)")
    lines += ["", "storage time by caller (s, all trials):"]
    for key, v in list(out["by_caller"].items()):
        if key.startswith("st_") and v >= 0.005:
            lines.append(f"  {key:32s} {v:8.3f}")
    n = max(1, len(rows))
    calls = ", ".join(f"{k.split()[1]} {v / n:.1f}" for k, v in out["methods"].items() if v / n >= 0.5)
    lines += ["", f"storage calls per trial: {calls}"]
    return "\n".join(lines)


def compare(mine: dict[str, Any], path: Path) -> str:
    """Whether two runs made the same trials: same states, parameters, values, epoch values."""
    theirs = json.loads(path.read_text())["trials"]
    keys = ("number", "state", "params", "values", "epoch_values", "stopped_rung")
    diff = [
        (i, k)
        for i, (x, y) in enumerate(zip(mine["trials"], theirs, strict=False))
        for k in keys
        if json.dumps(x[k], sort_keys=True) != json.dumps(y[k], sort_keys=True)
    ]
    n = min(len(mine["trials"]), len(theirs))
    if not diff:
        return f"compare with {path}: the {n} trials are identical (state, params, values, epoch values)"
    i, k = diff[0]
    return f"compare with {path}: {len(diff)} differences; first at trial {i}, {k}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["census", "synthetic"], default="census")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-rows", type=int, default=10_000)
    p.add_argument("--eval-rows", type=int, default=10_000)
    p.add_argument("--sampler", choices=["tpe", "random", "nsga2"], default="tpe")
    p.add_argument("--pruner", choices=["none", "dominance", "moasha"], default="moasha")
    p.add_argument("--study-trials", type=int, default=50, help="the study's trial setting (TPE start-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", type=Path, default=REPO_ROOT / "search_spaces" / "census.yaml")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("MTLSEARCH_DATA")  # mtlsearch.data.data_dirs' rule
        or os.environ.get("MTLSEARCH_SHARED_DATA")
        or REPO_ROOT.parent / "shared" / "data",
    )
    p.add_argument("--json", type=Path, default=None, help="write every trial (and timings) here")
    p.add_argument("--compare", type=Path, default=None, help="an earlier --json: same trials?")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of the trial loop here")
    p.add_argument(
        "--sqlite-default",
        action="store_true",
        help="SQLite's default journal and sync (as before the storage's WAL setting), for an A/B",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    out = run(a)
    print(render(out, a))
    if a.profile:
        print(f"\ncProfile of the trial loop ({a.profile}), top 25 by internal time:")
        pstats.Stats(str(a.profile)).sort_stats("tottime").print_stats(25)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    if a.compare:
        print(compare(out, a.compare))


if __name__ == "__main__":
    main()
