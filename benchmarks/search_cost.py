"""Benchmark (not a test): multi-fidelity search (MOASHA) against full-budget search, at equal wall time.

Why: a search whose trials all run their full epoch budget spends most of its time on
configurations that were visibly poor after an epoch or two. MOASHA (multi-objective
asynchronous successive halving, Schmucker et al. 2021; ``mtlsearch search --pruner moasha``)
stops those at rungs and spends the time on new configurations. The question a user has is
"for the same wall-clock time, which search gives me the better front?" This script answers
it on Census-Income (KDD), task group 1 (income > 50K, marital status "never married"), for
four strategies (:data:`STRATEGIES`):

=================  =======  ====================================================================
strategy           sampler  pruning (``SearchSettings.pruning``)
=================  =======  ====================================================================
``tpe``            TPE      none: every trial runs all its epochs (full budget)
``tpe+dominance``  TPE      ``{"method": "dominance"}``: today's rule (margin 1%, 3 dominating)
``tpe+moasha``     TPE      ``{"method": "moasha", "min_epochs": r, "eta": eta}`` (rungs r*eta^k)
``random+moasha``  random   the same MOASHA rule
=================  =======  ====================================================================

Each run (one strategy, one seed) is a fresh SQLite study with one worker in one process
(one torch thread), given a fixed **wall-clock budget** (``--budget-s``, default 240 s). Its
clock starts when the first trial is asked for (the data loading, study creation and the
process's one-time imports come before). Trials run one after another until the budget is
spent; the trial running at the deadline is **cut** at the end of the epoch during which the
deadline passed (it is recorded FAIL with ``fail_reason`` "DeadlineReached: ..."), and any
trial finishing after the deadline does not count.

What is measured, per run: every trial's state, objective values (``income:auc``,
``marital:auc`` on the validation split, the search's own objectives), start and finish
time since the run's start, and epochs trained. The **hypervolume over time** is that of
the COMPLETE trials finished by time t (pruned trials are not full-fidelity results and
add nothing; neither do failed or cut ones), at checkpoints 10%, 20%, ..., 100% of the
budget, against two reference points:

* AUC 0.5 on both tasks (no skill), i.e. ``(-0.5, -0.5)`` in the loss space of
  :func:`mtlsearch.search.hypervolume`; the largest possible value is 0.25. Every run's
  final value is cross-checked against the package's function.
* a zoomed point, where the fronts differ: the componentwise worst of the union of all
  runs' final fronts, minus ``--zoom-margin`` (default 0.002 AUC) on each task (or
  ``--zoom-ref``), reported as a share of the box from that point to (1, 1).

Goals (issue 14), printed as ``goal: ... yes/no (figures)`` lines:

(a) HV_target = full-budget TPE's hypervolume after its ``--target-trials``-th (50th)
    finished trial (after its last one if it finished fewer: then said so); TPE+MOASHA
    reaches HV_target in at most a third of the time full TPE took to get there, on every
    seed (each seed compared with the same seed: same data split and sampler seed).
(b) At every checkpoint after the first 10% of the budget, TPE+MOASHA's mean hypervolume
    over seeds is higher than full TPE's.

``--auc-tolerance D`` adds goal (a) checked with TPE+MOASHA's front raised by D AUC on both
tasks: the exact target asks for every point of full TPE's front, including points that
beat another by 1e-6 AUC, far below the validation AUC's sampling error
(``benchmarks/rung_replay.py`` shows how often that alone decides the strict check).

Budget (the full data cannot be searched 12 times on 2 cores; stated in the outputs): the
data are ``load_dataset("census-income", group=1, seed=SEED, max_rows=--train-rows)`` (the
public ``max_rows`` option: a seeded stratified subsample of the training rows, default
30,000 of 199,523; validation and test keep all their rows unless ``--eval-rows`` cuts them
by a seeded permutation), the seed of each run being the run's seed (so the four strategies
of one seed see the same rows). The space is ``--space`` (default
``search_spaces/census.yaml``) with ``training.epochs`` = ``--epochs`` (default 9, so MOASHA
with r = 1, eta = 3 has rungs at epochs 1 and 3) and early stopping removed. No reference
architectures are enqueued: every trial is the sampler's own. The study's trial budget
setting is ``--study-trials`` (default 50: TPE then starts with 10 random trials, as in a
50-trial ``mtlsearch search``); tickets are added one at a time beyond it, so the wall budget
alone ends a run.
The search API loads its data from the study's settings; to load each seed's data once per
process (and apply ``--eval-rows``) the script wraps that loader
(``mtlsearch.search._study._load_data``). The trials themselves run through the package's
code path (``create_or_resume``, the worker's ``TrialRunner``: ask, objective, tell).

Outputs, in ``--out-dir``: ``search_cost.md`` (date, machine, load average, command,
settings, tables, goal lines), ``search_cost.json`` (every trial of every run) and
``search_cost.png`` (hypervolume against time, one line per strategy with a band from the
lowest to the highest seed, one panel per reference point). The report also gives the rank
agreement (Spearman's rho) between each rung epoch's values and the trials' results among
full TPE's trials: the evidence MOASHA's promotions stand on. Each run is saved in
``--out-dir``/runs as it ends; ``--resume`` reads those saved with the same settings instead of
running them again, and ``--from-json`` with several files merges their runs into one report
(their settings but the seeds and strategies must agree): a long benchmark (the full data)
can be run over several sittings.

Usage::

    .venv/bin/python benchmarks/search_cost.py [--quick] [--seeds 3] [--budget-s 240] [--jobs 2] \\
        [--train-rows 30000] [--epochs 9] [--out-dir DIR]
    .venv/bin/python benchmarks/search_cost.py --from-json DIR/search_cost.json [MORE.json ...] --out-dir DIR2

``--quick`` is a smoke size (2,000 rows, 2 epochs, 5 s per run, 1 seed, 1 process, study trial
setting 10; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt

if TYPE_CHECKING:  # the search stack is imported only to run (--from-json draws without it)
    import optuna
    from optuna.trial import FrozenTrial

    from mtlsearch.data import MTLDataset, TensorSplit

log = logging.getLogger("benchmark")

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_SKILL = (0.5, 0.5)  # AUC of both tasks at the primary reference point
CHECKPOINTS = tuple(k / 10 for k in range(1, 11))  # shares of the wall budget


def _moasha(s: Settings) -> dict[str, Any]:
    return {"method": "moasha", "min_epochs": s.min_epochs, "eta": s.eta, "rung_fraction": None}


#: name -> (sampler, pruning settings of the run given the benchmark's settings). A new
#: strategy is one entry.
STRATEGIES: dict[str, tuple[str, Callable[[Settings], dict[str, Any] | None]]] = {
    "tpe": ("tpe", lambda s: None),
    "tpe+dominance": ("tpe", lambda s: {"method": "dominance"}),
    "tpe+moasha": ("tpe", _moasha),
    "random+moasha": ("random", _moasha),
}
FULL_TPE, TPE_MOASHA = "tpe", "tpe+moasha"  # the goal's two sides
COLOURS = {
    "tpe": "tab:blue",
    "tpe+dominance": "tab:orange",
    "tpe+moasha": "tab:green",
    "random+moasha": "tab:red",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (written into the outputs)."""

    seeds: tuple[int, ...]
    strategies: tuple[str, ...]
    budget_s: float
    train_rows: int
    eval_rows: int | None  # None: every validation and test row
    epochs: int
    min_epochs: int
    eta: int
    space: str  # as given, relative to the repository when inside it
    target_trials: int
    study_trials: int  # the study's trial setting (TPE's start-up as in a search of so many)
    zoom_margin: float
    quick: bool


