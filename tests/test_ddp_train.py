"""Training with 2 DDP processes (gloo, CPU) against 1 process: same metrics, a checkpoint
that a 1-process ``predict`` and the serving export read, and gradient-level loss weightings
refused in one line.

Tolerance (:data:`TOL` = 1e-5, absolute, on every validation metric and on the epoch
losses). With the same global batch the two runs compute the same update: the same seeded
permutation, each batch of 77 rows cut 38/39 between the ranks, each rank's task loss
rescaled by ``N n_k^r / n_k`` so that DDP's mean of the gradients is the global batch's
gradient, the uncertainty weighting's log-variance gradients averaged too, the validation
predictions gathered and AUC computed once on all rows. What differs is float32 summation
order (two half-batch gradient sums averaged instead of one full-batch sum, a few ulps per
step); measured here (1 thread per process): 6e-8 on the metrics, 2e-8 on the training
loss after 2 epochs of 9 Adam steps. 1e-5 leaves two orders of magnitude for another CPU's
kernels while still catching a change of the update (a loss left unscaled on an uneven
split, per-rank AUCs averaged).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _cli import run_main

from mtlsearch.train import LOSS_WEIGHTINGS, load_checkpoint
from mtlsearch.train.distributed import refusal

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5

SPEC = """\
name: ddp-rows
files: {path: rows.csv}
split: {valid: 0.2, test: 0.2, seed: 0}
features: {numeric: [a, b, c], categorical: [cat]}
tasks:
  - {name: click, label: y, kind: binary}
  - {name: amount, label: r, kind: regression}
"""
CONFIG = """\
model:
  levels: [{n_shared: 1, n_specific: 1, expert_hidden: [16]}]
  towers: {hidden: [8]}
training:
  lr: 0.01
  batch_size: 77
  epochs: 2
  seed: 0
  loss_weighting: {method: uncertainty}
"""


def _rows(n: int = 1100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    cat = rng.choice(["u", "v", "w", "z"], size=n)
    logit = x[:, 0] - 0.5 * x[:, 1] + (cat == "u") * 0.8
    return pd.DataFrame(
        {
            "a": x[:, 0],
            "b": x[:, 1],
            "c": x[:, 2],
            "cat": cat,
            "y": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
            "r": 2.0 * x[:, 2] + x[:, 0] + rng.normal(scale=0.5, size=n),
        }
    )


def _ddp_train(cwd: Path, config: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "-c", config, "--data", "spec.yaml"]
    cmd += ["--out", out, "--threads", "1", "--quiet", "--nproc", "2", *extra]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config trained by 1 process (in this one) and by 2 DDP processes."""
    work = tmp_path_factory.mktemp("ddp")
    _rows().to_csv(work / "rows.csv", index=False)
    (work / "spec.yaml").write_text(SPEC)
    (work / "exp.yaml").write_text(CONFIG)
    mp = pytest.MonkeyPatch()
    try:
        capsys = _NoCapture()
        code, _, err = run_main(
            mp, capsys, work, "train", "-c", "exp.yaml", "--data", "spec.yaml", "--out", "one",
            "--threads", "1", "--quiet",
        )  # fmt: skip
    finally:
        mp.undo()
        torch.set_num_threads(1)
    assert code == 0, err
    proc = _ddp_train(work, "exp.yaml", "two")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((work / "one" / "metrics.json").read_text())
    two = json.loads((work / "two" / "metrics.json").read_text())
    return work, one, two


class _NoCapture:
    """run_main reads captured output; a module fixture has no capsys: nothing to read."""

    def readouterr(self):
        return "", ""


def test_two_processes_reach_the_metrics_of_one(runs):
    _, one, two = runs
    assert two["processes"] == 2 and "processes" not in one
    assert two["epochs_run"] == one["epochs_run"] == 2
    assert one["valid"].keys() == two["valid"].keys() == {"click", "amount"}
    for task, metrics in one["valid"].items():
        assert metrics.keys() == two["valid"][task].keys()
        for name, value in metrics.items():
            assert abs(two["valid"][task][name] - value) < TOL, (task, name, value, two["valid"][task][name])
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert abs(h1["train_loss"] - h2["train_loss"]) < TOL
        for task in ("click", "amount"):
            assert abs(h1["task_losses"][task] - h2["task_losses"][task]) < TOL
            assert abs(h1["loss_weights"][task] - h2["loss_weights"][task]) < TOL
    # the run learned something, so the comparison is not between two untrained networks
    assert two["valid"]["click"]["auc"] > 0.7


