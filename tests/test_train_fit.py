"""The trainer: learning, determinism, early stopping, divergence, callbacks, utilisation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from _train_support import binary_data, experiment, mixed_data, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec, preset
from mtlsearch.data import TensorSplit, make_synthetic
from mtlsearch.train import (
    PRIMARY_METRICS,
    EpochReport,
    ExperimentConfig,
    TrainConfig,
    TrainingDiverged,
    fit,
    measure_latency,
)


@pytest.fixture(scope="module")
def data():
    return binary_data(n=3000)


@pytest.mark.parametrize("name", ["ple", "mmoe"])
def test_ple_and_mmoe_learn_both_tasks_within_a_few_epochs(data, name):
    result = fit(experiment(data, name, epochs=4), data, progress=False)
    for task in ("a", "b"):
        assert result.valid[task]["auc"] > 0.75, result.valid  # chance is 0.5
        assert result.test[task]["auc"] > 0.75, result.test
    assert set(result.valid["a"]) == {"auc", "logloss"}
    assert result.model.training is False
    assert len(result.epoch_seconds) == len(result.history) == 4


def test_same_seed_same_bits_and_the_callers_rng_is_untouched(data):
    cfg = experiment(data, "ple", epochs=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    r1 = fit(cfg, data, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # a different global state must not matter either
    r2 = fit(cfg, data, progress=False)
    assert [h.to_dict() for h in r1.history] == [h.to_dict() for h in r2.history]
    assert r1.test == r2.test and r1.utilisation == r2.utilisation
    for p, q in zip(r1.model.parameters(), r2.model.parameters(), strict=True):
        assert torch.equal(p, q)
    r3 = fit(replace(cfg, training=replace(cfg.training, seed=1)), data, progress=False)
    assert r3.history[-1].train_loss != r1.history[-1].train_loss


def test_dropout_is_seeded_too(data):
    cfg = experiment(data, "mmoe", epochs=1)
    level = replace(cfg.model.levels[0], dropout=0.3)
    cfg = replace(cfg, model=replace(cfg.model, levels=(level,)))
    r1, r2 = fit(cfg, data, progress=False), fit(cfg, data, progress=False)
    assert r1.history[0].to_dict() == r2.history[0].to_dict()


def test_early_stopping_restores_the_best_epoch(data):
    # Validation labels are the opposite of the training labels: the better the model fits
    # the training data, the worse its validation score, so the best epoch is the first.
    flipped = TensorSplit(
        data.valid.numeric,
        data.valid.categorical,
        {k: 1.0 - v for k, v in data.valid.labels.items()},
        data.valid.masks,
    )
    adversarial = replace(data, valid=flipped)
    cfg = experiment(adversarial, "mmoe", epochs=10, patience=2)
    result = fit(cfg, adversarial, progress=False)
    scores = [h.score for h in result.history]
    assert result.best_epoch == scores.index(max(scores))
    assert len(result.history) == result.best_epoch + 1 + 2  # stopped after 2 worse epochs
    assert len(result.history) < 10
    assert result.valid == result.history[result.best_epoch].valid
    # the returned weights are the best epoch's: re-evaluating gives its metrics back
    shorter = replace(cfg, training=replace(cfg.training, epochs=result.best_epoch + 1))
    again = fit(shorter, adversarial, progress=False)
    for p, q in zip(result.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_monitor_on_one_task_selects_on_that_task(data):
    result = fit(experiment(data, "cgc", epochs=3, monitor="b"), data, progress=False)
    for h in result.history:
        assert h.score == pytest.approx(2 * h.valid["b"]["auc"] - 1)  # b's skill (Gini)
    best = max(range(3), key=lambda e: result.history[e].valid["b"]["auc"])
    assert result.best_epoch == best


def test_mean_monitor_averages_normalised_metrics_of_every_kind():
    data = mixed_data()
    result = fit(experiment(data, "mmoe", epochs=2), data, progress=False)
    assert set(result.valid["a"]) == {"auc", "logloss"}
    assert set(result.valid["r"]) == {"mse", "mae"}
    assert set(result.valid["m"]) == {"accuracy", "logloss"}
    for kind, (metric, _) in PRIMARY_METRICS.items():
        task = {"binary": "a", "regression": "r", "multiclass": "m"}[kind]
        assert metric in result.test[task]
    h = result.history[-1]
    var_r = float(data.valid.labels["r"].double().var(unbiased=False))
    major = float(torch.bincount(data.valid.labels["m"]).max()) / len(data.valid)
    expected = {
        "a": 2 * h.valid["a"]["auc"] - 1,
        "r": 1 - h.valid["r"]["mse"] / var_r,
        "m": (h.valid["m"]["accuracy"] - major) / (1 - major),
    }
    assert h.skills == pytest.approx(expected, rel=1e-6)
    assert h.score == pytest.approx(sum(expected.values()) / 3, rel=1e-6)


@pytest.mark.parametrize(("bad", "shown"), [(math.inf, "inf"), (math.nan, "nan")])
def test_a_non_finite_loss_stops_the_run_naming_the_task_and_epoch(bad, shown):
    data = make_synthetic(n=400, d=5, seed=0)
    y2 = data.train.labels["y2"].clone()
    y2[7] = bad  # an unmasked label: it does reach the loss
    broken = replace(data, train=replace(data.train, labels={**data.train.labels, "y2": y2}))
    cfg = experiment(broken, "shared_bottom", epochs=2)
    with pytest.raises(TrainingDiverged, match=rf"loss of task 'y2' became {shown} at epoch 1"):
        fit(cfg, broken, progress=False)


def test_callbacks_see_every_epoch_and_their_exceptions_propagate(data):
    seen: list[EpochReport] = []

    class Stop(Exception):
        pass

    def callback(report: EpochReport) -> None:
        seen.append(report)
        if report.epoch == 1:
            raise Stop("pruned")

    with pytest.raises(Stop):
        fit(experiment(data, "mmoe", epochs=5), data, callbacks=[callback], progress=False)
    assert [r.epoch for r in seen] == [0, 1]
    assert set(seen[0].valid) == {"a", "b"} and math.isfinite(seen[0].score)


def test_utilisation_is_the_mean_gate_weight_per_expert(data):
    result = fit(experiment(data, "ple", epochs=1), data, progress=False)
    util = {k: v for k, v in result.utilisation.items() if not k.endswith("/dead_units")}
    assert set(result.utilisation) - set(util) == {"level0/dead_units", "level1/dead_units"}
    assert set(util) == {
        "level0/task:a", "level0/task:b", "level0/shared", "level1/task:a", "level1/task:b",
    }  # fmt: skip
    # a task gate of PLE sees its own and the shared experts only
    assert set(util["level1/task:a"]) == {"a/0", "a/1", "shared/0", "shared/1"}
    assert set(util["level0/shared"]) == {"a/0", "a/1", "b/0", "b/1", "shared/0", "shared/1"}
    for weights in util.values():
        assert sum(weights.values()) == pytest.approx(1.0)
        assert all(0.0 <= w <= 1.0 for w in weights.values())
    # by hand, for one gate
    with torch.no_grad():
        _, gates = result.model.forward_with_gates(data.valid.numeric, data.valid.categorical)
    mean = gates["level1/task:b"].double().mean(0)
    names = result.model.expert_names(1)
    for name, w in util["level1/task:b"].items():
        assert w == pytest.approx(float(mean[names.index(name)]), abs=1e-9)


def test_a_config_that_does_not_fit_the_data_is_a_user_error(data):
    cfg = experiment(data, "mmoe")
    other = make_synthetic(n=200, d=12, seed=0)  # tasks y1, y2, not a, b
    with pytest.raises(UserError, match=r"model\.tasks\[0\]\.name: the data .* has no task 'a'"):
        fit(cfg, other, progress=False)
    narrow = replace(data, numeric_features=data.numeric_features[:5])
    with pytest.raises(UserError, match=r"model\.inputs\.n_numeric: the model reads 12"):
        fit(cfg, narrow, progress=False)
    wrong_kind = preset("mmoe", data.input_spec(), (TaskSpec("a", "regression"),))
    with pytest.raises(UserError, match=r"task 'a' is regression in the model but binary"):
        fit(ExperimentConfig(wrong_kind, TrainConfig(epochs=1)), data, progress=False)


def test_a_model_may_predict_a_subset_of_the_tasks(data):
    single = preset("single_task", data.input_spec(), data.tasks[1:], expert_hidden=(8,))
    result = fit(ExperimentConfig(single, TrainConfig(epochs=1)), data, progress=False)
    assert set(result.valid) == {"b"}


def test_measure_latency_is_a_positive_duration(data):
    result = fit(experiment(data, "mmoe", epochs=1), data, progress=False)
    ms = measure_latency(result.model, data, rows=256)
    assert math.isfinite(ms) and ms > 0
    assert result.model.training is False


def test_the_progress_bar_goes_to_stderr_and_quiet_turns_it_off(data, capsys):
    fit(experiment(data, "mmoe", epochs=2), data, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err
    assert "valid score" in captured.err and captured.out == ""
    fit(experiment(data, "mmoe", epochs=1), data, progress=False)
    assert capsys.readouterr().err == ""