FULL = {
    "seeds": 3, "budget_s": 240.0, "train_rows": 30_000, "eval_rows": 0, "epochs": 9, "jobs": 2,
    "study_trials": 50,
}  # fmt: skip
QUICK = {
    "seeds": 1, "budget_s": 5.0, "train_rows": 2_000, "eval_rows": 2_000, "epochs": 2, "jobs": 1,
    "study_trials": 10,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke size (numbers mean nothing)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 (default {FULL['seeds']})")
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    p.add_argument(
        "--budget-s", type=float, default=None, help=f"wall seconds per run (default {FULL['budget_s']:g})"
    )
    p.add_argument(
        "--train-rows",
        type=int,
        default=None,
        help=f"training rows (max_rows; default {FULL['train_rows']:,}; 0: all 199,523)",
    )
    p.add_argument(
        "--eval-rows", type=int, default=None, help="cut validation and test to this many rows (default: all)"
    )
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per trial (default {FULL['epochs']})")
    p.add_argument("--min-epochs", type=int, default=1, help="MOASHA's r: epoch of rung 0 (default 1)")
    p.add_argument("--eta", type=int, default=3, help="MOASHA's reduction factor (default 3)")
    p.add_argument("--space", type=Path, default=REPO_ROOT / "search_spaces" / "census.yaml")
    p.add_argument(
        "--target-trials", type=int, default=50, help="goal (a): full TPE's trial count to reach (default 50)"
    )
    p.add_argument(
        "--study-trials",
        type=int,
        default=None,
        help="the study's trial setting, which sets TPE's random start-up (default 50; runs go past it)",
    )
    p.add_argument(
        "--zoom-margin", type=float, default=0.002, help="AUC below the fronts' worst for the zoomed point"
    )
    p.add_argument(
        "--auc-tolerance",
        type=float,
        default=0.0,
        help="also check goal (a) with TPE+MOASHA's front raised by this AUC on both tasks (a report "
        "setting: the runs are the same; default 0: the strict check only)",
    )
    p.add_argument(
        "--zoom-ref",
        type=float,
        nargs=2,
        default=None,
        metavar=("INCOME_AUC", "MARITAL_AUC"),
        help="the zoomed reference point (default: the fronts' componentwise worst minus --zoom-margin)",
    )
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel processes, 1 torch thread each")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("MTLSEARCH_DATA")  # the rule of mtlsearch.data's data_dirs, without
        or os.environ.get("MTLSEARCH_SHARED_DATA")  # importing torch for --help and --from-json
        or REPO_ROOT.parent / "shared" / "data",
        help="folder holding census-income-kdd/ (default: $MTLSEARCH_DATA, or its alias "
        "$MTLSEARCH_SHARED_DATA when unset, else ../shared/data)",
    )
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="re-render earlier runs' search_cost.json files (several: merged, e.g. other strategies)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="read the runs already saved in OUT_DIR/runs with the same settings instead of running them",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every trial")
    a = p.parse_args(argv)
    if not 0 <= a.auc_tolerance < 0.5:
        p.error(f"--auc-tolerance: must be in [0, 0.5), got {a.auc_tolerance}")
    if a.zoom_margin < 0:
        p.error(f"--zoom-margin: must be >= 0 (AUC below the fronts' worst), got {a.zoom_margin}")
    return a