def test_the_ddp_checkpoint_predicts_in_one_process(runs, monkeypatch, capsys):
    work, _, _ = runs
    state = torch.load(work / "two" / "model.pt", weights_only=True)
    assert state and not [k for k in state if str(k).startswith("module.")]
    checkpoint = load_checkpoint(work / "two")  # strict load: any "module." key would fail here
    assert checkpoint.metrics["processes"] == 2
    _rows(50, seed=7).drop(columns=["y", "r"]).to_csv(work / "new.csv", index=False)
    outputs = {}
    for name in ("one", "two"):
        code, _, err = run_main(
            monkeypatch, capsys, work, "predict", "-m", name, "-i", "new.csv", "--output", f"{name}.csv"
        )
        assert code == 0, err
        outputs[name] = pd.read_csv(work / f"{name}.csv")
    assert len(outputs["two"]) == 50
    assert list(outputs["two"].columns) == list(outputs["one"].columns)
    np.testing.assert_allclose(outputs["two"].to_numpy(float), outputs["one"].to_numpy(float), atol=1e-3)


def test_the_ddp_checkpoint_exports_a_program_that_serves(runs):
    from mtlsearch.tracking._export import export_serving, parity_batch
    from mtlsearch.tracking._serving import ServingModel, serving_inputs

    work, _, _ = runs
    checkpoint = load_checkpoint(work / "two")
    written = export_serving(checkpoint, work / "serving")
    program = torch.export.load(str(written.files["pt2"])).module()
    model = ServingModel(checkpoint.model, serving_inputs(checkpoint.preprocessor, checkpoint.label_scaling))
    batch = parity_batch(model.eval(), rows=16)
    with torch.no_grad():
        served, eager = program(batch), model(batch)
    assert served.shape == (16, 2)
    torch.testing.assert_close(served, eager, rtol=1e-5, atol=1e-6)


def test_a_gradient_level_method_is_refused_in_one_line(runs, monkeypatch, capsys):
    work, _, _ = runs
    (work / "upgrad.yaml").write_text(CONFIG.replace("method: uncertainty", "method: upgrad"))
    code, _, err = run_main(
        monkeypatch, capsys, work, "train", "-c", "upgrad.yaml", "--data", "spec.yaml", "--out", "u",
        "--nproc", "2", "--quiet",
    )  # fmt: skip
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'upgrad'" in lines[0] and "DDP" in lines[0], err
    assert lines[0].startswith("error: upgrad.yaml: training.loss_weighting.method"), err
    assert not (work / "u").exists()


def test_which_loss_weightings_run_under_ddp():
    from mtlsearch.train import _gradient
    from mtlsearch.train._weighting import LossWeighting

    gradient_level = {n for n, c in LOSS_WEIGHTINGS.items() if c.__module__ == _gradient.__name__}
    assert {"upgrad", "mgda", "pcgrad", "cagrad"} <= gradient_level
    for name in gradient_level | {"gradnorm", "famo", "gls"}:
        assert refusal(name) is not None and name in refusal(name)
    for name in ("fixed", "dynamic", "uncertainty", "dwa", "rlw"):
        assert refusal(name) is None, name
        assert LOSS_WEIGHTINGS[name].backward is LossWeighting.backward


# ---- ESCM²'s IPS loss: rescaled by the product's rows, exact as the other losses ----------------
CHAIN_SPEC = """\
name: ddp-chain
files: {path: chain.csv}
split: {valid: 0.2, test: 0.2, seed: 0}
features: {numeric: [a, b, c], categorical: [cat]}
tasks:
  - {name: ctr, label: click, kind: binary}
  - {name: cvr, label: conv, kind: binary, where: {click: 1}}
  - {name: ctcvr, label: buy, kind: binary}
"""
CHAIN_CONFIG = """\
model:
  tasks:
    - {name: ctr, kind: binary}
    - {name: cvr, kind: binary, loss: ips, ips_weight: 0.5, ips_clip: 0.05}
    - {name: ctcvr, kind: binary, product_of: [ctr, cvr]}
  levels: [{n_shared: 1, n_specific: 1, expert_hidden: [16]}]
  towers: {hidden: [8]}
training:
  lr: 0.01
  batch_size: 77
  epochs: 2
  seed: 0
  monitor: ctcvr
"""


def _chain_rows(n: int = 1100, seed: int = 1) -> pd.DataFrame:
    """Clicks on about 40 % of the rows, conversions on about half of the clicked ones, so each
    38/39-row half of a batch holds a different share of the clicked rows (the case where
    scaling by clicked rows instead of impressions changes the gradient)."""
    rng = np.random.default_rng(seed)
    frame = _rows(n, seed).drop(columns=["y", "r"])
    click = (rng.random(n) < 1 / (1 + np.exp(-(frame["a"].to_numpy() - 0.4)))).astype(int)
    conv = np.where(click == 1, (rng.random(n) < 1 / (1 + np.exp(-frame["b"].to_numpy()))).astype(int), 0)
    return frame.assign(click=click, conv=conv, buy=click * conv)


