"""Class weights (``training.pos_weight`` / ``class_weights``) and row weights (a dataset
spec's ``weight`` column): the loss written out by hand, the metrics reported weighted and
plain, the config's checks and round trip, the data layer's checks, and the CLI end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _cli import run_main
from _data_helpers import listing, shop_frame, shop_spec, write_spec
from _train_support import binary_data, experiment, mixed_data, one_thread  # noqa: F401
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec, build_model, preset
from mtlsearch.data import DatasetSpec, MTLDataset, SpecError, TensorSplit, load_dataset
from mtlsearch.train import (
    ExperimentConfig,
    LossWeightingConfig,
    TrainConfig,
    fit,
    load_checkpoint,
    make_loss_weighting,
    predict,
)
from mtlsearch.train import _baselines as baselines_module
from mtlsearch.train._evaluate import raw_outputs
from mtlsearch.train._fit import _masked_losses, _train_epoch, class_weight_tensors

BINARY = (TaskSpec("a", "binary"),)


def _batch(labels: dict, masks: dict, weights: dict | None = None) -> TensorSplit:
    n = len(next(iter(labels.values())))
    return TensorSplit(
        numeric=torch.zeros(n, 1),
        categorical=torch.zeros(n, 0, dtype=torch.long),
        labels=labels,
        masks=masks,
        weights=weights or {},
    )


# ---- the loss, by hand -------------------------------------------------------------------
Z = torch.tensor([0.3, -1.2, 2.0, 0.5, -0.4, 1.1])
Y = torch.tensor([1.0, 0.0, math.nan, 0.0, 1.0, 1.0])  # row 2 is outside the sample space
MASK = torch.tensor([True, True, False, True, True, True])


def test_pos_weight_multiplies_the_positive_term_and_the_mean_stays_over_rows():
    batch = _batch({"a": Y}, {"a": MASK})
    cw = class_weight_tensors(TrainConfig(pos_weight={"a": 3.0}), BINARY)
    losses, counts = _masked_losses({"a": Z}, batch, BINARY, {"a": False}, cw)
    # rows 0, 1, 3, 4, 5; positives 0, 4, 5 count 3 times; divided by 5 rows
    s = 1.0 / (1.0 + torch.exp(-Z.double()))
    terms = [
        -3.0 * math.log(s[0]),
        -math.log(1 - s[1]),
        -math.log(1 - s[3]),
        -3.0 * math.log(s[4]),
        -3.0 * math.log(s[5]),
    ]
    assert counts == {"a": 5}
    assert losses["a"].item() == pytest.approx(sum(terms) / 5, rel=1e-6)
    plain, _ = _masked_losses({"a": Z}, batch, BINARY, {"a": False})
    assert plain["a"].item() == pytest.approx(
        (sum(terms) + 2.0 * (math.log(s[0]) + math.log(s[4]) + math.log(s[5]))) / 5, rel=1e-6
    )


def test_class_weights_scale_each_class_and_are_not_in_the_denominator():
    tasks = (TaskSpec("m", "multiclass", 3),)
    z = torch.tensor([[0.2, 1.0, -0.5], [1.5, 0.1, 0.3], [-0.2, -0.1, 0.9], [0.0, 2.0, 1.0]])
    y = torch.tensor([1, 0, 2, 1])
    batch = _batch({"m": y}, {"m": torch.ones(4, dtype=torch.bool)})
    cw = class_weight_tensors(TrainConfig(class_weights={"m": [0.5, 2.0, 1.0]}), tasks)
    losses, _ = _masked_losses({"m": z}, batch, tasks, {"m": True}, cw)
    c = [0.5, 2.0, 1.0]
    zz = z.double().tolist()
    nll = [math.log(sum(math.exp(v) for v in zz[i])) - zz[i][int(y[i])] for i in range(4)]
    expected = sum(c[int(y[i])] * nll[i] for i in range(4)) / 4  # by the 4 rows, not by sum c[y] = 5.5
    assert losses["m"].item() == pytest.approx(expected, rel=1e-6)
    torch_mean = torch.nn.functional.cross_entropy(z, y, weight=torch.tensor(c))
    assert torch_mean.item() == pytest.approx(sum(c[int(y[i])] * nll[i] for i in range(4)) / 5.5, rel=1e-6)


def test_row_weights_make_a_weighted_mean_over_the_sample_space():
    w = torch.tensor([2.0, 0.5, 0.0, 0.0, 1.0, 4.0])  # row 3 weighs 0; row 2 is masked
    batch = _batch({"a": Y}, {"a": MASK}, {"a": w})
    cw = class_weight_tensors(TrainConfig(pos_weight={"a": 3.0}), BINARY)
    totals: dict = {}
    losses, counts = _masked_losses({"a": Z}, batch, BINARY, {"a": False}, cw, totals)
    s = 1.0 / (1.0 + torch.exp(-Z.double()))
    num = 2.0 * 3.0 * -math.log(s[0]) + 0.5 * -math.log(1 - s[1]) + 1.0 * 3.0 * -math.log(s[4])
    num += 4.0 * 3.0 * -math.log(s[5])
    assert losses["a"].item() == pytest.approx(num / 7.5, rel=1e-6)
    assert counts == {"a": 4}  # rows of positive weight
    assert totals["a"].item() == 7.5


def test_row_weights_on_a_regression_task():
    tasks = (TaskSpec("r", "regression"),)
    z, y = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 2.5, 1.0])
    w = torch.tensor([1.0, 3.0, 0.25])
    batch = _batch({"r": y}, {"r": torch.ones(3, dtype=torch.bool)}, {"r": w})
    losses, _ = _masked_losses({"r": z}, batch, tasks, {"r": True})
    expected = (1.0 * 0.25 + 3.0 * 0.25 + 0.25 * 4.0) / 4.25
    assert losses["r"].item() == pytest.approx(expected, rel=1e-6)


def test_a_batch_of_zero_weight_rows_is_a_zero_loss_with_a_gradient():
    z = Z.clone().requires_grad_(True)
    batch = _batch({"a": Y}, {"a": MASK}, {"a": torch.zeros(6)})
    totals: dict = {}
    losses, counts = _masked_losses({"a": z}, batch, BINARY, {"a": False}, None, totals)
    assert counts == {"a": 0} and losses["a"].item() == 0.0 and totals["a"].item() == 0.0
    losses["a"].backward()
    assert torch.equal(z.grad, torch.zeros(6))


def test_without_weights_the_loss_is_the_former_expression_bit_for_bit():
    batch = _batch({"a": Y}, {"a": MASK})
    losses, counts = _masked_losses({"a": Z}, batch, BINARY, {"a": False}, {})
    m = MASK
    former = torch.nn.functional.binary_cross_entropy_with_logits(Z[m], Y[m], reduction="none").mean()
    assert torch.equal(losses["a"], former) and counts == {"a": 5}


# ---- training ----------------------------------------------------------------------------
def _weighted(data: MTLDataset, tasks: tuple[str, ...], seed: int = 1) -> MTLDataset:
    """``data`` with random row weights in [0, 3) (some exactly 0) for ``tasks``."""
    g = torch.Generator().manual_seed(seed)

    def one(split: TensorSplit) -> TensorSplit:
        weights = {}
        for t in tasks:
            w = torch.rand(len(split), generator=g) * 3.0
            w[torch.arange(len(split)) % 7 == 0] = 0.0
            weights[t] = w
        return replace(split, weights=weights)

    return replace(data, train=one(data.train), valid=one(data.valid), test=one(data.test))


def test_the_epoch_loss_of_a_weighted_task_is_its_weighted_mean_over_the_epoch():
    data = _weighted(binary_data(n=900), ("a",))
    cfg = experiment(data, "shared_bottom", batch_size=100)
    tasks = cfg.model.tasks
    model = build_model(cfg.model, seed=0)
    weighting = make_loss_weighting(LossWeightingConfig(), tasks)
    weighting.attach(model)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: recompute by hand
    full = {"a": True, "b": True}
    cw = class_weight_tensors(TrainConfig(pos_weight={"a": 2.0}), tasks)
    _, task_losses = _train_epoch(
        model, weighting, frozen, data.train, tasks, full, cfg.training,
        torch.Generator().manual_seed(5), 0, lambda _: None, cw,
    )  # fmt: skip
    num = den = 0.0
    rows = 0
    sum_b = 0.0
    model.train()
    for batch in data.train.batches(100, shuffle=True, generator=torch.Generator().manual_seed(5)):
        with torch.no_grad():
            out = model(batch.numeric, batch.categorical)
        z, y, w = out["a"].double(), batch.labels["a"].double(), batch.weights["a"].double()
        s = torch.sigmoid(z)
        per_row = -(2.0 * y * torch.log(s) + (1 - y) * torch.log(1 - s))
        num += float((w * per_row).sum())
        den += float(w.sum())
        yb, sb = batch.labels["b"].double(), torch.sigmoid(out["b"].double())
        sum_b += float(-(yb * torch.log(sb) + (1 - yb) * torch.log(1 - sb)).sum())
        rows += len(batch)
    assert task_losses["a"] == pytest.approx(num / den, rel=1e-5)
    assert task_losses["b"] == pytest.approx(sum_b / rows, rel=1e-5)


def test_unit_row_weights_train_like_no_weights_and_pos_weight_changes_training():
    data = binary_data(n=900)
    ones = replace(
        data,
        **{
            s: replace(getattr(data, s), weights={"a": torch.ones(len(getattr(data, s)))})
            for s in ("train", "valid", "test")
        },
    )
    cfg = experiment(data, "mmoe", epochs=2)
    plain, unit = fit(cfg, data, progress=False), fit(cfg, ones, progress=False)
    for h1, h2 in zip(plain.history, unit.history, strict=True):
        assert h1.task_losses == pytest.approx(h2.task_losses, rel=1e-4)
    assert unit.valid["a"]["auc_weighted"] == pytest.approx(unit.valid["a"]["auc"], abs=1e-12)
    assert "auc_weighted" not in plain.valid["a"] and "auc_weighted" not in unit.valid["b"]
    pos = fit(experiment(data, "mmoe", epochs=2, pos_weight={"a": 4.0}), data, progress=False)
    assert pos.history[0].task_losses["a"] != pytest.approx(plain.history[0].task_losses["a"], rel=1e-3)


def test_metrics_are_reported_weighted_and_plain_and_the_monitor_reads_the_plain_one():
    data = _weighted(mixed_data(n=900), ("a", "r", "m"))
    cfg = experiment(data, "cgc", epochs=2, pos_weight={"a": 2.0}, class_weights={"m": [1.0, 2.0, 0.5]})
    result = fit(cfg, data, progress=False)
    outs = raw_outputs(result.model, data.valid.numeric, data.valid.categorical)
    w = {t: data.valid.weights[t].double().numpy() for t in ("a", "r", "m")}
    y = {t: data.valid.labels[t].numpy() for t in ("a", "r", "m")}
    p_a = torch.sigmoid(outs["a"]).double().numpy()
    mean, std = data.label_scaling.get("r", (0.0, 1.0))
    p_r = outs["r"].double().numpy() * std + mean
    p_m = torch.softmax(outs["m"].double(), dim=-1).numpy()
    v = result.valid
    assert v["a"]["auc_weighted"] == pytest.approx(roc_auc_score(y["a"], p_a, sample_weight=w["a"]), abs=1e-9)
    assert v["a"]["auc"] == pytest.approx(roc_auc_score(y["a"], p_a), abs=1e-9)
    assert v["a"]["auc_weighted"] != pytest.approx(v["a"]["auc"], abs=1e-6)
    assert v["r"]["mse_weighted"] == pytest.approx(
        mean_squared_error(y["r"], p_r, sample_weight=w["r"]), rel=1e-5
    )
    assert v["m"]["accuracy_weighted"] == pytest.approx(
        accuracy_score(y["m"], p_m.argmax(1), sample_weight=w["m"]), abs=1e-12
    )
    assert v["m"]["logloss_weighted"] == pytest.approx(
        log_loss(y["m"], p_m, labels=[0, 1, 2], sample_weight=w["m"]), rel=1e-6
    )
    assert set(result.test["m"]) == {"accuracy", "logloss", "accuracy_weighted", "logloss_weighted"}
    # the skill (and so the epoch choice) reads the plain primary metric
    assert result.best.skills["a"] == pytest.approx(2 * v["a"]["auc"] - 1, abs=1e-12)


# ---- the config --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"pos_weight": {"a": 0}}, "training.pos_weight.a: must be > 0, got 0.0"),
        ({"pos_weight": {"a": -2}}, "training.pos_weight.a: must be > 0, got -2.0"),
        ({"pos_weight": {"a": "many"}}, "training.pos_weight.a: expected a number"),
        ({"pos_weight": [1.0]}, "training.pos_weight: expected a mapping"),
        ({"class_weights": {"m": [1, -1, 1]}}, "training.class_weights.m[1]: must be >= 0, got -1.0"),
        ({"class_weights": {"m": [0, 0, 0]}}, "training.class_weights.m: all weights are 0"),
        ({"class_weights": {"m": 2.0}}, "training.class_weights.m: expected a list of one weight per class"),
        ({"class_weights": {"m": [1.0]}}, "training.class_weights.m: expected one weight per class"),
    ],
)
def test_bad_class_weights_name_the_field(raw, message):
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"pos_weight": {"x": 2.0}}, "training.pos_weight.x: no such task; the tasks are ['a', 'r', 'm']"),
        ({"pos_weight": {"r": 2.0}}, "training.pos_weight.r: only for binary tasks; task 'r' is regression"),
        ({"class_weights": {"a": [1, 2]}}, "training.class_weights.a: only for multiclass tasks"),
        ({"class_weights": {"m": [1, 2]}}, "training.class_weights.m: expected one weight per class (3)"),
    ],
)
def test_class_weights_are_checked_against_the_models_tasks(training, message):
    data = mixed_data(n=300)
    model = preset("mmoe", data.input_spec(), data.tasks, expert_hidden=(8,), tower=(4,))
    with pytest.raises(UserError) as err:
        ExperimentConfig.from_dict({"model": model.to_dict(), "training": training})
    assert str(err.value).startswith(message), err.value


def test_class_weights_round_trip_through_yaml_and_are_left_out_when_unset(tmp_path):
    cfg = experiment(mixed_data(n=300), pos_weight={"a": 2.5}, class_weights={"m": [1, 0.5, "2.0e-1"]})
    assert cfg.training.class_weights == {"m": (1.0, 0.5, 0.2)}
    cfg.save(tmp_path / "exp.yaml")
    raw = yaml.safe_load((tmp_path / "exp.yaml").read_text())["training"]
    assert raw["pos_weight"] == {"a": 2.5} and raw["class_weights"] == {"m": [1.0, 0.5, 0.2]}
    assert ExperimentConfig.load(tmp_path / "exp.yaml") == cfg
    assert "pos_weight" not in TrainConfig().to_dict() and "class_weights" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict({"pos_weight": None}) == TrainConfig()


def test_single_task_baselines_keep_their_tasks_class_weights(monkeypatch):
    data = binary_data(n=600)
    seen: list[TrainConfig] = []
    real_fit = baselines_module.fit

    def recording_fit(config, data, **kw):
        seen.append(config.training)
        return real_fit(config, data, **kw)

    monkeypatch.setattr(baselines_module, "fit", recording_fit)
    training = TrainConfig(epochs=1, batch_size=256, pos_weight={"a": 2.0, "b": 0.5})
    sizes = {"expert_hidden": (8,), "tower": (4,)}
    baselines_module.run_baselines(data, training, ["shared_bottom"], sizes)
    assert [t.pos_weight for t in seen] == [{"a": 2.0}, {"b": 0.5}, {"a": 2.0, "b": 0.5}]


# ---- the data layer ----------------------------------------------------------------------
def _weighted_shop(folder: Path, frame: pd.DataFrame | None = None, tasks=("ctr", "cvr"), **overrides):
    frame = shop_frame() if frame is None else frame
    if "w" not in frame:
        frame["w"] = np.random.default_rng(1).uniform(0.0, 3.0, len(frame)).round(2)
    frame.to_csv(folder / "shop.csv", index=False)
    spec = shop_spec(**overrides)
    for t in spec["tasks"]:
        if t["name"] in tasks:
            t["weight"] = "w"
    return write_spec(folder, spec), frame


def test_a_weight_column_becomes_row_weights_on_the_sample_space_and_never_a_feature(tmp_path):
    spec, frame = _weighted_shop(tmp_path)
    data = load_dataset(spec)
    assert "w" not in data.numeric_features
    assert set(data.train.weights) == {"ctr", "cvr"}
    assert DatasetSpec.load(spec).tasks[1].weight == "w"
    # the split keeps the file's row order: recover each split's rows by their 'rid'
    rid = data.numeric_features.index("rid")
    pre = data.preprocessor.numeric[0]
    for split in (data.train, data.valid, data.test):
        rows = np.rint(split.numeric[:, rid].double().numpy() * pre.std + pre.mean).astype(int)
        w = frame["w"].to_numpy()[rows].astype(np.float32)
        assert torch.equal(split.weights["ctr"], torch.from_numpy(w))
        click = split.masks["cvr"].numpy()
        assert torch.equal(split.weights["cvr"], torch.from_numpy(np.where(click, w, 0.0).astype(np.float32)))


def _cvr_row(frame: pd.DataFrame, k: int = 3) -> int:
    """The k-th row (0-based index) in cvr's sample space (click = 1)."""
    return int(np.flatnonzero(frame["click"].to_numpy() == 1)[k])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.nan, "has a missing value in data row {row}"),
        (-0.5, "has a negative value (-0.5) in data row {row}"),
        (np.inf, "holds an infinite value (data row {row})"),
        ("heavy", "holds non-numeric values such as 'heavy' (data row {row}"),
    ],
)
def test_a_bad_weight_is_one_line_naming_the_column_and_row(tmp_path, value, problem):
    frame = shop_frame()
    frame["w"] = np.random.default_rng(1).uniform(0.0, 3.0, len(frame)).round(2)
    row = _cvr_row(frame)
    frame["w"] = frame["w"].astype(object)
    frame.loc[row, "w"] = value
    spec, _ = _weighted_shop(tmp_path, frame, tasks=("cvr",))
    with pytest.raises(UserError) as err:
        load_dataset(spec)
    msg = str(err.value)
    assert "\n" not in msg and "shop.csv" in msg
    assert "weight column 'w' of task 'cvr'" in msg and problem.format(row=row + 1) in msg, msg


