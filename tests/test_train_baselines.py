"""Single-task references, gains over them, and the seesaw flags."""

from __future__ import annotations

import pytest
from _train_support import binary_data, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec
from mtlsearch.train import (
    SINGLE_TASK,
    BaselineReport,
    BaselineRun,
    TrainConfig,
    classify_gains,
    mtl_gain,
    run_baselines,
)


@pytest.mark.parametrize(
    ("gains", "verdict"),
    [
        ([0.01, 0.002], "beats_single_task"),
        ([0.01, -0.002], "seesaw"),
        ([-0.01, 0.002], "seesaw"),
        ([0.01, 0.0], "partial_gain"),
        ([0.0, 0.0], "no_gain"),
        ([0.0, -0.01], "partial_loss"),
        ([-0.01, -0.01], "worse_on_all_tasks"),
    ],
)
def test_verdicts(gains, verdict):
    assert classify_gains(gains) == verdict


def test_gain_has_the_direction_of_the_metric():
    assert mtl_gain("binary", 0.95, 0.94) == pytest.approx(0.01)  # AUC: higher is better
    assert mtl_gain("regression", 0.30, 0.25) == pytest.approx(-0.05)  # MSE: lower is better


def _run(model: str, seed: int, auc_a: float, mse_r: float) -> BaselineRun:
    return BaselineRun(
        model=model,
        seed=seed,
        valid={"a": {"auc": auc_a, "logloss": 0.5}, "r": {"mse": mse_r, "mae": 0.4}},
        test={"a": {"auc": auc_a, "logloss": 0.5}, "r": {"mse": mse_r, "mae": 0.4}},
        best_epoch={"a": 1, "r": 1},
        n_params=100,
        seconds=1.0,
        epoch_seconds=0.5,
    )


def test_report_gains_average_over_seeds_and_flag_the_seesaw(tmp_path):
    report = BaselineReport(
        dataset="toy",
        tasks=(TaskSpec("a", "binary"), TaskSpec("r", "regression")),
        training=TrainConfig(epochs=2),
        sizes={"expert_hidden": [8]},
        runs=[
            _run(SINGLE_TASK, 0, 0.80, 0.30),
            _run(SINGLE_TASK, 1, 0.82, 0.34),
            _run("ple", 0, 0.85, 0.25),  # clearly better on both
            _run("ple", 1, 0.86, 0.26),
            _run("mmoe", 0, 0.84, 0.40),  # clearly better on a, clearly worse on r: seesaw
            _run("mmoe", 1, 0.84, 0.40),
            _run("cgc", 0, 0.82, 0.31),  # +0.01 on a and -0.01 on r, both within the seed noise
            _run("cgc", 1, 0.82, 0.35),
        ],
    )
    assert report.models == [SINGLE_TASK, "ple", "mmoe", "cgc"] and report.seeds == [0, 1]
    assert report.metric("ple", "a") == pytest.approx((0.855, 0.0070710678), rel=1e-6)
    assert report.gain("ple", "a") == pytest.approx(0.855 - 0.81)
    assert report.gain("ple", "r") == pytest.approx(0.32 - 0.255)
    assert report.verdict("ple") == "beats_single_task"
    assert report.verdict("mmoe") == "seesaw"
    # Signs alone would call cgc a seesaw; two standard errors of the difference (2 x 0.01 on a,
    # 2 x 0.0283 on r) make both gains ties.
    assert classify_gains(report.gains("cgc").values()) == "seesaw"
    assert report.clear_gains("cgc") == {"a": 0.0, "r": 0.0}
    assert report.verdict("cgc") == "no_gain"
    assert report.verdict("cgc", noise=0.3) == "seesaw"
    assert report.single_task_reference("valid")["r"]["mse"] == pytest.approx(0.32)
    path = tmp_path / "report.json"
    report.save(path)
    assert BaselineReport.load(path) == report
    table = report.to_markdown()
    assert "| mmoe |" in table and "seesaw" in table and "0.8400 ± 0.0000" in table
    assert "| cgc |" in table and "tied on all tasks" in table


def test_loading_a_bad_report_is_a_user_error(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text('{"dataset": "x"}')
    with pytest.raises(UserError, match=r"r\.json: not a baseline report"):
        BaselineReport.load(bad)


def test_run_baselines_trains_one_single_task_model_per_task_with_the_same_budget():
    data = binary_data(n=1500)
    training = TrainConfig(epochs=3, batch_size=64, lr=3e-3, monitor="a")
    seen: list[BaselineRun] = []
    report = run_baselines(
        data, training, presets=("mmoe",), sizes={"expert_hidden": (16,), "tower": (8,)},
        on_run=seen.append,
    )  # fmt: skip
    assert [r.model for r in seen] == [SINGLE_TASK, "mmoe"]
    single, mmoe = report.runs
    assert set(single.test) == set(mmoe.test) == {"a", "b"}
    assert set(single.best_epoch) == {"a", "b"}
    for task in ("a", "b"):
        assert single.test[task]["auc"] > 0.7  # each reference learned its own task
        expected = mmoe.test[task]["auc"] - single.test[task]["auc"]
        assert report.gain("mmoe", task) == pytest.approx(expected)
    assert report.verdict("mmoe") == "one_seed"  # no noise estimate from one seed: no verdict
    assert report.training == training
    with pytest.raises(UserError, match="unknown preset 'plee'"):
        run_baselines(data, training, presets=("plee",))
