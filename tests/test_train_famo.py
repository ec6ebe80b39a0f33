"""FAMO (Liu et al., NeurIPS 2023) through torchjd: the scalarised loss and the logit update
against the paper's equations written out by hand, a masked task, and inside ``fit``."""

from __future__ import annotations

import math

import pytest
import torch
from _train_support import one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.arch import TaskSpec, preset
from mtlsearch.data import make_synthetic
from mtlsearch.train import ExperimentConfig, LossWeightingConfig, TrainConfig, fit, make_loss_weighting

TWO = (TaskSpec("a", "regression"), TaskSpec("b", "regression"))
EPS = 1e-8  # torchjd's _EPSILON


def _famo(**options):
    return make_loss_weighting(LossWeightingConfig(method="famo", options=options), TWO)


def test_the_network_gets_the_gradient_of_c_sum_z_log_loss():
    famo = _famo()
    with torch.no_grad():
        famo.famo._w.copy_(torch.tensor([0.3, -0.2]))
    la = torch.tensor(0.8, requires_grad=True)
    lb = torch.tensor(2.5, requires_grad=True)
    total = famo.backward({"a": la, "b": lb}, {"a": 4, "b": 4})
    z = [math.exp(0.3) / (math.exp(0.3) + math.exp(-0.2)), math.exp(-0.2) / (math.exp(0.3) + math.exp(-0.2))]
    c = 1.0 / (z[0] / (0.8 + EPS) + z[1] / (2.5 + EPS))
    assert total.item() == pytest.approx(c * (z[0] * math.log(0.8) + z[1] * math.log(2.5)), rel=1e-5)
    # d/dL_k of c z_k log L_k (c a constant) = c z_k / L_k: a convex combination of task gradients
    assert la.grad.item() == pytest.approx(c * z[0] / 0.8, rel=1e-5)
    assert lb.grad.item() == pytest.approx(c * z[1] / 2.5, rel=1e-5)
    assert la.grad.item() + lb.grad.item() == pytest.approx(1.0, rel=1e-5)
    assert famo.current_weights() == pytest.approx({"a": z[0], "b": z[1]})


def test_after_the_step_the_logits_move_toward_the_task_that_improved_less():
    famo = _famo(lr=0.1, weight_decay=0.0)
    famo.backward({"a": torch.tensor(1.0, requires_grad=True), "b": torch.tensor(1.0, requires_grad=True)},
                  {"a": 8, "b": 8})  # fmt: skip
    calls = []

    def recompute():
        calls.append(1)
        return {"a": torch.tensor(0.5), "b": torch.tensor(0.9)}  # a improved much more than b

    famo.after_step(recompute)
    assert calls == [1]
    # delta = log L_before - log L_after; grad_w = J_softmax(w)^T delta at w = 0 (z = 1/2):
    # J = diag(z) - z z^T, so grad = z * (delta - z . delta)
    delta = [math.log(1.0) - math.log(0.5), math.log(1.0) - math.log(0.9)]
    mean = 0.5 * delta[0] + 0.5 * delta[1]
    grad = [0.5 * (delta[0] - mean), 0.5 * (delta[1] - mean)]
    # Adam's first step moves each logit by -lr * sign(grad) (bias-corrected m/sqrt(v) = +-1)
    expected = [-0.1 * math.copysign(1.0, g) for g in grad]
    assert famo.famo._w.detach().tolist() == pytest.approx(expected, abs=1e-6)
    w = famo.current_weights()
    assert w["b"] > 0.5 > w["a"]  # more weight on the task that improved less


def test_a_task_with_no_row_uses_the_current_weights_and_skips_the_update():
    famo = _famo()
    la = torch.tensor(0.7, requires_grad=True)
    zero = torch.tensor(0.0, requires_grad=True) * 0.0  # what the trainer gives a task without rows
    total = famo.backward({"a": la, "b": zero}, {"a": 5, "b": 0})
    assert math.isfinite(total.item())
    assert total.item() == pytest.approx(0.7)  # all weight on the one present task
    assert la.grad.item() == pytest.approx(1.0)
    famo.after_step(lambda: pytest.fail("no update, so no extra forward pass"))
    assert famo.famo._w.detach().tolist() == [0.0, 0.0]


def test_fit_with_famo_is_finite_reproducible_and_moves_the_weights():
    data = make_synthetic(n=1200, d=10, correlation=0.5, seed=3)
    config = ExperimentConfig(
        model=preset("mmoe", data.input_spec(), data.tasks, n_experts=3, expert_hidden=(8,), tower=(4,)),
        training=TrainConfig(
            epochs=2, batch_size=128, seed=1, loss_weighting=LossWeightingConfig.from_dict({"method": "famo"})
        ),
    )
    first, second = fit(config, data, progress=False), fit(config, data, progress=False)
    assert first.test == second.test
    assert all(math.isfinite(v) for m in first.test.values() for v in m.values())
    assert first.history[0].loss_weights == {"y1": 0.5, "y2": 0.5}
    assert first.history[1].loss_weights != first.history[0].loss_weights


@pytest.mark.parametrize(("options", "path"), [({"lr": -1}, "lr"), ({"temperature": 2}, "temperature")])
def test_bad_options_name_the_key(options, path):
    with pytest.raises(UserError, match=rf"^training\.loss_weighting\.{path}: "):
        LossWeightingConfig.from_dict({"method": "famo", **options})