def test_a_bad_weight_outside_the_sample_space_is_never_read(tmp_path):
    frame = shop_frame()
    frame["w"] = 1.0
    frame.loc[frame["click"] == 0, "w"] = np.nan  # cvr's weights exist only where click = 1
    spec, _ = _weighted_shop(tmp_path, frame, tasks=("cvr",))
    data = load_dataset(spec)
    assert torch.equal(data.train.weights["cvr"], data.train.masks["cvr"].float())


def test_weights_all_zero_in_a_split_are_refused(tmp_path):
    frame = shop_frame()
    frame["w"] = 0.0
    spec, _ = _weighted_shop(tmp_path, frame, tasks=("ctr",))
    with pytest.raises(UserError) as err:
        load_dataset(spec)
    assert "weight column 'w' of task 'ctr' is 0 on all" in str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"tasks": [{"name": "c", "label": "click", "kind": "binary", "weight": "click"}]},
         "tasks[0].weight: column 'click' is the task's label"),
        ({"tasks": [{"name": "c", "label": "click", "kind": "binary", "weight": "buy"},
                    {"name": "b", "label": "buy", "kind": "binary"}]},
         "tasks[0].weight: column 'buy' is the label of task 'b'"),
        ({"tasks": [{"name": "c", "label": "click", "kind": "binary", "weight": ""}]},
         "tasks[0].weight: expected a column name"),
        ({"tasks": [{"name": "c", "label": "click", "kind": "binary", "weight": "w"}],
          "features": {"numeric": ["price", "w"]}},
         "features.numeric: column 'w' is the weight column of task 'c' and cannot be a feature"),
    ],
)  # fmt: skip
def test_bad_weight_keys_in_the_spec_name_the_key(edit, message):
    raw = {"name": "s", "files": "x.csv", "split": {"valid": 0.2, "test": 0.2}, **edit}
    with pytest.raises(SpecError) as err:
        DatasetSpec.from_dict(raw)
    assert str(err.value).startswith(message), err.value


