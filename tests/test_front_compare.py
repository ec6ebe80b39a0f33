"""A front users can compare: one verdict rule for the front, the report and ``baselines``;
one naming scheme for parameters; the report's labels and importances; and, on a real
tracked study (MLflow on SQLite), logged models linked to the final metrics, current model
tags, a ``compare`` tag on the front and the references, gains over single-task as metrics,
a parent without params and a direct link to the filtered runs view."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import mlflow
import optuna
import pytest
from _tracking_support import run_cli, tracked_study
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mtlsearch.arch import TaskSpec
from mtlsearch.search import Objective, SearchSettings, front_table, objectives_of, pareto_front
from mtlsearch.tracking import PARENT_ATTR, MlflowObserver, param_importances, render_report
from mtlsearch.tracking._mlflow import front_filter, front_link, front_runs_url, model_name
from mtlsearch.tracking._summary import gain_metrics, param_name, trial_params
from mtlsearch.train import SINGLE_TASK, BaselineReport, BaselineRun, TrainConfig
from mtlsearch.train._verdict import LABELS, RULE, judge, standard_error

AUC2 = (Objective("a:auc", "maximize", "a", "auc"), Objective("b:auc", "maximize", "b", "auc"))


# ---- one verdict rule -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gains", "errors", "verdict"),
    [
        # +0.0002 AUC from one seed is no win: without a noise estimate there is no verdict
        ({"a": 0.0002, "b": 0.01}, None, "one_seed"),
        ({"a": 0.0002, "b": 0.01}, {"a": 0.001, "b": None}, "one_seed"),
        # 0.0002 is within 2 x 0.001 (a tie), 0.01 is not
        ({"a": 0.0002, "b": 0.01}, {"a": 0.001, "b": 0.001}, "partial_gain"),
        ({"a": 0.003, "b": 0.01}, {"a": 0.001, "b": 0.001}, "beats_single_task"),
        ({"a": -0.0001, "b": 0.01}, {"a": 0.001, "b": 0.001}, "partial_gain"),  # not a seesaw
        ({"a": -0.01, "b": 0.01}, {"a": 0.001, "b": 0.001}, "seesaw"),
        ({"a": -0.01, "b": -0.003}, {"a": 0.001, "b": 0.001}, "worse_on_all_tasks"),
        ({"a": -0.01, "b": 0.001}, {"a": 0.001, "b": 0.001}, "partial_loss"),
        ({"a": 0.001, "b": -0.001}, {"a": 0.001, "b": 0.001}, "no_gain"),
        ({"a": None, "b": 0.01}, {"a": 0.001, "b": 0.001}, "no_reference"),
    ],
)
def test_the_verdict_rule(gains, errors, verdict):
    assert judge(gains, errors) == verdict
    assert LABELS[verdict]  # every verdict has its table text


def test_standard_error_of_a_difference_of_means():
    # sqrt(0.02^2/4 + 0.01^2/2) = sqrt(0.0001 + 0.00005)
    assert standard_error(0.02, 4, 0.01, 2) == pytest.approx(0.00015**0.5, rel=1e-12)
    assert standard_error(0.02, 1, 0.01, 2) is None and standard_error(0.02, 3, 0.01, 1) is None


def _run(model: str, seed: int, auc_a: float, mse_r: float) -> BaselineRun:
    metrics = {"a": {"auc": auc_a}, "r": {"mse": mse_r}}
    return BaselineRun(model, seed, metrics, metrics, {"a": 1, "r": 1}, 100, 1.0, 0.5)


def _report(runs) -> BaselineReport:
    tasks = (TaskSpec("a", "binary"), TaskSpec("r", "regression"))
    return BaselineReport(dataset="toy", tasks=tasks, training=TrainConfig(epochs=1), sizes={}, runs=runs)


def test_baselines_use_the_rule_and_print_it():
    report = _report(
        [
            _run(SINGLE_TASK, 0, 0.80, 0.30),
            _run(SINGLE_TASK, 1, 0.82, 0.32),
            _run("mmoe", 0, 0.70, 0.50),  # worse on both by far more than the seed noise
            _run("mmoe", 1, 0.71, 0.52),
            _run("ple", 0, 0.9311, 0.31),  # +0.11 AUC is a gain; +/-0.01 MSE a tie
            _run("ple", 1, 0.9311, 0.31),
        ]
    )
    # mmoe: gains -0.105 (a) and -0.205 (r); standard errors sqrt(0.00005 + 0.0001) = 0.0122
    assert report.verdict("mmoe") == "worse_on_all_tasks"
    assert report.gain("ple", "a") == pytest.approx(0.1211)
    assert report.verdict("ple") == "partial_gain"
    assert report.verdict("ple") == judge(report.gains("ple"), report.standard_errors("ple"))
    table = report.to_markdown()
    assert "| mmoe |" in table and "worse on all tasks" in table
    assert table.splitlines()[-1] == RULE + "."  # the rule is explained under the table
    one_seed = _report([_run(SINGLE_TASK, 0, 0.80, 0.30), _run("mmoe", 0, 0.8002, 0.29)])
    assert one_seed.verdict("mmoe") == "one_seed"


def _study(rows, objectives=AUC2) -> optuna.Study:
    settings = SearchSettings(space_text="levels: 1\n", space_source="s.yaml", dataset="toy", n_trials=9)
    study = optuna.create_study(directions=[o.direction for o in objectives])
    study.set_user_attr("mtlsearch", settings.to_json())
    study.set_user_attr(
        "objectives",
        [{"name": o.name, "direction": o.direction, "task": o.task, "metric": o.metric} for o in objectives],
    )
    for preset, values, n_params in rows:
        attrs = {"n_params": n_params} | ({"preset": preset} if preset else {})
        study.add_trial(create_trial(values=values, user_attrs=attrs))
    return study


def test_the_front_has_no_verdict_from_one_seed_and_names_a_missing_reference():
    study = _study([("single_task", [0.90, 0.90], 10), (None, [0.9001, 0.80], 10), (None, [0.80, 0.95], 10)])
    rows = {r.trial: r for r in front_table(study, AUC2)}
    assert rows[1].gains["a:auc"] == pytest.approx(0.0001) and rows[1].verdict == "one_seed"
    assert not rows[1].seesaw and not rows[1].beats_single
    alone = _study([(None, [0.9, 0.9], 10)])
    assert front_table(alone, AUC2)[0].verdict == "no_reference"


# ---- one naming scheme ------------------------------------------------------------------------
def test_params_are_named_by_task_and_space_names_map_to_them():
    config = {
        "model": {
            "inputs": {"n_numeric": 3, "categorical": [{"name": "c", "cardinality": 5, "embed_dim": 4}]},
            "tasks": [{"name": "y1", "kind": "regression"}, {"name": "y2", "kind": "regression"}],
            "levels": [{"n_shared": 2, "n_specific": [1, 3], "expert_hidden": [16, 8]}],
            "towers": [{"hidden": [8]}, {"hidden": [16]}],
        },
        "training": {"lr": 0.01},
    }
    params = trial_params(config, None)
    assert params["model.levels.0.n_specific.y1"] == "1" and params["model.levels.0.n_specific.y2"] == "3"
    assert params["model.towers.y1.hidden"] == "8" and params["model.towers.y2.hidden"] == "16"
    assert params["model.levels.0.expert_hidden"] == "16,8"  # a width list stays one value
    assert params["model.inputs.embedding_dim"] == "4" and params["n_levels"] == "1"
    assert not any(re.search(r"\.(towers\.\d|n_specific$)", k) for k in params)
    assert param_name("l0.n_shared") == "model.levels.0.n_shared" in params
    assert param_name("l0.n_specific.y2") == "model.levels.0.n_specific.y2" in params
    assert param_name("levels") == "n_levels" and param_name("training.lr") == "training.lr"
    assert param_name("embedding_dim") == "model.inputs.embedding_dim"
    assert param_name("tower.hidden") == "model.towers.*.hidden"


def test_gain_metrics_follow_the_metric_direction():
    gains = gain_metrics(
        {"y": {"mse": 0.08, "mae": 0.2}, "c": {"auc": 0.91}}, {"y": {"mse": 0.1}, "c": {"auc": 0.9}}
    )
    assert gains == {"gain.y.mse": pytest.approx(0.02), "gain.c.auc": pytest.approx(0.01)}


# ---- the report -------------------------------------------------------------------------------
def test_importances_without_signal_are_said_so_not_drawn_as_equal_bars():
    study = optuna.create_study(directions=["maximize", "maximize"])
    dist = {"l0.n_shared": FloatDistribution(0, 1), "training.lr": FloatDistribution(0, 1)}
    for i in range(15):
        x = (i + 1) / 16
        params = {"l0.n_shared": x, "training.lr": (i * 7 % 15) / 15}
        study.add_trial(create_trial(values=[0.5, x], params=params, distributions=dist))
    result = param_importances(study, AUC2)
    assert "a:auc" in result.no_signal and "a:auc" not in result.values  # a constant objective
    assert set(result.values["b:auc"]) == {"model.levels.0.n_shared", "training.lr"}
    assert sum(result.values["b:auc"].values()) == pytest.approx(1.0)


def test_the_report_labels_front_points_counts_params_once_and_explains_verdicts():
    objectives = (Objective("a:auc", "maximize", "a", "auc"), Objective("params", "minimize"))
    study = _study(
        [("single_task", [0.90, 500], 500), (None, [0.95, 900], 900), (None, [0.85, 100], 100)], objectives
    )
    page = render_report(study)
    table = page.split("<h2>Front members")[1].split("<h2>")[0]
    assert table.count(">params<") == 1  # the objective column; no second n_params column
    assert table.count("one seed: no verdict") == 3
    assert "standard errors" in table
    svg = page.split('<svg class="pareto"')[1].split("</svg>")[0]
    labels = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="\w+" font-size="10">([^<]+)</text>', svg)
    assert sorted(labels) == ["0 single_task", "1", "2"]


# ---- MLflow -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return tracked_study(tmp_path_factory)


@pytest.fixture
def client(tracked):
    mlflow.set_tracking_uri(tracked.tracking_uri)
    yield MlflowClient(tracked.tracking_uri)
    mlflow.set_tracking_uri(None)


def _children(client, study, experiment_id):
    runs = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{study.user_attrs[PARENT_ATTR]}'", max_results=1000
    )
    return {int(r.data.tags["trial_number"]): r for r in runs}


def test_logged_models_carry_the_final_metrics_and_current_tags(tracked, client):
    study = tracked.load()
    experiment = client.get_experiment_by_name(tracked.name)
    front = {t.number for t in pareto_front(study, objectives_of(study))}
    models = client.search_logged_models([experiment.experiment_id])
    assert front <= {int(m.tags["trial_number"]) for m in models}
    for model in models:
        number = int(model.tags["trial_number"])
        trial = study.trials[number]
        assert model.name == model_name(tracked.name, number) == f"tracked-trial-{number}"
        assert model.tags["pareto_front"] == ("true" if number in front else "false")
        linked = {m.key: m for m in client.get_logged_model(model.model_id).metrics}
        for task, metrics in trial.user_attrs["valid"].items():
            for name, value in metrics.items():
                assert linked[f"valid.{task}.{name}"].value == pytest.approx(value, rel=1e-12)
                # the per-epoch metric of the model's step is the best epoch's, not the first's
                assert linked[f"epoch.valid.{task}.{name}"].value == pytest.approx(value, rel=1e-12)
        assert {m.step for m in linked.values()} == {trial.user_attrs["best_epoch"]}
        assert linked["trial_number"].value == number
        assert linked["gain.y1.mse"].value == pytest.approx(
            study.trials[0].user_attrs["valid"]["y1"]["mse"] - trial.user_attrs["valid"]["y1"]["mse"]
        )


def test_a_sync_puts_model_tags_right_again(tracked, client):
    study = tracked.load()
    experiment = client.get_experiment_by_name(tracked.name)
    model = client.search_logged_models([experiment.experiment_id])[0]
    right = model.tags["pareto_front"]
    client.set_logged_model_tags(model.model_id, {"pareto_front": "maybe", "pareto_rank": "7"})
    observer = MlflowObserver(tracking_uri=tracked.tracking_uri, log_models=False)
    observer.on_study(study, None)
    observer.sync_front(study)
    again = client.get_logged_model(model.model_id).tags
    assert again["pareto_front"] == right and again["pareto_rank"] != "7"


def test_one_filter_shows_the_front_and_the_references_and_counts_trials_only(tracked, client):
    study = tracked.load()
    experiment = client.get_experiment_by_name(tracked.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # runs, not traces
    front = {t.number for t in pareto_front(study, objectives_of(study))}
    references = {t.number for t in study.trials if t.user_attrs.get("preset")}
    shown = client.search_runs([experiment.experiment_id], front_filter(), max_results=1000)
    assert {int(r.data.tags["trial_number"]) for r in shown} == front | references
    assert all(r.data.tags["mtlsearch.role"] == "trial" for r in shown)
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    assert parent.data.params == {}  # nothing for a comparison to pick up
    assert parent.data.tags["setting.dataset"] == "synthetic"
    assert parent.data.tags["setting.objectives"] == "y1:mse,params"
    single = study.trials[0]
    assert single.user_attrs["preset"] == "single_task"
    for number, run in _children(client, study, experiment.experiment_id).items():
        trial = study.trials[number]
        assert run.data.metrics["trial_number"] == number  # sorts as a number
        assert run.data.params["model.towers.y1.hidden"] == run.data.params["model.towers.y2.hidden"]
        assert "model.levels.0.n_specific.y1" in run.data.params
        expected = single.user_attrs["valid"]["y2"]["mae"] - trial.user_attrs["valid"]["y2"]["mae"]
        assert run.data.metrics["gain.y2.mae"] == pytest.approx(expected, abs=1e-12)


def test_the_front_link_opens_the_filtered_runs_view(tracked):
    study = tracked.load()
    experiment = study.user_attrs["mlflow_experiment_id"]
    url = front_runs_url("http://127.0.0.1:5000/", experiment)
    parts = urlsplit(url)
    assert parts.path == "/" and parts.fragment.startswith(f"/experiments/{experiment}/runs?")
    query = parse_qs(parts.fragment.split("?", 1)[1])
    assert query == {
        "searchFilter": ["tags.compare = 'true'"],
        "orderByKey": ["metrics.`trial_number`"],
        "orderByAsc": ["true"],
    }
    assert "%20%3D%20%27true%27" in url  # encoded as the UI's own links are (encodeURIComponent)
    line = front_link(study)
    assert unquote(url) in unquote(line)
    assert line.endswith(f"(after: mlflow ui --backend-store-uri {tracked.tracking_uri})")
    served = optuna.create_study()
    served.set_user_attr("mlflow_tracking_uri", "http://mlflow.internal:5000")
    served.set_user_attr("mlflow_experiment_id", "7")
    assert front_link(served).endswith(
        "http://mlflow.internal:5000/#/experiments/7/runs?" + url.split("?", 1)[1]
    )
    assert front_link(optuna.create_study()) is None


def test_the_report_of_the_tracked_study_uses_mlflow_names(tracked, tmp_path):
    out = tmp_path / "r.html"
    proc = run_cli(
        "report", "--study", tracked.name, "--storage", tracked.storage, "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    importances = out.read_text().split("<h2>Parameter importances</h2>")[1].split("<h2>")[0]
    names = set(re.findall(r'<td class="l">([^<]+)</td>', importances))
    assert names and all(n.startswith(("model.", "training.", "n_levels")) for n in names), names
    assert not any(t.state == TrialState.FAIL for t in tracked.load().trials)
