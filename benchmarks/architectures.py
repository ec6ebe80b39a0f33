"""Benchmark (not a test): the architectures past PLE, fixed and searched, on three datasets.

Why: issue 16 added entire-space chained tasks (ESMM), DSelect-k gates, AdaTT fusion and
STEM's task-specific embeddings as keys of the one builder. This script trains each as a
fixed architecture beside single-task, MMoE and PLE with one budget and several seeds, puts
the test AUCs beside the published figures that ../shared/reference/papers.md holds, and
then (``--search``) checks whether a search over ``search_spaces/wide.yaml`` finds a census
model that beats every fixed row.

Datasets: the AliExpress and Ali-CCP *samples* in ../shared/data (100 training rows each,
a handful of positives: the rows differ far less than the seeds do, which the script says
per task) and Census-Income (KDD) task group 1 (income + never married; the MMoE paper's
protocol, test file split 1:1 into validation and test, data seed 0; ``--max-rows``
subsamples the training rows). The Ali tasks are ctr (all impressions), cvr (conversion on
clicked rows, the PLE paper's CVR) and ctcvr (conversion over all impressions, the ESMM
paper's CTCVR and the MTReclib tables' conversion task).

Rows (every mixture of experts with 6 experts per level, single-layer 64-unit experts and a
32-unit tower, as in benchmarks/census_table.py): single-task (one network per task), MMoE,
PLE (2 levels of 2 shared + 2 per task), ESMM-PLE (the PLE network for ctr and cvr with
``ctcvr = ctr x cvr``, cvr without a direct loss: ESMM; the Ali data only), AdaTT (PLE's
expert counts with AdaTT fusion units, ``select: all``), DSelect-k MMoE (MMoE with DSelect-k
gates, k = 2) and STEM-PLE (PLE over shared plus 8-wide task-specific embeddings).

Training: Adam, lr 1e-3, equal fixed loss weights, ``--epochs`` (6) with patience 2 on the
mean validation AUC (best-epoch weights restored); batch 1024 on census and 32 on the
samples. Every (model, seed) is a separate run (``--jobs`` processes of ``--threads``
torch threads each). Tables give test AUC, mean ± sample std over seeds; seeds whose test
split holds one class only (AUC undefined) are left out and counted. The verdict against
single-task is :func:`mtlsearch.train._verdict.judge`'s rule (a gain counts beyond two
standard errors of the difference of the means).

Search (``--search``): ``mtlsearch search --space search_spaces/wide.yaml --dataset
census-income -o group=1 ... --no-mlflow`` as a subprocess, SQLite storage in a temporary
folder, ``--n-trials`` trials (the space's reference presets are enqueued first unless
``--references none``), objectives the two validation AUCs, this table's epoch budget.
The knee of the front (:func:`mtlsearch.search.pick_trial`, the rule of ``mtlsearch export
--pick knee``) is retrained with ``--search-seeds`` seeds (5) and the searched training
settings, beside the best fixed census row (the highest mean test AUC over the two tasks,
i.e. the strongest competitor, retrained to the same seeds). Goal: the searched model beats
every fixed architecture on both census tasks by the verdict rule (a win = a gain beyond two
standard errors of the difference of the means; every other row keeps ``--seeds`` seeds).

Usage::

    .venv/bin/python benchmarks/architectures.py --data-dir ../shared/data --seeds 3 \\
        --search --n-trials 20 --jobs 2 --threads 1

``--datasets`` chooses the datasets, ``--models`` the rows; ``--quick`` is a 1-2 minute
smoke size (census on 5,000 training rows in batches of 256, 1 epoch, 2 seeds, a 3-trial
search without references, 2 retraining seeds). The markdown goes to stdout, then one JSON object on the
last line; ``--out FILE`` also writes the markdown to FILE and the JSON beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ as a script folder
from census_table import PUBLISHED as CENSUS_PUBLISHED
from census_table import SIZES, model_configs, train_one

from mtlsearch.arch import ArchConfig, preset
from mtlsearch.data import MTLDataset, load_dataset
from mtlsearch.search import CONFIG_ATTR, describe_config, load_study, objectives_of, pick_trial
from mtlsearch.train import SINGLE_TASK, ExperimentConfig, TrainConfig, mtl_gain
from mtlsearch.train._verdict import RULE, counted_gain, judge, label, standard_error

log = logging.getLogger("architectures")

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDE_SPACE = REPO_ROOT / "search_spaces" / "wide.yaml"
STEM_DIM = 8  # STEM-PLE's task-specific embedding width
DSELECT_K = 2
SEARCHED = "searched"
QUICK_BATCH = 256  # --quick: census's 5,000 rows still make 20 steps an epoch


# ---- datasets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    """One dataset of the table: how to load it and the papers' figures beside it."""

    key: str
    title: str
    source: str
    options: Mapping[str, Any]
    batch_size: int
    chained: bool  # has ctr, cvr and ctcvr (ESMM applies)
    subsample: bool  # --max-rows applies
    published: list[tuple[str, dict[str, dict[str, float]]]] = field(default_factory=list)