def test_census_income_can_weigh_rows_by_its_survey_weight_opt_in():
    from conftest import shared_data_dir

    from mtlsearch.data._builtin import census_spec

    assert all(t.weight is None for t in census_spec("a", "b").tasks)  # default: unweighted
    folder = shared_data_dir("census-income-kdd")
    data = load_dataset("census-income", data_dir=folder, group=1, weighted=True)
    raw = pd.read_csv(folder / "census-income.data.gz", header=None, usecols=[24], skipinitialspace=True)
    expected = torch.from_numpy(raw[24].to_numpy(dtype=np.float32))
    assert set(data.train.weights) == {"income", "marital"}
    assert torch.equal(data.train.weights["income"], expected)
    assert "instance_weight" not in data.numeric_features
    assert "instance_weight" not in [c for c, _ in data.categorical_features]


# ---- the CLI end to end ------------------------------------------------------------------
def _run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    return run_main(monkeypatch, capsys, Path.cwd(), *args)  # restores the signal handlers


def _config(folder: Path, **training) -> Path:
    raw = {
        "model": {
            "name": "mmoe",
            "levels": [{"n_shared": 2, "n_specific": 0, "expert_hidden": [8]}],
            "towers": {"hidden": [4]},
        },
        "training": {"epochs": 2, "batch_size": 128, "lr": 3.0e-3, **training},
    }
    path = folder / "mmoe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_with_a_weight_column_and_pos_weight_saves_a_model_that_predicts(tmp_path, capsys, monkeypatch):
    spec, frame = _weighted_shop(tmp_path)
    config = _config(tmp_path, pos_weight={"ctr": 2.0}, class_weights={"tier": [1.0, 1.0, 2.0]})
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(config), "--data", str(spec), "--out", str(out_dir), "--quiet"]
    code, out, err = _run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "auc_weighted" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert {"auc", "auc_weighted", "logloss_weighted"} <= set(metrics["test"]["ctr"])
    assert "mse_weighted" not in metrics["test"]["rating"]
    ckpt = load_checkpoint(out_dir)
    assert ckpt.config.training.pos_weight == {"ctr": 2.0}
    assert ckpt.config.training.class_weights == {"tier": (1.0, 1.0, 2.0)}
    pred = predict(ckpt, frame.drop(columns=["w", "click", "buy"]).head(50))
    assert len(pred) == 50 and pred["ctr"].between(0, 1).all() and pred["cvr"].between(0, 1).all()


def test_train_with_a_missing_weight_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    frame = shop_frame()
    frame["w"] = 1.0
    frame.loc[5, "w"] = np.nan
    spec, _ = _weighted_shop(tmp_path, frame, tasks=("ctr",))
    config = _config(tmp_path, pos_weight={"ctr": 2.0})
    before = listing(tmp_path)
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(config), "--data", str(spec), "--out", str(out_dir)]
    code, _, err = _run_cli(args, capsys, monkeypatch)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "weight column 'w' of task 'ctr' has a missing value in data row 6" in err
    assert listing(tmp_path) == before
