"""The masked joint loss and the pluggable loss weightings."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from _train_support import binary_data, experiment, one_thread  # noqa: F401
from sklearn.metrics import roc_auc_score

from mtlsearch.arch import TaskSpec, build_model
from mtlsearch.data import TensorSplit
from mtlsearch.train import (
    LOSS_WEIGHTINGS,
    DynamicWeighting,
    LossWeighting,
    LossWeightingConfig,
    TrainConfig,
    fit,
    make_loss_weighting,
    register_loss_weighting,
)
from mtlsearch.train._evaluate import raw_outputs
from mtlsearch.train._fit import _masked_losses

TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "binary"))


def _mask_b(split: TensorSplit, keep_every: int = 3) -> TensorSplit:
    """Task b keeps one row in ``keep_every`` (its sample space); a keeps all."""
    keep = torch.arange(len(split)) % keep_every == 0
    return TensorSplit(split.numeric, split.categorical, split.labels, {**split.masks, "b": keep})


def _scramble_masked(split: TensorSplit) -> TensorSplit:
    """Change every masked label of b: flip it, and make some NaN."""
    y = split.labels["b"].clone()
    out = ~split.masks["b"]
    y[out] = 1.0 - y[out]
    y[out & (torch.arange(len(split)) % 2 == 0)] = math.nan
    return TensorSplit(split.numeric, split.categorical, {**split.labels, "b": y}, split.masks)


def test_masked_rows_do_not_reach_the_loss_or_its_gradient():
    data = binary_data(n=600)
    batch = _mask_b(data.train)
    model = build_model(experiment(data).model, seed=0)
    full = {"a": True, "b": False}

    def loss_and_grads(split):
        model.zero_grad()
        losses, counts = _masked_losses(model(split.numeric, split.categorical), split, TASKS, full)
        (losses["a"] + losses["b"]).backward()
        return losses, counts, [p.grad.clone() for p in model.parameters()]

    l1, c1, g1 = loss_and_grads(batch)
    l2, _, g2 = loss_and_grads(_scramble_masked(batch))
    assert c1["b"] == int(batch.masks["b"].sum()) < len(batch)
    assert torch.equal(l1["b"], l2["b"]) and torch.equal(l1["a"], l2["a"])
    assert all(torch.equal(x, y) for x, y in zip(g1, g2, strict=True))
    # L_b is the mean over b's sample space only (PLE eq. 6), not over the batch
    out = model(batch.numeric, batch.categorical)["b"][batch.masks["b"]]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out, batch.labels["b"][batch.masks["b"]])
    assert torch.allclose(l1["b"], expected)


def test_changing_masked_labels_changes_nothing_in_training_or_metrics():
    data = binary_data(n=1200)
    splits = ("train", "valid", "test")
    masked = replace(data, **{s: _mask_b(getattr(data, s)) for s in splits})
    scrambled = replace(masked, **{s: _scramble_masked(getattr(masked, s)) for s in splits})
    cfg = experiment(data, "mmoe", epochs=2)
    r1 = fit(cfg, masked, progress=False)
    r2 = fit(cfg, scrambled, progress=False)
    assert [h.to_dict() for h in r1.history] == [h.to_dict() for h in r2.history]
    assert r1.test == r2.test
    # and the metric is b's AUC on its own sample space, not pooled over all rows
    rows = masked.valid.masks["b"]
    p = torch.sigmoid(raw_outputs(r1.model, masked.valid.numeric, masked.valid.categorical)["b"])
    expected = roc_auc_score(masked.valid.labels["b"][rows].numpy(), p[rows].double().numpy())
    assert r1.valid["b"]["auc"] == pytest.approx(expected, abs=1e-12)


def test_dynamic_weights_follow_the_formula():
    cfg = LossWeightingConfig("dynamic", weights={"a": 2.0, "b": 0.5}, gamma={"a": 0.8, "b": 1.25})
    weighting = make_loss_weighting(cfg, TASKS)
    assert isinstance(weighting, DynamicWeighting)
    for t in range(5):
        weighting.start_epoch(t)
        assert weighting.current_weights() == pytest.approx({"a": 2.0 * 0.8**t, "b": 0.5 * 1.25**t})
        losses = {"a": torch.tensor(0.3), "b": torch.tensor(1.7)}
        expected = 2.0 * 0.8**t * 0.3 + 0.5 * 1.25**t * 1.7
        assert float(weighting(losses)) == pytest.approx(expected, rel=1e-6)


def test_the_loop_applies_the_schedule_each_epoch():
    data = binary_data(n=800)
    lw = LossWeightingConfig("dynamic", weights={"a": 1.0, "b": 3.0}, gamma={"a": 1.0, "b": 0.5})
    result = fit(experiment(data, "cgc", epochs=3, loss_weighting=lw), data, progress=False)
    for report in result.history:
        t = report.epoch
        assert report.loss_weights == pytest.approx({"a": 1.0, "b": 3.0 * 0.5**t})
        # with no masked rows the epoch's loss is exactly the weighted sum of task losses
        weighted = sum(report.loss_weights[k] * report.task_losses[k] for k in ("a", "b"))
        assert report.train_loss == pytest.approx(weighted, rel=1e-6)


def test_uncertainty_weighting_learns_its_log_variances():
    tasks = (TaskSpec("a", "binary"), TaskSpec("r", "regression"))
    w = make_loss_weighting(LossWeightingConfig("uncertainty"), tasks)
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.5, -1.0]))
    total = w({"a": torch.tensor(2.0), "r": torch.tensor(3.0)})
    # Kendall et al.: classification e^-s L + s/2; regression e^-s L / 2 + s/2
    expected = math.exp(-0.5) * 2.0 + 0.25 + 0.5 * math.exp(1.0) * 3.0 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert w.log_var.grad is not None and torch.all(w.log_var.grad != 0)

    data = binary_data(n=800)
    lw = LossWeightingConfig("uncertainty")
    result = fit(experiment(data, "mmoe", epochs=2, loss_weighting=lw), data, progress=False)
    first, last = result.history[0].loss_weights, result.history[-1].loss_weights
    assert first == pytest.approx({"a": 1.0, "b": 1.0})  # log-variances start at 0
    assert last != first  # the optimiser moved them


def test_a_new_weighting_method_plugs_in_without_touching_the_loop():
    calls: list[int] = []

    @register_loss_weighting("main_task_only")
    class MainOnly(LossWeighting):
        def start_epoch(self, epoch: int) -> None:
            calls.append(epoch)

        def forward(self, losses):
            return losses[self.task_names[0]] + 0.0 * losses[self.task_names[1]]

        def current_weights(self):
            return {self.task_names[0]: 1.0, self.task_names[1]: 0.0}

    try:
        data = binary_data(n=800)
        cfg = experiment(
            data, "shared_bottom", epochs=2, loss_weighting=LossWeightingConfig("main_task_only")
        )
        result = fit(cfg, data, progress=False)
        assert calls == [0, 1]
        assert result.history[-1].train_loss == pytest.approx(result.history[-1].task_losses["a"])
        assert TrainConfig.from_dict(cfg.training.to_dict()) == cfg.training
    finally:
        LOSS_WEIGHTINGS.pop("main_task_only")
