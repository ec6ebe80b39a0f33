"""Streamed splits under DDP (2 processes, gloo) and row subsampling of streamed splits.

The training split is 5 Parquet row groups of 300 rows (3 shards: 2 + 2 + 1 row groups), so
2 ranks get 3 and 2 row groups per epoch: uneven. Lock-step is the rank with fewer rows'
batch count (an all-reduced MIN): the other rank skips its last rows, and no rank waits.

Tolerance against 1 process (:data:`AUC_TOL` = 0.05 on the validation AUC): a 2-rank
streamed run is *not* the 1-process run (each rank reads its own row groups through its own
shuffle buffer, and about a fifth of the rows are skipped per epoch), so only the quality
must agree; 0.05 is well outside the seed-to-seed spread of either run on this table (both
reach about 0.8) yet catches a broken gradient (an unscaled loss, a rank training on
nothing: AUC near 0.5). Same seed and same N: bitwise the same metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _cli import run_main
from sklearn.metrics import roc_auc_score

from mtlsearch._yaml import dump_yaml
from mtlsearch.data import hashed_indices, load_dataset
from mtlsearch.data._sample import row_hash

ROOT = Path(__file__).resolve().parents[1]
AUC_TOL = 0.05
VALID_ROWS = 700

EXPERIMENT = {
    "model": {"levels": [{"n_shared": 1, "n_specific": 1, "expert_hidden": [16]}], "towers": {"hidden": [8]}},
    "training": {"lr": 0.01, "batch_size": 64, "epochs": 2, "seed": 0, "loss_weighting": {"method": "fixed"}},
}


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    cat = rng.choice(["u", "v", "w", "z"], size=n)
    logit = 1.5 * x[:, 0] - x[:, 1] + (cat == "u") * 0.8
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "cat": cat, "y": click, "r": 2.0 * x[:, 2] + x[:, 0]}
    )


def _write(folder: Path, frame: pd.DataFrame, groups_per_shard: list[int], group_rows: int) -> None:
    folder.mkdir()
    start = 0
    for s, groups in enumerate(groups_per_shard):
        rows = groups * group_rows
        table = pa.Table.from_pandas(frame.iloc[start : start + rows], preserve_index=False)
        pq.write_table(table, folder / f"part-{s}.parquet", row_group_size=group_rows)
        start += rows


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddpstream")
    _write(tmp / "train", _rows(1500, 0), [2, 2, 1], 300)  # 5 row groups of 300 rows
    _write(tmp / "valid", _rows(VALID_ROWS, 1), [2], 350)
    _write(tmp / "test", _rows(400, 2), [1], 400)
    spec = {
        "name": "ddp-stream",
        "files": {"train": "train", "valid": "valid", "test": "test", "format": "parquet"},
        "stream": True,
        "shuffle_buffer": 256,
        "features": {"numeric": ["a", "b", "c"], "categorical": ["cat"]},
        "tasks": [
            {"name": "click", "label": "y", "kind": "binary"},
            {"name": "amount", "label": "r", "kind": "regression"},
        ],
    }
    (tmp / "stream.yaml").write_text(dump_yaml(spec))
    (tmp / "exp.yaml").write_text(dump_yaml(EXPERIMENT))
    return tmp


def _ddp_train(cwd: Path, out: str, *extra: str) -> dict:
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "-c", "exp.yaml", "--data", "stream.yaml"]
    cmd += ["--out", out, "--threads", "1", "--quiet", "--nproc", "2", *extra]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((cwd / out / "metrics.json").read_text())


class _NoCapture:
    def readouterr(self):
        return "", ""


@pytest.fixture(scope="module")
def runs(work):
    """1 process, and the same 2-process run twice."""
    mp = pytest.MonkeyPatch()
    try:
        code, _, err = run_main(
            mp, _NoCapture(), work, "train", "-c", "exp.yaml", "--data", "stream.yaml", "--out", "one",
            "--threads", "1", "--quiet",
        )  # fmt: skip
    finally:
        mp.undo()
        torch.set_num_threads(1)
    assert code == 0, err
    one = json.loads((work / "one" / "metrics.json").read_text())
    return one, _ddp_train(work, "two"), _ddp_train(work, "again")


def test_two_streamed_ranks_train_reproducibly_and_close_to_one(runs):
    one, two, again = runs
    assert two["processes"] == 2 and two["epochs_run"] == 2
    assert two["valid"] == again["valid"] and two["history"] == again["history"]  # same seed, same N
    auc1, auc2 = one["valid"]["click"]["auc"], two["valid"]["click"]["auc"]
    assert auc2 > 0.7, auc2  # it learned: not a comparison of untrained networks
    assert abs(auc1 - auc2) < AUC_TOL, (auc1, auc2)
    assert two["valid"] != one["valid"]  # other batches: not the 1-process run (documented)


def test_the_validation_auc_is_over_all_rows(work, runs):
    """The DDP run's AUC is the exact AUC of the saved (best) model over all 700 validation
    rows, not one rank's half nor a mean of the halves'."""
    from mtlsearch.train import load_checkpoint
    from mtlsearch.train._evaluate import raw_outputs

    _, two, _ = runs
    ck = load_checkpoint(work / "two")
    frame = pd.read_parquet(work / "valid")
    assert len(frame) == VALID_ROWS
    enc = ck.preprocessor.transform_split(frame, "valid")
    prob = torch.sigmoid(raw_outputs(ck.model, enc.numeric, enc.categorical)["click"]).double().numpy()
    y = frame["y"].to_numpy()
    full = roc_auc_score(y, prob)
    assert abs(two["valid"]["click"]["auc"] - full) < 1e-6, (two["valid"]["click"]["auc"], full)
    halves = [roc_auc_score(y[s], prob[s]) for s in (slice(0, 350), slice(350, None))]
    assert all(abs(h - full) > 1e-6 for h in halves) and abs(np.mean(halves) - full) > 1e-6


def test_rank_parts_are_disjoint_and_cover_the_epoch(work):
    ds = load_dataset(work / "stream.yaml")
    seen = []
    for rank in (0, 1):
        gen = torch.Generator().manual_seed(5)
        rows, parts = ds.train.rank_batches(32, gen, rank, 2)
        got = torch.cat([b.numeric[:, 0] for b in parts])
        assert len(got) == rows and rows in (600, 900)  # 2 or 3 row groups of 300
        seen.append(got)
    assert len(seen[0]) + len(seen[1]) == 1500
    together = torch.sort(torch.cat(seen)).values
    everything = torch.sort(torch.cat([b.numeric[:, 0] for b in ds.train.batches(512)])).values
    assert torch.equal(together, everything)


def test_max_rows_on_a_stream_is_a_seeded_hashed_subsample(work):
    full = load_dataset(work / "stream.yaml")
    all_a = torch.cat([b.numeric[:, 0] for b in full.train.batches(4096)])
    ds = load_dataset(work / "stream.yaml", max_rows=250, seed=3)
    assert len(ds.train) == 250 and ds.meta["max_rows"] == 250 and ds.meta["train_rows"] == 1500
    kept = hashed_indices(1500, 250, 3)
    # the 250 rows of smallest hash of (seed, row), by hand
    by_hand = np.sort(np.argsort(row_hash(3, np.arange(1500)), kind="stable")[:250])
    assert np.array_equal(kept, by_hand)
    got = torch.cat([b.numeric[:, 0] for b in ds.train.batches(64)])
    assert torch.equal(got, all_a[torch.from_numpy(kept)])  # file order, those rows
    again = load_dataset(work / "stream.yaml", max_rows=250, seed=3)
    assert torch.equal(torch.cat([b.numeric[:, 0] for b in again.train.batches(64)]), got)
    other = hashed_indices(1500, 250, 4)
    assert not np.array_equal(other, kept)
    # a subsample of the subsample (the search's data fraction on top of --max-rows)
    inner = ds.train.take(torch.tensor([0, 5, 249]))
    assert torch.equal(torch.cat([b.numeric[:, 0] for b in inner.batches(64)]), got[[0, 5, 249]])
    shuffled = torch.cat(
        [b.numeric[:, 0] for b in ds.train.batches(64, True, torch.Generator().manual_seed(0))]
    )
    assert torch.equal(torch.sort(shuffled).values, torch.sort(got).values)


def test_max_rows_trains_on_a_stream(work, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, work, "train", "-c", "exp.yaml", "--data", "stream.yaml", "--out", "few",
        "--threads", "1", "--quiet", "--max-rows", "600",
    )  # fmt: skip
    torch.set_num_threads(1)
    assert code == 0, err
    metrics = json.loads((work / "few" / "metrics.json").read_text())
    assert metrics["max_rows"] == {"max_rows": 600, "train_rows": 1500}


def test_fewer_row_groups_than_processes_is_refused_in_one_line(work, monkeypatch, capsys):
    from mtlsearch._errors import UserError

    ds = load_dataset(work / "stream.yaml", max_rows=1, seed=0)  # one row: one row group left
    with pytest.raises(UserError, match="1 row group with rows, fewer than the 2 processes"):
        ds.train.check_world(2)
    ds.train.check_world(1)


def test_a_search_refuses_such_a_stream_before_its_first_trial(work, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, work, "search", "--space", str(ROOT / "search_spaces" / "quick.yaml"),
        "--data", "stream.yaml", "--n-trials", "2", "--no-references", "--no-mlflow", "--threads", "1",
        "--quiet", "--nproc", "2", "--max-rows", "1", "--storage", "sqlite:///refused.db",
    )  # fmt: skip
    torch.set_num_threads(1)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "fewer than the 2 processes" in lines[0], err
    assert not (work / "refused.db").exists()  # refused before the study is created (issue 12)
