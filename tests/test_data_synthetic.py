"""The MMoE paper's synthetic generator: the requested correlation, and seeded repeatability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlsearch._errors import UserError
from mtlsearch.data import load_dataset, make_synthetic, synthetic_arrays


@pytest.mark.parametrize("correlation", [-0.5, 0.0, 0.5, 0.9])
def test_linear_parts_correlate_as_requested(correlation: float) -> None:
    arr = synthetic_arrays(n=50_000, d=100, correlation=correlation, seed=11)
    measured = np.corrcoef(arr.linear[:, 0], arr.linear[:, 1])[0, 1]
    assert abs(measured - correlation) < 0.02
    # by construction the weight vectors' cosine is the correlation exactly
    w1, w2 = arr.w
    assert np.dot(w1, w2) / (np.linalg.norm(w1) * np.linalg.norm(w2)) == pytest.approx(correlation, abs=1e-9)


def test_labels_are_linear_part_plus_sines_plus_noise() -> None:
    # With no sine terms and no noise, the labels are the linear parts themselves.
    arr = synthetic_arrays(n=1_000, d=16, correlation=0.3, n_sines=0, noise_std=0.0, seed=2)
    np.testing.assert_allclose(arr.y, arr.linear.astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arr.linear, arr.x.astype(np.float64) @ arr.w.T, rtol=1e-5, atol=1e-5)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_synthetic(n=3_000, d=20, correlation=0.7, seed=5)
    b = make_synthetic(n=3_000, d=20, correlation=0.7, seed=5)
    c = make_synthetic(n=3_000, d=20, correlation=0.7, seed=6)
    for split in ("train", "valid", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert torch.equal(sa.numeric, sb.numeric)
        for task in ("y1", "y2"):
            assert torch.equal(sa.labels[task], sb.labels[task])
    assert not torch.equal(a.train.numeric, c.train.numeric)


def test_load_dataset_forwards_the_generator_options() -> None:
    ds = load_dataset("synthetic", n=2_000, d=12, correlation=0.25, n_sines=3, noise_std=0.05, seed=4)
    ref = make_synthetic(n=2_000, d=12, correlation=0.25, n_sines=3, noise_std=0.05, seed=4)
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 2_000
    assert ds.numeric_features == ref.numeric_features and len(ds.numeric_features) == 12
    assert [t.kind for t in ds.tasks] == ["regression", "regression"]
    assert torch.equal(ds.train.numeric, ref.train.numeric)
    assert torch.equal(ds.test.labels["y2"], ref.test.labels["y2"])
    assert all(bool(m.all()) for m in ds.train.masks.values())


@pytest.mark.parametrize(
    ("options", "named"),
    [({"correlation": 1.5}, "correlation"), ({"corelation": 0.5}, "corelation")],
)
def test_bad_synthetic_options_are_user_errors(options: dict, named: str) -> None:
    with pytest.raises(UserError, match=named) as exc:
        load_dataset("synthetic", n=100, **options)
    assert "\n" not in str(exc.value)


def test_an_unset_seed_means_seed_zero_not_a_random_one() -> None:
    # CLI options left unset arrive as None: the data must still be reproducible
    a = load_dataset("synthetic", n=500, d=4, seed=None)  # type: ignore[arg-type]
    assert torch.equal(a.train.numeric, load_dataset("synthetic", n=500, d=4, seed=0).train.numeric)
