"""Checkpoints: bitwise reload (also in a new process), raw-row prediction, safe writing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _train_support import REPO, experiment, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.cli._train import _write_table
from mtlsearch.data import load_dataset, make_synthetic
from mtlsearch.train import ExperimentConfig, fit, load_checkpoint, predict, save_checkpoint
from mtlsearch.train._evaluate import raw_outputs

CITIES = np.array(["paris", "lyon", "nice", "lille", "brest"])


def _shop(n: int, seed: int) -> pd.DataFrame:
    """A raw user table: numbers, strings with missing values, a binary and a 3-class label."""
    rng = np.random.default_rng(seed)
    price = rng.gamma(2.0, 10.0, n)
    visits = rng.poisson(3, n).astype(float)
    visits[rng.random(n) < 0.05] = np.nan
    city = rng.choice(CITIES, n).astype(object)
    city[rng.random(n) < 0.05] = None
    logit = 0.08 * (price - 20) + 0.4 * (np.nan_to_num(visits, nan=3) - 3) + (city == "paris")
    bought = rng.random(n) < 1 / (1 + np.exp(-logit))
    tier = np.digitize(price + rng.normal(0, 5, n), [12, 28])
    return pd.DataFrame(
        {
            "price": price,
            "visits": visits,
            "city": city,
            "bought": np.where(bought, "buy", "skip"),
            "tier": np.array(["bronze", "silver", "gold"])[tier],
        }
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A spec-loaded dataset (with a fitted preprocessor) and a checkpoint trained on it."""
    folder = tmp_path_factory.mktemp("shop")
    _shop(1500, 0).to_csv(folder / "shop.csv", index=False)
    (folder / "shop.yaml").write_text(
        "name: shop\n"
        "files: {path: shop.csv}\n"
        "split: {valid: 0.2, test: 0.2, seed: 0}\n"
        "features: {numeric: [price, visits], categorical: [city]}\n"
        "tasks:\n"
        "  - {name: bought, label: bought, kind: binary, positive: [buy], negative: [skip]}\n"
        "  - {name: tier, label: tier, kind: multiclass}\n"
    )
    data = load_dataset(folder / "shop.yaml")
    torch.set_num_threads(1)
    result = fit(experiment(data, "cgc", epochs=2, batch_size=64), data, progress=False)
    ckpt = save_checkpoint(result, data, folder / "ckpt")
    return data, result, ckpt, folder