# PLE paper (Tang et al., RecSys 2020) Table 5, Ali-CCP: CTR and CVR (CVR on clicked rows, our
# ``cvr`` task). papers.md holds no MTReclib or ESMM-paper figures, hence no ctcvr column.
ALI_CCP_PUBLISHED = [
    (
        "PLE paper Table 5",
        {
            "single_task": {"ctr": 0.6088, "cvr": 0.6040},
            "mmoe": {"ctr": 0.6094, "cvr": 0.5738},
            "ple": {"ctr": 0.6112, "cvr": 0.6097},
        },
    )
]

BENCHES: dict[str, Bench] = {
    b.key: b
    for b in (
        Bench("aliexpress", "AliExpress sample", "aliexpress", {}, 32, True, False),
        Bench("ali-ccp", "Ali-CCP sample", "ali-ccp", {}, 32, True, False, ALI_CCP_PUBLISHED),
        Bench(
            "census1",
            "Census-Income group 1",
            "census-income",
            {"group": 1},
            1024,
            False,
            True,
            CENSUS_PUBLISHED[1],
        ),
    )
}


def load_bench(bench: Bench, data_dir: Path | None, max_rows: int | None) -> MTLDataset:
    """The dataset (data seed 0); ``max_rows`` subsamples census's training rows only."""
    return load_dataset(
        bench.source,
        data_dir=data_dir,
        seed=0,
        max_rows=max_rows if bench.subsample else None,
        **bench.options,
    )


def sizes_line(bench: Bench, data: MTLDataset) -> str:
    """Rows per split and, per task, positives / rows in its sample space."""
    parts = []
    for split in ("train", "valid", "test"):
        part = getattr(data, split)
        tasks = []
        for t in data.tasks:
            mask = part.masks.get(t.name)
            labels = part.labels[t.name] if mask is None else part.labels[t.name][mask]
            tasks.append(f"{t.name} {int(labels.sum())}/{labels.numel()}")
        parts.append(f"{split} {len(part):,} rows ({', '.join(tasks)} positive)")
    return f"{bench.title}: " + "; ".join(parts)


# ---- the rows ----------------------------------------------------------------------------------
def _levels(arch: ArchConfig, **changes: Any) -> ArchConfig:
    return replace(arch, levels=tuple(replace(lv, **changes) for lv in arch.levels))


def _esmm_ple(data: MTLDataset) -> ArchConfig:
    """PLE for ctr and cvr; ctcvr = ctr x cvr; cvr trained only through the product (ESMM)."""
    by_name = {t.name: t for t in data.tasks}
    cvr = replace(by_name["cvr"], loss="none")
    arch = preset("ple", data.input_spec(), (by_name["ctr"], by_name["cvr"]), **SIZES["ple"])
    tasks = tuple(
        cvr if t.name == "cvr" else replace(t, product_of=("ctr", "cvr")) if t.name == "ctcvr" else t
        for t in data.tasks
    )
    return replace(arch, tasks=tasks, name="esmm_ple")


def _adatt(data: MTLDataset) -> ArchConfig:
    arch = preset("ple", data.input_spec(), data.tasks, **SIZES["ple"])
    return replace(_levels(arch, select="all", fusion="adatt"), name="adatt")


def _dselect_mmoe(data: MTLDataset) -> ArchConfig:
    arch = preset("mmoe", data.input_spec(), data.tasks, **SIZES["mmoe"])
    return replace(_levels(arch, gate_kind="dselect_k", top_k=DSELECT_K), name="dselect_mmoe")


def _stem_ple(data: MTLDataset) -> ArchConfig:
    arch = preset("ple", data.input_spec(), data.tasks, **SIZES["ple"])
    return replace(arch, inputs=replace(arch.inputs, task_embedding_dim=STEM_DIM), name="stem_ple")


@dataclass(frozen=True)
class Row:
    label: str
    build: Callable[[MTLDataset, TrainConfig], list[ExperimentConfig]]
    chained_only: bool = False


