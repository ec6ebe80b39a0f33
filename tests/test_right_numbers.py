"""Right numbers on real tables, or a clear refusal (issue 17, data + train layers).

* a regression label on a large scale is learned standardised: the result no longer
  depends on the label's units, and every metric and prediction is in those units;
* a metric that would be undefined in a split (one class, a constant label) is refused at
  load time with one line naming the task, the split and the cause, and a NaN skill that
  gets through never selects an epoch;
* split edge cases and silent surprises (a stray word in a numeric column, a feature or
  a header column given twice, an AUC on a handful of positives) say what they are;
* metrics.json numbers epochs from 1, as the CLI's table does.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _data_helpers import listing, shop_frame, shop_spec, write_spec
from _train_support import experiment, mixed_data, one_thread  # noqa: F401  (autouse fixture)
from torch import nn

from mtlsearch import cli
from mtlsearch._errors import UserError
from mtlsearch.data import TensorSplit, load_dataset
from mtlsearch.train import fit, load_checkpoint, predict, save_checkpoint
from mtlsearch.train._evaluate import Evaluator

# ---- helpers ------------------------------------------------------------------------------


def _amount_frame(n: int = 1500, seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """Four numeric features; ``amount`` ~ N(5000, 1000) (divided by ``scale``) that depends
    on them (R^2 about 0.9 reachable); ``click`` a binary task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    signal = x @ np.array([0.6, -0.5, 0.4, 0.3]) + 0.3 * np.sin(2 * x[:, 0])
    signal = signal / signal.std()
    amount = 5000.0 + 1000.0 * (0.95 * signal + 0.3 * rng.normal(size=n))
    frame = pd.DataFrame(x, columns=[f"x{j}" for j in range(4)])
    frame["amount"] = amount / scale
    frame["click"] = (x[:, 1] + rng.normal(size=n) > 0).astype(int)
    return frame


def _amount_spec(folder: Path, frame: pd.DataFrame, name: str, **task_extra) -> Path:
    frame.to_csv(folder / f"{name}.csv", index=False)
    spec = {
        "name": name,
        "files": {"path": f"{name}.csv"},
        "split": {"valid": 0.2, "test": 0.2, "seed": 1},
        "tasks": [
            {"name": "amount", "label": "amount", "kind": "regression", **task_extra},
            {"name": "click", "label": "click", "kind": "binary"},
        ],
    }
    return write_spec(folder, spec, f"{name}.yaml")


