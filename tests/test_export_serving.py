"""The serving program: every task kind and categorical inputs, any batch size."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _train_support import experiment, mixed_data

from mtlsearch.data import TensorSplit
from mtlsearch.tracking import ServingModel, save_serving, serving_input, serving_schema
from mtlsearch.train import TASK_KINDS, fit


def _with_code(split: TensorSplit) -> TensorSplit:
    """A categorical feature: the sign pattern of x0 and x1 (codes 0..3)."""
    codes = (split.numeric[:, 0] > 0).long() * 2 + (split.numeric[:, 1] > 0).long()
    return replace(split, categorical=codes.unsqueeze(1))


@pytest.fixture(scope="module")
def trained():
    base = mixed_data(n=1200, d=6)
    data = replace(
        base,
        categorical_features=(("quadrant", 4),),
        train=_with_code(base.train),
        valid=_with_code(base.valid),
        test=_with_code(base.test),
    )
    result = fit(experiment(data, "ple", epochs=1), data, progress=False)
    return data, result


def test_the_schema_names_inputs_and_outputs(trained):
    data, result = trained
    schema = serving_schema(result.model, data.numeric_features)
    assert schema.inputs == (*data.numeric_features, "quadrant")
    assert schema.outputs == ("a", "r", "m_prob_0", "m_prob_1", "m_prob_2")


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_the_saved_program_predicts_like_the_network_for_any_batch(trained, tmp_path, rows):
    data, result = trained
    model = ServingModel(result.model).eval()
    schema = serving_schema(result.model, data.numeric_features)
    example = serving_input(data.valid.numeric[:4], data.valid.categorical[:4])
    path = save_serving(model, example, schema, tmp_path / "serving")
    program = torch.export.load(path).module()

    numeric, categorical = data.train.numeric[:rows], data.train.categorical[:rows]
    with torch.no_grad():
        served = program(serving_input(numeric, categorical))
        raw = result.model(numeric, categorical)
    expected = [TASK_KINDS[t.kind].predict(raw[t.name]).float() for t in result.config.model.tasks]
    expected = torch.cat([e if e.dim() == 2 else e.unsqueeze(1) for e in expected], dim=1)
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-6)
    assert served.shape == (rows, len(schema.outputs))
    assert json.loads((tmp_path / "serving" / "schema.json").read_text())["inputs"] == list(schema.inputs)


def test_a_categorical_code_changes_the_prediction(trained):
    """The codes really reach the embedding (they are not, say, truncated to zero)."""
    data, result = trained
    model = ServingModel(result.model).eval()
    x = serving_input(data.test.numeric[:1], data.test.categorical[:1]).repeat(4, 1)
    x[:, -1] = torch.arange(4, dtype=torch.float32)
    with torch.no_grad():
        out = model(x)
    assert len({tuple(row.tolist()) for row in out}) == 4


def test_an_example_of_one_row_is_refused(trained, tmp_path):
    data, result = trained
    with pytest.raises(ValueError, match="at least two rows"):
        save_serving(
            ServingModel(result.model),
            serving_input(data.valid.numeric[:1], data.valid.categorical[:1]),
            serving_schema(result.model),
            tmp_path / "never",
        )
    assert not (tmp_path / "never").exists()


def test_a_batch_norm_network_exports_with_its_running_statistics(tmp_path):
    """Eval-mode batch norm is a fixed affine map: the program must give one row the same
    prediction as the network does, whatever batch it came in."""
    from mtlsearch.arch import (
        ArchConfig,
        CategoricalFeature,
        InputSpec,
        LevelConfig,
        TaskSpec,
        TowerConfig,
        build_model,
    )

    level = {"n_shared": 2, "n_specific": (1, 1), "expert_hidden": (8,), "norm": "batch"}
    config = ArchConfig(
        inputs=InputSpec(n_numeric=3, categorical=(CategoricalFeature("c", 50, 4),), embed_init_std=0.01),
        tasks=(TaskSpec("a", "binary"), TaskSpec("b", "binary")),
        levels=(LevelConfig(**level, shared_gate=True), LevelConfig(**level)),
        towers=(TowerConfig(hidden=(4,), norm="batch"),) * 2,
    )
    network = build_model(config, seed=0).train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # move the running statistics away from 0 / 1
        network(torch.randn(64, 3, generator=gen) * 3 + 1, torch.randint(0, 50, (64, 1), generator=gen))
    network.eval()
    model = ServingModel(network)
    x = serving_input(torch.randn(10, 3, generator=gen), torch.randint(0, 50, (10, 1), generator=gen))
    out = save_serving(model, x, serving_schema(network), tmp_path / "serving")
    program = torch.export.load(str(out)).module()
    torch.testing.assert_close(program(x[:1]), model(x)[:1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)
