"""Benchmark (not a test): mtlsearch against torch-rechub, PLE on Census-Income group 1.

Why: torch-rechub is the library a user would reach for instead of mtlsearch to train a
PLE; the issue asks whether mtlsearch's training epoch is at least 3x faster at equal or
better test AUC. Both tools train the *same* network on the *same* preprocessed arrays with
the same optimiser, batch size, epochs and threads, and the numbers come from one run in
which the two alternate, so a change in the machine's load hits both.

What is compared (torch-rechub's own path, as its Census example uses it):

* torch-rechub: ``SparseFeature``/``DenseFeature`` columns, ``DataGenerator`` data loaders
  (a ``Dataset`` of per-row dicts), ``models.multi_task.PLE`` and ``trainers.MTLTrainer``.
* mtlsearch: ``mtlsearch.arch`` config -> ``mtlsearch.train.fit``.

Architecture (torch-rechub's PLE read line by line, and the mtlsearch config that mirrors
it): 2 CGC levels, per level 2 specific experts per task + 2 shared experts, each expert
one hidden layer of 64 (ReLU); per task a softmax gate over its own + the shared experts,
fed by that task's input of the level; a shared gate over all experts below the top level;
towers of one hidden layer of 32 and a 1-unit output; each categorical feature embedded in
``--embed-dim`` dimensions (torch-rechub concatenates sparse embeddings, so they must all
have one size), the 7 standardised numeric columns appended as they are. Loss: the mean
of the two binary cross-entropies (torch-rechub's ``sum / n_task``; mtlsearch: fixed
weights 0.5 each). Adam, lr 1e-3, no weight decay, batch 1024. Model selection: the epoch
with the best validation AUC of task 0 (income), as torch-rechub's early stopper chooses
(mtlsearch: ``monitor="income"``); its weights are scored on the test split.

Matched by configuration (mtlsearch's builder has the knobs; the defaults here mirror
torch-rechub, ``--norm none --embed-init-std 1`` turns them off):

* torch-rechub's ``MLP`` puts ``BatchNorm1d`` between the linear map and the activation of
  every expert, gate and tower hidden layer: mtlsearch ``norm: batch`` on the levels and
  towers does the same (per expert, per gate, per tower hidden layer).
* torch-rechub's embeddings start from N(0, 1e-4): mtlsearch ``embed_init_std: 1e-4``.
  Linear layers use PyTorch's default initialisation in both.

Difference that remains: torch-rechub applies a sigmoid and ``BCELoss``, mtlsearch ``BCE
with logits`` (the same loss, computed more stably).

Timing: each tool trains in its own child process (a fresh interpreter, so the resident
set high-water mark, ``VmHWM``, is that tool's alone), with ``torch.set_num_threads``
of ``--threads`` and progress bars off (tqdm via ``TQDM_DISABLE``, mtlsearch's
``progress=False``). An epoch is the training pass plus the validation pass (what
mtlsearch's ``TrainResult.epoch_seconds`` counts); samples/s is training rows over the
training pass alone; "batches" is the time spent producing training batches inside the
training pass. Rounds alternate the order (rechub first, then mtlsearch first, ...).
``--profile`` instead runs one mtlsearch epoch under ``torch.profiler`` and prints where
its time goes; ``--from-json`` re-renders the report of a saved run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/vs_torch_rechub.py --install   # once: torch-rechub, --no-deps, exits
    .venv/bin/python benchmarks/vs_torch_rechub.py --threads 2 --epochs 3 --rounds 2 \\
        --out-md out/vs_torch_rechub.md --out-json out/vs_torch_rechub.json
    .venv/bin/python benchmarks/vs_torch_rechub.py --quick     # smoke size, < 40 s
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: torch-rechub version this benchmark was written against (its PLE and MTLTrainer code
#: were read for this version). It is installed with --no-deps into RECHUB_ENV, never into
#: mtlsearch's own dependencies.
RECHUB_VERSION = "0.9.0"
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RECHUB_ENV = HERE / ".rechub-env"
TOOLS = ("torch-rechub", "mtlsearch")
TASKS = ("income", "marital")

#: PLE sizes shared by both tools (those of benchmarks/census_ple_vs_single.py).
N_LEVELS, N_SPECIFIC, N_SHARED, EXPERT_HIDDEN, TOWER_HIDDEN = 2, 2, 2, 64, 32


# ---- torch-rechub environment ------------------------------------------------------------
def install_rechub() -> None:
    """``pip install --no-deps --target benchmarks/.rechub-env torch-rechub==RECHUB_VERSION``.

    torch-rechub's own requirements (torch, numpy, pandas, scikit-learn, tqdm) are already
    mtlsearch's, so nothing else is installed (and no second torch is pulled in).
    """
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--quiet",
        "--target", str(RECHUB_ENV), f"torch-rechub=={RECHUB_VERSION}",
    ]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SystemExit(
            f"installing torch-rechub {RECHUB_VERSION} into {RECHUB_ENV} failed (pip exit {code})"
        )


def use_rechub_env() -> str:
    """Put RECHUB_ENV on ``sys.path`` and return the installed torch-rechub version."""
    import importlib.metadata as md

    if str(RECHUB_ENV) not in sys.path:
        sys.path.insert(0, str(RECHUB_ENV))
    try:
        version = md.version("torch-rechub")  # (the child imports it; the parent need not)
    except md.PackageNotFoundError as exc:
        raise SystemExit(
            f"torch-rechub is not installed in {RECHUB_ENV} ({exc}); run with --install"
        ) from None
    if version != RECHUB_VERSION:
        raise SystemExit(
            f"{RECHUB_ENV} has torch-rechub {version}, want {RECHUB_VERSION}; run with --install"
        )
    return version


# ---- the shared arrays -------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$MTLSEARCH_DATA`` (or its alias ``$MTLSEARCH_SHARED_DATA``), else
    ``<repo>/../shared/data`` (as tests/conftest.py)."""
    env = os.environ.get("MTLSEARCH_DATA") or os.environ.get("MTLSEARCH_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def prepare_arrays(data_dir: Path, out: Path, rows: int | None, seed: int) -> dict[str, Any]:
    """Load Census-Income group 1 through mtlsearch's preprocessing once and write the
    arrays both tools train on (``rows``: a seeded subsample of ``rows`` training and
    ``rows // 2`` validation and test rows, for --quick)."""
    from mtlsearch.data import load_dataset

    data = load_dataset("census-income", data_dir=data_dir, group=1, seed=seed)
    assert tuple(t.name for t in data.tasks) == TASKS, data.tasks
    gen = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name in ("train", "valid", "test"):
        split = getattr(data, name)
        assert all(bool(m.all()) for m in split.masks.values()), "census tasks are unmasked"
        idx = np.arange(len(split))
        want = None if rows is None else rows if name == "train" else max(1, rows // 2)
        if want is not None and want < len(split):
            idx = np.sort(gen.choice(len(split), size=want, replace=False))
        arrays[f"{name}_numeric"] = split.numeric.numpy()[idx]
        arrays[f"{name}_categorical"] = split.categorical.numpy()[idx]
        arrays[f"{name}_labels"] = np.stack([split.labels[t].numpy()[idx] for t in TASKS], axis=1)
    np.savez(out, **arrays)
    return {
        "numeric": list(data.numeric_features),
        "categorical": [[n, int(c)] for n, c in data.categorical_features],
        "rows": {s: int(arrays[f"{s}_labels"].shape[0]) for s in ("train", "valid", "test")},
    }


# ---- child side: one tool, one training run ----------------------------------------------
def _max_rss_mib() -> float:
    """This process's resident-set high-water mark, MiB.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces, so a child does not
    inherit its parent's peak; ``getrusage``'s ``ru_maxrss`` does survive ``exec`` on Linux
    (it would report the parent's loaded data set), so it is only the fallback.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def _timed(sink: list[float]) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        sink.append(time.perf_counter() - t0)


def _timing_wrapper(fn: Callable[..., Any], sink: list[float], results: list[Any] | None = None) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _timed(sink):
            out = fn(*args, **kwargs)
        if results is not None:
            results.append(out)
        return out

    return wrapped


class _TimedIterable:
    """Wraps a batch source and appends, per pass, the seconds spent producing its batches
    (``next()``), i.e. the data-loading share of a training pass."""

    def __init__(self, source: Any, sink: list[float]) -> None:
        self.source, self.sink = source, sink

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        it, spent = iter(self.source), 0.0
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.sink.append(spent + time.perf_counter() - t0)
                return
            spent += time.perf_counter() - t0
            yield item


def run_rechub(s: dict[str, Any], arrays: Any) -> dict[str, Any]:
    """Train torch-rechub's PLE with its MTLTrainer, timing its train and validation passes."""
    import torch

    version = use_rechub_env()
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    def columns(split: str) -> dict[str, np.ndarray]:
        num, cat = arrays[f"{split}_numeric"], arrays[f"{split}_categorical"]
        x = {name: np.ascontiguousarray(cat[:, j]) for j, (name, _) in enumerate(s["categorical"])}
        x.update({name: np.ascontiguousarray(num[:, j]) for j, name in enumerate(s["numeric"])})
        return x

    features = [SparseFeature(n, vocab_size=c, embed_dim=s["embed_dim"]) for n, c in s["categorical"]]
    features += [DenseFeature(n) for n in s["numeric"]]
    torch.manual_seed(s["seed"])  # the model's init and the DataLoader's shuffling
    model = PLE(
        features,
        task_types=["classification"] * len(TASKS),
        n_level=N_LEVELS,
        n_expert_specific=N_SPECIFIC,
        n_expert_shared=N_SHARED,
        expert_params={"dims": [EXPERT_HIDDEN]},
        tower_params_list=[{"dims": [TOWER_HIDDEN]}] * len(TASKS),
    )
    dg = DataGenerator(columns("train"), arrays["train_labels"])
    train_dl, valid_dl, test_dl = dg.generate_dataloader(
        x_val=columns("valid"),
        y_val=arrays["valid_labels"],
        x_test=columns("test"),
        y_test=arrays["test_labels"],
        batch_size=s["batch_size"],
    )
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = MTLTrainer(
            model,
            task_types=["classification"] * len(TASKS),
            optimizer_fn=torch.optim.Adam,
            optimizer_params={"lr": s["lr"], "weight_decay": 0.0},
            n_epoch=s["epochs"],
            earlystop_taskid=0,
            earlystop_patience=s["epochs"] + 1,  # never stops early: every epoch is timed
            device="cpu",
            model_path=model_dir,
        )
        train_s: list[float] = []
        data_s: list[float] = []
        valid_s: list[float] = []
        valid_scores: list[list[float]] = []
        rss_before = _max_rss_mib()
        evaluate = trainer.evaluate
        trainer.train_one_epoch = _timing_wrapper(trainer.train_one_epoch, train_s)
        trainer.evaluate = _timing_wrapper(evaluate, valid_s, valid_scores)
        trainer.fit(_TimedIterable(train_dl, data_s), valid_dl)
        rss_train = _max_rss_mib()
        trainer.evaluate = evaluate
        # MTLTrainer restores the best weights only when it stops early; restore them here so
        # both tools are scored with the best-validation-income epoch.
        model.load_state_dict(trainer.early_stopper.best_weights)
        test_scores = trainer.evaluate(model, test_dl)
    income = [v[0] for v in valid_scores]
    return {
        "version": version,
        "train_seconds": train_s,
        "data_seconds": data_s,
        "valid_seconds": valid_s,
        "epoch_seconds": [a + b for a, b in zip(train_s, valid_s, strict=True)],
        "valid_auc": [dict(zip(TASKS, map(float, v), strict=True)) for v in valid_scores],
        "best_epoch": income.index(max(income)),
        "test_auc": dict(zip(TASKS, map(float, test_scores), strict=True)),
        "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rss_before_mib": rss_before,
        "rss_train_mib": rss_train,
    }


def _mtl_dataset(s: dict[str, Any], arrays: Any) -> Any:
    import torch

    from mtlsearch.arch import TaskSpec
    from mtlsearch.data import MTLDataset, TensorSplit

    def split(name: str) -> TensorSplit:
        labels = torch.from_numpy(arrays[f"{name}_labels"])
        return TensorSplit(
            numeric=torch.from_numpy(arrays[f"{name}_numeric"]),
            categorical=torch.from_numpy(arrays[f"{name}_categorical"]),
            labels={t: labels[:, k].contiguous() for k, t in enumerate(TASKS)},
            masks={t: torch.ones(labels.shape[0], dtype=torch.bool) for t in TASKS},
        )

    return MTLDataset(
        name="census-income",
        tasks=tuple(TaskSpec(t, "binary") for t in TASKS),
        numeric_features=tuple(s["numeric"]),
        categorical_features=tuple((n, c) for n, c in s["categorical"]),
        train=split("train"),
        valid=split("valid"),
        test=split("test"),
    )


def _mtl_experiment(s: dict[str, Any]) -> Any:
    from mtlsearch.arch import ArchConfig, CategoricalFeature, InputSpec, LevelConfig, TaskSpec, TowerConfig
    from mtlsearch.train import ExperimentConfig, LossWeightingConfig, TrainConfig

    inputs = InputSpec(
        n_numeric=len(s["numeric"]),
        categorical=tuple(CategoricalFeature(n, c, s["embed_dim"]) for n, c in s["categorical"]),
        embed_init_std=s.get("embed_init_std", 1.0),
    )
    level = {
        "n_shared": N_SHARED,
        "n_specific": (N_SPECIFIC,) * len(TASKS),
        "expert_hidden": (EXPERT_HIDDEN,),
        "norm": s.get("norm", "none"),
    }
    arch = ArchConfig(
        inputs=inputs,
        tasks=tuple(TaskSpec(t, "binary") for t in TASKS),
        levels=tuple(LevelConfig(**level, shared_gate=i < N_LEVELS - 1) for i in range(N_LEVELS)),
        towers=(TowerConfig(hidden=(TOWER_HIDDEN,), norm=s.get("norm", "none")),) * len(TASKS),
        name="ple",
    )
    training = TrainConfig(
        optimizer="adam",
        lr=s["lr"],
        weight_decay=0.0,
        batch_size=s["batch_size"],
        epochs=s["epochs"],
        patience=None,
        monitor="income",
        loss_weighting=LossWeightingConfig(method="fixed", weights=dict.fromkeys(TASKS, 1 / len(TASKS))),
        seed=s["seed"],
    )
    return ExperimentConfig(model=arch, training=training)


def run_mtlsearch(s: dict[str, Any], arrays: Any) -> dict[str, Any]:
    """Train the same PLE with mtlsearch.train.fit, timing its training passes."""
    from mtlsearch.data import TensorSplit
    from mtlsearch.train import fit

    fit_module = importlib.import_module("mtlsearch.train._fit")
    data = _mtl_dataset(s, arrays)
    experiment = _mtl_experiment(s)
    train_s: list[float] = []
    data_s: list[float] = []
    rss_before = _max_rss_mib()
    # Timing only, no change in behaviour: fit() calls _train_epoch by its module-level name
    # (wrapped to split an epoch into its training and validation passes), and the training
    # pass draws its batches from TensorSplit.batches (wrapped to time the data share).
    train_epoch, batches = fit_module._train_epoch, TensorSplit.batches
    fit_module._train_epoch = _timing_wrapper(train_epoch, train_s)

    def timed_batches(self: TensorSplit, *args: Any, **kwargs: Any) -> _TimedIterable:
        return _TimedIterable(batches(self, *args, **kwargs), data_s)

    TensorSplit.batches = timed_batches  # type: ignore[method-assign,assignment]
    try:
        result = fit(experiment, data, progress=False)
    finally:
        fit_module._train_epoch, TensorSplit.batches = train_epoch, batches  # type: ignore[method-assign]
    rss_train = _max_rss_mib()
    epoch_s = list(result.epoch_seconds)
    return {
        "version": importlib.import_module("importlib.metadata").version("mtlsearch"),
        "train_seconds": train_s,
        "data_seconds": data_s,
        "valid_seconds": [e - t for e, t in zip(epoch_s, train_s, strict=True)],
        "epoch_seconds": epoch_s,
        "valid_auc": [{t: float(r.valid[t]["auc"]) for t in TASKS} for r in result.history],
        "best_epoch": result.best_epoch,
        "test_auc": {t: float(result.test[t]["auc"]) for t in TASKS},
        "n_params": result.n_params,
        "rss_before_mib": rss_before,
        "rss_train_mib": rss_train,
    }


def child_main(tool: str, settings_path: Path, result_path: Path) -> None:
    """One tool's run in this (fresh) process; writes its result as JSON."""
    import torch

    s = json.loads(settings_path.read_text())
    torch.set_num_threads(s["threads"])
    # The optimisers import torch._dynamo on their first step (seconds); do it before the
    # clock starts so the one-time cost is charged to neither tool's first epoch.
    importlib.import_module("torch._dynamo")
    arrays = dict(np.load(s["arrays"]))
    runner = run_rechub if tool == "torch-rechub" else run_mtlsearch
    result = runner(s, arrays)
    result.update(tool=tool, threads=torch.get_num_threads(), rss_peak_mib=_max_rss_mib())
    result_path.write_text(json.dumps(result, indent=2))


# ---- profile mode ------------------------------------------------------------------------
def profile_mtlsearch(s: dict[str, Any], rows: int) -> None:
    """One mtlsearch epoch under torch.profiler: coarse phases, then the top operators.

    Phases are ``record_function`` ranges around mtlsearch's own functions (batch slicing,
    the model's forward, the masked losses) plus the profiler's own optimizer and autograd
    events; "rest" is the training pass minus them (Python in the loop, .item(), ...).
    """
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from mtlsearch.arch import MTLNetwork
    from mtlsearch.data import TensorSplit
    from mtlsearch.train import fit

    torch.set_num_threads(s["threads"])
    importlib.import_module("torch._dynamo")
    arrays = dict(np.load(s["arrays"]))
    fit_module = importlib.import_module("mtlsearch.train._fit")
    data = _mtl_dataset(s, arrays)
    experiment = _mtl_experiment({**s, "epochs": 1})

    training = [False]  # phases are counted inside the training pass only, not in evaluation

    def ranged(name: str, fn: Callable[..., Any], outer: bool = False) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not (outer or training[0]):
                return fn(*args, **kwargs)
            training[0] = True
            try:
                with record_function(name):
                    return fn(*args, **kwargs)
            finally:
                training[0] = training[0] and not outer

        return wrapped

    patches = [
        (TensorSplit, "take", ranged("phase: batch slicing (TensorSplit.take)", TensorSplit.take)),
        (MTLNetwork, "forward", ranged("phase: model forward", MTLNetwork.forward)),
        (fit_module, "_masked_losses", ranged("phase: masked losses", fit_module._masked_losses)),
        (fit_module, "_train_epoch", ranged("phase: training pass", fit_module._train_epoch, outer=True)),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            result = fit(experiment, data, progress=False)
            wall = time.perf_counter() - t0
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e6 for e in events}
    n_batches = -(-rows // s["batch_size"])
    train_pass = total.get("phase: training pass", float("nan"))
    backward = sum(
        e.cpu_time_total / 1e6 for e in events if e.key.startswith("autograd::engine::evaluate_function")
    )
    phases = {
        "batch slicing (TensorSplit.take)": total.get("phase: batch slicing (TensorSplit.take)", 0.0),
        "model forward": total.get("phase: model forward", 0.0),
        "masked losses": total.get("phase: masked losses", 0.0),
        "backward (autograd engine)": backward,
        "optimizer step (Adam)": sum(v for k, v in total.items() if k.startswith("Optimizer.step#")),
        "zero_grad": sum(v for k, v in total.items() if k.startswith("Optimizer.zero_grad#")),
    }
    print(
        f"mtlsearch, 1 epoch on {rows} training rows ({n_batches} batches of {s['batch_size']}), "
        f"{s['threads']} threads, under the profiler: fit {wall:.2f} s, training pass {train_pass:.2f} s, "
        f"epoch (train + valid) {result.epoch_seconds[0]:.2f} s"
    )
    print()
    print("| phase of the training pass | s | share | ms/batch |")
    print("|---|---|---|---|")
    for name, sec in [*phases.items(), ("rest (Python in the loop, .item(), ...)", None)]:
        sec = train_pass - sum(phases.values()) if sec is None else sec
        print(f"| {name} | {sec:.3f} | {sec / train_pass:.0%} | {1000 * sec / n_batches:.2f} |")
    print()
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


# ---- parent side -------------------------------------------------------------------------
def run_child(tool: str, settings_path: Path, work: Path, tag: str) -> dict[str, Any]:
    result_path = work / f"{tag}.json"
    log_path = work / f"{tag}.log"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        tool,
        str(settings_path),
        str(result_path),
    ]
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise SystemExit(f"{tool} run {tag} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - t0
    result["load_after"] = os.getloadavg()[0]
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict[str, Any]], rows: int) -> dict[str, dict[str, float]]:
    """Per tool: median epoch / train / valid seconds over every epoch of every round,
    samples/s, peak RSS (max over rounds) and mean test AUC per task."""
    out: dict[str, dict[str, float]] = {}
    for tool in TOOLS:
        mine = [r for r in runs if r["tool"] == tool]
        train = [x for r in mine for x in r["train_seconds"]]
        out[tool] = {
            "epoch_s": _median([x for r in mine for x in r["epoch_seconds"]]),
            "train_s": _median(train),
            "data_s": _median([x for r in mine for x in r["data_seconds"]]),
            "valid_s": _median([x for r in mine for x in r["valid_seconds"]]),
            "samples_per_s": rows / _median(train),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in mine),
            "rss_train_increase_mib": max(r["rss_train_mib"] - r["rss_before_mib"] for r in mine),
            **{f"test_auc_{t}": statistics.fmean(r["test_auc"][t] for r in mine) for t in TASKS},
        }
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def render_markdown(report: dict[str, Any]) -> str:
    s, summary, runs, rows = report["settings"], report["summary"], report["runs"], report["rows"]
    rh, ms = summary["torch-rechub"], summary["mtlsearch"]
    lines = [
        f"date: {report['date']}",
        f"machine: {report['machine']}",
        f"command: `{report['command']}`",
        f"torch-rechub {report['rechub_version']}, mtlsearch {report['mtlsearch_version']}, "
        f"torch {report['torch_version']}, Python {report['python']}",
        f"settings: census-income group 1, {rows['train']} train / {rows['valid']} valid / "
        f"{rows['test']} test rows; PLE {N_LEVELS} levels, {N_SPECIFIC} specific per task + "
        f"{N_SHARED} shared experts of [{EXPERT_HIDDEN}], towers [{TOWER_HIDDEN}], "
        f"embed_dim {s['embed_dim']}; mtlsearch norm {s.get('norm', 'none')}, embedding init "
        f"N(0, {s.get('embed_init_std', 1.0):g}); "
        f"Adam lr {s['lr']}, batch {s['batch_size']}, {s['epochs']} epoch(s), {s['rounds']} round(s), "
        f"{s['threads']} torch threads",
        f"1-min load average before / after: {report['load_before']:.2f} / {report['load_after']:.2f}",
        "",
        "| tool | s/epoch (train + valid) | train pass s | of which batches s | valid pass s | "
        "train samples/s | peak RSS MiB | RSS growth in training MiB | test AUC income | "
        "test AUC marital | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    params = {r["tool"]: r["n_params"] for r in runs}
    for tool in TOOLS:
        v = summary[tool]
        lines.append(
            f"| {tool} | {v['epoch_s']:.2f} | {v['train_s']:.2f} | {v['data_s']:.2f} | {v['valid_s']:.2f} | "
            f"{v['samples_per_s']:.0f} | {v['rss_peak_mib']:.0f} | {v['rss_train_increase_mib']:.0f} | "
            f"{v['test_auc_income']:.4f} | {v['test_auc_marital']:.4f} | {params[tool]} |"
        )
    lines += [
        "",
        f"ratio torch-rechub / mtlsearch: epoch time {rh['epoch_s'] / ms['epoch_s']:.2f}x, "
        f"training pass {rh['train_s'] / ms['train_s']:.2f}x, training pass less batch loading "
        f"{(rh['train_s'] - rh['data_s']) / (ms['train_s'] - ms['data_s']):.2f}x, samples/s "
        f"{ms['samples_per_s'] / rh['samples_per_s']:.2f}x (mtlsearch faster when > 1); "
        f"peak RSS {rh['rss_peak_mib'] / ms['rss_peak_mib']:.2f}x; test AUC difference mtlsearch - "
        f"torch-rechub: income {ms['test_auc_income'] - rh['test_auc_income']:+.4f}, "
        f"marital {ms['test_auc_marital'] - rh['test_auc_marital']:+.4f}",
        "",
        "Every run, in the order run (seconds per epoch, all epochs; test AUC with the best "
        "validation-income epoch's weights):",
        "",
        "| # | tool | seed | epoch s | train s | valid s | best epoch | test AUC income | "
        "test AUC marital | peak RSS MiB | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        lines.append(
            f"| {i} | {r['tool']} | {r['seed']} | {', '.join(f'{x:.2f}' for x in r['epoch_seconds'])} | "
            f"{', '.join(f'{x:.2f}' for x in r['train_seconds'])} | "
            f"{', '.join(f'{x:.2f}' for x in r['valid_seconds'])} | {r['best_epoch']} | "
            f"{r['test_auc']['income']:.4f} | {r['test_auc']['marital']:.4f} | {r['rss_peak_mib']:.0f} | "
            f"{r['load_after']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"install torch-rechub {RECHUB_VERSION} in {RECHUB_ENV.name}/, exit",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding census-income-kdd/")
    parser.add_argument("--quick", action="store_true", help="smoke size: 10k/5k/5k rows, 1 epoch, 1 round")
    parser.add_argument(
        "--rows", type=int, default=None, help="subsample: ROWS training, ROWS/2 validation and test rows"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (each trains both tools)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embed-dim", type=int, default=8)
    parser.add_argument(
        "--norm",
        choices=("batch", "none"),
        default="batch",
        help="mtlsearch's norm for experts, gates and towers (batch = torch-rechub's layout)",
    )
    parser.add_argument(
        "--embed-init-std",
        type=float,
        default=1e-4,
        help="mtlsearch's embedding init scale (1e-4 = torch-rechub's N(0, 1e-4))",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in both tools")
    parser.add_argument("--seed", type=int, default=0, help="round r trains with seed + r")
    parser.add_argument("--profile", action="store_true", help="profile one mtlsearch epoch instead")
    parser.add_argument("--out-md", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--out-json", type=Path, default=None, help="write every raw number here")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only re-render the report of an --out-json file"
    )
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "SETTINGS", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    if args.from_json:
        print(render_markdown(json.loads(args.from_json.read_text())), end="")
        return
    if args.install:
        install_rechub()
        print(f"installed torch-rechub {use_rechub_env()} in {RECHUB_ENV}; now run without --install")
        return
    rechub_version = use_rechub_env()
    if args.quick:
        args.rows = args.rows or 10_000
        args.epochs, args.rounds = 1, 1
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vs-rechub-") as tmp:
        work = Path(tmp)
        meta = prepare_arrays(args.data_dir or default_data_dir(), work / "arrays.npz", args.rows, args.seed)
        settings = {
            "arrays": str(work / "arrays.npz"),
            "numeric": meta["numeric"],
            "categorical": meta["categorical"],
            "embed_dim": args.embed_dim,
            "norm": args.norm,
            "embed_init_std": args.embed_init_std,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "threads": args.threads,
            "seed": args.seed,
        }
        if args.profile:
            profile_mtlsearch(settings, meta["rows"]["train"])
            return
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = TOOLS if r % 2 == 0 else TOOLS[::-1]
            for tool in order:
                seeded = {**settings, "seed": args.seed + r}
                path = work / f"settings-{r}.json"
                path.write_text(json.dumps(seeded))
                result = run_child(tool, path, work, f"{r}-{tool}")
                result["seed"] = seeded["seed"]
                runs.append(result)
                print(
                    f"round {r} {tool}: s/epoch {[round(x, 2) for x in result['epoch_seconds']]}, "
                    f"test AUC { ({t: round(v, 4) for t, v in result['test_auc'].items()}) }, "
                    f"peak RSS {result['rss_peak_mib']:.0f} MiB",
                    flush=True,
                )
    import torch

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({_cpu_model()})",
        "command": " ".join([".venv/bin/python", "benchmarks/vs_torch_rechub.py", *sys.argv[1:]]),
        "rechub_version": rechub_version,
        "mtlsearch_version": runs[-1]["version"] if runs[-1]["tool"] == "mtlsearch" else runs[-2]["version"],
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "settings": {**settings, "rounds": args.rounds, "arrays": None},
        "rows": meta["rows"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "total_seconds": time.perf_counter() - started,
        "runs": runs,
        "summary": summarise(runs, meta["rows"]["train"]),
    }
    text = render_markdown(report)
    print()
    print(text)
    print(f"whole benchmark: {report['total_seconds']:.1f} s")
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(text)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