def _fail_cli(folder: Path, spec: Path, capsys, monkeypatch) -> str:
    """``mtlsearch data describe SPEC``: one line, exit 2, nothing written."""
    before = listing(folder)
    monkeypatch.setattr(sys, "argv", ["mtlsearch", "data", "describe", str(spec)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert listing(folder) == before
    return err


def _three_files(folder: Path, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, tasks) -> Path:
    for name, frame in (("train", train), ("valid", valid), ("test", test)):
        frame.to_csv(folder / f"{name}.csv", index=False)
    spec = {
        "name": "three",
        "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"},
        "tasks": tasks,
    }
    return write_spec(folder, spec)


# ---- 1. regression labels on a large scale ------------------------------------------------


@pytest.fixture(scope="module")
def amount_runs(tmp_path_factory):
    """The same table in units and in thousands, and the raw (unstandardised) run."""
    folder = tmp_path_factory.mktemp("amount")
    torch.set_num_threads(1)
    runs = {}
    for name, scale, extra in (
        ("units", 1.0, {}),
        ("thousands", 1000.0, {}),
        ("raw", 1.0, {"standardize": False}),
    ):
        data = load_dataset(_amount_spec(folder, _amount_frame(scale=scale), name, **extra))
        cfg = experiment(data, "mmoe", epochs=6, lr=1e-2)
        runs[name] = (data, fit(cfg, data, progress=False))
    return folder, runs


def _test_r2(data, result) -> float:
    y = data.test.labels["amount"].double().numpy()
    return 1.0 - result.test["amount"]["mse"] / float(np.var(y))


def test_the_label_scale_no_longer_matters(amount_runs) -> None:
    _, runs = amount_runs
    r2 = {k: _test_r2(*v) for k, v in runs.items()}
    assert r2["units"] > 0.7, r2  # it learned (R^2 about 0.9 is reachable)
    # Standardised, N(5000, 1000) and N(5, 1) are the same problem: R^2 within 0.01.
    assert abs(r2["units"] - r2["thousands"]) < 0.01, r2
    # MSE in label units: a factor 1000^2 between the two runs (within the same tolerance).
    ratio = runs["units"][1].test["amount"]["mse"] / runs["thousands"][1].test["amount"]["mse"]
    assert ratio == pytest.approx(1e6, rel=0.1)
    # The switch works, and shows the fault: unstandardised, the same net is far worse.
    assert r2["raw"] < r2["units"] - 0.5, r2
    # The other task does not suffer from the large label any more.
    auc = {k: v[1].test["click"]["auc"] for k, v in runs.items()}
    assert abs(auc["units"] - auc["thousands"]) < 0.01, auc


def test_metrics_are_in_label_units(amount_runs) -> None:
    """Predicting the training mean (a network output of 0 in standardised units) has MSE
    equal to the training labels' variance and MAE their mean absolute deviation."""
    _, runs = amount_runs
    data, _ = runs["units"]
    frame = _amount_frame()
    y = data.train.labels["amount"].double().numpy()
    mean, std = data.label_scaling["amount"]
    assert mean == pytest.approx(y.mean(), rel=1e-9) and std == pytest.approx(y.std(), rel=1e-9)
    assert 4800 < mean < 5200 and 800 < std < 1200
    assert y.min() > 0 and frame["amount"].mean() > 4800  # labels kept in their own units

    class Zero(nn.Module):
        def forward(self, numeric, categorical):
            n = numeric.shape[0]
            return {"amount": torch.zeros(n), "click": torch.zeros(n)}

    metrics = Evaluator(data.train, data.tasks, data.label_scaling).evaluate(Zero())
    assert metrics["amount"]["mse"] == pytest.approx(float(np.mean((y - y.mean()) ** 2)), rel=1e-6)
    assert metrics["amount"]["mse"] == pytest.approx(float(np.var(y)), rel=1e-6)
    assert metrics["amount"]["mae"] == pytest.approx(float(np.mean(np.abs(y - y.mean()))), rel=1e-6)


def test_predict_and_the_checkpoint_are_in_label_units(amount_runs) -> None:
    folder, runs = amount_runs
    data, result = runs["units"]
    ckpt = save_checkpoint(result, data, folder / "ckpt-units", overwrite=True)
    saved = json.loads((ckpt / "preprocessing.json").read_text())
    mean, std = data.label_scaling["amount"]
    assert saved["label_scaling"] == {"amount": {"mean": mean, "std": std}}
    fitted = {t["task"]["name"]: t for t in saved["state"]["tasks"]}
    assert (fitted["amount"]["mean"], fitted["amount"]["std"]) == (mean, std)
    loaded = load_checkpoint(ckpt)
    assert loaded.label_scaling == {"amount": (mean, std)}
    # The test rows of the one file, scored from raw CSV values.
    frame = pd.read_csv(folder / "units.csv")
    test_x = data.test.numeric[:, 0].double().numpy()
    x0 = (frame["x0"].to_numpy() - data.preprocessor.numeric[0].mean) / data.preprocessor.numeric[0].std
    rows = frame.iloc[[int(np.argmin(np.abs(x0 - v))) for v in test_x]]
    out = predict(loaded, rows)
    y = rows["amount"].to_numpy()
    assert 4000 < out["amount"].mean() < 6000
    mse = float(np.mean((out["amount"].to_numpy() - y) ** 2))
    assert mse == pytest.approx(result.test["amount"]["mse"], rel=1e-4)


def test_standardize_is_validated(tmp_path, capsys, monkeypatch) -> None:
    spec = _amount_spec(tmp_path, _amount_frame(200), "bad", standardize="yes")
    err = _fail_cli(tmp_path, spec, capsys, monkeypatch)
    assert "tasks[0].standardize: expected true or false, got 'yes'" in err
    spec = write_spec(
        tmp_path,
        {
            "name": "b",
            "files": "bad.csv",
            "tasks": [{"name": "c", "label": "click", "kind": "binary", "standardize": True}],
        },
        "b.yaml",
    )
    assert "tasks[0].standardize: only for regression tasks" in _fail_cli(tmp_path, spec, capsys, monkeypatch)


# ---- 2./3. undefined metrics: refused at load time, never selecting an epoch ---------------


def _kinds_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "c": rng.integers(0, 2, n),
            "r": rng.normal(size=n).round(3),
            "m": rng.choice(["gold", "silver", "bronze"], n),
        }
    )


