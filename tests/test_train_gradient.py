"""Gradient-level task balancing (``mtlsearch.train._gradient``).

Each method runs on a constructed 2-task problem whose task gradients are known: a model
with one batched "experts" tensor whose row 0 only task ``a`` reaches, row 1 only task
``b``, and row 2 both (a shared expert inside a task-specific tensor, as ``BatchedMLP``
stores them). The losses are linear, so the Jacobian is exact::

    L_a = g1 . experts[2] + u1 . experts[0] + h . head_a
    L_b = g2 . experts[2] + u2 . experts[1]

The update of ``experts[2]`` must have the method's defining property (written out here
with plain tensor ops); ``experts[0]``, ``experts[1]`` and ``head_a`` must get their one
task's gradient.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from _cli import run_main
from _train_support import REPO, binary_data, experiment, one_thread  # noqa: F401
from torch import Tensor, nn

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec, build_model
from mtlsearch.data import TensorSplit
from mtlsearch.train import (
    LOSS_WEIGHTINGS,
    LossWeightingConfig,
    TrainConfig,
    estimate_memory,
    fit,
    load_checkpoint,
    make_loss_weighting,
)
from mtlsearch.train._fit import _masked_losses
from mtlsearch.train._gradient import GradientBalancing

METHODS = (
    "upgrad", "mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g",
    "aligned_mtl", "graddrop", "gradvac", "dualproj", "config", "fairgrad",
)  # fmt: skip
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))
F64 = torch.float64


def vec(*x: float) -> Tensor:
    return torch.tensor(x, dtype=F64)


G1 = vec(1.0, 2.0)
G2 = vec(-3.0, 1.0)  # g1 . g2 = -1: conflict; their mean conflicts with neither
G2_STRONG = vec(-8.0, -1.0)  # the mean conflicts with g1 (mean . g1 = -2.5)
G2_AGREE = vec(2.0, 1.0)  # g1 . g2 = 4: no conflict
U1, U2, H = vec(0.5, -1.0), vec(2.0, 3.0), vec(-0.25, 4.0)


class Toy(nn.Module):
    def __init__(self, n_experts: int = 3) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.zeros(n_experts, 2, dtype=F64))
        self.head_a = nn.Parameter(torch.zeros(2, dtype=F64))


def weighting(method: str, tasks=TASKS, **options):
    return make_loss_weighting(LossWeightingConfig(method=method, options=options), tasks)


def step(method: str, g1: Tensor = G1, g2: Tensor = G2, *, w=None, **options):
    """One ``backward`` on the toy problem; returns (shared row's update, weighting, model)."""
    w = w or weighting(method, **options)
    model = Toy()
    w.attach(model)
    e = model.experts
    losses = {"a": g1 @ e[2] + U1 @ e[0] + H @ model.head_a, "b": g2 @ e[2] + U2 @ e[1]}
    total = w.backward(losses, {"a": 5, "b": 7})
    assert total.item() == 0.0 and not total.requires_grad  # the plain sum, at 0
    return e.grad[2].clone(), w, model


def project_out(g: Tensor, other: Tensor) -> Tensor:
    """``g`` without its component along ``other`` if they conflict (PCGrad's surgery)."""
    return g - min(float(g @ other), 0.0) / float(other @ other) * other


def close(x: Tensor, y: Tensor, tol: float = 1e-6) -> bool:
    return torch.allclose(x, y, atol=tol, rtol=tol)


# ---- registry and the split into shared and task-specific elements ------------------------
def test_every_method_is_registered_as_a_gradient_method_with_its_paper():
    registered = {n for n, c in LOSS_WEIGHTINGS.items() if issubclass(c, GradientBalancing)}
    assert registered == set(METHODS)
    for name in METHODS:
        doc = LOSS_WEIGHTINGS[name].__doc__ or ""
        assert '"' in doc and any(str(y) in doc for y in range(2012, 2026)), name  # a title and a year


@pytest.mark.parametrize("method", METHODS)
def test_task_specific_elements_get_their_own_task_gradient(method):
    torch.manual_seed(0)
    shared, w, model = step(method)
    assert torch.equal(model.experts.grad[0], U1)  # a's expert, inside the batched tensor
    assert torch.equal(model.experts.grad[1], U2)  # b's expert
    assert torch.equal(model.head_a.grad, H)  # a's own tensor
    assert torch.isfinite(shared).all() and not torch.equal(shared, G1 + G2)  # aggregated
    assert w.last_tasks == ("a", "b") and w.last_shared == 2
    weights = w.current_weights()
    assert set(weights) == {"a", "b"} and all(math.isfinite(v) for v in weights.values())


def test_the_cpu_computes_the_jacobian_row_by_row():
    w = weighting("upgrad")
    assert w.vectorised is None
    w.attach(Toy())
    assert w.vectorised is False


def test_gradients_accumulate_into_existing_grads():
    w = weighting("pcgrad")
    model = Toy()
    w.attach(model)
    model.experts.grad = torch.ones(3, 2, dtype=F64)
    e = model.experts
    w.backward({"a": G1 @ e[2] + U1 @ e[0], "b": G2 @ e[2]}, {"a": 1, "b": 1})
    assert torch.equal(model.experts.grad[0], 1 + U1)
    assert torch.equal(model.experts.grad[1], torch.ones(2, dtype=F64))  # no task reaches it


def test_a_non_finite_loss_is_reported_and_never_applied():
    w = weighting("upgrad")
    model = Toy()
    w.attach(model)
    e = model.experts
    total = w.backward({"a": G1 @ e[2] * math.inf, "b": G2 @ e[2] + 1}, {"a": 1, "b": 1})
    assert math.isnan(total.item()) or math.isinf(total.item())
    assert model.experts.grad is None


# ---- each method's defining property --------------------------------------------------------
def test_pcgrad_projected_gradients_no_longer_conflict_and_are_summed():
    shared, _, _ = step("pcgrad")
    p1, p2 = project_out(G1, G2), project_out(G2, G1)
    assert float(p1 @ G2) == pytest.approx(0.0, abs=1e-12)
    assert float(p2 @ G1) == pytest.approx(0.0, abs=1e-12)
    assert close(shared, p1 + p2)  # (0.7, 2.1) + (-2.8, 1.4)
    assert close(shared, vec(-2.1, 3.5))
    # non-conflicting: the plain sum
    assert close(step("pcgrad", G1, G2_AGREE)[0], G1 + G2_AGREE)


def test_mgda_is_the_min_norm_point_of_the_convex_hull():
    shared, w, _ = step("mgda")
    # min over t in [0, 1] of |t g1 + (1 - t) g2|^2
    t = float((G2 - G1) @ G2 / ((G1 - G2) @ (G1 - G2)))
    t = min(max(t, 0.0), 1.0)
    assert close(shared, t * G1 + (1 - t) * G2)
    # optimality: d . g_k >= |d|^2 for every k (equality for both here: an interior point)
    norm2 = float(shared @ shared)
    assert float(shared @ G1) == pytest.approx(norm2, rel=1e-6)
    assert float(shared @ G2) == pytest.approx(norm2, rel=1e-6)
    weights = w.current_weights()
    assert weights["a"] + weights["b"] == pytest.approx(1.0)
    # a hull whose closest point is a vertex (g2 = 2 g1): g1 itself
    assert close(step("mgda", G1, 2 * G1)[0], G1)


# torchjd's dual-cone projector adds 1e-4 to the diagonal of the normalised Gramian (for a
# stable quadratic program), so UPGrad and DualProj are exact to about 1e-3 relative
PROJECTOR_TOL = 5e-3


def _dual_cone_projection(g: Tensor, others: list[Tensor]) -> Tensor:
    """Projection of ``g`` onto {x : x . o >= 0 for every o}, for the 2-D cases here where
    at most one constraint is active (checked)."""
    for o in others:
        if float(g @ o) < 0:
            x = g - float(g @ o) / float(o @ o) * o
            assert all(float(x @ q) >= -1e-12 for q in others)
            return x
    return g


@pytest.mark.parametrize("g2", [G2, G2_STRONG])
def test_upgrad_averages_the_projections_onto_the_dual_cone(g2):
    shared, _, _ = step("upgrad", G1, g2)
    expected = 0.5 * (_dual_cone_projection(G1, [G1, g2]) + _dual_cone_projection(g2, [G1, g2]))
    assert close(shared, expected, PROJECTOR_TOL)
    # conflicts with no task
    assert float(shared @ G1) >= -1e-6 and float(shared @ g2) >= -1e-6
    # non-conflicting: the mean
    assert close(step("upgrad", G1, G2_AGREE)[0], (G1 + G2_AGREE) / 2, 1e-5)


def test_dualproj_projects_the_mean_onto_the_dual_cone():
    mean = (G1 + G2_STRONG) / 2
    assert float(mean @ G1) < 0  # the case where the projection matters
    shared, _, _ = step("dualproj", G1, G2_STRONG)
    assert close(shared, vec(-3.0, 1.5), PROJECTOR_TOL)
    assert close(shared, _dual_cone_projection(mean, [G1, G2_STRONG]), PROJECTOR_TOL)
    # conflicts with no task (a cosine of -1e-3 at worst, from the regularisation)
    for g in (G1, G2_STRONG):
        assert float(shared @ g) >= -PROJECTOR_TOL * float(shared.norm() * g.norm())
    # the mean conflicts with neither task (even though the tasks conflict): the mean
    assert close(step("dualproj")[0], (G1 + G2) / 2, 1e-5)


def test_cagrad_maximises_the_worst_task_improvement_within_its_ball():
    c = 0.5
    shared, _, _ = step("cagrad", c=c)
    g0 = (G1 + G2) / 2
    radius = c * float(g0.norm())
    assert float((shared - g0).norm()) <= radius * (1 + 1e-4)
    # max over the ball of min_k g_k . x is on its boundary: compare with a fine sweep
    angles = torch.linspace(0, 2 * math.pi, 20_000, dtype=F64)
    ring = g0 + radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    best = torch.minimum(ring @ G1, ring @ G2).max()
    assert min(float(shared @ G1), float(shared @ G2)) >= float(best) - 1e-3
    assert min(float(g0 @ G1), float(g0 @ G2)) < float(best) - 0.1  # better than the mean
    # c = 0: the mean
    assert close(step("cagrad", c=0.0)[0], g0, 1e-5)


def test_nash_mtl_gives_every_task_the_same_bargaining_share():
    shared, w, _ = step("nash_mtl", max_norm=0.0, optim_niter=100)
    alpha = torch.tensor([w.current_weights()["a"], w.current_weights()["b"]], dtype=F64)
    assert (alpha > 0).all()
    assert close(shared, alpha[0] * G1 + alpha[1] * G2, 1e-5)
    share = alpha * torch.stack([G1 @ shared, G2 @ shared])  # alpha_k g_k . d
    assert float(share[0]) == pytest.approx(float(share[1]), rel=1e-2)
    # max_norm clips |d|
    clipped, _, _ = step("nash_mtl", max_norm=0.1, optim_niter=100)
    assert float(clipped.norm()) == pytest.approx(0.1, rel=1e-4)


def test_imtl_g_has_equal_projections_on_the_unit_gradients():
    shared, w, _ = step("imtl_g")
    a, b = w.current_weights()["a"], w.current_weights()["b"]
    assert a + b == pytest.approx(1.0)
    assert close(shared, a * G1 + b * G2)
    assert float(shared @ G1 / G1.norm()) == pytest.approx(float(shared @ G2 / G2.norm()), rel=1e-6)


def test_aligned_mtl_makes_the_gradients_orthonormal_at_the_smallest_scale():
    shared, _, _ = step("aligned_mtl")
    jac = torch.stack([G1, G2])
    lam, vecs = torch.linalg.eigh(jac @ jac.T)
    balance = lam.min().sqrt() * vecs @ torch.diag(lam.rsqrt()) @ vecs.T
    aligned = balance @ jac
    assert close(aligned @ aligned.T, lam.min() * torch.eye(2, dtype=F64))  # orthogonal, equal norms
    assert close(shared, aligned.mean(0))
    # already orthogonal with equal norms: the mean
    g2 = vec(-2.0, 1.0)
    assert close(step("aligned_mtl", G1, g2)[0], (G1 + g2) / 2)


def test_graddrop_keeps_one_sign_per_element():
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        shared, _, _ = step("graddrop")
        # element 1: both gradients positive (2 and 1): always their sum
        assert float(shared[1]) == 3.0
        # element 0: 1 and -3 conflict: only the positive or only the negative one survives
        assert float(shared[0]) in (1.0, -3.0)
        seen.add(float(shared[0]))
    assert seen == {1.0, -3.0}
    assert close(step("graddrop", G1, G2_AGREE)[0], G1 + G2_AGREE)  # one sign: the sum


def test_gradvac_starts_as_pcgrad_then_aims_at_the_moving_average_of_the_cosine():
    beta = 0.5
    w = weighting("gradvac", beta=beta)
    first, _, _ = step("gradvac", w=w)
    assert close(first, project_out(G1, G2) + project_out(G2, G1), 1e-6)  # target cosine 0
    # second step, same gradients: target phi_hat = beta * cos(g1, g2) (EMA from 0)
    phi = float(G1 @ G2 / (G1.norm() * G2.norm()))
    target = beta * phi

    def vaccinate(gi: Tensor, gj: Tensor) -> Tensor:  # GradVac, eq. for w (Wang et al. 2021)
        weight = (
            gi.norm() * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
            / (gj.norm() * math.sqrt(1 - target**2))
        )  # fmt: skip
        return gi + weight * gj

    v1, v2 = vaccinate(G1, G2), vaccinate(G2, G1)
    assert float(v1 @ G2 / (v1.norm() * G2.norm())) == pytest.approx(target, rel=1e-9)
    second, _, _ = step("gradvac", w=w)
    assert close(second, v1 + v2, 1e-6)
    assert close(step("gradvac", G1, G2_AGREE)[0], G1 + G2_AGREE)  # no conflict: the sum


def test_config_is_at_equal_angles_to_the_task_gradients():
    shared, w, _ = step("config")
    assert float(shared @ G1 / G1.norm()) == pytest.approx(float(shared @ G2 / G2.norm()), rel=1e-6)
    unit = shared / shared.norm()
    assert float(shared.norm()) == pytest.approx(float(G1 @ unit + G2 @ unit), rel=1e-6)
    assert w.current_weights() == {"a": 1.0, "b": 1.0}  # no weights to report
    g2 = vec(-2.0, 1.0)  # orthogonal, equal norms: the sum
    assert close(step("config", G1, g2)[0], G1 + g2)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_solves_the_alpha_fair_allocation(alpha):
    shared, w, _ = step("fairgrad", alpha=alpha)
    weights = torch.tensor(list(w.current_weights().values()), dtype=F64)
    assert close(shared, weights[0] * G1 + weights[1] * G2)
    # g_k . d = w_k ** (-1 / alpha)
    gains = torch.stack([G1 @ shared, G2 @ shared])
    assert close(gains, weights.pow(-1 / alpha), 1e-4)


def test_fairgrad_alpha_zero_is_the_mean():
    assert close(step("fairgrad", alpha=0.0)[0], (G1 + G2) / 2)


# ---- masked tasks ---------------------------------------------------------------------------
TASKS3 = (*TASKS, TaskSpec("c", "binary"))
G3 = vec(0.5, -4.0)


def _three_task_step(w, counts):
    model = Toy(n_experts=4)
    w.attach(model)
    e = model.experts
    losses = {
        "a": G1 @ e[3] + U1 @ e[0],
        "b": G2 @ e[3] + U2 @ e[1],
        # a task with no row gets a zero loss that still has a graph (as _masked_losses makes)
        "c": (G3 @ e[3] + U2 @ e[2]) * (1.0 if counts["c"] else 0.0),
    }
    total = w.backward(losses, counts)
    return total, model


def test_a_task_absent_from_the_batch_drops_out_of_the_jacobian(monkeypatch):
    seen: list[tuple[int, int]] = []
    built: list[int] = []
    original = GradientBalancing._aggregator

    def spy(self, present):
        aggregator = original(self, present)
        aggregator.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
        return aggregator

    make = LOSS_WEIGHTINGS["gradvac"].make_aggregator

    def counting(self, n_tasks):
        built.append(n_tasks)
        return make(self, n_tasks)

    monkeypatch.setattr(GradientBalancing, "_aggregator", spy)
    monkeypatch.setattr(LOSS_WEIGHTINGS["gradvac"], "make_aggregator", counting)
    w = weighting("gradvac", tasks=TASKS3)
    total, model = _three_task_step(w, {"a": 4, "b": 4, "c": 0})
    assert math.isfinite(total.item()) and torch.isfinite(model.experts.grad).all()
    assert w.last_tasks == ("a", "b") and seen[-1] == (2, 2)  # one row fewer
    assert torch.equal(model.experts.grad[2], torch.zeros(2, dtype=F64))  # c's expert: nothing
    assert close(model.experts.grad[3], project_out(G1, G2) + project_out(G2, G1))
    _three_task_step(w, {"a": 4, "b": 4, "c": 3})
    assert w.last_tasks == ("a", "b", "c") and seen[-1] == (3, 2)
    _three_task_step(w, {"a": 4, "b": 4, "c": 0})
    assert built == [2, 3]  # one stateful aggregator per set of present tasks, each built once


def test_with_one_task_present_the_update_is_its_plain_gradient():
    w = weighting("upgrad", tasks=TASKS3)
    total, model = _three_task_step(w, {"a": 0, "b": 6, "c": 0})
    assert math.isfinite(total.item())
    assert torch.equal(model.experts.grad[3], G2) and torch.equal(model.experts.grad[1], U2)
    assert torch.equal(model.experts.grad[0], torch.zeros(2, dtype=F64))
    assert w.last_tasks == ("b",) and w.last_shared == 0 and not w._aggregators


def test_with_no_task_present_nothing_is_accumulated():
    w = weighting("pcgrad", tasks=TASKS3)
    model = Toy(n_experts=4)
    w.attach(model)
    zero = model.experts.sum() * 0.0
    total = w.backward({"a": zero, "b": zero, "c": zero}, {"a": 0, "b": 0, "c": 0})
    assert total.item() == 0.0 and model.experts.grad is None and w.last_tasks == ()


# ---- on a real network: element-wise sharing inside batched expert tensors ------------------
@pytest.mark.parametrize("vectorised", [False, True])  # m backward passes / one vmapped (torchjd)
def test_pcgrad_on_a_cgc_network_matches_the_surgery_written_out(vectorised):
    data = binary_data(n=600)
    cfg = experiment(data, "cgc")
    model = build_model(cfg.model, seed=0)
    batch = data.train
    full = {"a": True, "b": True}
    params = [p for p in model.parameters() if p.requires_grad]

    def losses():
        return _masked_losses(model(batch.numeric, batch.categorical), batch, TASKS, full)

    la, _ = losses()
    ga = torch.cat([g.flatten() for g in torch.autograd.grad(la["a"], params, allow_unused=True)])
    lb, _ = losses()
    gb = torch.cat([g.flatten() for g in torch.autograd.grad(lb["b"], params, allow_unused=True)])
    shared = (ga != 0) & (gb != 0)
    only_a, only_b = (ga != 0) & (gb == 0), (ga == 0) & (gb != 0)
    assert shared.sum() > 0 and only_a.sum() > 0 and only_b.sum() > 0
    # a task-specific expert's tensor is shared with the other task's and the shared experts
    experts = model.levels[0].experts.weights[0]
    offset = sum(p.numel() for p in params[: next(i for i, p in enumerate(params) if p is experts)])
    cut = slice(offset, offset + experts.numel())
    assert shared[cut].any() and only_a[cut].any() and only_b[cut].any()

    w = weighting("pcgrad")
    w.vectorised = vectorised
    w.attach(model)
    assert w.vectorised is vectorised
    model.zero_grad(set_to_none=True)
    losses_, counts = losses()
    w.backward(losses_, counts)
    got = torch.cat([p.grad.flatten() for p in params])
    s1, s2 = ga[shared], gb[shared]
    expected = project_out(s1, s2) + project_out(s2, s1)
    assert float(s1 @ s2) < 0  # the tasks do conflict on the shared elements here
    assert torch.allclose(got[shared], expected, atol=1e-6, rtol=1e-4)
    assert torch.equal(got[only_a], ga[only_a]) and torch.equal(got[only_b], gb[only_b])
    assert int(shared.sum()) == w.last_shared


# ---- config: options and the optional extra -------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"method": "cagrad", "c": -1}, "training.loss_weighting.c: must be >= 0.0, got -1.0"),
        (
            {"method": "nash_mtl", "update_weights_every": 1.5},
            "training.loss_weighting.update_weights_every: expected an integer, got 1.5",
        ),
        ({"method": "gradvac", "beta": 2}, "training.loss_weighting.beta: must be <= 1.0, got 2.0"),
        ({"method": "pcgrad", "c": 0.5}, "training.loss_weighting.c: not an option of method 'pcgrad'"),
    ],
)
def test_bad_options_name_their_field(raw, message):
    with pytest.raises(UserError) as err:
        LossWeightingConfig.from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["cagrad", "nash_mtl"])