def _from_census_table(name: str) -> Callable[[MTLDataset, TrainConfig], list[ExperimentConfig]]:
    return lambda data, training: model_configs(data, [name], training, None)[name]


def _one(
    build: Callable[[MTLDataset], ArchConfig],
) -> Callable[[MTLDataset, TrainConfig], list[ExperimentConfig]]:
    return lambda data, training: [ExperimentConfig(model=build(data), training=training)]


MODELS: dict[str, Row] = {
    "single_task": Row("single-task", _from_census_table("single_task")),
    "mmoe": Row("MMoE", _from_census_table("mmoe")),
    "ple": Row("PLE", _from_census_table("ple")),
    "esmm_ple": Row("ESMM-PLE", _one(_esmm_ple), chained_only=True),
    "adatt": Row("AdaTT", _one(_adatt)),
    "dselect_mmoe": Row("DSelect-k MMoE", _one(_dselect_mmoe)),
    "stem_ple": Row("STEM-PLE", _one(_stem_ple)),
}


def _label(model: str) -> str:
    return MODELS[model].label if model in MODELS else model


def _order(model: str) -> int:
    return list(MODELS).index(model) if model in MODELS else len(MODELS)


# ---- running (in this process or a pool of processes) -------------------------------------------
_DATA: dict[tuple[str, str, int | None], MTLDataset] = {}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    importlib.import_module("torch._dynamo")  # the optimisers import it on their first step


def _data(key: str, data_dir: Path | None, max_rows: int | None) -> MTLDataset:
    cache = (key, str(data_dir), max_rows)
    if cache not in _DATA:
        _DATA[cache] = load_bench(BENCHES[key], data_dir, max_rows)
    return _DATA[cache]


def _job(
    key: str, data_dir: Path | None, max_rows: int | None, model: str, seed: int, configs: list
) -> dict[str, Any]:
    run = train_one(configs, _data(key, data_dir, max_rows), seed)
    return {"dataset": key, "model": model, **run}


def run_jobs(jobs: Sequence[tuple], n_procs: int, threads: int) -> list[dict[str, Any]]:
    """Each job is ``_job``'s arguments; results in job order."""
    if n_procs <= 1:
        out = []
        for job in jobs:
            out.append(_job(*job))
            _log_run(out[-1])
        return out
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(
        n_procs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_job, *job) for job in jobs]
        for f in cf.as_completed(futures):
            _log_run(f.result())
        return [f.result() for f in futures]


def _log_run(run: Mapping[str, Any]) -> None:
    aucs = {t: round(m["auc"], 4) for t, m in run["test"].items()}
    log.info(
        "%s %s seed %d: test AUC %s, %.0f s", run["dataset"], run["model"], run["seed"], aucs, run["seconds"]
    )


# ---- summaries ------------------------------------------------------------------------------------
def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def summarise(runs: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model: test AUC mean / std / min / max / n over the seeds where it is defined,
    params, s/epoch, and the verdict against single-task."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        by_model.setdefault(r["model"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for model, rs in by_model.items():
        s: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "auc": {}}
        for t in tasks:
            vals = _finite([r["test"][t]["auc"] for r in rs])
            s["auc"][t] = {
                "mean": statistics.fmean(vals) if vals else math.nan,
                "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                "min": min(vals) if vals else math.nan,
                "max": max(vals) if vals else math.nan,
                "n": len(vals),
            }
        s["n_params"] = rs[0]["n_params"]
        s["epoch_seconds"] = statistics.fmean(r["epoch_seconds"] for r in rs)
        out[model] = s
    ref = out.get(SINGLE_TASK)
    for model, s in out.items():
        if ref is None or model == SINGLE_TASK:
            continue
        s["gain"], s["verdict"] = compare(s, ref, tasks)
    return out


def compare(
    a: Mapping[str, Any], b: Mapping[str, Any], tasks: Sequence[str]
) -> tuple[dict[str, float | None], str]:
    """Gains of ``a`` over ``b`` per task (of the means) and the verdict rule's code."""
    gains: dict[str, float | None] = {}
    errors: dict[str, float | None] = {}
    for t in tasks:
        x, y = a["auc"][t], b["auc"][t]
        if x["n"] == 0 or y["n"] == 0:
            gains[t] = errors[t] = None
            continue
        gains[t] = mtl_gain("binary", x["mean"], y["mean"])
        errors[t] = standard_error(
            0.0 if x["n"] < 2 else x["std"], x["n"], 0.0 if y["n"] < 2 else y["std"], y["n"]
        )
    return gains, judge(gains, errors)