KIND_TASKS = [
    {"name": "ctr", "label": "c", "kind": "binary"},
    {"name": "score", "label": "r", "kind": "regression"},
    {"name": "tier", "label": "m", "kind": "multiclass"},
]


def test_one_class_in_the_validation_rows_is_refused(tmp_path) -> None:
    valid = _kinds_frame(80, 1).assign(m="gold")
    spec = _three_files(tmp_path, _kinds_frame(300, 0), valid, _kinds_frame(80, 2), KIND_TASKS)
    with pytest.raises(UserError) as exc:
        load_dataset(spec)
    msg = str(exc.value)
    assert msg == (
        f"{tmp_path / 'valid.csv'}: task 'tier' has one class ('gold') in all 80 validation rows of "
        "its sample space, so its skill is undefined there; change the split (fractions, seed, stratify)"
    )


@pytest.mark.parametrize("where", ["train", "valid", "test"])
def test_a_constant_regression_label_in_a_split_is_refused(tmp_path, where) -> None:
    frames = {"train": _kinds_frame(300, 0), "valid": _kinds_frame(80, 1), "test": _kinds_frame(80, 2)}
    frames[where] = frames[where].assign(r=2.5)
    spec = _three_files(tmp_path, frames["train"], frames["valid"], frames["test"], KIND_TASKS)
    with pytest.raises(UserError) as exc:
        load_dataset(spec)
    word = {"train": "training", "valid": "validation", "test": "test"}[where]
    n = len(frames[where])
    assert str(exc.value) == (
        f"{tmp_path / (where + '.csv')}: task 'score' has a constant label (2.5) in all {n} {word} rows "
        "of its sample space, so its R^2 is undefined there; change the split (fractions, seed, stratify)"
    )


def test_a_constant_regression_label_everywhere_is_refused_like_a_one_class_binary(
    tmp_path, capsys, monkeypatch
) -> None:
    frame = _kinds_frame(300, 0).assign(r=7.0)
    frame.to_csv(tmp_path / "k.csv", index=False)
    spec = write_spec(tmp_path, {"name": "k", "files": "k.csv", "tasks": KIND_TASKS})
    err = _fail_cli(tmp_path, spec, capsys, monkeypatch)
    assert err.endswith(
        "k.csv: tasks[1]: regression label 'r' of task 'score' is constant (7) in all 300 rows of its "
        "sample space; a regression task needs a label that varies"
    ), err


def _nan_skill_data():
    """mixed_data with the regression task's validation label made constant: its skill
    (R^2) is NaN in every epoch."""
    data = mixed_data(n=1500, d=8)
    labels = dict(data.valid.labels)
    labels["r"] = torch.full_like(labels["r"], 0.25)
    return replace(data, valid=replace(data.valid, labels=labels))


def test_an_undefined_skill_never_selects_the_epoch(caplog) -> None:
    data = _nan_skill_data()
    with caplog.at_level(logging.WARNING, logger="mtlsearch.train._fit"):
        result = fit(experiment(data, epochs=5, lr=1e-2), data, progress=False)
    assert all(math.isnan(r.skills["r"]) for r in result.history)
    # The mean monitor is the mean of the defined skills, computed here by hand ...
    by_hand = [(r.skills["a"] + r.skills["m"]) / 2 for r in result.history]
    assert [r.score for r in result.history] == pytest.approx(by_hand, rel=1e-12)
    # ... and the best of those picks the epoch (not epoch 1 by default).
    assert result.best_epoch == int(np.argmax(by_hand))
    assert result.best_epoch > 0  # with a NaN mean every epoch, epoch 1 was kept
    warnings = [r.getMessage() for r in caplog.records if "'r'" in r.getMessage()]
    assert warnings == [
        "task 'r': validation skill undefined at epoch 1 (its label does not vary in the validation "
        "rows); left out of the mean monitor"
    ]