def make_settings(a: argparse.Namespace) -> tuple[Settings, int]:
    base = {**FULL, **(QUICK if a.quick else {})}
    pick = {k: getattr(a, k) if getattr(a, k) is not None else base[k] for k in base}
    space = a.space.resolve()
    s = Settings(
        seeds=tuple(range(pick["seeds"])),
        strategies=tuple(dict.fromkeys(a.strategies)),
        budget_s=float(pick["budget_s"]),
        train_rows=int(pick["train_rows"]),
        eval_rows=int(pick["eval_rows"]) or None,
        epochs=int(pick["epochs"]),
        min_epochs=a.min_epochs,
        eta=a.eta,
        space=str(space.relative_to(REPO_ROOT)) if space.is_relative_to(REPO_ROOT) else str(space),
        target_trials=a.target_trials,
        study_trials=int(pick["study_trials"]),
        zoom_margin=a.zoom_margin,
        quick=a.quick,
    )
    bad = [
        f"--{name.replace('_', '-')} must be {rule}, got {value}"
        for name, value, ok, rule in [
            ("seeds", pick["seeds"], pick["seeds"] >= 1, ">= 1"),
            ("budget_s", s.budget_s, s.budget_s > 0, "> 0"),
            ("train_rows", s.train_rows, s.train_rows >= 0, ">= 0"),
            ("eval_rows", pick["eval_rows"], pick["eval_rows"] >= 0, ">= 0"),
            ("epochs", s.epochs, s.epochs >= 1, ">= 1"),
            ("target_trials", s.target_trials, s.target_trials >= 1, ">= 1"),
            ("study_trials", s.study_trials, s.study_trials >= 1, ">= 1"),
            ("zoom_margin", s.zoom_margin, s.zoom_margin >= 0, ">= 0"),
            ("jobs", pick["jobs"], pick["jobs"] >= 1, ">= 1"),
        ]
        if not ok
    ]
    if bad:
        raise SystemExit(bad[0])
    return s, int(pick["jobs"])


# ---- data, space and process set-up --------------------------------------------------------
def _cut(split: TensorSplit, n: int, seed: int) -> TensorSplit:
    """The first ``n`` rows of a seeded permutation of ``split`` (all rows if ``n`` >= size)."""
    import torch

    if n >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.take(order[:n])


_DATA: dict[str, MTLDataset] = {}  # this process's loaded data set (one seed at a time)


def _install_loader(eval_rows: int | None) -> None:
    """Make the search load each seed's data once per process (and cut the evaluation
    splits to ``eval_rows``); the study's settings still name the data (``max_rows``)."""
    import mtlsearch.search._study as study_module
    from mtlsearch.search import SearchSettings

    original = study_module._load_data

    def load(settings: SearchSettings) -> MTLDataset:
        key = json.dumps([settings.dataset, settings.data_dir, settings.seed, settings.dataset_options])
        if key not in _DATA:
            _DATA.clear()
            data = original(settings)
            if eval_rows:
                data = dataclasses.replace(
                    data,
                    valid=_cut(data.valid, eval_rows, settings.seed + 1),
                    test=_cut(data.test, eval_rows, settings.seed + 2),
                )
            _DATA[key] = data
        return _DATA[key]

    study_module._load_data = load  # type: ignore[assignment]


def space_text(path: Path, epochs: int) -> str:
    """The space file with ``training.epochs`` set and early stopping (``patience``) removed."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    training = dict(raw.get("training", {}) or {})
    training["epochs"] = epochs
    training.pop("patience", None)
    raw["training"] = training
    return f"# {path.name}, benchmark budget: epochs={epochs}, no early stopping\n" + yaml.safe_dump(
        raw, sort_keys=False
    )


def _init_process(s: Settings, verbose: bool) -> None:
    """One torch thread, quiet logs, the data loader, and the one-time imports (optimiser,
    SQLAlchemy, TPE) paid before any run's clock starts."""
    import optuna
    import torch

    from mtlsearch.search import open_storage

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    logging.getLogger("mtlsearch").setLevel(logging.INFO if verbose else logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # cut and failed trials are in the JSON
    _install_loader(s.eval_rows)
    importlib.import_module("torch._dynamo")
    importlib.import_module("mtlsearch.train")
    with tempfile.TemporaryDirectory(prefix="mtlsearch-bench-") as tmp:
        storage = open_storage(f"sqlite:///{Path(tmp) / 'warm-up.db'}", heartbeat=False)
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True)
        study = optuna.create_study(storage=storage, directions=["maximize", "maximize"], sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)


_TRAINER_WARM = False


def _warm_trainer(data: MTLDataset) -> None:
    """One epoch on 256 rows, once per process: the trainer's lazy first-fit costs (metric
    code, optimiser compilation) are not charged to the first run's clock."""
    global _TRAINER_WARM
    if _TRAINER_WARM:
        return
    from mtlsearch.arch import preset
    from mtlsearch.train import ExperimentConfig, TrainConfig, fit

    small = dataclasses.replace(
        data, train=data.train.take(slice(0, 256)), valid=data.valid.take(slice(0, 256)),
        test=data.test.take(slice(0, 256)),
    )  # fmt: skip
    model = preset("mmoe", small.input_spec(), small.tasks, n_experts=2, expert_hidden=(8,), tower=(8,))
    fit(ExperimentConfig(model=model, training=TrainConfig(epochs=1, batch_size=128)), small, progress=False)
    _TRAINER_WARM = True


# ---- one run ---------------------------------------------------------------------------------
class DeadlineReached(Exception):
    """Raised at an epoch's end past the run's deadline: the trial is cut (recorded FAIL)."""