def _direct(result, data, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the trained model itself predicts for raw rows (no checkpoint involved)."""
    numeric, categorical = data.preprocessor.transform(df)
    outs = raw_outputs(result.model, numeric, categorical)
    return {
        "bought": torch.sigmoid(outs["bought"]).double().numpy(),
        "tier": torch.softmax(outs["tier"].double(), -1).numpy(),
    }


def test_a_reloaded_checkpoint_predicts_the_same_bits(table):
    data, result, ckpt, _ = table
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.yaml", "metrics.json", "model.pt", "preprocessing.json",
    ]  # fmt: skip
    loaded = load_checkpoint(ckpt)
    assert loaded.config == result.config
    assert loaded.metrics["test"] == result.test
    assert loaded.metrics["best_epoch"] == result.best_epoch + 1  # 1-based, as the CLI prints it
    df = _shop(300, 1).drop(columns=["bought", "tier"])  # labels are not needed to score
    pred = predict(loaded, df)
    direct = _direct(result, data, df)
    np.testing.assert_array_equal(pred["bought"].to_numpy(), direct["bought"])
    classes = loaded.preprocessor.tasks[1].classes
    probs = pred[[f"tier_prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_array_equal(probs, direct["tier"])
    assert set(pred["tier"]) <= set(classes)  # the class labels, not codes
    np.testing.assert_array_equal(pred["tier"].to_numpy(), np.asarray(classes)[probs.argmax(1)])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


def test_a_new_process_gives_the_same_predictions_to_the_last_bit(table):
    _, _, ckpt, folder = table
    _shop(400, 2).to_csv(folder / "new_rows.csv", index=False)
    rows = pd.read_csv(folder / "new_rows.csv")
    here = predict(load_checkpoint(ckpt), rows)
    out = folder / "pred.parquet"
    proc = _cli("predict", "--model", str(ckpt), "--input", str(folder / "new_rows.csv"),
                "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    there = pd.read_parquet(out)
    assert list(there.columns) == list(here.columns)
    for col in here.columns:
        np.testing.assert_array_equal(there[col].to_numpy(), here[col].to_numpy())
    # CSV output keeps every bit too (floats are written with round-trip precision)
    _write_table(here, folder / "pred.csv")
    back = pd.read_csv(folder / "pred.csv")
    for col in here.columns:
        np.testing.assert_array_equal(back[col].to_numpy(), here[col].to_numpy())


def test_unseen_categories_fall_into_the_oov_bucket(table):
    _, _, ckpt, _ = table
    loaded = load_checkpoint(ckpt)
    df = _shop(50, 3)
    a = predict(loaded, df.assign(city="atlantis"))
    b = predict(loaded, df.assign(city="el dorado"))
    assert np.isfinite(a["bought"]).all()
    pd.testing.assert_frame_equal(a, b)  # both unseen: the same OOV code, the same scores
    assert not np.array_equal(a["bought"], predict(loaded, df.assign(city="paris"))["bought"])


def test_a_missing_feature_column_is_one_clear_line_and_writes_nothing(table):
    _, _, ckpt, folder = table
    _shop(20, 4).drop(columns=["city"]).to_csv(folder / "no_city.csv", index=False)
    with pytest.raises(UserError, match="city"):
        predict(load_checkpoint(ckpt), pd.read_csv(folder / "no_city.csv"))
    out = folder / "never.csv"
    proc = _cli("predict", "--model", str(ckpt), "--input", str(folder / "no_city.csv"),
                "--output", str(out))  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_city.csv" in lines[0] and "city" in lines[0], proc.stderr
    assert not out.exists()


def test_a_failed_save_leaves_nothing_behind(table, tmp_path, monkeypatch):
    data, result, _, _ = table

    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(ExperimentConfig, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(result, data, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_kept_unless_overwrite(table, tmp_path):
    data, result, _, _ = table
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        save_checkpoint(result, data, target)
    assert (target / "keep.txt").read_text() == "mine"
    save_checkpoint(result, data, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.pt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left over


class Payload:  # anything but tensors makes weights_only loading refuse the file
    pass


def test_loading_refuses_pickled_objects_and_names_broken_files(table, tmp_path):
    data, result, _, _ = table
    ckpt = save_checkpoint(result, data, tmp_path / "ckpt")
    torch.save({"payload": Payload()}, ckpt / "model.pt")
    with pytest.raises(UserError, match=r"model\.pt: cannot load the weights"):
        load_checkpoint(ckpt)
    (ckpt / "metrics.json").unlink()
    with pytest.raises(UserError, match=r"metrics\.json: missing"):
        load_checkpoint(ckpt)
    with pytest.raises(UserError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nothing")


def test_data_without_a_preprocessor_is_scored_by_column_name(tmp_path):
    data = make_synthetic(n=600, d=6, seed=0)
    result = fit(experiment(data, "mmoe", epochs=1), data, progress=False)
    ckpt = save_checkpoint(result, data, tmp_path / "ckpt")
    assert json.loads((ckpt / "preprocessing.json").read_text())["kind"] == "columns"
    df = pd.DataFrame(data.test.numeric.numpy(), columns=data.numeric_features)
    pred = predict(load_checkpoint(ckpt), df)
    outs = raw_outputs(result.model, data.test.numeric, data.test.categorical)
    np.testing.assert_array_equal(pred["y1"].to_numpy(), outs["y1"].double().numpy())
    with pytest.raises(UserError, match="x3"):
        predict(load_checkpoint(ckpt), df.drop(columns=["x3"]))


def test_checkpoint_files_are_plain_formats(table):
    _, result, ckpt, _ = table
    state = torch.load(Path(ckpt) / "model.pt", weights_only=True)
    assert set(state) == set(result.model.state_dict())
    metrics = json.loads((Path(ckpt) / "metrics.json").read_text())
    assert metrics["tasks"] == [
        {"name": "bought", "kind": "binary"},
        {"name": "tier", "kind": "multiclass"},
    ]
    assert len(metrics["history"]) == len(result.history)
