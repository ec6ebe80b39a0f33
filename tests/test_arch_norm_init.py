"""Batch norm in experts, gates and towers; embedding init scale; grouped expert inputs.

These are the builder knobs that make mtlsearch's PLE the same network as torch-rechub's
(Linear -> BatchNorm -> activation everywhere, embeddings from N(0, 1e-4)), so each is
checked against a plain per-expert torch.nn computation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlsearch.arch import (
    ArchConfig,
    BatchedMLP,
    CategoricalFeature,
    ConfigError,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
)

TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))


def _reference_mlp(mlp: BatchedMLP, e: int, x: torch.Tensor) -> torch.Tensor:
    """MLP ``e`` of a BatchedMLP as nn.Linear -> nn.BatchNorm1d (train mode) -> ReLU."""
    n_layers = len(mlp.weights)
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        lin = nn.Linear(w.shape[1], w.shape[2])
        lin.weight.data, lin.bias.data = w[e].T.clone(), b[e, 0].clone()
        x = lin(x)
        if i < n_layers - 1 or mlp.last_activation:
            if i < len(mlp.norm_weights):
                bn = nn.BatchNorm1d(w.shape[2])
                d = w.shape[2]
                bn.weight.data = mlp.norm_weights[i][e * d : (e + 1) * d].clone()
                bn.bias.data = mlp.norm_biases[i][e * d : (e + 1) * d].clone()
                x = bn(x)
            x = torch.relu(x)
    return x


@pytest.mark.parametrize("form", ["shared", "per_mlp", "grouped"])
@pytest.mark.parametrize("last_activation", [True, False])
def test_batch_norm_mlp_equals_per_expert_linear_batchnorm_relu(form, last_activation):
    torch.manual_seed(0)
    mlp = BatchedMLP(5, 7, (6, 4), norm="batch", last_activation=last_activation)
    with torch.no_grad():  # non-trivial affine parameters
        for p in [*mlp.norm_weights, *mlp.norm_biases]:
            p.add_(torch.randn_like(p) * 0.3)
    groups = (2, 0, 3)
    if form == "shared":
        x = torch.randn(9, 7)
        got, inputs = mlp(x), [x] * 5
    elif form == "per_mlp":
        x = torch.randn(5, 9, 7)
        got, inputs = mlp(x), list(x)
    else:  # experts 0-1 read input 0, experts 2-4 read input 2 (input 1 feeds none)
        xs = [torch.randn(9, 7) for _ in groups]
        got, inputs = mlp(xs, groups), [xs[0]] * 2 + [xs[2]] * 3
    for e in range(5):
        torch.testing.assert_close(got[e], _reference_mlp(mlp, e, inputs[e]), rtol=1e-4, atol=1e-5)
    # running statistics moved as nn.BatchNorm1d's would (momentum 0.1 from mean 0 / var 1)
    assert mlp.running_mean_0.abs().sum() > 0


def test_grouped_inputs_equal_stacking_one_input_per_expert():
    torch.manual_seed(1)
    mlp = BatchedMLP(4, 3, (5,))
    xs = [torch.randn(6, 3), torch.randn(6, 3)]
    grouped = mlp(xs, (1, 3))
    stacked = mlp(torch.stack([xs[0], xs[1], xs[1], xs[1]]))
    torch.testing.assert_close(grouped, stacked, rtol=1e-5, atol=1e-6)


def test_one_row_training_batch_uses_running_statistics_instead_of_failing():
    cfg = _arch(norm="batch")
    model = build_model(cfg, seed=0).train()
    out = model(torch.randn(1, 3), torch.zeros(1, 1, dtype=torch.long))
    assert all(torch.isfinite(v).all() for v in out.values())


def _arch(norm: str = "none", std: float = 1.0) -> ArchConfig:
    level = {"n_shared": 2, "n_specific": (1, 1), "expert_hidden": (8,), "norm": norm}
    return ArchConfig(
        inputs=InputSpec(n_numeric=3, categorical=(CategoricalFeature("c", 50, 4),), embed_init_std=std),
        tasks=TASKS,
        levels=(LevelConfig(**level, shared_gate=True), LevelConfig(**level)),
        towers=(TowerConfig(hidden=(4,), norm=norm),) * 2,
    )


def test_norm_batch_adds_normalisation_to_experts_gates_and_tower_hidden_layers_only():
    plain = build_model(_arch("none"), seed=0)
    normed = build_model(_arch("batch"), seed=0)
    keys = set(normed.state_dict()) - set(plain.state_dict())
    assert {k for k in keys if k.startswith("levels.0.experts.")} == {
        "levels.0.experts.running_mean_0",
        "levels.0.experts.running_var_0",
        "levels.0.experts.norm_weights.0",
        "levels.0.experts.norm_biases.0",
    }
    # level 0: two task gates + the shared gate; level 1: two task gates
    gate_norms = {k.split(".")[3] for k in keys if ".gate_norms." in k}
    assert gate_norms == {"0", "1", "2"}
    assert sum(".gate_norms." in k and k.endswith("running_mean") for k in keys) == 5
    # towers: the hidden layer only (4 units per tower, 2 towers), not the 1-unit output
    assert normed.state_dict()["towers.mlps.0.norm_weights.0"].shape == (8,)
    assert "towers.mlps.0.norm_weights.1" not in keys
    assert set(plain.state_dict()) <= set(normed.state_dict())


def test_eval_mode_batch_norm_makes_a_row_independent_of_its_batch():
    model = build_model(_arch("batch"), seed=0)
    x, c = torch.randn(64, 3), torch.randint(0, 50, (64, 1))
    model.train()
    for _ in range(3):  # move the running statistics
        model(x, c)
    model.eval()
    alone = model(x[:1], c[:1])["a"]
    batched = model(x, c)["a"][:1]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


def test_embed_init_std_scales_the_tables_without_changing_other_weights():
    big = build_model(_arch(std=1.0), seed=0)
    small = build_model(_arch(std=1e-4), seed=0)
    t_big, t_small = big.encoder.tables[0].weight, small.encoder.tables[0].weight
    torch.testing.assert_close(t_small, t_big * 1e-4)
    assert 0.5 < t_big.std().item() < 1.5
    # the scale is applied to the same draw, so every other initial weight is unchanged
    torch.testing.assert_close(small.levels[0].experts.weights[0], big.levels[0].experts.weights[0])


def test_config_round_trip_and_errors_for_norm_and_embed_init_std():
    cfg = _arch("batch", 0.01)
    again = ArchConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.levels[0].norm == "batch" and again.inputs.embed_init_std == 0.01
    data = cfg.to_dict()
    data["levels"][1]["norm"] = "layer"
    with pytest.raises(ConfigError, match=r"levels\[1\]\.norm: unknown value 'layer'"):
        ArchConfig.from_dict(data)
    data = cfg.to_dict()
    data["towers"][0]["norm"] = "group"
    with pytest.raises(ConfigError, match=r"towers\[0\]\.norm"):
        ArchConfig.from_dict(data)
    data = cfg.to_dict()
    data["inputs"]["embed_init_std"] = 0
    with pytest.raises(ConfigError, match=r"inputs\.embed_init_std: must be a number > 0"):
        ArchConfig.from_dict(data)


def test_embed_init_std_written_the_yaml_way_is_a_number():
    """PyYAML reads ``1e-4`` (no dot) as a string; the config must still take it."""
    data = _arch().to_dict()
    data["inputs"]["embed_init_std"] = "1e-4"
    assert ArchConfig.from_dict(data).inputs.embed_init_std == 1e-4
    data["inputs"]["embed_init_std"] = "small"
    with pytest.raises(ConfigError, match=r"inputs\.embed_init_std: expected a number, got 'small'"):
        ArchConfig.from_dict(data)
