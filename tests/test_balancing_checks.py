"""Checks found by trying task balancing as a user: a method that cannot train a network is
refused when the experiment is built (so a search fails before any trial), a YAML key
written twice is an error, and MLflow names a method's options under the method."""

from __future__ import annotations

import pytest

from mtlsearch._errors import UserError
from mtlsearch._yaml import load_yaml
from mtlsearch.arch import InputSpec, TaskSpec, preset
from mtlsearch.tracking._summary import trial_params
from mtlsearch.train import ExperimentConfig, LossWeightingConfig, TrainConfig

TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))
INPUTS = InputSpec(n_numeric=3)


def _experiment(name: str, method: str, **options) -> ExperimentConfig:
    return ExperimentConfig(
        model=preset(name, INPUTS, TASKS),
        training=TrainConfig(loss_weighting=LossWeightingConfig(method=method, options=options)),
    )


def test_gradnorm_on_a_network_sharing_nothing_is_refused_when_the_experiment_is_built():
    with pytest.raises(UserError, match=r"^training\.loss_weighting\.method: this method needs a layer"):
        _experiment("single_task", "gradnorm")
    for name in ("shared_bottom", "mmoe", "cgc", "ple"):  # each shares an expert layer
        assert _experiment(name, "gradnorm").training.loss_weighting.method == "gradnorm"
    _experiment("single_task", "upgrad")  # per-element sharing: nothing shared is a plain step


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: 1\nb: 2\na: 3\n", "line 3, column 1: key 'a'"),
        ("training:\n  loss_weighting: {method: dwa, method: upgrad}\n", "line 2, column 33: key 'method'"),
    ],
)
def test_a_key_written_twice_is_one_error_naming_line_and_key(text, where):
    with pytest.raises(UserError) as err:
        load_yaml(text, "exp.yaml")
    assert str(err.value) == f"exp.yaml: {where} appears twice in one mapping"


def test_mlflow_params_name_a_methods_options_under_the_method():
    gradnorm = trial_params(_experiment("mmoe", "gradnorm", alpha=0.5).to_dict(), None)
    fairgrad = trial_params(_experiment("mmoe", "fairgrad", alpha=2.0).to_dict(), None)
    assert gradnorm["training.loss_weighting.method"] == "gradnorm"
    assert gradnorm["training.loss_weighting.gradnorm.alpha"] == "0.5"
    assert fairgrad["training.loss_weighting.fairgrad.alpha"] == "2.0"
    assert "training.loss_weighting.alpha" not in gradnorm | fairgrad
