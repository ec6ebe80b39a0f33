"""AdaTT fusion units (Li et al., KDD 2023) against the paper's equations written out by hand,
their config key (validation, YAML), the search space's repair, describe, and old configs
building the same network as before."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from optuna.trial import FixedTrial

from mtlsearch.arch import (
    ArchConfig,
    ConfigError,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
    count_parameters,
    preset,
)
from mtlsearch.search import SearchSpace, describe_config

D_IN = 5
TWO_TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _adatt(n_specific=(2, 1), n_shared=1, hidden=4, **level) -> ArchConfig:
    """Two levels: level 0 (AdaTT, with a shared gate) feeding a plain top level."""
    lv0 = LevelConfig(
        n_shared=n_shared, n_specific=n_specific, expert_hidden=(hidden,), select="all",
        shared_gate=True, fusion="adatt", **level,
    )  # fmt: skip
    lv1 = LevelConfig(n_shared=1, n_specific=(1, 1), expert_hidden=(3,))
    return ArchConfig(InputSpec(n_numeric=D_IN), TWO_TASKS, (lv0, lv1), (TowerConfig(hidden=(2,)),) * 2)


def _relu_expert(level, e: int, x: torch.Tensor) -> torch.Tensor:
    w, b = level.experts.weights[0][e], level.experts.biases[0][e]
    return torch.relu(x @ w + b)


def test_fusion_unit_output_by_hand():
    """out_k = sum_j softmax(W_k x)_j E_j(x) + sum_{i native to k} v_ki E_i(x): task a has two
    native experts (learned v), task b one (weight 1), the shared gate one shared expert (1)."""
    model = build_model(_adatt(), seed=0).eval()
    level = model.levels[0]
    assert level.native_weights.shape == (2,)  # only task a's two native experts are learned
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        level.native_weights.copy_(torch.tensor([0.7, -1.3]))
        for g in level.gates:
            g.weight.copy_(torch.randn(g.weight.shape, generator=gen))
    x = torch.randn(9, D_IN, generator=gen)
    with torch.no_grad():
        tasks, shared, gates = level([x], x)
        experts = [_relu_expert(level, e, x) for e in range(4)]  # a/0, a/1, b/0, shared/0

        def mix(gate: torch.nn.Linear) -> torch.Tensor:
            g = torch.softmax(x @ gate.weight.T + gate.bias, dim=-1)
            return sum(g[:, j : j + 1] * experts[j] for j in range(4))

        out_a = mix(level.gates[0]) + 0.7 * experts[0] - 1.3 * experts[1]
        out_b = mix(level.gates[1]) + experts[2]
        out_shared = mix(level.gates[2]) + experts[3]
    torch.testing.assert_close(tasks[0], out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tasks[1], out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared, out_shared, rtol=1e-5, atol=1e-6)
    # the reported gate weights are the gate's own (they sum to 1), without the residual
    for name in ("task:a", "task:b", "shared"):
        torch.testing.assert_close(gates[name].sum(-1), torch.ones(9))


def test_native_weights_start_uniform_in_the_papers_code_bounds_and_learn():
    cfg = _adatt(n_specific=(3, 2), n_shared=2)
    level = build_model(cfg, seed=1).levels[0]
    v = level.native_weights.detach()
    assert v.shape == (3 + 2 + 2,)  # every module has > 1 native expert: all learned
    assert (v[:3].abs() <= 1 / math.sqrt(3)).all() and (v[3:].abs() <= 1 / math.sqrt(2)).all()
    # (M, E) matrix: row k holds task k's weights at its own experts, zero elsewhere
    m = level.native_matrix().detach()
    expected = torch.zeros(3, 7)
    expected[0, 0:3], expected[1, 3:5], expected[2, 5:7] = v[:3], v[3:5], v[5:7]
    assert torch.equal(m, expected)
    x = torch.randn(8, D_IN)
    tasks, shared, _ = level([x], x)
    (tasks[0].sum() + tasks[1].sum() + shared.sum()).backward()
    assert torch.count_nonzero(level.native_weights.grad) == 7


def test_a_task_without_native_experts_has_no_residual():
    model = build_model(_adatt(n_specific=(0, 1), n_shared=1), seed=0).eval()
    level = model.levels[0]
    assert not hasattr(level, "native_weights")  # b and shared: one native expert each, weight 1
    assert torch.equal(level.native_fixed, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_parameter_count_written_out():
    d, h, t = D_IN, 4, 2
    n_exp, gates0 = 4, 3  # a/0 a/1 b/0 shared/0; gates a, b, shared over all 4
    level0 = n_exp * (d * h + h) + gates0 * (h * 0 + d * n_exp + n_exp) + 2  # + task a's 2 weights
    level1 = 3 * (h * 3 + 3) + 2 * (h * 2 + 2)  # PLE top: 3 experts, gates over own+shared (2)
    towers = 2 * (3 * t + t + t * 1 + 1)
    assert count_parameters(build_model(_adatt(), seed=0)) == level0 + level1 + towers
    plain = replace(_adatt(), levels=(replace(_adatt().levels[0], fusion="gate"), _adatt().levels[1]))
    assert count_parameters(build_model(plain, seed=0)) == level0 - 2 + level1 + towers


@pytest.mark.parametrize("name", ["mmoe", "ple", "cgc", "shared_bottom", "single_task"])
def test_old_configs_build_the_same_network(name):
    """A config written before the new keys reads with fusion 'gate', expert_norm 'none' and no
    task embeddings, and builds the same parameters (same names, same values) as before."""
    cfg = preset(name, InputSpec(n_numeric=D_IN), TWO_TASKS)
    data = cfg.to_dict()
    assert data["inputs"]["task_embedding_dim"] == 0
    for lv in data["levels"]:
        assert (lv.pop("fusion"), lv.pop("expert_norm")) == ("gate", "none")
    del data["inputs"]["task_embedding_dim"]
    old = ArchConfig.from_dict(data)
    assert old == cfg
    state = build_model(old, seed=5).state_dict()
    assert not any("native" in k or "expert_norm" in k or "task_tables" in k for k in state)
    # the same draws as the builder's plain path: compare with a second build
    again = build_model(cfg, seed=5).state_dict()
    assert list(state) == list(again) and all(torch.equal(state[k], again[k]) for k in state)


def test_old_mmoe_parameter_count_written_out():
    d, n, h, t = D_IN, 3, 4, 3
    cfg = preset("mmoe", InputSpec(n_numeric=d), TWO_TASKS, n_experts=n, expert_hidden=(h,), tower=(t,))
    expected = n * (d * h + h) + 2 * (d * n + n) + 2 * (h * t + t + t + 1)
    assert count_parameters(build_model(cfg, seed=0)) == expected


# ---- config key -------------------------------------------------------------------------------


def test_adatt_round_trips_through_yaml(tmp_path):
    cfg = _adatt(expert_norm="layer", activation="silu")
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert "fusion: adatt" in cfg.to_yaml()
    cfg.save(tmp_path / "arch.yaml")
    assert ArchConfig.load(tmp_path / "arch.yaml") == cfg


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "fusion",
            "cross",
            r"levels\[0\]\.fusion: unknown value 'cross'; expected one of \['gate', 'adatt'\]",
        ),
        ("select", "own+shared", r"levels\[0\]\.select: AdaTT fusion \(fusion='adatt'\) mixes every expert"),
    ],
)
def test_invalid_fusion_settings_name_the_field(key, value, message):
    data = _adatt().to_dict()
    data["levels"][0][key] = value
    with pytest.raises(ConfigError, match=f"^{message}"):
        ArchConfig.from_dict(data)


def test_a_bad_fusion_in_an_architecture_file_names_the_file(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text(_adatt().to_yaml().replace("fusion: adatt", "fusion: adat"))
    with pytest.raises(ConfigError, match=rf"^{path}: levels\[0\]\.fusion: unknown value 'adat'"):
        ArchConfig.load(path)


# ---- search space and describe ----------------------------------------------------------------


def test_search_space_samples_fusion_and_repairs_select():
    space = SearchSpace.from_dict(
        {
            "levels": 1,
            "level": {
                "n_shared": 1,
                "n_specific": 2,
                "select": "own+shared",
                "fusion": {"choice": ["gate", "adatt"]},
            },
        }
    )
    inputs = InputSpec(n_numeric=D_IN)
    lv = space.suggest(FixedTrial({"l0.fusion": "adatt"}), inputs, TWO_TASKS).model.levels[0]
    assert (lv.fusion, lv.select) == ("adatt", "all")  # AdaTT mixes every expert
    lv = space.suggest(FixedTrial({"l0.fusion": "gate"}), inputs, TWO_TASKS).model.levels[0]
    assert (lv.fusion, lv.select) == ("gate", "own+shared")


def test_search_space_rejects_an_unknown_fusion_naming_the_key():
    from mtlsearch._errors import UserError

    with pytest.raises(UserError, match=r"level\.fusion: unknown choice 'cross'"):
        SearchSpace.from_dict({"level": {"fusion": {"choice": ["gate", "cross"]}}})


def test_describe_shows_fusion_and_the_k_of_sparse_gates():
    cfg = _adatt(gate_kind="dselect_k", top_k=3)
    text = describe_config({"model": cfg.to_dict(), "training": {"lr": 0.01}})
    assert text.startswith("L1 1s+2,1p[4] all+sg dselect_k3 adatt | L2 1s+1p[3] own+shared | ")
    cfg = replace(cfg, levels=(replace(cfg.levels[0], gate_kind="noisy_top_k", top_k=2), cfg.levels[1]))
    assert "all+sg noisy_top2 adatt |" in describe_config({"model": cfg.to_dict()})
