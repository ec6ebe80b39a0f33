"""The MLflow observer against a real (SQLite-backed) MLflow: runs, tags, metrics, artifacts,
logged models, the live front, and a search that survives a broken tracker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml
from _tracking_support import N_TRIALS, tracked_study
from mlflow import MlflowClient
from optuna.trial import TrialState

from mtlsearch.search import (
    Objective,
    SearchSettings,
    count_finished,
    create_or_resume,
    hypervolume,
    objectives_of,
    pareto_front,
    pareto_ranks,
    run_worker,
)
from mtlsearch.tracking import PARENT_ATTR, RUN_ID_ATTR, MlflowObserver, ServingModel, serving_input
from mtlsearch.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return tracked_study(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_mlflow_globals():
    """The observer sets MLflow's process-wide tracking URI (and MLFLOW_TRACKING_URI, which
    the CLI reads): undo it, so later tests see a clean process."""
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture
def client(tracked):
    # MlflowClient.list_artifacts/download_artifacts and pyfunc model URIs resolve runs in
    # MLflow's global store, whatever URI the client has: point it at the study's.
    mlflow.set_tracking_uri(tracked.tracking_uri)
    return MlflowClient(tracked.tracking_uri)


def _children(client, study):
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
    )
    return {int(r.data.tags["trial_number"]): r for r in runs}


def test_the_default_tracking_store_is_beside_the_study(tracked):
    assert (tracked.folder / "mlflow.db").is_file()
    assert (tracked.folder / "mlartifacts").is_dir()
    assert not (tracked.folder / "mlruns").exists()  # nothing in MLflow's cwd default
    study = tracked.load()
    assert study.user_attrs["mlflow_tracking_uri"] == tracked.tracking_uri


def test_runs_tagged_pareto_front_are_exactly_the_study_front(tracked, client):
    study = tracked.load()
    objectives = objectives_of(study)
    experiment = client.get_experiment_by_name(tracked.name)
    front_runs = client.search_runs([experiment.experiment_id], filter_string="tags.pareto_front = 'true'")
    tagged = sorted(int(r.data.tags["trial_number"]) for r in front_runs)
    front = sorted(t.number for t in pareto_front(study, objectives))
    assert tagged == front
    assert tagged == sorted(t.number for t in study.best_trials)  # no constraints in this study
    assert 2 <= len(tagged) < N_TRIALS  # a real trade-off, not everything

    complete = study.get_trials(states=(TrialState.COMPLETE,))
    ranks = dict(zip((t.number for t in complete), pareto_ranks(complete, objectives), strict=True))
    children = _children(client, study)
    assert sorted(children) == [t.number for t in study.trials]
    for number, run in children.items():
        assert run.data.tags["pareto_rank"] == str(ranks[number])
        assert run.data.tags["study_name"] == tracked.name
        assert run.info.run_id == study.trials[number].user_attrs[RUN_ID_ATTR]


def test_every_child_run_is_nested_under_the_one_parent(tracked, client):
    study = tracked.load()
    parent_id = study.user_attrs[PARENT_ATTR]
    parent = client.get_run(parent_id)
    assert parent.data.tags["mtlsearch.role"] == "study"
    assert parent.info.status == "FINISHED"  # the budget is used up
    experiment = client.get_experiment_by_name(tracked.name)
    everything = client.search_runs([experiment.experiment_id], "", max_results=1000)
    children = [r for r in everything if r.info.run_id != parent_id]
    assert len(children) == N_TRIALS
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert all(r.info.status == "FINISHED" and r.data.tags["state"] == "COMPLETE" for r in children)


def test_child_runs_hold_params_metrics_history_and_artifacts(tracked, client):
    study = tracked.load()
    children = _children(client, study)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run = children[t.number]
        config = t.user_attrs["config"]
        params = run.data.params
        assert params["preset"] == t.user_attrs.get("preset", "searched")
        assert params["n_levels"] == str(len(config["model"]["levels"]))
        assert params["model.levels.0.n_shared"] == str(config["model"]["levels"][0]["n_shared"])
        assert float(params["training.lr"]) == pytest.approx(config["training"]["lr"])
        metrics = run.data.metrics
        for split in ("valid", "test"):
            for task, values in t.user_attrs[split].items():
                for name, value in values.items():
                    assert metrics[f"{split}.{task}.{name}"] == pytest.approx(value, rel=1e-12)
        assert metrics["n_params"] == t.user_attrs["n_params"]
        assert metrics["latency_ms_per_1k"] > 0
        assert metrics["objective.y1_mse"] == pytest.approx(t.values[0], rel=1e-12)
        history = client.get_metric_history(run.info.run_id, "epoch.valid.y1.mse")
        assert sorted(m.step for m in history) == list(range(config["training"]["epochs"]))
        best = t.user_attrs["best_epoch"]
        assert {m.step: m.value for m in history}[best] == pytest.approx(t.user_attrs["valid"]["y1"]["mse"])

        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.yaml" in files
        logged = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text())
        # the written config leaves out an unset training.device (it trains anywhere), else equal
        training = {k: v for k, v in config["training"].items() if k != "device"}
        assert logged == {**config, "training": training}
        assert config["training"]["device"] is None
        utilisation = t.user_attrs["utilisation"]
        if utilisation:
            names = {a.path for a in client.list_artifacts(run.info.run_id, "utilisation")}
            assert names == {f"utilisation/utilisation.{x}" for x in ("csv", "json", "png")}
            path = client.download_artifacts(run.info.run_id, "utilisation/utilisation.json")
            assert json.loads(Path(path).read_text()) == utilisation  # JSON keeps doubles exact


def test_front_models_are_logged_and_score_like_the_checkpoint(tracked, client, tmp_path):
    study = tracked.load()
    experiment = client.get_experiment_by_name(tracked.name)
    children = _children(client, study)
    front = pareto_front(study, objectives_of(study))
    from mtlsearch.data import load_dataset

    data = load_dataset("synthetic", seed=7, n=1500, d=20)
    x = serving_input(data.test.numeric[:50], data.test.categorical[:50])
    for t in front:
        run = children[t.number]
        assert run.data.tags["model_logged"] == "true"
        models = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert len(models) == 1 and models[0].name == f"{tracked.name}-trial-{t.number}"
        local = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / str(t.number)))
        checkpoint = load_checkpoint(local)
        assert checkpoint.metrics["valid"] == t.user_attrs["valid"]
        expected = ServingModel(checkpoint.model).eval()(x).detach().numpy()
        pyfunc = mlflow.pyfunc.load_model(models[0].model_uri)
        got = np.asarray(pyfunc.predict(x.numpy()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        meta = pyfunc.metadata
        assert meta.signature.inputs.inputs[0].shape == (-1, x.shape[1])


def test_the_parent_holds_hypervolume_history_and_the_front(tracked, client, tmp_path):
    study = tracked.load()
    objectives = objectives_of(study)
    parent = study.user_attrs[PARENT_ATTR]
    history = client.get_metric_history(parent, "hypervolume")
    assert sorted({m.step for m in history}) == list(range(1, N_TRIALS + 1))
    last = max(history, key=lambda m: (m.step, m.timestamp))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert last.value == pytest.approx(hypervolume(complete, objectives))

    folder = Path(client.download_artifacts(parent, "front", str(tmp_path)))
    rows = json.loads((folder / "front.json").read_text())
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in pareto_front(study, objectives))
    assert {r["mlflow_run_id"] for r in rows} == {
        study.trials[r["trial"]].user_attrs[RUN_ID_ATTR] for r in rows
    }
    header = (folder / "front.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["trial", "model", "architecture", "y1:mse", "params"]
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "pareto.html").read_text()
    assert page.count('<svg class="pareto"') == 1 and "single_task" in page
    assert "src=" not in page  # self-contained


# ---- the live front, step by step ----------------------------------------------------------
class _Config:
    """The part of an ExperimentConfig the observer reads."""

    def to_dict(self):
        return {"model": {"levels": [{"n_shared": 1}], "towers": []}, "training": {"lr": 0.01}}

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict())


class _Context:
    objectives = (Objective("a:auc", "maximize", "a", "auc"), Objective("b:auc", "maximize", "b", "auc"))
    settings = None
    data = None


def test_trials_that_fall_off_the_front_are_retagged_and_dead_runs_closed(tmp_path):
    study = optuna.create_study(
        study_name="live", storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "maximize"]
    )
    observer = MlflowObserver(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    observer.on_study(study, _Context())
    client = MlflowClient(observer.tracking_uri)

    def tags():
        return {n: r.data.tags for n, r in _children(client, study).items()}

    def finish(values=None, state=TrialState.COMPLETE, end=True):
        trial = study.ask()
        observer.on_trial_start(trial, _Config())
        frozen = study.tell(trial, values, state=state)
        if end:
            observer.on_trial_end(study, frozen, None)
        return frozen

    finish([0.7, 0.7])
    finish([0.8, 0.6])
    assert {n: t["pareto_front"] for n, t in tags().items()} == {0: "true", 1: "true"}
    finish([0.9, 0.9])  # dominates both
    now = tags()
    assert {n: t["pareto_front"] for n, t in now.items()} == {0: "false", 1: "false", 2: "true"}
    assert (now[0]["pareto_rank"], now[1]["pareto_rank"], now[2]["pareto_rank"]) == ("1", "1", "0")

    finish(state=TrialState.FAIL)
    lost = finish(state=TrialState.FAIL, end=False)  # its worker died before reporting
    finish([0.95, 0.5])
    runs = _children(client, study)
    assert runs[3].data.tags["state"] == "FAIL" and runs[3].info.status == "FAILED"
    assert runs[lost.number].info.status == "FAILED"
    assert "worker lost" in runs[lost.number].data.tags["fail_reason"]
    assert {n for n, r in runs.items() if r.data.tags["pareto_front"] == "true"} == {2, 5}


# ---- tracking problems never stop a search -------------------------------------------------
def _small_settings() -> SearchSettings:
    return SearchSettings(
        space_text=QUICK,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 600, "d": 8},
        sampler="random",
        seed=3,
        n_trials=3,
    )


def test_a_failing_tracker_logs_one_warning_per_hook_and_the_search_finishes(tmp_path, monkeypatch, caplog):
    ctx = create_or_resume("broken", f"sqlite:///{tmp_path / 's.db'}", _small_settings())
    observer = MlflowObserver(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_models=False)
    observer.on_study(ctx.study, ctx)
    ctx.observers.append(observer)

    def boom(*args, **kwargs):
        raise RuntimeError("tracking server on fire")

    monkeypatch.setattr(MlflowClient, "log_batch", boom)
    with caplog.at_level(logging.WARNING, logger="mtlsearch.tracking"):
        run_worker(ctx)
    assert count_finished(ctx.study) == 3
    assert all(t.state == TrialState.COMPLETE for t in ctx.study.trials)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("tracking server on fire" in w for w in warnings)
    assert len(warnings) == len(set(warnings))  # once per hook, not once per epoch


def test_an_unusable_tracking_uri_turns_tracking_off_not_the_search(tmp_path, caplog):
    ctx = create_or_resume("nowhere", f"sqlite:///{tmp_path / 's.db'}", _small_settings())
    observer = MlflowObserver(tracking_uri="nosuchscheme://nowhere")
    with caplog.at_level(logging.WARNING, logger="mtlsearch.tracking"):
        observer.on_study(ctx.study, ctx)
    ctx.observers.append(observer)
    run_worker(ctx)
    assert count_finished(ctx.study) == 3
    assert any("MLflow tracking is off" in r.getMessage() for r in caplog.records)
    assert PARENT_ATTR not in ctx.study.user_attrs


def test_serving_model_outputs_match_the_network(tracked):
    study = tracked.load()
    from mtlsearch.data import load_dataset
    from mtlsearch.train import ExperimentConfig, fit

    t = pareto_front(study, objectives_of(study))[0]
    data = load_dataset("synthetic", seed=7, n=1500, d=20)
    result = fit(ExperimentConfig.from_dict(t.user_attrs["config"]), data, progress=False)
    model = ServingModel(result.model).eval()
    x = serving_input(data.valid.numeric[:20], data.valid.categorical[:20])
    raw = result.model(data.valid.numeric[:20], data.valid.categorical[:20])
    expected = torch.stack([raw["y1"], raw["y2"]], dim=1)  # regression: the values themselves
    torch.testing.assert_close(model(x), expected)
