"""The builder against the PLE paper's equations, the wiring rules, and batched-vs-loop experts."""

from __future__ import annotations

import pytest
import torch

from mtlsearch.arch import (
    ArchConfig,
    BatchedMLP,
    CategoricalFeature,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
    count_parameters,
    preset,
)

D_IN = 6
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))


def _ple(n_levels: int = 2, widths=(5,), n_shared=2, n_specific=(2, 1)) -> ArchConfig:
    levels = tuple(
        LevelConfig(
            n_shared=n_shared,
            n_specific=n_specific,
            expert_hidden=widths,
            shared_gate=i < n_levels - 1,
        )
        for i in range(n_levels)
    )
    return ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=TASKS,
        levels=levels,
        towers=(TowerConfig(hidden=(3,)),) * 2,
    )


def _expert(level, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e of a level by hand: relu(x W_e + b_e), one layer per width."""
    for w, b in zip(level.experts.weights, level.experts.biases, strict=True):
        x = torch.relu(x @ w[e] + b[e, 0])
    return x


def _gate(level, gate: int, x: torch.Tensor, selection: list[int], experts) -> torch.Tensor:
    """PLE eq. (2)-(3): g(x) = softmax(W_g x) . [experts in the selection]."""
    lin = level.gates[gate]
    weights = torch.softmax(x @ lin.weight.T + lin.bias, dim=-1)  # (B, n_sel)
    stacked = torch.stack([experts[e] for e in selection], dim=1)  # (B, n_sel, D)
    return (weights.unsqueeze(-1) * stacked).sum(1)


def _tower(model, task: int, x: torch.Tensor) -> torch.Tensor:
    mlp = model.towers.mlps[0]  # both towers share a shape, so they are one batched group
    member = model.towers.groups[0].index(task)
    h = torch.relu(x @ mlp.weights[0][member] + mlp.biases[0][member, 0])
    return (h @ mlp.weights[1][member] + mlp.biases[1][member, 0]).squeeze(-1)


def test_two_level_ple_matches_paper_equations_by_hand():
    torch.manual_seed(0)
    model = build_model(_ple(), seed=1).eval()
    x = torch.randn(7, D_IN)
    out = model(x, torch.zeros(7, 0, dtype=torch.long))

    # Expert order: a/0, a/1, b/0, shared/0, shared/1.
    sel = {0: [0, 1, 3, 4], 1: [2, 3, 4]}
    every = [0, 1, 2, 3, 4]
    lv0, lv1 = model.levels
    # Level 1 (eq. 2-4): every expert and gate reads x; the shared gate mixes all experts.
    e0 = [_expert(lv0, e, x) for e in range(5)]
    task_in = [_gate(lv0, k, x, sel[k], e0) for k in (0, 1)]
    shared_in = _gate(lv0, 2, x, every, e0)
    # Level 2 (eq. 5, progressive): task k's experts and gate read task k's level-1 output.
    src = [task_in[0], task_in[0], task_in[1], shared_in, shared_in]
    e1 = [_expert(lv1, e, src[e]) for e in range(5)]
    fused = [_gate(lv1, k, task_in[k], sel[k], e1) for k in (0, 1)]
    for k, name in enumerate(("a", "b")):
        torch.testing.assert_close(out[name], _tower(model, k, fused[k]), rtol=1e-5, atol=1e-6)


def test_cgc_task_output_has_no_gradient_from_other_tasks_specific_experts():
    cfg = _ple(n_levels=1)
    model = build_model(cfg, seed=0)
    x = torch.randn(16, D_IN)
    out = model(x, torch.zeros(16, 0, dtype=torch.long))
    out["a"].sum().backward()
    grads = [w.grad for w in model.levels[0].experts.weights]
    # Expert order: a/0, a/1, b/0, shared/0, shared/1 -> b/0 is index 2.
    for g in grads:
        assert torch.count_nonzero(g[2]) == 0
        assert torch.count_nonzero(g[0]) > 0 and torch.count_nonzero(g[3]) > 0


def test_top_level_has_no_shared_gate_and_config_rejects_one():
    model = build_model(_ple(n_levels=2), seed=0)
    names = [s.name for s in model.levels[1].gate_specs]
    assert "shared" not in names
    assert "shared" in [s.name for s in model.levels[0].gate_specs]
    bad = _ple(n_levels=1).to_dict()
    bad["levels"][0]["shared_gate"] = True
    with pytest.raises(ValueError, match=r"levels\[0\]\.shared_gate"):
        ArchConfig.from_dict(bad)


def test_level_two_gate_reads_its_tasks_level_one_output():
    model = build_model(_ple(n_levels=2), seed=0).eval()
    seen = {}

    def grab(module, args, kwargs=None):
        seen.setdefault(id(module), []).append(args[0].detach().clone())

    lv1 = model.levels[1]
    hooks = [lv1.gates[k].register_forward_pre_hook(grab) for k in (0, 1)]
    level0_out = {}
    model.levels[0].register_forward_hook(lambda m, a, o: level0_out.setdefault("o", o))
    x = torch.randn(5, D_IN)
    model(x, torch.zeros(5, 0, dtype=torch.long))
    for h in hooks:
        h.remove()
    tasks_out, _, _ = level0_out["o"]
    for k in (0, 1):
        torch.testing.assert_close(seen[id(lv1.gates[k])][0], tasks_out[k])


def _count_linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


@pytest.mark.parametrize("name", ["mmoe", "omoe", "shared_bottom"])
def test_preset_parameter_counts_follow_their_definitions(name):
    d, h, t, n_exp = 10, 16, 8, 3
    inputs = InputSpec(n_numeric=d)
    cfg = preset(name, inputs, TASKS, n_experts=n_exp, expert_hidden=(h,), tower=(t,))
    towers = 2 * (_count_linear(h, t) + _count_linear(t, 1))
    expected = {
        # n experts d->h, one gate per task d->n, one tower per task h->t->1
        "mmoe": n_exp * _count_linear(d, h) + 2 * _count_linear(d, n_exp) + towers,
        # n experts, a single gate d->n shared by the tasks
        "omoe": n_exp * _count_linear(d, h) + _count_linear(d, n_exp) + towers,
        # one bottom d->h, no gates
        "shared_bottom": _count_linear(d, h) + towers,
    }[name]
    assert count_parameters(build_model(cfg, seed=0)) == expected


def test_single_task_preset_shares_nothing():
    cfg = preset("single_task", InputSpec(n_numeric=D_IN), TASKS, expert_hidden=(8,))
    model = build_model(cfg, seed=0)
    x = torch.randn(4, D_IN)
    model(x, torch.zeros(4, 0, dtype=torch.long))["b"].sum().backward()
    w = model.levels[0].experts.weights[0].grad
    assert torch.count_nonzero(w[0]) == 0 and torch.count_nonzero(w[1]) > 0


@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_experts_equal_a_per_expert_loop(shared_input):
    torch.manual_seed(0)
    mlp = BatchedMLP(5, 7, (11, 4), activation="gelu")
    x = torch.randn(9, 7) if shared_input else torch.randn(5, 9, 7)
    got = mlp(x)
    for e in range(5):
        ref = x if shared_input else x[e]
        for w, b in zip(mlp.weights, mlp.biases, strict=True):
            lin = torch.nn.Linear(w.shape[1], w.shape[2])
            lin.weight.data = w[e].T.clone()
            lin.bias.data = b[e, 0].clone()
            ref = torch.nn.functional.gelu(lin(ref))
        torch.testing.assert_close(got[e], ref, rtol=1e-5, atol=1e-6)


def test_topk_gate_uses_exactly_k_experts_and_sums_to_one():
    cfg = ArchConfig(
        inputs=InputSpec(n_numeric=D_IN),
        tasks=TASKS,
        levels=(
            LevelConfig(
                n_shared=4,
                n_specific=(0, 0),
                expert_hidden=(4,),
                select="shared",
                gate_kind="topk",
                top_k=2,
            ),
        ),
        towers=(TowerConfig(),) * 2,
    )
    _, gates = build_model(cfg, seed=0).forward_with_gates(
        torch.randn(10, D_IN), torch.zeros(10, 0, dtype=torch.long)
    )
    for w in gates.values():
        assert ((w > 0).sum(-1) == 2).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(10))


def test_raw_gate_input_reads_network_input_at_level_two():
    cfg = _ple(n_levels=2).to_dict()
    cfg["levels"][1]["gate_input"] = "raw"
    model = build_model(ArchConfig.from_dict(cfg), seed=0)
    assert model.levels[1].gates[0].in_features == D_IN


def test_categorical_embeddings_and_full_fusion_build_and_run():
    inputs = InputSpec(
        n_numeric=2,
        categorical=(
            CategoricalFeature("c1", 5, 3),
            CategoricalFeature("c2", 9, 3),
            CategoricalFeature("c3", 4, 2),
        ),
    )
    cfg = ArchConfig(
        inputs=inputs,
        tasks=(TaskSpec("a", "binary"), TaskSpec("m", "multiclass", 4)),
        levels=(
            LevelConfig(n_shared=1, n_specific=(1, 2), expert_hidden=(8, 6), select="all", shared_gate=True),
            LevelConfig(n_shared=1, n_specific=(0, 1), expert_hidden=(5,)),
        ),
        towers=(TowerConfig(hidden=(4,)), TowerConfig(hidden=())),
    )
    model = build_model(cfg, seed=0)
    cat = torch.stack([torch.randint(0, c, (3,)) for c in (5, 9, 4)], dim=1)
    out, gates = model.forward_with_gates(torch.randn(3, 2), cat)
    assert out["a"].shape == (3,) and out["m"].shape == (3, 4)
    assert (gates["level0/task:a"] > 0).all()  # 'all' selects every expert of the level
    # Level 1, task a has no own expert: its gate sees only the shared one.
    assert model.expert_names(1) == ["m/0", "shared/0"]
    torch.testing.assert_close(gates["level1/task:a"][:, 1], torch.ones(3))


def test_build_is_pure_and_seeded():
    cfg = _ple()
    state = torch.random.get_rng_state()
    a = build_model(cfg, seed=3).state_dict()
    b = build_model(cfg, seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(cfg, seed=4).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