def test_escm2_ips_loss_under_two_processes_equals_one(tmp_path, monkeypatch, capsys):
    """The IPS term is normalised by the product's rows (all impressions), so each rank's
    factor is ``N n^r / n`` over impressions: the 2-process run is the 1-process run."""
    _chain_rows().to_csv(tmp_path / "chain.csv", index=False)
    (tmp_path / "spec.yaml").write_text(CHAIN_SPEC)
    (tmp_path / "esc.yaml").write_text(CHAIN_CONFIG)
    try:
        code, _, err = run_main(
            monkeypatch, capsys, tmp_path, "train", "-c", "esc.yaml", "--data", "spec.yaml", "--out", "one",
            "--threads", "1", "--quiet",
        )  # fmt: skip
    finally:
        torch.set_num_threads(1)
    assert code == 0, err
    proc = _ddp_train(tmp_path, "esc.yaml", "two")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert len(one["history"]) == len(two["history"]) == 2
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert abs(h1["train_loss"] - h2["train_loss"]) < TOL, (h1["train_loss"], h2["train_loss"])
        for task in ("ctr", "cvr", "ctcvr"):
            assert abs(h1["task_losses"][task] - h2["task_losses"][task]) < TOL, task
    for task, metrics in one["valid"].items():
        for name, value in metrics.items():
            assert abs(two["valid"][task][name] - value) < TOL, (task, name)
    # rank 0 alone logs: the data-loading line once, not once per process
    assert proc.stderr.count("ddp-chain: ") == 1, proc.stderr[-3000:]


# ---- bad input under --nproc: one line, exit 2 --------------------------------------------------
def test_an_error_only_the_ranks_see_is_one_line_and_exit_2(runs):
    """``--max-memory 1KiB`` needs the data's model to be estimated: every rank refuses; the
    launcher prints rank 0's message once, without torchrun's report or a traceback."""
    work, _, _ = runs
    proc = _ddp_train(work, "exp.yaml", "m", "--max-memory", "1KiB")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "to train, more than the limit of 1.00 KiB" in errors[0], proc.stderr
    for noise in ("Traceback", "ChildFailedError", "torch.distributed", "exitcode"):
        assert noise not in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) <= 3, proc.stderr  # 2 INFO + error
    assert not (work / "m").exists()


def test_the_launcher_checks_what_it_can_before_starting_ranks(runs, monkeypatch, capsys):
    """A malformed --max-memory and a self-contained config's typo fail in the launching
    process (run in-process here: no rank is started)."""
    work, _, _ = runs
    code, _, err = run_main(
        monkeypatch, capsys, work, "train", "-c", "exp.yaml", "--data", "spec.yaml", "--out", "b",
        "--nproc", "2", "--max-memory", "lots",
    )  # fmt: skip
    assert code == 2 and err.strip().startswith("error: --max-memory: expected a size"), err
    own = CONFIG.replace(
        "  towers: {hidden: [8]}",
        "  towers: {hidden: [8]}\n  inputs: {n_numeric: 3, categorical: [{name: cat, cardinality: 5}]}\n"
        "  tasks: [{name: ctr, kind: binary}, {name: cvr, kind: binary},"
        " {name: ctcvr, kind: binary, product_of: [ctr, cvrr]}]",
    )
    (work / "own.yaml").write_text(own)
    code, _, err = run_main(
        monkeypatch, capsys, work, "train", "-c", "own.yaml", "--data", "spec.yaml", "--out", "b",
        "--nproc", "2",
    )  # fmt: skip
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: own.yaml: model."), err
    assert "cvrr" in lines[0], err


def test_ranks_other_than_0_log_errors_only(monkeypatch):
    import logging

    from mtlsearch.train import distributed

    pkg, root = logging.getLogger("mtlsearch"), logging.getLogger()
    saved = pkg.level, root.level
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        distributed.quiet_other_ranks()
        assert pkg.level == saved[0] and root.level == saved[1]  # rank 0 unchanged
        monkeypatch.setenv("RANK", "1")
        distributed.quiet_other_ranks()
        assert pkg.level == root.level == logging.ERROR
        assert not logging.getLogger("mtlsearch.data").isEnabledFor(logging.WARNING)
    finally:
        pkg.setLevel(saved[0])
        root.setLevel(saved[1])