def test_a_monitor_undefined_in_every_epoch_keeps_the_last_weights(caplog) -> None:
    data = _nan_skill_data()
    cfg = experiment(data, epochs=3, lr=1e-2, monitor="r")
    with caplog.at_level(logging.WARNING, logger="mtlsearch.train._fit"):
        result = fit(cfg, data, progress=False)
    assert result.best_epoch == 2 and len(result.history) == 3
    assert any(
        "undefined in every epoch; keeping the last epoch's weights" in r.getMessage() for r in caplog.records
    )
    # the weights in the result are the last epoch's: its validation metrics reproduce
    again = Evaluator(data.valid, data.tasks).evaluate(result.model)
    assert again["a"]["auc"] == pytest.approx(result.history[-1].valid["a"]["auc"], rel=1e-12)


# ---- 4. split edge cases -------------------------------------------------------------------


def test_a_zero_validation_fraction_is_refused_as_such(tmp_path, capsys, monkeypatch) -> None:
    shop_frame(300).to_csv(tmp_path / "shop.csv", index=False)
    spec = write_spec(tmp_path, shop_spec(split={"valid": 0.0, "test": 0.2}))
    err = _fail_cli(tmp_path, spec, capsys, monkeypatch)
    assert err.endswith(
        "split.valid: must be above 0 (got 0.0): the validation rows pick the best epoch; with one file "
        f"both parts come from {tmp_path / 'shop.csv'}"
    ), err
    assert "all missing" not in err


def test_a_split_too_small_for_the_file_names_the_empty_part(tmp_path) -> None:
    shop_frame(30).to_csv(tmp_path / "shop.csv", index=False)
    spec = write_spec(tmp_path, shop_spec(split={"valid": 0.01, "test": 0.2, "stratify": False}))
    with pytest.raises(UserError) as exc:
        load_dataset(spec)
    assert str(exc.value) == (
        f"{tmp_path / 'shop.csv'}: the validation part is empty (30 rows, split.valid 0.01, "
        "split.test 0.2); raise split.valid"
    )


def test_a_positive_value_that_never_occurs_names_the_values(tmp_path, capsys, monkeypatch) -> None:
    frame = _kinds_frame(200, 0)
    frame["y"] = np.where(frame["c"] == 1, "Yes", "No")
    frame.to_csv(tmp_path / "p.csv", index=False)
    tasks = [{"name": "buy", "label": "y", "kind": "binary", "positive": "yes"}]
    spec = write_spec(tmp_path, {"name": "p", "files": "p.csv", "tasks": tasks})
    err = _fail_cli(tmp_path, spec, capsys, monkeypatch)
    counts = frame["y"].value_counts()
    values = ", ".join(repr(v) for v in counts.index)  # most frequent first
    assert err.endswith(
        f"p.csv: tasks[0].positive: value 'yes' never occurs in column 'y' (values: {values})"
    )
    assert "split" not in err


@pytest.mark.parametrize(
    ("threshold", "cause"),
    [
        (9.5, "9.5 is at or above every value of column 'r' (max {max}), so no row is positive"),
        (-9.5, "-9.5 is below every value of column 'r' (min {min}), so every row is positive"),
    ],
)
def test_a_threshold_outside_the_values_names_the_cause(tmp_path, threshold, cause) -> None:
    frame = _kinds_frame(200, 0)
    frame.to_csv(tmp_path / "t.csv", index=False)
    tasks = [{"name": "hi", "label": "r", "kind": "binary", "threshold": threshold}]
    spec = write_spec(tmp_path, {"name": "t", "files": "t.csv", "tasks": tasks})
    with pytest.raises(UserError) as exc:
        load_dataset(spec)
    expected = cause.format(max=f"{frame['r'].max():g}", min=f"{frame['r'].min():g}")
    assert str(exc.value) == f"{tmp_path / 't.csv'}: tasks[0].threshold: {expected}"


# ---- 5. silent surprises -------------------------------------------------------------------