def test_a_method_whose_extra_is_missing_fails_at_config_time(method, monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy -> ImportError
    with pytest.raises(UserError) as err:
        LossWeightingConfig(method=method)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"training.loss_weighting.method: {method!r} needs the optional extra mtlsearch[cvx]"
    )
    assert "cvxpy" in msg
    LossWeightingConfig(method="pcgrad")  # methods without an extra are unaffected


def test_memory_estimate_counts_the_task_jacobian():
    data = binary_data(n=600)
    plain = estimate_memory(experiment(data))
    grad = estimate_memory(experiment(data, loss_weighting=LossWeightingConfig(method="upgrad")))
    assert plain.jacobian_bytes == 0
    assert grad.jacobian_bytes == 2 * 2 * plain.parameter_bytes  # 2 copies x 2 tasks x P
    assert grad.total_bytes - plain.total_bytes == grad.jacobian_bytes
    assert "task Jacobian" in grad.summary() and "task Jacobian" not in plain.summary()


# ---- end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pcgrad", "upgrad"])
def test_fit_a_small_ple_with_a_gradient_method(method):
    data = binary_data(n=1200)
    cfg = experiment(data, epochs=2, loss_weighting=LossWeightingConfig(method=method))
    result = fit(cfg, data, progress=False)
    assert len(result.history) == 2
    for task in ("a", "b"):
        assert all(math.isfinite(v) for v in result.test[task].values())
        assert 0.5 < result.test[task]["auc"] <= 1.0  # it learned something
    assert all(math.isfinite(h.train_loss) for h in result.history)
    assert result.history[0].loss_weights == {"a": 1.0, "b": 1.0}  # before the first step
    assert set(result.history[1].loss_weights) == {"a", "b"}
    # same seed, same numbers (PCGrad draws its projection order from the seeded RNG)
    again = fit(cfg, data, progress=False)
    assert [h.to_dict() for h in again.history] == [h.to_dict() for h in result.history]


