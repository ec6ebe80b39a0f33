"""Training on a CUDA device (issue 13): skipped where no GPU is present.

Run on a GPU machine with ``pytest -q tests/test_gpu.py``. CPU and CUDA float32 runs are
not bitwise equal (other kernels, other summation orders; see README "GPUs and mixed
precision"), so they are compared within a tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from _train_support import binary_data, experiment, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.train import LossWeightingConfig, fit, resolve_device
from mtlsearch.train import _fit as fit_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _finite(result) -> bool:
    return all(math.isfinite(v) for metrics in result.valid.values() for v in metrics.values())


def test_auto_picks_cuda_and_a_missing_index_is_refused():
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match=rf"^--device cuda:{count}: only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_cuda_fp32_is_close_to_cpu():
    """Tolerance: the same seed and data on CPU and CUDA differ only by kernel rounding
    (float32 matmuls, TF32 off by torch's default); 3 epochs keep AUCs within 0.01 and
    loglosses within 0.02 of each other."""
    data = binary_data()
    cpu = fit(experiment(data, device="cpu"), data, progress=False)
    gpu = fit(experiment(data, device="cuda"), data, progress=False)
    assert (cpu.device, gpu.device) == ("cpu", "cuda:0")
    for task in ("a", "b"):
        assert abs(gpu.valid[task]["auc"] - cpu.valid[task]["auc"]) < 0.01
        assert abs(gpu.valid[task]["logloss"] - cpu.valid[task]["logloss"]) < 0.02
    assert next(gpu.model.parameters()).device.type == "cuda"


@pytest.mark.parametrize(
    ("precision", "method"),
    [("bf16", "fixed"), ("fp16", "fixed"), ("fp16", "uncertainty"), ("fp16", "gls"), ("bf16", "famo")],
)
def test_mixed_precision_fits_finish_with_finite_metrics(precision, method):
    if method == "famo":
        pytest.importorskip("torchjd", reason="famo needs torchjd (the balancing extra)")
    data = binary_data(n=2000)
    cfg = experiment(
        data, device="cuda", precision=precision, loss_weighting=LossWeightingConfig(method=method)
    )
    result = fit(cfg, data, progress=False)
    assert (result.device, result.precision) == ("cuda:0", precision)
    assert _finite(result), result.valid
    assert all(0.6 < result.valid[t]["auc"] <= 1.0 for t in ("a", "b")), result.valid


def test_the_data_of_a_fit_is_on_the_gpu(monkeypatch):
    seen = []
    original = fit_module.split_to

    def spy(split, device):
        moved = original(split, device)
        seen.append({t.device.type for t in (moved.numeric, moved.categorical, *moved.labels.values())})
        return moved

    monkeypatch.setattr(fit_module, "split_to", spy)
    data = binary_data(n=1000)
    fit(experiment(data, device="cuda", epochs=1), data, progress=False)
    assert seen == [{"cuda"}, {"cuda"}, {"cuda"}]  # train, valid, test