class Clock:
    """A search observer: each trial's start and finish in seconds since the run's start;
    cuts the running trial at the first epoch end past ``budget_s``."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.start: dict[int, float] = {}
        self.finish: dict[int, float] = {}
        self.epoch_ends: dict[int, list[float]] = {}

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def on_study(self, study: optuna.Study, context: Any) -> None:
        pass

    def on_trial_start(self, trial: optuna.Trial, config: Any) -> None:
        self.start[trial.number] = self.now()

    def on_epoch(self, trial: optuna.Trial, report: Any) -> None:
        self.epoch_ends.setdefault(trial.number, []).append(self.now())
        if self.now() > self.budget_s:
            raise DeadlineReached(f"cut at the deadline after epoch {report.epoch + 1}")

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial, result: Any | None) -> None:
        self.finish[trial.number] = self.now()


def run_one(job: tuple[str, int], s: Settings, data_dir: str, verbose: bool) -> dict[str, Any]:
    """One strategy and seed: a fresh study, one worker, until the wall budget is spent."""
    from optuna.trial import TrialState

    from mtlsearch.search import SearchSettings, create_or_resume, hypervolume, objectives_of, reference_point
    from mtlsearch.search._storage import TICKET_ATTR
    from mtlsearch.search._study import make_objective
    from mtlsearch.search._worker import TrialRunner

    strategy, seed = job
    sampler, pruning_of = STRATEGIES[strategy]
    options: dict[str, Any] = {"group": 1}
    if s.train_rows:
        options["max_rows"] = s.train_rows
    settings = SearchSettings(
        space_text=space_text(
            REPO_ROOT / s.space if not Path(s.space).is_absolute() else Path(s.space), s.epochs
        ),
        space_source=s.space,
        dataset="census-income",
        dataset_options=options,
        data_dir=data_dir,
        sampler=sampler,
        seed=seed,
        n_trials=s.study_trials,
        enqueue_references=False,
        pruning=pruning_of(s),
    )
    with tempfile.TemporaryDirectory(prefix="mtlsearch-bench-") as tmp:
        t_setup = time.perf_counter()
        ctx = create_or_resume(f"{strategy}-seed{seed}", f"sqlite:///{Path(tmp) / 'study.db'}", settings,
                               heartbeat=False, threads=1)  # fmt: skip
        _warm_trainer(ctx.data)
        setup_s = time.perf_counter() - t_setup
        clock = Clock(s.budget_s)
        ctx.observers.append(clock)
        runner = TrialRunner(ctx, make_objective(ctx))
        tickets, started = s.study_trials, 0  # create_or_resume enqueued that many tickets
        load_before = os.getloadavg()[0]
        clock.t0 = time.perf_counter()
        while clock.now() < s.budget_s:
            if started >= tickets:  # one more ticket: the wall budget, not a count, ends the run
                ctx.study.enqueue_trial({}, user_attrs={TICKET_ATTR: True}, skip_if_exists=False)
                tickets += 1
            runner.run_one()
            started += 1
        wall = clock.now()
        load_after = os.getloadavg()[0]
        trials = sorted(ctx.study.get_trials(deepcopy=False), key=lambda t: t.number)
        trials = [t for t in trials if t.state != TrialState.WAITING]
        objectives = objectives_of(ctx.study)
        rows = [_trial_row(t, clock, s.budget_s) for t in trials]
        counted = {r["number"] for r in rows if r["counted"]}
        ref = reference_point(objectives)
        package_hv = hypervolume([t for t in trials if t.number in counted], objectives, ref)
    mine = hv2d([r["values"] for r in rows if r["counted"] and r["state"] == "COMPLETE"], NO_SKILL)
    if abs(mine - package_hv) > 1e-9:
        raise RuntimeError(f"{strategy} seed {seed}: final HV {package_hv} but a 2-D sweep gives {mine}")
    out = {
        "strategy": strategy,
        "sampler": sampler,
        "pruning": settings.pruning,
        "seed": seed,
        "objectives": [o.name for o in objectives],
        "reference_point_loss_space": ref.tolist(),
        "setup_s": setup_s,
        "wall_s": wall,
        "load_1min_before": load_before,
        "load_1min_after": load_after,
        "final_hv_package": package_hv,
        "trials": rows,
    }
    done = [r for r in rows if r["counted"]]
    log.info(
        "%-13s seed %d: %d trials (%d complete, %d pruned) in %.0f s, %d epochs, HV %.4f",
        strategy, seed, len(done), sum(r["state"] == "COMPLETE" for r in done),
        sum(r["state"] == "PRUNED" for r in done), wall, sum(r["epochs"] for r in rows), package_hv,
    )  # fmt: skip
    return out


def _trial_row(t: FrozenTrial, clock: Clock, budget_s: float) -> dict[str, Any]:
    from mtlsearch.search import FAIL_ATTR
    from mtlsearch.search._pruning import EPOCH_ATTR
    from mtlsearch.search._rungs import PRUNED_REASON_ATTR, STOPPED_RUNG_ATTR

    reason = t.user_attrs.get(FAIL_ATTR)
    cut = t.state.name == "FAIL" and str(reason or "").startswith(DeadlineReached.__name__)
    finish = clock.finish.get(t.number)
    return {
        "number": t.number,
        "state": t.state.name,
        "values": list(t.values) if t.values else None,
        "start_s": clock.start.get(t.number),
        "finish_s": finish,
        "epochs": len(t.user_attrs.get(EPOCH_ATTR) or []),
        "epoch_values": t.user_attrs.get(EPOCH_ATTR),  # per epoch, the objectives' values
        "epoch_end_s": clock.epoch_ends.get(t.number),  # per epoch, when it ended (run clock)
        "params": dict(t.params),
        "cut": cut,
        "counted": finish is not None and finish <= budget_s and not cut,
        "stopped_rung": t.user_attrs.get(STOPPED_RUNG_ATTR),
        "pruned_reason": t.user_attrs.get(PRUNED_REASON_ATTR),
        "fail_reason": reason,
        "seconds": t.user_attrs.get("seconds"),
        "n_params": t.user_attrs.get("n_params"),
    }


#: Settings that must agree for runs to be put in one report (the seeds and strategies may
#: differ; MOASHA's settings only between runs that read them).
_SHARED_SETTINGS = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name not in ("seeds", "strategies")
)
_MOASHA_SETTINGS = ("min_epochs", "eta")


def _reads_moasha(strategies: Sequence[str]) -> bool:
    """Whether any of ``strategies`` prunes with MOASHA (reads ``min_epochs`` and ``eta``)."""
    probe = Settings((), (), 1.0, 0, None, 2, 1, 2, "", 1, 1, 0.0, False)
    return any((STRATEGIES[x][1](probe) or {}).get("method") == "moasha" for x in strategies)


def _settings_to_match(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    """The settings two sets of runs (their strategies) must agree on to share a report:
    all but the seeds and strategies, MOASHA's only when both sides have a MOASHA run (a
    full-budget TPE run is the same run whatever ``--eta`` was given)."""
    if _reads_moasha(a) and _reads_moasha(b):
        return _SHARED_SETTINGS
    return tuple(k for k in _SHARED_SETTINGS if k not in _MOASHA_SETTINGS)


def _run_file(runs_dir: Path, strategy: str, seed: int) -> Path:
    return runs_dir / f"{strategy.replace('+', '_')}-seed{seed}.json"


def _saved_run(runs_dir: Path, s: Settings, strategy: str, seed: int) -> dict[str, Any] | None:
    """A run saved by an earlier invocation with the same shared settings, else None."""
    path = _run_file(runs_dir, strategy, seed)
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    mine = dataclasses.asdict(s)
    if any(saved["settings"].get(k) != mine[k] for k in _settings_to_match([strategy], [strategy])):
        log.info("%s: saved with other settings, run again", path)
        return None
    return saved["run"]


def run_all(
    s: Settings, jobs: int, data_dir: str, verbose: bool, runs_dir: Path, resume: bool
) -> list[dict[str, Any]]:
    """Every (strategy, seed) run, seed by seed; ``jobs`` > 1: in spawned processes. Full TPE
    and TPE+MOASHA go first in each seed, so that with two processes the goal's two sides run
    side by side, under the same load. Each run is saved in ``runs_dir`` as it ends; with
    ``resume`` a run saved there with the same settings is read instead of run again (a long
    benchmark can be spread over several sittings)."""
    first = [x for x in (FULL_TPE, TPE_MOASHA) if x in s.strategies]
    order = first + [x for x in s.strategies if x not in first]
    todo = [(strategy, seed) for seed in s.seeds for strategy in order]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if resume:
        for job in todo:
            if (saved := _saved_run(runs_dir, s, *job)) is not None:
                done[job] = saved
        log.info("%d run(s) read from %s", len(done), runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)

    def save(job: tuple[str, int], run: dict[str, Any]) -> None:
        path = _run_file(runs_dir, *job)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": dataclasses.asdict(s), "run": run}))
        tmp.replace(path)
        done[job] = run

    left = [job for job in todo if job not in done]
    log.info("%d runs of %g s on %d process(es)", len(left), s.budget_s, jobs)
    if jobs == 1:
        _init_process(s, verbose)
        for job in left:
            save(job, run_one(job, s, data_dir, verbose))
    else:
        spawn = get_context("spawn")
        with ProcessPoolExecutor(jobs, spawn, initializer=_init_process, initargs=(s, verbose)) as pool:
            futures = {pool.submit(run_one, job, s, data_dir, verbose): job for job in left}
            for f in as_completed(futures):
                save(futures[f], f.result())
    return [done[job] for job in todo]


# ---- hypervolume over time -------------------------------------------------------------------
def hv2d(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Hypervolume of two maximised objectives above ``ref`` (a sweep; no library)."""
    inside = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    area, top = 0.0, ref[1]
    for x, y in inside:
        if y > top:
            area += (x - ref[0]) * (y - top)
            top = y
    return area