def test_fit_with_a_masked_task_absent_from_some_batches(monkeypatch):
    data = binary_data(n=1200)
    keep = torch.zeros(len(data.train), dtype=torch.bool)
    keep[::40] = True  # b has a row in one training row of 40: many batches have none
    train = TensorSplit(
        data.train.numeric, data.train.categorical, data.train.labels, {**data.train.masks, "b": keep}
    )
    rows: list[int] = []
    original = GradientBalancing.backward

    def spy(self, losses, counts):
        total = original(self, losses, counts)
        rows.append(len(self.last_tasks))
        return total

    monkeypatch.setattr(GradientBalancing, "backward", spy)
    cfg = experiment(data, epochs=2, batch_size=32, loss_weighting=LossWeightingConfig(method="upgrad"))
    result = fit(cfg, replace(data, train=train), progress=False)
    assert 1 in rows and 2 in rows  # steps without b, and steps with it
    assert all(math.isfinite(h.train_loss) for h in result.history)
    assert all(math.isfinite(v) for t in ("a", "b") for v in result.test[t].values())


SYNTHETIC = ["--dataset", "synthetic", "--option", "n=1200", "--option", "d=8"]


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    return run_main(monkeypatch, capsys, Path.cwd(), *args)  # restores the signal handlers


@pytest.fixture
def cagrad_config(tmp_path):
    raw = yaml.safe_load((REPO / "examples" / "ple_synthetic.yaml").read_text())
    raw["training"].update(epochs=1, loss_weighting={"method": "cagrad", "c": 0.5})
    path = tmp_path / "ple.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_trains_with_cagrad(cagrad_config, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(cagrad_config), *SYNTHETIC, "--out", str(out_dir), "-q"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "y1" in out and "mse" in out
    saved = load_checkpoint(out_dir).config.training.loss_weighting
    assert saved.method == "cagrad" and saved.options == {"c": 0.5}


def test_cli_without_the_extra_is_one_line_exit_2(cagrad_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(cagrad_config), *SYNTHETIC, "--out", str(out_dir)]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "training.loss_weighting.method: 'cagrad' needs the optional extra mtlsearch[cvx]" in err
    assert not out_dir.exists()


def test_train_config_round_trips_a_gradient_method():
    tc = TrainConfig.from_dict({"loss_weighting": {"method": "nash_mtl", "update_weights_every": 4}})
    assert tc.loss_weighting.to_dict() == {"method": "nash_mtl", "update_weights_every": 4}
    assert TrainConfig.from_dict(tc.to_dict()) == tc
