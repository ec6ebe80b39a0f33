"""TrainConfig / ExperimentConfig: validation with field paths, round trips, example files."""

from __future__ import annotations

import pytest
from _train_support import REPO, binary_data, experiment

from mtlsearch._errors import UserError
from mtlsearch.arch import CategoricalFeature, InputSpec, TaskSpec
from mtlsearch.train import ExperimentConfig, LossWeightingConfig, TrainConfig

LW = "training.loss_weighting"


def test_train_config_round_trip():
    cfg = TrainConfig(
        optimizer="adamw",
        lr=0.01,
        weight_decay=1e-4,
        batch_size=64,
        epochs=4,
        patience=2,
        monitor="a",
        loss_weighting=LossWeightingConfig("dynamic", {"a": 2.0}, {"b": 0.5}),
        seed=7,
    )
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_experiment_yaml_round_trip(tmp_path):
    cfg = experiment(binary_data(n=200), "ple", monitor="b", patience=1)
    path = tmp_path / "exp.yaml"
    cfg.save(path)
    assert ExperimentConfig.load(path) == cfg
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"learning_rate": 0.1}, "training.learning_rate"),
        ({"lr": -1}, "training.lr"),
        ({"lr": "fast"}, "training.lr"),
        ({"optimizer": "sgd"}, "training.optimizer"),
        ({"batch_size": 0}, "training.batch_size"),
        ({"epochs": 2.5}, "training.epochs"),
        ({"patience": 0}, "training.patience"),
        ({"weight_decay": -0.1}, "training.weight_decay"),
        ({"loss_weighting": {"method": "no_such_method"}}, f"{LW}.method"),
        ({"loss_weighting": {"method": "fixed", "gamma": {"a": 0.9}}}, f"{LW}.gamma"),
        ({"loss_weighting": {"method": "fixed", "weights": {"a": -1}}}, f"{LW}.weights.a"),
        ({"loss_weighting": {"method": "dynamic", "gamma": {"a": 0}}}, f"{LW}.gamma.a"),
        ({"loss_weighting": {"method": "fixed", "alpha": 1}}, f"{LW}.alpha"),
    ],
)
def test_bad_training_values_name_the_field(raw, path):
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict(raw)
    assert str(err.value).startswith(f"{path}:")
    assert "\n" not in str(err.value)


def test_yaml_style_numbers_are_accepted():
    # PyYAML reads `1e-3` (no dot) as a string; a learning rate written that way must work.
    cfg = ExperimentConfig.from_yaml(
        "model: {levels: [{n_shared: 1, n_specific: 0, expert_hidden: [4], select: shared}]}\n"
        "training: {lr: 1e-3, loss_weighting: uncertainty}\n",
        inputs=InputSpec(n_numeric=3),
        tasks=(TaskSpec("a", "binary"),),
    )
    assert cfg.training.lr == 0.001
    assert cfg.training.loss_weighting.method == "uncertainty"


def test_training_fields_that_name_tasks_are_checked_against_the_model():
    data = binary_data(n=200)
    model = experiment(data).model
    with pytest.raises(UserError, match=r"^training\.monitor: unknown task 'c'"):
        ExperimentConfig(model, TrainConfig(monitor="c"))
    with pytest.raises(UserError, match=r"^training\.loss_weighting\.weights\.c: no such task"):
        weights = LossWeightingConfig("fixed", {"c": 1.0})
        ExperimentConfig(model, TrainConfig(loss_weighting=weights))


def test_experiment_errors_name_the_file_and_section(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match=r"nope\.yaml: no such file"):
        ExperimentConfig.load(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {levels: [}\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not valid YAML"):
        ExperimentConfig.load(bad)
    extra = tmp_path / "extra.yaml"
    extra.write_text("model: {}\ntrainig: {}\n")
    with pytest.raises(UserError, match=r"extra\.yaml: trainig: unknown top-level key"):
        ExperimentConfig.load(extra)
    arch = tmp_path / "arch.yaml"
    arch.write_text("model: {tasks: [{name: a, kind: binary}], levels: [{n_shared: -1}]}\n")
    with pytest.raises(UserError, match=r"arch\.yaml: model\."):
        ExperimentConfig.load(arch)


@pytest.mark.parametrize("name", ["ple_synthetic.yaml", "ple_census.yaml", "mmoe_census.yaml"])
def test_example_configs_load_with_the_dataset_filling_inputs_and_tasks(name):
    if "census" in name:
        tasks = (TaskSpec("income", "binary"), TaskSpec("marital", "binary"))
        inputs = InputSpec(n_numeric=7, categorical=(CategoricalFeature("race", 6, 4),))
    else:
        tasks = (TaskSpec("y1", "regression"), TaskSpec("y2", "regression"))
        inputs = InputSpec(n_numeric=100)
    cfg = ExperimentConfig.load(REPO / "examples" / name, inputs=inputs, tasks=tasks)
    assert cfg.model.tasks == tasks
    assert cfg.model.inputs == inputs
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg


def test_an_inputs_section_with_only_embed_init_std_keeps_the_datasets_features():
    inputs = InputSpec(n_numeric=7, categorical=(CategoricalFeature("race", 6, 4),))
    tasks = (TaskSpec("income", "binary"), TaskSpec("marital", "binary"))
    text = (
        "model:\n  inputs: {embed_init_std: 0.0001}\n"
        "  levels: [{n_shared: 1, n_specific: 0, expert_hidden: [8], norm: batch}]\n"
    )
    cfg = ExperimentConfig.from_yaml(text, inputs=inputs, tasks=tasks)
    assert cfg.model.inputs.categorical == inputs.categorical and cfg.model.inputs.n_numeric == 7
    assert cfg.model.inputs.embed_init_std == 0.0001
    assert cfg.model.levels[0].norm == "batch"
