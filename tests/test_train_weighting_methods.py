"""Loss-level task balancing: DWA, RLW, GLS and GradNorm, each against its equation written
out by hand, with masked tasks, inside ``fit``, and with bad options."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from _train_support import binary_data, experiment, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.arch import InputSpec, TaskSpec, build_model, preset
from mtlsearch.data import TensorSplit
from mtlsearch.train import LossWeightingConfig, TrainConfig, fit, make_loss_weighting
from mtlsearch.train._fit import _masked_losses
from mtlsearch.train._weighting import shared_expert_layer

TWO = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))
THREE = (*TWO, TaskSpec("c", "regression"))
NEW_METHODS = ("dwa", "rlw", "gls", "gradnorm")


def _weighting(method: str, tasks=THREE, **options):
    return make_loss_weighting(LossWeightingConfig(method=method, options=options), tasks)


def _leaves(*values: float) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(v, requires_grad=True) for n, v in zip("abc", values, strict=False)}


# ---- DWA ----------------------------------------------------------------------------------


def test_dwa_weights_follow_the_loss_ratio_of_the_two_previous_epochs():
    dwa = _weighting("dwa", temperature=0.5)
    epochs = [
        {"a": 0.8, "b": 0.6, "c": math.nan},  # c had no row in this epoch
        {"a": 0.4, "b": 0.5, "c": 2.0},
        {"a": 0.3, "b": 0.45, "c": 1.0},
    ]
    seen = []
    for t, losses in enumerate(epochs):
        dwa.start_epoch(t)
        seen.append(dwa.current_weights())
        dwa.end_epoch(losses)
    dwa.start_epoch(3)
    seen.append(dwa.current_weights())
    assert seen[0] == seen[1] == {"a": 1.0, "b": 1.0, "c": 1.0}  # the first two epochs
    # epoch 2: r = L(1) / L(0); c's L(0) is NaN, so its ratio is 1
    r = [0.4 / 0.8, 0.5 / 0.6, 1.0]
    e = [math.exp(x / 0.5) for x in r]
    expected2 = [3 * x / sum(e) for x in e]
    assert [seen[2][n] for n in "abc"] == pytest.approx(expected2, rel=1e-12)
    # epoch 3: r = L(2) / L(1), all defined now
    r = [0.3 / 0.4, 0.45 / 0.5, 1.0 / 2.0]
    e = [math.exp(x / 0.5) for x in r]
    expected3 = [3 * x / sum(e) for x in e]
    assert [seen[3][n] for n in "abc"] == pytest.approx(expected3, rel=1e-12)
    assert sum(expected3) == pytest.approx(3.0)
    # the total of a batch is sum_k w_k L_k, and each L_k's gradient is its weight
    losses = _leaves(0.7, 0.2, 1.5)
    total = dwa.backward(losses, {"a": 8, "b": 8, "c": 8})
    assert total.item() == pytest.approx(sum(w * v for w, v in zip(expected3, (0.7, 0.2, 1.5), strict=True)))
    assert [losses[n].grad.item() for n in "abc"] == pytest.approx(expected3)


def test_dwa_default_temperature_is_two():
    dwa = _weighting("dwa", tasks=TWO)
    dwa.end_epoch({"a": 1.0, "b": 1.0})
    dwa.end_epoch({"a": 0.5, "b": 1.0})
    dwa.start_epoch(2)
    w = dwa.current_weights()
    ea, eb = math.exp(0.5 / 2.0), math.exp(1.0 / 2.0)
    assert (w["a"], w["b"]) == pytest.approx((2 * ea / (ea + eb), 2 * eb / (ea + eb)))


# ---- RLW ----------------------------------------------------------------------------------


def test_rlw_weights_are_a_softmax_of_a_normal_draw_from_the_global_rng():
    rlw = _weighting("rlw")
    values = (0.7, 0.2, 1.5)
    torch.manual_seed(11)
    z = torch.randn(3)
    w = [math.exp(x) / sum(math.exp(y) for y in z.tolist()) for x in z.tolist()]
    torch.manual_seed(11)
    losses = _leaves(*values)
    total = rlw.backward(losses, {"a": 4, "b": 4, "c": 4})
    assert total.item() == pytest.approx(sum(wk * v for wk, v in zip(w, values, strict=True)), rel=1e-6)
    assert [losses[n].grad.item() for n in "abc"] == pytest.approx(w, rel=1e-6)
    # the next batch draws fresh weights; they still sum to 1
    again = _leaves(*values)
    rlw.backward(again, {"a": 4, "b": 4, "c": 4})
    w2 = [again[n].grad.item() for n in "abc"]
    assert w2 != pytest.approx(w) and sum(w2) == pytest.approx(1.0)
    assert rlw.current_weights() == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


# ---- GLS ----------------------------------------------------------------------------------


def test_gls_is_the_geometric_mean_of_the_present_tasks():
    gls = _weighting("gls")
    losses = _leaves(0.5, 2.0, 0.8)
    total = gls.backward(losses, {"a": 3, "b": 3, "c": 3})
    expected = (0.5 * 2.0 * 0.8) ** (1 / 3)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # d/dL_k (prod L)^(1/K) = L / (K L_k)
    grads = [losses[n].grad.item() for n in "abc"]
    assert grads == pytest.approx([expected / (3 * v) for v in (0.5, 2.0, 0.8)], rel=1e-6)

    # b has no row: its zero loss must leave the product, not zero it
    base = torch.tensor(3.0, requires_grad=True)
    masked = {
        "a": torch.tensor(0.5, requires_grad=True),
        "b": base * 0.0,
        "c": torch.tensor(0.8, requires_grad=True),
    }
    total = gls.backward(masked, {"a": 3, "b": 0, "c": 3})
    expected = (0.5 * 0.8) ** 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert masked["a"].grad.item() == pytest.approx(expected / (2 * 0.5), rel=1e-6)
    assert base.grad.item() == 0.0  # in the graph (a zero gradient, as under the sum), not None


def test_gls_zero_loss_gives_a_zero_total_and_finite_gradients():
    gls = _weighting("gls", tasks=TWO)
    losses = _leaves(0.0, 2.0)
    total = gls.backward(losses, {"a": 3, "b": 3})
    assert 0.0 <= total.item() < 1e-15  # sqrt(smallest float * 2), not NaN
    assert all(math.isfinite(losses[n].grad.item()) for n in "ab")


def test_gls_reports_its_gradient_weights_at_the_epoch_losses():
    gls = _weighting("gls", tasks=TWO)
    assert gls.current_weights() == {"a": 0.5, "b": 0.5}
    gls.end_epoch({"a": 0.25, "b": 1.0})
    g = (0.25 * 1.0) ** 0.5
    assert gls.current_weights() == pytest.approx({"a": g / (2 * 0.25), "b": g / (2 * 1.0)})
    gls.end_epoch({"a": math.nan, "b": 1.0})  # undefined: the previous weights stay
    assert gls.current_weights() == pytest.approx({"a": g / (2 * 0.25), "b": g / (2 * 1.0)})


# ---- GradNorm -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level", "experts"),
    [
        ("ple", 1, [4, 5]),  # 2 specific experts per task (0-3), then the 2 shared ones
        ("cgc", 0, [4, 5]),
        ("mmoe", 0, [0, 1, 2, 3]),
        ("omoe", 0, [0, 1, 2, 3]),
        ("ml_mmoe", 1, [0, 1, 2, 3]),
        ("shared_bottom", 0, [0]),
    ],
)
def test_gradnorm_layer_is_the_top_shared_expert_output_layer(name, level, experts):
    model = build_model(preset(name, InputSpec(n_numeric=3), TWO, expert_hidden=(5, 4), tower=(3,)), seed=0)
    weight, idx, lv = shared_expert_layer(model)
    assert lv == level and idx.tolist() == experts
    assert weight is model.levels[level].experts.weights[-1]
    assert tuple(weight.shape[1:]) == (5, 4)  # the output layer of (5, 4) experts


def test_gradnorm_refuses_a_network_that_shares_nothing():
    model = build_model(preset("single_task", InputSpec(n_numeric=3), TWO, expert_hidden=(4,)), seed=0)
    gn = _weighting("gradnorm", tasks=TWO)
    with pytest.raises(UserError) as err:
        gn.attach(model)
    msg = str(err.value)
    assert msg.startswith("training.loss_weighting.method:") and "\n" not in msg


def _batch_losses(model, split: TensorSplit, tasks=TWO):
    full = {t.name: bool(split.masks[t.name].all()) for t in tasks}
    return _masked_losses(model(split.numeric, split.categorical), split, tasks, full)


def test_gradnorm_update_by_hand():
    torch.manual_seed(0)
    data = binary_data(n=400)
    model = build_model(experiment(data, "ple").model, seed=0)
    twin = copy.deepcopy(model)
    gn = _weighting("gradnorm", tasks=TWO, alpha=0.5)
    gn.attach(model)
    # only w is the method's parameter: the shared layer stays the model's alone
    assert list(gn.parameters()) == [gn.weight]
    W = model.levels[1].experts.weights[-1]  # top level; experts 4 and 5 are the shared ones
    shared = [4, 5]

    def by_hand(w, losses, initial):
        """The GradNorm gradient of w, written out."""
        norms = []
        for n in "ab":
            (g,) = torch.autograd.grad(losses[n], W, retain_graph=True)
            norms.append(math.sqrt(sum(float((g[e] ** 2).sum()) for e in shared)))
        G = [w[k] * norms[k] for k in range(2)]
        ratio = [losses[n].item() / initial[k] for k, n in enumerate("ab")]
        r = [x / (sum(ratio) / 2) for x in ratio]
        target = [(sum(G) / 2) * r[k] ** 0.5 for k in range(2)]
        balance = sum(abs(G[k] - target[k]) for k in range(2))
        return [math.copysign(norms[k], G[k] - target[k]) for k in range(2)], balance

    batches = [data.train.take(slice(0, 64)), data.train.take(slice(64, 128))]
    # batch 1 from w = (0.5, 2.5): renormalised to K w / sum w = (1/3, 5/3) first
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([0.5, 2.5]))
    losses, counts = _batch_losses(model, batches[0])
    initial = [losses[n].item() for n in "ab"]
    w = [2 * 0.5 / 3.0, 2 * 2.5 / 3.0]
    expected_w_grad, balance = by_hand(w, losses, initial)
    total = gn.backward(losses, counts)
    assert gn.last_balance_loss.item() == pytest.approx(balance, rel=1e-5)
    assert gn.weight.tolist() == pytest.approx(w, rel=1e-6)
    assert total.item() == pytest.approx(w[0] * initial[0] + w[1] * initial[1], rel=1e-6)
    assert gn.weight.grad.tolist() == pytest.approx(expected_w_grad, rel=1e-5)
    # the network's gradient is that of sum_k w_k L_k with w a constant
    twin_losses, _ = _batch_losses(twin, batches[0])
    (w[0] * twin_losses["a"] + w[1] * twin_losses["b"]).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.allclose(p.grad, q.grad, atol=1e-7)

    # batch 2 after a manual step on w: r_k uses the first batch's losses L_k(0)
    with torch.no_grad():
        gn.weight.sub_(0.1 * gn.weight.grad)
    w = (2 * gn.weight / gn.weight.sum()).tolist()
    gn.weight.grad = None
    losses, counts = _batch_losses(model, batches[1])
    expected_w_grad, balance = by_hand(w, losses, initial)
    gn.backward(losses, counts)
    assert gn.last_balance_loss.item() == pytest.approx(balance, rel=1e-5)
    assert gn.weight.tolist() == pytest.approx(w, rel=1e-6)
    assert sum(gn.weight.tolist()) == pytest.approx(2.0)
    assert gn.weight.grad.tolist() == pytest.approx(expected_w_grad, rel=1e-5)
    assert gn.current_weights() == pytest.approx(dict(zip("ab", w, strict=True)), rel=1e-6)


def test_gradnorm_with_one_task_is_the_plain_loss():
    task = (TaskSpec("a", "binary"),)
    model = build_model(preset("single_task", InputSpec(n_numeric=3), task, expert_hidden=(4,)), seed=0)
    gn = _weighting("gradnorm", tasks=task)
    gn.attach(model)  # nothing to balance, nothing needed
    loss = model(torch.randn(8, 3), torch.zeros(8, 0, dtype=torch.long))["a"].pow(2).mean()
    total = gn.backward({"a": loss}, {"a": 8})
    assert total.item() == pytest.approx(loss.item()) and gn.weight.grad is None


# ---- every method: masked tasks, fit, options ---------------------------------------------


@pytest.mark.parametrize("method", NEW_METHODS)
def test_a_task_with_no_row_in_the_batch_gives_no_nan(method):
    data = binary_data(n=400)
    model = build_model(experiment(data, "ple").model, seed=0)
    gn = _weighting(method, tasks=TWO)
    gn.attach(model)
    for t in range(3):  # epochs 0-2: DWA's weights take their first ratio at epoch 2
        gn.start_epoch(t)
        batch = data.train.take(slice(64 * t, 64 * (t + 1)))
        if t == 2:  # b has no row in this batch
            batch = TensorSplit(
                batch.numeric,
                batch.categorical,
                batch.labels,
                {**batch.masks, "b": torch.zeros(64, dtype=torch.bool)},
            )
        model.zero_grad(set_to_none=True)
        gn.zero_grad(set_to_none=True)
        losses, counts = _batch_losses(model, batch)
        total = gn.backward(losses, counts)
        assert math.isfinite(total.item())
        grads = [p.grad for p in [*model.parameters(), *gn.parameters()] if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        gn.end_epoch({n: losses[n].item() if counts[n] else math.nan for n in "ab"})


def _sparse_b(split: TensorSplit, every: int = 40) -> TensorSplit:
    """Task b keeps one row in ``every``: many batches have none of its rows."""
    keep = torch.arange(len(split)) % every == 0
    return TensorSplit(split.numeric, split.categorical, split.labels, {**split.masks, "b": keep})


@pytest.mark.parametrize("method", NEW_METHODS)
def test_fit_is_finite_and_repeatable(method):
    data = binary_data(n=600)
    data = replace(data, train=_sparse_b(data.train))
    cfg = experiment(data, "ple", epochs=3, batch_size=32, loss_weighting=LossWeightingConfig(method=method))
    r1 = fit(cfg, data, progress=False)
    r2 = fit(cfg, data, progress=False)
    h1 = [h.to_dict() for h in r1.history]
    assert h1 == [h.to_dict() for h in r2.history] and r1.test == r2.test
    assert all(math.isfinite(v) for ms in r1.test.values() for v in ms.values())
    assert all(math.isfinite(h.train_loss) for h in r1.history)
    weights = [h.loss_weights for h in r1.history]
    if method == "gradnorm":  # w is learned (the optimiser steps it) and sums to K
        assert weights[-1] != {"a": 1.0, "b": 1.0}
        assert sum(weights[-1].values()) == pytest.approx(2.0)
    if method == "dwa":
        assert weights[0] == weights[1] == {"a": 1.0, "b": 1.0} != weights[2]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"method": "dwa", "temperature": -1}, "temperature"),
        ({"method": "dwa", "temperature": 0}, "temperature"),
        ({"method": "gls", "temperature": 2}, "temperature"),
        ({"method": "rlw", "alpha": 1.5}, "alpha"),
        ({"method": "gradnorm", "alpha": -0.5}, "alpha"),
        ({"method": "gradnorm", "alpha": "strong"}, "alpha"),
        ({"method": "gradnorm", "weights": {"a": 2.0}}, "weights"),
    ],
)
def test_bad_options_name_the_key_on_one_line(raw, key):
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict({"loss_weighting": raw})
    msg = str(err.value)
    assert msg.startswith(f"training.loss_weighting.{key}:") and "\n" not in msg


def test_options_round_trip_through_yaml_dicts():
    cfg = TrainConfig.from_dict({"loss_weighting": {"method": "gradnorm", "alpha": 0.5}})
    assert cfg.loss_weighting.option("alpha") == 0.5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert LossWeightingConfig(method="dwa").option("temperature") == 2.0