def _complete(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's counted COMPLETE trials, by finish time."""
    done = [t for t in run["trials"] if t["counted"] and t["state"] == "COMPLETE"]
    return sorted(done, key=lambda t: t["finish_s"])


def _scale(ref: Sequence[float]) -> float:
    """1 for the no-skill point (raw HV, max 0.25); else the box from ``ref`` to (1, 1)."""
    return 1.0 if tuple(ref) == NO_SKILL else (1 - ref[0]) * (1 - ref[1])


def hv_at(run: dict[str, Any], t: float, ref: Sequence[float]) -> float:
    """HV of the COMPLETE trials finished by ``t`` seconds (a share of the box unless ``ref``
    is the no-skill point)."""
    values = [x["values"] for x in _complete(run) if x["finish_s"] <= t]
    return hv2d(values, ref) / _scale(ref)


def front(values: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    """The non-dominated ones of ``values`` (both maximised)."""
    return [
        p for p in values
        if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in values)
    ]  # fmt: skip


def zoom_reference(runs: Sequence[dict[str, Any]], margin: float) -> tuple[float, float]:
    """The componentwise worst of the union of every run's final front, minus ``margin``."""
    points = [p for r in runs for p in front([t["values"] for t in _complete(r)])]
    if not points:
        return NO_SKILL
    return (
        round(min(p[0] for p in points) - margin, 6),
        round(min(p[1] for p in points) - margin, 6),
    )


def _finished(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Counted trials that ran to their end (COMPLETE or failed on their own), by finish."""
    done = [t for t in run["trials"] if t["counted"] and t["state"] in ("COMPLETE", "FAIL")]
    return sorted(done, key=lambda t: t["finish_s"])


def time_to_reach(
    finished: Sequence[tuple[float, Sequence[float]]],
    target: float,
    ref: Sequence[float],
    tolerance: float = 0.0,
) -> float | None:
    """The first of ``finished``'s ``(finish time, values)`` (in finish order) at which the HV
    is >= ``target`` (None: never); with a ``tolerance``, the HV of the front raised by that
    much AUC on both tasks. Also used by ``rung_replay.py``."""
    if target <= 0:
        return 0.0
    values: list[Sequence[float]] = []
    for when, v in finished:
        values.append([x + tolerance for x in v])
        if hv2d(values, ref) / _scale(ref) >= target - 1e-12:
            return float(when)
    return None


def _time_to_reach(
    run: dict[str, Any], target: float, ref: Sequence[float], tolerance: float = 0.0
) -> float | None:
    """:func:`time_to_reach` over the run's COMPLETE trials."""
    return time_to_reach([(t["finish_s"], t["values"]) for t in _complete(run)], target, ref, tolerance)


# ---- report ---------------------------------------------------------------------------------
def _mean_std(values: Sequence[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _runs_of(runs: Sequence[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["strategy"] == strategy), key=lambda r: r["seed"])


def _goal_a(
    s: Settings,
    full: Sequence[dict[str, Any]],
    fast: Sequence[dict[str, Any]],
    label: str,
    ref: Sequence[float],
    tolerance: float,
) -> str:
    """Goal (a)'s line at one reference point (``tolerance``: see :func:`goals`)."""
    figures, ok, short = [], True, []
    for f, m in zip(full, fast, strict=True):
        done = _finished(f)
        n = min(s.target_trials, len(done))
        if n < s.target_trials:
            short.append(f"seed {f['seed']}: {len(done)}")
        if n == 0:
            figures.append(f"seed {f['seed']}: full TPE finished no trial")
            ok = False
            continue
        t_full = float(done[n - 1]["finish_s"])
        target = hv_at(f, t_full, ref)
        t_fast = _time_to_reach(m, target, ref, tolerance)
        ok = ok and t_fast is not None and t_fast <= t_full / 3
        reached = "never" if t_fast is None else f"at {t_fast:.0f} s ({t_fast / t_full:.2f}x)"
        figures.append(
            f"seed {f['seed']}: full TPE HV {target:.4f} after {n} trials ({t_full:.0f} s), "
            f"TPE+MOASHA {reached}"
        )
    note = (
        f"; full TPE finished fewer than {s.target_trials} trials in the budget ({', '.join(short)}): "
        "target taken after its last"
        if short
        else ""
    )
    within = f" within {tolerance:g} AUC" if tolerance else ""
    return (
        f"(a) {label}: TPE+MOASHA reaches full TPE's HV after {s.target_trials} trials in <= 1/3 of "
        f"its time{within}, every seed: {'yes' if ok else 'no'} ({'; '.join(figures)}{note})"
    )


def goals(
    s: Settings,
    runs: Sequence[dict[str, Any]],
    refs: dict[str, tuple[float, float]],
    tolerance: float = 0.0,
) -> list[str]:
    """The issue's goals, checked on this run's numbers (module docstring). ``tolerance`` > 0
    adds, after each goal (a) line, the same check with TPE+MOASHA's front raised by that
    much AUC on both tasks (a front point full TPE found by a hair, 1e-6 AUC, is not lost)."""
    if FULL_TPE not in s.strategies or TPE_MOASHA not in s.strategies:
        return [f"goals need both {FULL_TPE} and {TPE_MOASHA} among --strategies: not checked"]
    full, fast = _runs_of(runs, FULL_TPE), _runs_of(runs, TPE_MOASHA)
    paired = {r["seed"] for r in full} & {r["seed"] for r in fast}  # each seed beside the same seed
    alone = sorted({r["seed"] for r in (*full, *fast)} - paired)
    full, fast = [r for r in full if r["seed"] in paired], [r for r in fast if r["seed"] in paired]
    out = [f"seeds {alone} have one side only and are not compared"] if alone else []
    if not paired:
        return [*out, f"no seed has both {FULL_TPE} and {TPE_MOASHA}: not checked"]
    for label, ref in refs.items():
        for tol in (0.0, tolerance) if tolerance > 0 else (0.0,):
            out.append(_goal_a(s, full, fast, label, ref, tol))
        later = [c for c in CHECKPOINTS if c > CHECKPOINTS[0]]
        cells, ok = [], True
        for c in later:
            a = statistics.mean(hv_at(r, c * s.budget_s, ref) for r in fast)
            b = statistics.mean(hv_at(r, c * s.budget_s, ref) for r in full)
            ok = ok and a > b
            cells.append(f"{c:.0%} {a:.4f} vs {b:.4f}")
        out.append(
            f"(b) {label}: TPE+MOASHA mean HV > full TPE's at every checkpoint after 10%: "
            f"{'yes' if ok else 'no'} ({'; '.join(cells)})"
        )
    return out


def _hv_table(s: Settings, runs: Sequence[dict[str, Any]], ref: Sequence[float], digits: int) -> list[str]:
    head = ["strategy", *(f"{c:.0%} ({c * s.budget_s:.0f} s)" for c in CHECKPOINTS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy in s.strategies:
        mine = _runs_of(runs, strategy)
        cells = [_mean_std([hv_at(r, c * s.budget_s, ref) for r in mine], digits) for c in CHECKPOINTS]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def _counts(run: dict[str, Any]) -> dict[str, float]:
    rows = run["trials"]
    counted = [t for t in rows if t["counted"]]
    done = _complete(run)
    best = np.max(np.array([t["values"] for t in done]), axis=0) if done else [float("nan")] * 2
    return {
        "trials": len(counted),
        "complete": len(done),
        "pruned": sum(t["state"] == "PRUNED" for t in counted),
        "failed": sum(t["state"] == "FAIL" for t in counted),
        "cut": sum(t["cut"] for t in rows),
        "epochs": sum(t["epochs"] for t in rows),
        "epochs_per_trial": statistics.mean([t["epochs"] for t in counted]) if counted else float("nan"),
        "best_income": float(best[0]),
        "best_marital": float(best[1]),
    }


def rank_agreement(s: Settings, runs: Sequence[dict[str, Any]]) -> list[str]:
    """Does an early epoch rank the trials as their results do? Spearman's rho between each
    objective's validation value at each rung epoch (``min_epochs * eta**k`` below the last)
    and the trial's result (its best epoch's values, which the trainer restores and the
    search sees), over full TPE's complete trials of each seed (each trained every epoch):
    the evidence MOASHA's promotions stand on. Empty if no run recorded epoch values."""
    from scipy.stats import spearmanr

    full = [r for r in _runs_of(runs, FULL_TPE) if any(t.get("epoch_values") for t in r["trials"])]
    if not full:
        return []
    rungs, e = [], s.min_epochs
    while e < s.epochs:
        rungs.append(e)
        e *= s.eta
    names = full[0]["objectives"]
    lines = [
        "| epoch | " + " | ".join(f"{n}: rho per seed | mean" for n in names) + " | trials per seed |",
        "|---|" + "---|---|" * len(names) + "---|",
    ]
    for epoch in rungs:
        cells, counts = [], []
        for j in range(len(names)):
            rhos = []
            for r in full:
                kept = [t for t in _complete(r) if len(t.get("epoch_values") or []) == s.epochs]
                paths, results = [t["epoch_values"] for t in kept], [t["values"] for t in kept]
                counts.append(len(paths))
                early = [p[epoch - 1][j] for p in paths]
                last = [v[j] for v in results]
                rhos.append(float(spearmanr(early, last).statistic) if len(paths) >= 3 else float("nan"))
            cells.append(f"{' / '.join(f'{x:.2f}' for x in rhos)} | {statistics.mean(rhos):.2f}")
        per_seed = " / ".join(map(str, counts[: len(full)]))
        lines.append(f"| {epoch} | " + " | ".join(cells) + f" | {per_seed} |")
    return lines


def markdown(s: Settings, payload: dict[str, Any], zoom: tuple[float, float]) -> str:
    runs = payload["runs"]
    refs = {"AUC 0.5 reference": NO_SKILL, f"zoomed reference {zoom}": zoom}
    rows_text = f"{s.train_rows:,} training rows (max_rows)" if s.train_rows else "all 199,523 training rows"
    eval_text = (
        f"{s.eval_rows:,} validation and test rows" if s.eval_rows else "every validation and test row"
    )
    before, after = payload["load_average_before_after"]
    lines = [
        "# Search cost: multi-fidelity against full-budget search (census-income group 1)"
        + (" (--quick: smoke size, not a result)" if s.quick else ""),
        "",
        f"- date: {payload['started']} (start); command: `{payload['command']}`",
        f"- machine: {payload['machine']}; 1-min load average before / after: {before:.2f} / {after:.2f}; "
        f"whole benchmark {payload['total_seconds'] / 60:.1f} min ({payload['jobs']} run(s) at once, one "
        "process and one torch thread each)",
        f"- data: census-income group 1, seed = the run's seed (validation/test split and training "
        f"subsample); {rows_text}, {eval_text}",
        f"- space: {s.space} with {s.epochs} epochs per trial, no early stopping; no reference "
        f"architectures (every trial sampled); study trial setting {s.study_trials} (TPE's random "
        f"start-up as in a {s.study_trials}-trial search), tickets added one at a time beyond it",
        f"- budget: {s.budget_s:g} s wall per run, seeds {list(s.seeds)}; a run's clock starts at its first "
        "trial (data, study and one-time imports before); the trial running at the deadline is cut at the "
        "end of that epoch (FAIL, not counted), and a trial finishing after the deadline does not count",
        "- strategies: "
        + "; ".join(f"{r['strategy']}: {r['sampler']}, pruning {r['pruning']}" for r in _first_of_each(runs)),
        "- hypervolume of the COMPLETE trials finished by each checkpoint (pruned, failed and cut trials add "
        "nothing), objectives income:auc and marital:auc (validation); mean ± sample std over seeds",
        f"- reference points: AUC 0.5 on both (loss space (-0.5, -0.5), max 0.25); zoomed {zoom} "
        + (
            "(given with --zoom-ref)"
            if payload.get("zoom_given")
            else "(no complete trial in any run: the AUC 0.5 point again)"
            if zoom == NO_SKILL
            else f"(componentwise worst of the union of all runs' final fronts minus {s.zoom_margin:g})"
        )
        + ", as a share of the box from there to (1, 1)",
        "",
        *(f"- goal: {g}" for g in goals(s, runs, refs, payload.get("auc_tolerance", 0.0))),
        "",
        "## Hypervolume at checkpoints, reference AUC 0.5",
        "",
        *_hv_table(s, runs, NO_SKILL, 4),
        "",
        f"## Hypervolume at checkpoints, zoomed reference {zoom} (share of the box to (1, 1))",
        "",
        *_hv_table(s, runs, zoom, 3),
        "",
        "## Trials per run (mean ± std over seeds)",
        "",
        "trials: finished within the budget (complete + pruned + failed); epochs: trained in the run, cut "
        "trial included; best AUCs over complete trials",
        "",
        "| strategy | trials | complete | pruned | failed | epochs | epochs/trial | best income AUC "
        "| best marital AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy in s.strategies:
        counts = [_counts(r) for r in _runs_of(runs, strategy)]
        cell = {k: _mean_std([c[k] for c in counts], 4 if k.startswith("best") else 1) for k in counts[0]}
        lines.append(
            f"| {strategy} | {cell['trials']} | {cell['complete']} | {cell['pruned']} | {cell['failed']} "
            f"| {cell['epochs']} | {cell['epochs_per_trial']} | {cell['best_income']} "
            f"| {cell['best_marital']} |"
        )
    lines += [
        "",
        "## Per run",
        "",
        "| strategy | seed | trials | complete | pruned | cut | epochs | final HV | final zoomed HV | wall s "
        "| set-up s | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (s.strategies.index(r["strategy"]), r["seed"])):
        c = _counts(r)
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {c['trials']} | {c['complete']} | {c['pruned']} | {c['cut']} "
            f"| {c['epochs']} | {hv_at(r, s.budget_s, NO_SKILL):.4f} | {hv_at(r, s.budget_s, zoom):.3f} "
            f"| {r['wall_s']:.0f} | {r['setup_s']:.1f} | {r['load_1min_before']:.2f} / "
            f"{r['load_1min_after']:.2f} |"
        )
    agreement = rank_agreement(s, runs)
    if agreement:
        lines += [
            "",
            "## Rank agreement of early epochs and results (full TPE's complete trials)",
            "",
            "Spearman's rho between an objective's validation value at a rung epoch and the trial's "
            "result (its best epoch's value), per seed: MOASHA promotes by the former, the front is "
            "made of the latter",
            "",
            *agreement,
        ]
    return "\n".join(lines) + "\n"


def _first_of_each(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        seen.setdefault(r["strategy"], r)
    return list(seen.values())


def plot(s: Settings, runs: Sequence[dict[str, Any]], zoom: tuple[float, float], path: Path) -> None:
    grid = np.linspace(0, s.budget_s, 241)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [
        (NO_SKILL, "reference AUC (0.5, 0.5)", "hypervolume"),
        (zoom, f"zoomed reference {zoom}", "hypervolume / box to (1, 1)"),
    ]
    for ax, (ref, title, ylabel) in zip(axes, panels, strict=True):
        for strategy in s.strategies:
            curves = np.array([[hv_at(r, t, ref) for t in grid] for r in _runs_of(runs, strategy)])
            colour = COLOURS.get(strategy)
            ax.step(grid, curves.mean(axis=0), where="post", color=colour, label=strategy)
            ax.fill_between(
                grid, curves.min(axis=0), curves.max(axis=0), step="post", color=colour, alpha=0.15
            )
        for c in CHECKPOINTS[:-1]:
            ax.axvline(c * s.budget_s, color="grey", linewidth=0.4, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("wall-clock seconds since the run's start")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Hypervolume of complete trials against time, census-income group 1 (mean over {len(s.seeds)} "
        "seed(s); band: lowest to highest seed)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    s: Settings,
    payload: dict[str, Any],
    out_dir: Path,
    zoom_ref: Sequence[float] | None,
    auc_tolerance: float = 0.0,
) -> str:
    zoom = tuple(zoom_ref) if zoom_ref else zoom_reference(payload["runs"], s.zoom_margin)
    shown = {**payload, "zoom_given": zoom_ref is not None, "auc_tolerance": auc_tolerance}
    text = markdown(s, shown, zoom)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(s, payload["runs"], zoom, out_dir / "search_cost.png")  # type: ignore[arg-type]
    (out_dir / "search_cost.md").write_text(text)
    (out_dir / "search_cost.json").write_text(json.dumps(payload, indent=1))
    return text


def _fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr, exit status 2 (argparse's)."""
    print(f"search_cost.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_report(path: Path) -> dict[str, Any]:
    """An earlier run's search_cost.json, or one line naming the file and the problem."""
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        _fail(f"{path}: no such file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"{path}: not a search_cost.json ({exc})")
    if not isinstance(payload, dict) or not {"settings", "runs"} <= set(payload):
        _fail(f"{path}: not a search_cost.json (no settings and runs)")
    return payload


def merge_payloads(payloads: Sequence[dict[str, Any]], paths: Sequence[Path]) -> dict[str, Any]:
    """Several search_cost.json payloads as one: their runs together (a strategy and seed in
    two files: the first file's), the union of their seeds and strategies; every other setting
    must agree (else SystemExit naming it and the files)."""
    first = payloads[0]
    for i, (other, path) in enumerate(zip(payloads[1:], paths[1:], strict=True), start=1):
        for before, before_path in zip(payloads[:i], paths[:i], strict=True):
            ran = [[r["strategy"] for r in p["runs"]] for p in (before, other)]
            for k in _settings_to_match(*ran):
                if other["settings"].get(k) != before["settings"].get(k):
                    _fail(
                        f"{path}: setting {k} = {other['settings'].get(k)!r}, but {before_path} has "
                        f"{before['settings'].get(k)!r}: runs with other settings cannot share a report"
                    )
    if len(payloads) == 1:
        return first
    # MOASHA's settings in the merged report: those of the files that ran MOASHA
    moasha = next((p for p in payloads if _reads_moasha([r["strategy"] for r in p["runs"]])), first)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for p in payloads:
        for r in p["runs"]:
            runs.setdefault((r["strategy"], r["seed"]), r)
    strategies = [x for x in STRATEGIES if any(x in p["settings"]["strategies"] for p in payloads)]
    seeds = sorted({seed for p in payloads for seed in p["settings"]["seeds"]})
    order = sorted(runs, key=lambda k: (k[1], strategies.index(k[0])))
    return {
        **first,
        "command": " ; ".join(p["command"] for p in payloads),
        "settings": {
            **first["settings"],
            **{k: moasha["settings"][k] for k in _MOASHA_SETTINGS},
            "seeds": seeds,
            "strategies": strategies,
        },
        "started": " ; ".join(p["started"] for p in payloads),
        "total_seconds": sum(p["total_seconds"] for p in payloads),
        "load_average_before_after": [
            payloads[0]["load_average_before_after"][0],
            payloads[-1]["load_average_before_after"][1],
        ],
        "runs": [runs[k] for k in order],
    }


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_json is not None:
        payload = merge_payloads([_read_report(path) for path in a.from_json], a.from_json)
        s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["settings"].items()})
    else:
        import optuna
        import torch

        import mtlsearch

        s, jobs = make_settings(a)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        runs = run_all(s, jobs, str(a.data_dir), a.verbose, a.out_dir / "runs", a.resume)
        cpu = " ".join(filter(None, [platform.machine(), platform.processor()]))
        payload = {
            "started": started,
            "command": "benchmarks/search_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "settings": dataclasses.asdict(s),
            "jobs": jobs,
            "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"optuna {optuna.__version__}, mtlsearch {mtlsearch.__version__}",
            "load_average_before_after": [load_before, os.getloadavg()[0]],
            "total_seconds": time.perf_counter() - t0,
            "runs": runs,
        }
    text = write_outputs(s, payload, a.out_dir, a.zoom_ref, a.auc_tolerance)
    print(text)
    print(f"wrote search_cost.md, search_cost.json and search_cost.png in {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
