"""DSelect-k and noisy top-k gates against their papers' equations written out by hand, their
config keys, search-space keys, trainer hook, utilisation and export, and old configs
building the same network as before."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import pytest
import torch
from _train_support import binary_data, experiment, one_thread  # noqa: F401
from optuna.trial import FixedTrial

from mtlsearch._errors import UserError
from mtlsearch.arch import (
    ArchConfig,
    BatchedMLP,
    ConfigError,
    InputSpec,
    LevelConfig,
    MTLNetwork,
    TaskSpec,
    TowerConfig,
    build_model,
    count_parameters,
    preset,
)
from mtlsearch.data import TensorSplit
from mtlsearch.search import SearchSpace
from mtlsearch.train import fit
from mtlsearch.train._evaluate import Evaluator

D_IN = 6
ONE_TASK = (TaskSpec("a", "binary"),)
TWO_TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
NO_CODES = torch.zeros(16, 0, dtype=torch.long)


def _one_gate(kind: str, n_experts: int, **level) -> ArchConfig:
    """One task, one gate over ``n_experts`` shared experts."""
    lv = {"top_k": 2, **level}
    return ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=ONE_TASK,
        levels=(
            LevelConfig(
                n_shared=n_experts, n_specific=(0,), expert_hidden=(4,), select="shared", gate_kind=kind, **lv
            ),
        ),
        towers=(TowerConfig(hidden=(3,)),),
    )


def _gate_weights(model: MTLNetwork, x: torch.Tensor) -> torch.Tensor:
    _, gates = model.forward_with_gates(x, NO_CODES[: x.shape[0]])
    return gates["level0/task:a"]


def _randomise(linear: torch.nn.Linear, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * scale)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=gen) * scale)


# ---- DSelect-k ------------------------------------------------------------------------------


def _smooth_step_by_hand(z: torch.Tensor, gamma: float) -> torch.Tensor:
    out = torch.empty_like(z)
    for idx, v in enumerate(z.flatten().tolist()):
        if v <= -gamma / 2:
            out.view(-1)[idx] = 0.0
        elif v >= gamma / 2:
            out.view(-1)[idx] = 1.0
        else:
            out.view(-1)[idx] = -2 * v**3 / gamma**3 + 3 * v / (2 * gamma) + 0.5
    return out


@pytest.mark.parametrize("n_experts", [3, 4])
def test_dselect_k_weights_follow_the_binary_encoding_by_hand(n_experts):
    gamma, k = 2.0, 2
    model = build_model(_one_gate("dselect_k", n_experts, smooth_step_gamma=gamma), seed=0).eval()
    lin = model.levels[0].gates[0]
    assert lin.out_features == k * 2 + k  # m = ceil(log2 n) = 2 code logits per selector, then k
    _randomise(lin, 0.4, seed=1)  # logits inside and outside the band [-1, 1]
    x = torch.randn(16, D_IN)
    logits = x @ lin.weight.T + lin.bias
    s = _smooth_step_by_hand(logits[:, :4], gamma).view(16, k, 2)  # digit 0 is the leading one
    alpha = torch.softmax(logits[:, 4:], dim=-1)
    s0, s1 = s[..., 0], s[..., 1]
    codes = [(1 - s0) * (1 - s1), (1 - s0) * s1, s0 * (1 - s1), s0 * s1]  # codes 00, 01, 10, 11
    if n_experts == 3:  # code 11 does not exist: it is read as 01 (its leading digit dropped)
        codes = [codes[0], codes[1] + codes[3], codes[2]]
    expected = torch.stack([(alpha * c).sum(-1) for c in codes], dim=1)
    got = _gate_weights(model, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(16), rtol=0, atol=1e-6)
    assert ((s > 0) & (s < 1)).any() and ((s == 0) | (s == 1)).any()  # both regimes were exercised


@pytest.mark.parametrize("n_experts", [1, 2, 3, 5, 6, 7, 8, 9])
def test_dselect_k_weights_sum_to_one_for_any_expert_count(n_experts):
    model = build_model(_one_gate("dselect_k", n_experts, top_k=3), seed=0).eval()
    _randomise(model.levels[0].gates[0], 1.0, seed=n_experts)
    w = _gate_weights(model, torch.randn(16, D_IN) * 3)
    assert w.shape == (16, n_experts) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(16), rtol=0, atol=1e-6)


def test_dselect_k_has_at_most_k_nonzeros_once_its_code_logits_leave_the_band():
    """After training the smooth steps saturate: every code logit outside [-gamma/2, gamma/2]
    gives exact 0/1 digits, so each selector picks one expert and at most k are non-zero."""
    k, gamma = 2, 1.0
    model = build_model(_one_gate("dselect_k", 5, top_k=k, smooth_step_gamma=gamma), seed=0).eval()
    lin = model.levels[0].gates[0]  # 5 experts: m = 3 digits; logits z (k x 3) then w (k)
    x = torch.randn(16, D_IN)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.01)
        # selector 0: digits 100 -> code 4 -> expert 4; selector 1: 111 -> code 7 (unused)
        # -> 011 -> expert 3. |z| >= 3 - |x W| stays far outside the band of width 1.
        lin.bias.copy_(torch.tensor([3.0, -3.0, -3.0, 3.0, 3.0, 3.0, 0.4, -0.1]))
    logits = x @ lin.weight.T + lin.bias
    assert (logits[:, :6].abs() > gamma / 2).all()
    alpha = torch.softmax(logits[:, 6:], dim=-1)
    w = _gate_weights(model, x)
    expected = torch.zeros(16, 5)
    expected[:, 4], expected[:, 3] = alpha[:, 0], alpha[:, 1]
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=0)
    assert ((w > 0).sum(-1) == k).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(16))
    with torch.no_grad():  # both selectors on expert 2 (digits 010): one non-zero <= k
        lin.bias[:6] = torch.tensor([-3.0, 3.0, -3.0, -3.0, 3.0, -3.0])
    w = _gate_weights(model, x)
    assert ((w > 0).sum(-1) == 1).all()
    torch.testing.assert_close(w[:, 2], torch.ones(16))  # alpha_0 + alpha_1


def test_dselect_k_entropy_regulariser_by_hand_in_training_only():
    model = build_model(_one_gate("dselect_k", 4, entropy_weight=0.5), seed=0)
    lin = model.levels[0].gates[0]
    _randomise(lin, 0.2, seed=3)
    x = torch.randn(16, D_IN)
    model(x, NO_CODES)
    logits = x @ lin.weight.T + lin.bias
    s = _smooth_step_by_hand(logits[:, :4], 1.0).view(16, 2, 2)
    s0, s1 = s[..., 0], s[..., 1]
    codes = [(1 - s0) * (1 - s1), (1 - s0) * s1, s0 * (1 - s1), s0 * s1]
    per_expert = torch.stack(codes, dim=-1)  # (B, k, n): each selector's weights
    entropy = -(per_expert * torch.log(per_expert + 1e-6)).sum((1, 2)).mean()
    torch.testing.assert_close(model.auxiliary_loss(), 0.5 * entropy, rtol=1e-5, atol=1e-7)
    model.eval()
    model(x, NO_CODES)
    assert model.auxiliary_loss() is None


# ---- noisy top-k ----------------------------------------------------------------------------


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _cv_squared(v: list[float]) -> float:
    mean = sum(v) / len(v)
    return sum((x - mean) ** 2 for x in v) / len(v) / mean**2


def test_noisy_top_k_weights_and_load_balancing_loss_by_hand():
    n, k, w_balance, rows = 5, 2, 0.3, 12
    model = build_model(_one_gate("noisy_top_k", n, top_k=k, balance_weight=w_balance), seed=0).train()
    lin = model.levels[0].gates[0]
    assert lin.out_features == 2 * n and torch.count_nonzero(lin.weight) == 0  # [W_g | W_noise], zeros
    _randomise(lin, 0.5, seed=4)
    x = torch.randn(rows, D_IN)
    torch.manual_seed(7)
    w = _gate_weights(model, x)  # the only global-RNG draw of this forward: the gate's noise
    aux = model.auxiliary_loss()

    torch.manual_seed(7)
    eps = torch.randn(rows, n).tolist()
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    clean = (x.double() @ W[:n].T + b[:n]).tolist()
    raw = (x.double() @ W[n:].T + b[n:]).tolist()
    std = [[math.log1p(math.exp(v)) + 0.01 for v in r] for r in raw]  # softplus + epsilon
    H = [[clean[r][i] + eps[r][i] * std[r][i] for i in range(n)] for r in range(rows)]  # eq. 4
    G = [[0.0] * n for _ in range(rows)]
    P = [[0.0] * n for _ in range(rows)]
    for r in range(rows):
        keep = sorted(range(n), key=lambda i: -H[r][i])[:k]
        z = sum(math.exp(H[r][i]) for i in keep)
        for i in keep:
            G[r][i] = math.exp(H[r][i]) / z
        for i in range(n):
            others = sorted((H[r][j] for j in range(n) if j != i), reverse=True)
            P[r][i] = _phi((clean[r][i] - others[k - 1]) / std[r][i])  # kth_excluding(H, k, i)
    importance = [sum(G[r][i] for r in range(rows)) for i in range(n)]
    load = [sum(P[r][i] for r in range(rows)) for i in range(n)]
    expected = w_balance * (_cv_squared(importance) + _cv_squared(load))

    torch.testing.assert_close(w.double(), torch.tensor(G, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert ((w > 0).sum(-1) == k).all()
    assert aux is not None and aux.dim() == 0
    assert aux.item() == pytest.approx(expected, rel=1e-4)
    aux.backward()  # the load term reaches the noise weights through the normal CDF
    assert torch.count_nonzero(lin.weight.grad[n:]) > 0


def test_noisy_top_k_adds_no_noise_and_no_loss_in_eval():
    model = build_model(_one_gate("noisy_top_k", 4, top_k=2), seed=0).eval()
    lin = model.levels[0].gates[0]
    _randomise(lin, 0.5, seed=5)
    x = torch.randn(16, D_IN)
    state = torch.random.get_rng_state()
    w = _gate_weights(model, x)
    assert torch.equal(torch.random.get_rng_state(), state)
    clean = x @ lin.weight[:4].T + lin.bias[:4]
    values, idx = clean.topk(2, dim=-1)
    expected = torch.zeros(16, 4).scatter(1, idx, torch.softmax(values, -1))
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    assert model.auxiliary_loss() is None


def test_gates_without_a_loss_report_none_and_a_zero_weight_skips_it():
    for kind in ("softmax", "topk", "none", "dselect_k"):
        model = build_model(_one_gate(kind, 3), seed=0).train()
        model(torch.randn(16, D_IN), NO_CODES)
        assert model.auxiliary_loss() is None, kind
    model = build_model(_one_gate("noisy_top_k", 3, balance_weight=0.0), seed=0).train()
    model(torch.randn(16, D_IN), NO_CODES)
    assert model.auxiliary_loss() is None


def test_auxiliary_loss_sums_every_gate_of_every_level():
    level = {"n_shared": 3, "n_specific": (1, 1), "expert_hidden": (4,), "gate_kind": "noisy_top_k"}
    cfg = ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=TWO_TASKS,
        levels=(LevelConfig(**level, shared_gate=True), LevelConfig(**level, balance_weight=0.5)),
        towers=(TowerConfig(),) * 2,
    )
    model = build_model(cfg, seed=0).train()
    for lv in model.levels:
        for i, g in enumerate(lv.gates):
            _randomise(g, 0.5, seed=10 + i)
    model(torch.randn(16, D_IN), NO_CODES)
    per_level = [lv.aux_loss for lv in model.levels]
    assert all(a is not None for a in per_level)
    torch.testing.assert_close(model.auxiliary_loss(), per_level[0] + per_level[1])


# ---- old configs: the same network as before ------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "topk"])
def test_an_old_config_builds_the_same_parameters_in_the_same_order(kind):
    d, n, h, t = 5, 3, 4, 3
    cfg = preset("mmoe", InputSpec(n_numeric=d), TWO_TASKS, n_experts=n, expert_hidden=(h,), tower=(t,))
    cfg = replace(cfg, levels=(replace(cfg.levels[0], gate_kind=kind),))
    model = build_model(cfg, seed=11)
    # the builder's draws, in its order: experts, one linear gate per task, the towers
    torch.manual_seed(11)
    experts = BatchedMLP(n, d, (h,))
    gates = [torch.nn.Linear(d, n) for _ in TWO_TASKS]
    towers = BatchedMLP(2, h, (t, 1), last_activation=False)
    expected = {
        "levels.0.experts.weights.0": experts.weights[0],
        "levels.0.experts.biases.0": experts.biases[0],
        "levels.0.gates.0.weight": gates[0].weight,
        "levels.0.gates.0.bias": gates[0].bias,
        "levels.0.gates.1.weight": gates[1].weight,
        "levels.0.gates.1.bias": gates[1].bias,
        "towers.mlps.0.weights.0": towers.weights[0],
        "towers.mlps.0.weights.1": towers.weights[1],
        "towers.mlps.0.biases.0": towers.biases[0],
        "towers.mlps.0.biases.1": towers.biases[1],
    }
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert count_parameters(model) == n * (d * h + h) + 2 * (d * n + n) + 2 * (h * t + t + t * 1 + 1)
    model.train()(torch.randn(16, d), NO_CODES)
    assert model.auxiliary_loss() is None


def test_old_level_dicts_read_with_the_new_keys_at_their_defaults():
    data = preset("ple", InputSpec(n_numeric=D_IN), TWO_TASKS).to_dict()
    for lv in data["levels"]:
        for key in ("balance_weight", "smooth_step_gamma", "entropy_weight"):
            del lv[key]
    cfg = ArchConfig.from_dict(data)
    assert cfg == preset("ple", InputSpec(n_numeric=D_IN), TWO_TASKS)
    assert (cfg.levels[0].balance_weight, cfg.levels[0].smooth_step_gamma, cfg.levels[0].entropy_weight) == (
        0.01,
        1.0,
        0.0,
    )


# ---- config keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dselect_k", "noisy_top_k"])
def test_new_gate_configs_round_trip_through_yaml(kind, tmp_path):
    cfg = _one_gate(kind, 5, top_k=3, balance_weight=0.25, smooth_step_gamma=2.5, entropy_weight=1e-3)
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    cfg.save(tmp_path / "arch.yaml")
    assert ArchConfig.load(tmp_path / "arch.yaml") == cfg
    text = cfg.to_yaml().replace("balance_weight: 0.25", "balance_weight: 1e-2")  # YAML 1.1: a string
    assert "1e-2" in text and ArchConfig.from_yaml(text).levels[0].balance_weight == 0.01


@pytest.mark.parametrize(
    "kind,key,value,message",
    [
        ("noisy_top_k", "balance_weight", -1, "must be >= 0, got -1"),
        ("noisy_top_k", "balance_weight", "lots", "expected a number, got 'lots'"),
        ("noisy_top_k", "balance_weight", float("nan"), "expected a finite number"),
        ("dselect_k", "smooth_step_gamma", 0, "must be > 0, got 0"),
        ("dselect_k", "entropy_weight", -0.1, "must be >= 0, got -0.1"),
        ("dselect_k", "top_k", 0, "must be an integer >= 1, got 0"),
        ("noisy_top_k", "top_k", 5, "top_k=5 exceeds the 4 expert"),
        ("dselect", "gate_kind", None, "unknown value 'dselect'"),
    ],
)
def test_invalid_gate_settings_name_the_field(kind, key, value, message):
    data = _one_gate("softmax", 4).to_dict()
    data["levels"][0]["gate_kind"] = kind
    if value is not None:
        data["levels"][0][key] = value
    with pytest.raises(ConfigError, match=rf"^levels\[0\]\.{key}: {message}"):
        ArchConfig.from_dict(data)


def test_dselect_k_may_have_more_selectors_than_experts():
    cfg = _one_gate("dselect_k", 2, top_k=3)  # selectors may pick the same expert: no bound
    assert build_model(cfg, seed=0).levels[0].gates[0].out_features == 3 * 1 + 3


# ---- search space ---------------------------------------------------------------------------


def test_search_space_samples_the_new_gates_and_their_keys():
    space = SearchSpace.from_dict(
        {
            "level": {
                "n_shared": 2,
                "n_specific": 1,
                "gate_kind": {"choice": ["dselect_k", "noisy_top_k"]},
                "top_k": 4,
                "balance_weight": {"float": ["1e-3", 0.1], "log": True},
                "smooth_step_gamma": "2e0",
            }
        }
    )
    inputs = InputSpec(n_numeric=D_IN)
    params = {"levels": 1, "l0.gate_kind": "noisy_top_k", "l0.balance_weight": 0.05}
    lv = space.suggest(FixedTrial(params), inputs, TWO_TASKS).model.levels[0]
    # noisy top-k keeps top_k of what a gate sees (1 own + 2 shared): capped at 3
    assert (lv.gate_kind, lv.top_k, lv.balance_weight, lv.smooth_step_gamma) == ("noisy_top_k", 3, 0.05, 2.0)
    cfg = space.suggest(FixedTrial({**params, "l0.gate_kind": "dselect_k"}), inputs, TWO_TASKS)
    cfg = cfg.model.levels[0]
    assert (cfg.gate_kind, cfg.top_k) == ("dselect_k", 4)  # DSelect-k's selectors have no cap


@pytest.mark.parametrize(
    "level,message",
    [
        ({"balance_weight": {"choice": [0.01, -1]}}, r"level\.balance_weight: must be >= 0, got -1"),
        ({"smooth_step_gamma": 0}, r"level\.smooth_step_gamma: must be > 0, got 0"),
        ({"balance_weight": [1, 2]}, r"level\.balance_weight: needs numbers"),
        ({"gate_kind": {"choice": ["softmax", "dselect"]}}, r"level\.gate_kind: unknown choice 'dselect'"),
    ],
)
def test_search_space_rejects_bad_gate_settings_naming_the_key(level, message):
    with pytest.raises(UserError, match=message):
        SearchSpace.from_dict({"level": level})


def test_wide_space_searches_every_gate_kind_and_builds():
    from pathlib import Path

    space = SearchSpace.load(Path(__file__).resolve().parents[1] / "search_spaces" / "wide.yaml")
    assert set(space.level["gate_kind"].values()) == {"softmax", "topk", "none", "dselect_k", "noisy_top_k"}
    assert space.check_feasible(InputSpec(n_numeric=D_IN), TWO_TASKS, "fixed", draws=50) > 0.5


# ---- trainer, utilisation, export -----------------------------------------------------------


def _noisy_experiment(data, balance_weight: float):
    cfg = experiment(data, "mmoe", epochs=1)
    level = replace(cfg.model.levels[0], gate_kind="noisy_top_k", top_k=2, balance_weight=balance_weight)
    return replace(cfg, model=replace(cfg.model, levels=(level,)))


def test_the_trainer_backpropagates_the_auxiliary_loss_every_batch(monkeypatch, caplog):
    data = binary_data(n=800)
    seen = {"calls": 0, "backward": 0, "values": []}
    original = MTLNetwork.auxiliary_loss

    def spy(self):
        aux = original(self)
        seen["calls"] += 1
        if aux is not None:
            seen["values"].append(aux.item())
            aux.register_hook(lambda g: seen.__setitem__("backward", seen["backward"] + 1))
        return aux

    monkeypatch.setattr(MTLNetwork, "auxiliary_loss", spy)
    cfg = _noisy_experiment(data, 0.5)
    with caplog.at_level(logging.DEBUG, logger="mtlsearch.train._fit"):
        result = fit(cfg, data, progress=False)
    batches = math.ceil(len(data.train) / cfg.training.batch_size)
    assert seen["calls"] == batches and seen["backward"] == batches
    assert all(v > 0 for v in seen["values"])
    logged = [r.getMessage() for r in caplog.records if "auxiliary loss" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("epoch 1: gates' auxiliary loss ")
    # the same seed gives the same bits with the noise drawn from the seeded global RNG
    again = fit(cfg, data, progress=False)
    pairs = zip(result.model.parameters(), again.model.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    # and the loss changes the update: without it the gate ends elsewhere
    plain = fit(_noisy_experiment(data, 0.0), data, progress=False)
    assert not torch.equal(result.model.levels[0].gates[0].weight, plain.model.levels[0].gates[0].weight)


def _split(n: int = 64) -> TensorSplit:
    gen = torch.Generator().manual_seed(0)
    ones = torch.ones(n, dtype=torch.bool)
    return TensorSplit(
        torch.randn(n, D_IN, generator=gen),
        torch.zeros(n, 0, dtype=torch.long),
        {"a": torch.ones(n), "b": torch.zeros(n)},
        {"a": ones, "b": ones.clone()},
    )


@pytest.mark.parametrize("kind", ["dselect_k", "noisy_top_k"])
def test_utilisation_and_routing_share_of_the_new_gates(kind):
    cfg = ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=TWO_TASKS,
        levels=(LevelConfig(n_shared=3, n_specific=(1, 1), expert_hidden=(4,), gate_kind=kind, top_k=2),),
        towers=(TowerConfig(),) * 2,
    )
    model = build_model(cfg, seed=0)
    for i, g in enumerate(model.levels[0].gates):
        _randomise(g, 1.0, seed=20 + i)
    evaluator = Evaluator(_split(), TWO_TASKS)
    util, share = evaluator.utilisation(model), evaluator.routing_share(model)
    util = {k: v for k, v in util.items() if k != "level0/dead_units"}  # HoME's diagnostic, not a gate
    assert set(util) == set(share) == {"level0/task:a", "level0/task:b"}
    assert list(util["level0/task:a"]) == ["a/0", "shared/0", "shared/1", "shared/2"]
    for gate in util:
        assert sum(util[gate].values()) == pytest.approx(1.0, abs=1e-6)
        if kind == "noisy_top_k":  # every row is routed to exactly 2 experts, without noise
            assert sum(share[gate].values()) == pytest.approx(2.0)
        assert all(0.0 <= v <= 1.0 for v in share[gate].values())


@pytest.mark.parametrize("kind", ["dselect_k", "noisy_top_k"])
def test_a_network_with_the_new_gates_exports_and_predicts_like_eval(kind, tmp_path):
    from mtlsearch.tracking import ServingModel, save_serving, serving_input, serving_schema

    level = {"n_shared": 3, "n_specific": (1, 1), "expert_hidden": (4,), "gate_kind": kind, "top_k": 2}
    cfg = ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=TWO_TASKS,
        levels=(LevelConfig(**level, shared_gate=True), LevelConfig(**level)),
        towers=(TowerConfig(),) * 2,
    )
    network = build_model(cfg, seed=0)
    for lv in network.levels:
        for i, g in enumerate(lv.gates):
            _randomise(g, 1.0, seed=30 + i)
    network.train()(torch.randn(16, D_IN), NO_CODES)  # leaves a training-mode loss behind
    network.eval()
    model = ServingModel(network)
    x = serving_input(torch.randn(10, D_IN), torch.zeros(10, 0, dtype=torch.long))
    path = save_serving(model, x, serving_schema(network), tmp_path / "serving")
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(program(x[:3]), model(x)[:3], rtol=1e-5, atol=1e-6)