def test_a_numeric_column_with_stray_words_warns(tmp_path, caplog) -> None:
    frame = shop_frame(300)
    frame["visits"] = frame["visits"].astype(object)
    frame.loc[[5, 77], "visits"] = "unknown"
    frame.to_csv(tmp_path / "shop.csv", index=False)
    spec = write_spec(tmp_path, shop_spec(features={"numeric": "auto", "categorical": "auto"}))
    with caplog.at_level(logging.WARNING, logger="mtlsearch.data._tables"):
        data = load_dataset(spec)
    assert "visits" in dict(data.categorical_features)  # still a category: warned, not refused
    stray = [r.getMessage() for r in caplog.records if "'visits'" in r.getMessage()]
    assert len(stray) == 1, stray
    assert stray[0].startswith(
        f"{tmp_path / 'shop.csv'} (training part): column 'visits' is categorical, not numeric "
        "(features.numeric: auto): "
    )
    assert "values are not numbers, e.g. 'unknown'" in stray[0]
    # a genuine text column gives no such warning
    assert not [r for r in caplog.records if "'device'" in r.getMessage()]


def test_a_feature_listed_twice_is_refused(tmp_path, capsys, monkeypatch) -> None:
    shop_frame(100).to_csv(tmp_path / "shop.csv", index=False)
    features = {"numeric": ["price", "visits", "price"], "categorical": ["device"]}
    err = _fail_cli(tmp_path, write_spec(tmp_path, shop_spec(features=features)), capsys, monkeypatch)
    assert err.endswith("features.numeric[2]: column 'price' is listed twice"), err


def test_a_duplicated_header_column_is_refused(tmp_path, capsys, monkeypatch) -> None:
    frame = shop_frame(100)
    text = frame.to_csv(index=False).splitlines()
    text[0] = text[0].replace("visits", "price")  # two 'price' columns: pandas would say price.1
    (tmp_path / "shop.csv").write_text("\n".join(text) + "\n")
    spec = write_spec(tmp_path, shop_spec(features={"numeric": "auto", "categorical": ["device"]}))
    err = _fail_cli(tmp_path, spec, capsys, monkeypatch)
    cols = list(frame.columns)
    assert err == (
        f"error: {tmp_path / 'shop.csv'}: column 'price' appears twice in the header (fields "
        f"{cols.index('price') + 1} and {cols.index('visits') + 1}); rename one of them"
    )


def test_an_auc_on_few_positives_warns(tmp_path, caplog) -> None:
    train = _kinds_frame(300, 0)
    valid = _kinds_frame(80, 1).assign(c=0)
    valid.loc[[3, 40, 41], "c"] = 1  # three positives in the validation rows
    tasks = [{"name": "ctr", "label": "c", "kind": "binary"}]
    spec = _three_files(tmp_path, train, valid, _kinds_frame(80, 2), tasks)
    with caplog.at_level(logging.WARNING, logger="mtlsearch.data._tables"):
        load_dataset(spec)
    msgs = [r.getMessage() for r in caplog.records if "unreliable" in r.getMessage()]
    assert msgs == [
        f"{tmp_path / 'valid.csv'}: task 'ctr' has only 3 positive examples in the validation rows "
        "(of 80): its AUC there is unreliable"
    ]


# ---- 6. one epoch convention ---------------------------------------------------------------


def test_metrics_json_numbers_epochs_from_one(tmp_path) -> None:
    data = mixed_data(n=800, d=6)
    result = fit(experiment(data, epochs=3), data, progress=False)
    ckpt = save_checkpoint(result, data, tmp_path / "ckpt")
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["epochs_run"] == 3
    assert metrics["best_epoch"] == result.best_epoch + 1  # what the CLI prints: "best epoch N of 3"
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert best["score"] == metrics["score"] == max(h["score"] for h in metrics["history"])


def test_split_tensors_keep_labels_in_units() -> None:
    """The data layer never rewrites labels: only the trainer's loss sees them scaled."""
    split = TensorSplit(
        numeric=torch.zeros(4, 1),
        categorical=torch.zeros(4, 0, dtype=torch.int64),
        labels={"r": torch.tensor([4000.0, 5000.0, 6000.0, 5000.0])},
        masks={"r": torch.ones(4, dtype=torch.bool)},
    )
    from mtlsearch.train._evaluate import scale_labels

    scaled = scale_labels(split, {"r": (5000.0, 1000.0)})
    assert scaled.labels["r"].tolist() == [-1.0, 0.0, 1.0, 0.0]
    assert split.labels["r"].tolist() == [4000.0, 5000.0, 6000.0, 5000.0]
