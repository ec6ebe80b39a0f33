"""The MMoE paper's synthetic generator (Ma et al., KDD 2018, section 3.2).

Two regression tasks whose linear parts correlate at exactly ``correlation`` (the cosine of
the two weight vectors); the sine terms make the label correlation much weaker, which is
what lets the generator show the seesaw phenomenon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtlsearch.arch import TaskSpec
from mtlsearch.data._tensors import MTLDataset, TensorSplit


@dataclass(frozen=True)
class SyntheticArrays:
    x: np.ndarray  # (n, d) float32
    y: np.ndarray  # (n, 2) float32 labels
    linear: np.ndarray  # (n, 2) the linear parts w_k^T x
    w: np.ndarray  # (2, d) the task weight vectors


def synthetic_params(
    rng: np.random.Generator, d: int, correlation: float, n_sines: int = 10, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generator's fixed draws, in the paper's order: task weights ``w`` (2, d) with
    cosine ``correlation`` and norm ``scale``, then the sine parameters ``alpha``, ``beta``
    (n_sines,). ``ValueError`` for a correlation outside [-1, 1] or d < 2."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
    if d < 2:
        raise ValueError(f"need d >= 2, got d={d}")
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha = rng.standard_normal(n_sines)
    beta = rng.standard_normal(n_sines)
    return np.stack([w1, w2]), alpha, beta


def synthetic_labels(linear: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``y_k = l_k + sum_i sin(alpha_i l_k + beta_i)`` for linear parts ``linear`` (n, 2),
    before the noise term: the paper's label equation."""
    return linear + np.sin(linear[:, :, None] * alpha + beta).sum(-1)


def synthetic_arrays(
    n: int = 20_000,
    d: int = 100,
    correlation: float = 0.5,
    n_sines: int = 10,
    scale: float = 1.0,
    noise_std: float = 0.1,
    seed: int = 0,
) -> SyntheticArrays:
    """Draw the data by the paper's recipe.

    1. orthogonal unit vectors u1, u2 in R^d; 2. w1 = c u1, w2 = c (p u1 + sqrt(1-p^2) u2);
    3. x ~ N(0, I_d); 4. y_k = w_k^T x + sum_i sin(alpha_i w_k^T x + beta_i) + eps_k with
    alpha_i, beta_i ~ N(0, 1) shared by both tasks and eps_k ~ N(0, 0.01) (std 0.1).
    """
    if n < 1 or d < 2:
        raise ValueError(f"need n >= 1 and d >= 2, got n={n}, d={d}")
    rng = np.random.default_rng(seed)
    w, alpha, beta = synthetic_params(rng, d, correlation, n_sines, scale)
    x = rng.standard_normal((n, d))
    linear = x @ w.T  # (n, 2)
    y = synthetic_labels(linear, alpha, beta) + noise_std * rng.standard_normal((n, 2))
    return SyntheticArrays(x=x.astype(np.float32), y=y.astype(np.float32), linear=linear, w=w)


def make_synthetic(
    n: int = 20_000,
    d: int = 100,
    correlation: float = 0.5,
    n_sines: int = 10,
    scale: float = 1.0,
    noise_std: float = 0.1,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> MTLDataset:
    """The synthetic data as a dataset with tasks ``y1`` and ``y2`` (both regression)."""
    arr = synthetic_arrays(n, d, correlation, n_sines, scale, noise_std, seed)
    n_train = int(split[0] * n)
    n_valid = int(split[1] * n)
    bounds = [(0, n_train), (n_train, n_train + n_valid), (n_train + n_valid, n)]
    tasks = (TaskSpec("y1", "regression"), TaskSpec("y2", "regression"))

    def part(lo: int, hi: int) -> TensorSplit:
        size = hi - lo
        return TensorSplit(
            numeric=torch.from_numpy(arr.x[lo:hi].copy()),
            categorical=torch.zeros(size, 0, dtype=torch.int64),
            labels={t.name: torch.from_numpy(arr.y[lo:hi, i].copy()) for i, t in enumerate(tasks)},
            masks={t.name: torch.ones(size, dtype=torch.bool) for t in tasks},
        )

    return MTLDataset(
        name=f"synthetic(p={correlation})",
        tasks=tasks,
        numeric_features=tuple(f"x{i}" for i in range(d)),
        categorical_features=(),
        train=part(*bounds[0]),
        valid=part(*bounds[1]),
        test=part(*bounds[2]),
        meta={"correlation": correlation, "seed": seed, "n": n, "d": d},
    )