def spread_lines(summary: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> list[str]:
    """Per task: how far the rows' means lie apart against how far one row's seeds do."""
    lines = []
    for t in tasks:
        cells = [s["auc"][t] for s in summary.values() if s["auc"][t]["n"] > 0]
        if not cells:
            lines.append(f"- {t}: AUC undefined on every seed (one class in the test rows)")
            continue
        means = [c["mean"] for c in cells]
        between = max(means) - min(means)
        within = max(c["max"] - c["min"] for c in cells)
        stds = _finite([c["std"] for c in cells])
        verdict = "within" if between <= within else "wider than"
        lines.append(
            f"- {t}: the rows' means span {between:.4f}; one row's seeds span up to {within:.4f} "
            f"(seed std up to {max(stds) if stds else math.nan:.4f}): the differences between rows are "
            f"{verdict} the seed spread"
        )
    return lines


def _cell(auc: Mapping[str, Any], n_seeds: int) -> str:
    if auc["n"] == 0:
        return "n/a"
    text = f"{auc['mean']:.4f}"
    if auc["n"] > 1:
        text += f" ± {auc['std']:.4f}"
    if auc["n"] < n_seeds:
        text += f" ({auc['n']}/{n_seeds} seeds)"
    return text


def table_markdown(bench: Bench, tasks: Sequence[str], summary: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["model", *(f"{t} AUC" for t in tasks), "verdict vs single-task", "params", "s/epoch"]
    head += [f"{name}: {' / '.join(tasks)}" for name, _ in bench.published]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in sorted(summary, key=_order):
        s = summary[model]
        row = [_label(model), *(_cell(s["auc"][t], len(s["seeds"])) for t in tasks)]
        row.append("reference" if model == SINGLE_TASK else label(s.get("verdict", "")))
        row += [f"{s['n_params']:,}", f"{s['epoch_seconds']:.2f}"]
        for _, source in bench.published:
            values = source.get(model, {})
            row.append(
                " / ".join(f"{values[t]:.4f}" if t in values else "–" for t in tasks) if values else ""
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---- the search -----------------------------------------------------------------------------------
def run_search(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``mtlsearch search`` over wide.yaml on census group 1 in a subprocess, then the knee."""
    storage = f"sqlite:///{folder / 'search.db'}"
    study = "architectures-census1"
    exe = Path(sys.executable).with_name("mtlsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mtlsearch"]
    cmd += ["search", "--space", str(WIDE_SPACE), "--dataset", "census-income", "-o", "group=1"]
    if args.data_dir is not None:
        cmd += ["--data-dir", str(args.data_dir.resolve())]  # the search runs in the temp folder
    if args.max_rows is not None:
        cmd += ["--max-rows", str(args.max_rows)]
    cmd += ["--n-trials", str(args.n_trials), "--study", study, "--storage", storage, "--seed", "0"]
    cmd += ["--n-jobs", str(args.jobs), "--threads", str(args.threads), "--references", args.references]
    cmd += ["--set", f"training.epochs={args.epochs}", "--set", "training.patience=2", "--no-mlflow", "-q"]
    log.info("search: %s", shlex.join(cmd))
    started = time.perf_counter()
    logfile = folder / "search.log"
    with logfile.open("w") as out:
        proc = subprocess.run(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = logfile.read_text()[-3000:]
        raise SystemExit(f"mtlsearch search exited with {proc.returncode}:\n{tail}")
    loaded = load_study(study, storage)
    objectives = objectives_of(loaded)
    pick = pick_trial(loaded, "knee", objectives)
    states: dict[str, int] = {}
    for t in loaded.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {
        "command": shlex.join(cmd),
        "seconds": seconds,
        "trials": states,
        "pick": pick.explain(),
        "trial": pick.trial.number,
        "preset": pick.trial.user_attrs.get("preset"),
        "valid": dict(zip([o.name for o in objectives], pick.trial.values, strict=True)),
        "config": pick.trial.user_attrs[CONFIG_ATTR],
    }


def searched_configs(config: Mapping[str, Any], training: TrainConfig) -> list[ExperimentConfig]:
    """The picked config with its searched training settings and this table's budget."""
    exp = ExperimentConfig.from_dict(config)
    budget = {"epochs": training.epochs, "patience": training.patience, "monitor": training.monitor}
    return [replace(exp, training=replace(exp.training, **budget))]


def search_markdown(
    tasks: Sequence[str], summary: Mapping[str, Mapping[str, Any]], best: str
) -> tuple[str, bool, dict[str, Any]]:
    """The searched row against every fixed census row: per task the gain of the means, two
    standard errors, and win / tie / loss by the verdict rule; the goal is a win on every
    task against every row."""
    s = summary[SEARCHED]
    head = ["searched vs", "seeds"]
    for t in tasks:
        head += [f"{t} AUC", f"{t} gain", f"{t} 2 SE", f"{t}"]
    head.append("searched beats it on both")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = ["**searched**", str(len(s["seeds"]))]
    for t in tasks:
        first += [_cell(s["auc"][t], len(s["seeds"])), "", "", ""]
    lines.append("| " + " | ".join([*first, ""]) + " |")
    met = True
    detail: dict[str, Any] = {}
    for model in sorted((m for m in summary if m != SEARCHED), key=_order):
        f = summary[model]
        row = [_label(model) + (" (best fixed)" if model == best else ""), str(len(f["seeds"]))]
        wins = []
        detail[model] = {}
        for t in tasks:
            x, y = s["auc"][t], f["auc"][t]
            gain = x["mean"] - y["mean"]
            se = standard_error(x["std"], x["n"], y["std"], y["n"]) if x["n"] > 1 and y["n"] > 1 else None
            counted = counted_gain(gain, se) if se is not None else None
            outcome = (
                "no verdict"
                if counted is None
                else "win"
                if counted > 0
                else "loss"
                if counted < 0
                else "tie"
            )
            wins.append(outcome == "win")
            detail[model][t] = {"gain": gain, "two_se": None if se is None else 2 * se, "outcome": outcome}
            two_se = "–" if se is None else f"{2 * se:.4f}"
            row += [_cell(y, len(f["seeds"])), f"{gain:+.4f}", two_se, outcome]
        beats = all(wins)
        met = met and beats
        detail[model]["beaten"] = beats
        row.append("yes" if beats else "no")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), met, detail


# ---- main -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding the datasets")
    parser.add_argument("--datasets", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per row")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-rows", type=int, default=None, help="census training subsample (rows)")
    parser.add_argument("--jobs", type=int, default=1, help="processes training runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--search", action="store_true", help="search wide.yaml on census group 1")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--references", default="all", help="the search's --references (all | none | N)")
    parser.add_argument("--search-seeds", type=int, default=5, help="retraining seeds of the knee pick")
    parser.add_argument("--quick", action="store_true", help="smoke size (1-2 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file; the JSON goes beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("mtlsearch").setLevel(logging.WARNING)  # no per-epoch lines
    if args.quick:
        args.epochs, args.seeds, args.search_seeds = 1, 2, 2
        args.max_rows = args.max_rows or 5_000
        args.n_trials, args.references = 3, "none"
    if SINGLE_TASK not in args.models:
        args.models.insert(0, SINGLE_TASK)  # the verdicts need the reference
    if args.search and "census1" not in args.datasets:
        args.datasets.append("census1")
    torch.set_num_threads(args.threads)
    importlib.import_module("torch._dynamo")

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    trainings: dict[str, TrainConfig] = {}
    datasets: dict[str, MTLDataset] = {}
    jobs: list[tuple] = []
    for key in args.datasets:
        bench = BENCHES[key]
        data = _data(key, args.data_dir, args.max_rows)
        datasets[key] = data
        trainings[key] = TrainConfig(
            optimizer="adam",
            lr=args.lr,
            batch_size=min(bench.batch_size, QUICK_BATCH) if args.quick else bench.batch_size,
            epochs=args.epochs,
            patience=2,
            monitor="mean",
        )
        for model in args.models:
            if MODELS[model].chained_only and not bench.chained:
                continue
            configs = MODELS[model].build(data, trainings[key])
            jobs += [(key, args.data_dir, args.max_rows, model, seed, configs) for seed in range(args.seeds)]
    runs = run_jobs(jobs, args.jobs, args.threads)

    search: dict[str, Any] | None = None
    if args.search:
        with tempfile.TemporaryDirectory(prefix="mtlsearch-arch-") as tmp:
            search = run_search(args, Path(tmp))
        log.info("search: %s", search["pick"])
        census_runs = [r for r in runs if r["dataset"] == "census1"]
        tasks = [t.name for t in datasets["census1"].tasks]
        fixed = summarise(census_runs, tasks)
        best = max(fixed, key=lambda m: statistics.fmean(fixed[m]["auc"][t]["mean"] for t in tasks))
        training = trainings["census1"]
        more = [
            (
                "census1",
                args.data_dir,
                args.max_rows,
                SEARCHED,
                seed,
                searched_configs(search["config"], training),
            )
            for seed in range(args.search_seeds)
        ]
        best_configs = MODELS[best].build(datasets["census1"], training)
        more += [
            ("census1", args.data_dir, args.max_rows, best, seed, best_configs)
            for seed in range(args.seeds, args.search_seeds)
        ]
        search["runs"] = run_jobs(more, args.jobs, args.threads)
        search["best_fixed"] = best
    total_s = time.perf_counter() - started

    header = [
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.jobs} process(es) x {args.threads} thread(s); 1-min load average before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        f"command: {shlex.join(sys.argv if argv is None else ['benchmarks/architectures.py', *argv])}",
        f"training: Adam, lr {args.lr:g}, {args.epochs} epoch(s), patience 2 on the mean validation AUC, "
        f"equal loss weights, seeds 0..{args.seeds - 1}, data seed 0"
        + (f"; census on {args.max_rows:,} training rows" if args.max_rows else "")
        + (" (QUICK)" if args.quick else ""),
        f"wall time: {total_s / 60:.1f} min ({total_s:.0f} s)",
    ]
    parts = ["\n".join(header)]
    result: dict[str, Any] = {"header": header, "datasets": {}, "total_seconds": total_s}
    for key in args.datasets:
        bench, data = BENCHES[key], datasets[key]
        tasks = [t.name for t in data.tasks]
        summary = summarise([r for r in runs if r["dataset"] == key], tasks)
        text = [f"### {bench.title}: test AUC, mean ± std over seeds", sizes_line(bench, data), ""]
        text.append(table_markdown(bench, tasks, summary))
        text += ["", f"Seed spread ({bench.title}):", *spread_lines(summary, tasks)]
        parts.append("\n".join(text))
        result["datasets"][key] = {
            "tasks": tasks,
            "rows": {s: len(getattr(data, s)) for s in ("train", "valid", "test")},
            "summary": summary,
            "runs": [r for r in runs if r["dataset"] == key],
        }
    notes = [
        f"_{RULE}._",
        "Papers' columns: MMoE paper Table 1 (mean of 400 runs) and PLE paper Table 5, from "
        "../shared/reference/papers.md. papers.md holds no MTReclib or ESMM-paper figures, so the "
        "ctcvr task (MTReclib's conversion AUC) has none beside it; MTReclib reports the best epoch "
        "on the test set (it selects on test), this script selects on validation.",
    ]
    parts.append("\n".join(notes))
    if search is not None:
        tasks = [t.name for t in datasets["census1"].tasks]
        all_census = [r for r in runs if r["dataset"] == "census1"] + search["runs"]
        summary = summarise(all_census, tasks)
        table, met, detail = search_markdown(tasks, summary, search["best_fixed"])
        trials = ", ".join(f"{n} {s}" for s, n in sorted(search["trials"].items()))
        text = [
            "### Searched (wide.yaml) vs the fixed architectures, census group 1",
            f"search: {search['command']}",
            f"trials: {trials}; {search['seconds'] / 60:.1f} min; pick: {search['pick']}"
            + (f" (reference preset {search['preset']})" if search.get("preset") else ""),
            f"picked: {describe_config(search['config'])}",
            f"retrained with seeds 0..{args.search_seeds - 1}; the best fixed row "
            f"({_label(search['best_fixed'])}, best mean AUC) retrained to the same seeds; other rows "
            f"keep {args.seeds} seed(s)",
            "",
            table,
            "",
            f"Goal (the searched model beats every fixed architecture on both census tasks): "
            f"**{'met' if met else 'not met'}**",
        ]
        parts.append("\n".join(text))
        result["search"] = {
            **{k: v for k, v in search.items() if k != "runs"},
            "runs": search["runs"],
            "summary": {m: summary[m] for m in (SEARCHED, search["best_fixed"])},
            "versus": detail,
            "goal_met": met,
        }
    print("\n\n".join(parts) + "\n")
    blob = json.dumps(_plain(result), default=str, allow_nan=False)
    print(blob)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join(parts) + "\n")
        args.out.with_suffix(".json").write_text(blob)
    return result


def _plain(obj: Any) -> Any:
    """``obj`` with NaN / infinities as None (strict JSON), mappings and lists walked."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
