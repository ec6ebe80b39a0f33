"""Small datasets and helpers for the training-layer tests (tests/test_train_*.py).

Generated data is built from the MMoE synthetic generator: its two regression labels are
thresholded into binary tasks (or binned into classes), so tasks are learnable and
related, and every test runs in about a second on two cores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtlsearch.arch import TaskSpec, preset
from mtlsearch.data import MTLDataset, TensorSplit, make_synthetic
from mtlsearch.train import ExperimentConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tests share a 2-core machine with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _with_categorical(split: TensorSplit, bins: torch.Tensor) -> TensorSplit:
    # code 0 is the OOV bucket, 1..4 the quartile of x0
    codes = torch.bucketize(split.numeric[:, 0].contiguous(), bins) + 1
    return replace(split, categorical=codes.unsqueeze(1))


def binary_data(n: int = 3000, d: int = 12, seed: int = 0, categorical: bool = True) -> MTLDataset:
    """Two binary tasks ``a`` and ``b`` (the synthetic labels above their training median),
    plus one categorical feature ``c0`` (the quartile of x0, cardinality 5) if asked."""
    base = make_synthetic(n=n, d=d, correlation=0.7, seed=seed)
    medians = {k: v.median() for k, v in base.train.labels.items()}

    def binarise(split: TensorSplit) -> TensorSplit:
        labels = {
            "a": (split.labels["y1"] > medians["y1"]).float(),
            "b": (split.labels["y2"] > medians["y2"]).float(),
        }
        masks = {"a": split.masks["y1"], "b": split.masks["y2"]}
        return TensorSplit(split.numeric, split.categorical, labels, masks)

    splits = {s: binarise(getattr(base, s)) for s in ("train", "valid", "test")}
    cats: tuple[tuple[str, int], ...] = ()
    if categorical:
        bins = torch.quantile(base.train.numeric[:, 0], torch.tensor([0.25, 0.5, 0.75]))
        splits = {s: _with_categorical(v, bins) for s, v in splits.items()}
        cats = (("c0", 5),)
    return replace(
        base,
        name="binary-synthetic",
        tasks=(TaskSpec("a", "binary"), TaskSpec("b", "binary")),
        categorical_features=cats,
        **splits,
    )


def mixed_data(n: int = 2000, d: int = 10, seed: int = 0) -> MTLDataset:
    """One task of each kind: ``a`` binary, ``r`` regression, ``m`` multiclass (3 classes)."""
    base = make_synthetic(n=n, d=d, correlation=0.5, seed=seed)
    cuts = torch.quantile(base.train.labels["y2"], torch.tensor([1 / 3, 2 / 3]))
    med = base.train.labels["y1"].median()

    def convert(split: TensorSplit) -> TensorSplit:
        y1, y2 = split.labels["y1"], split.labels["y2"]
        ones = torch.ones(len(split), dtype=torch.bool)
        return TensorSplit(
            split.numeric,
            split.categorical,
            {"a": (y1 > med).float(), "r": y1.clone(), "m": torch.bucketize(y2.contiguous(), cuts)},
            {"a": ones, "r": ones.clone(), "m": ones.clone()},
        )

    return replace(
        base,
        name="mixed-synthetic",
        tasks=(
            TaskSpec("a", "binary"),
            TaskSpec("r", "regression"),
            TaskSpec("m", "multiclass", 3),
        ),
        train=convert(base.train),
        valid=convert(base.valid),
        test=convert(base.test),
    )


def with_splits(data: MTLDataset, **splits: TensorSplit) -> MTLDataset:
    return replace(data, **splits)


def experiment(data: MTLDataset, name: str = "ple", **training) -> ExperimentConfig:
    """A small preset on ``data`` with a small, fast training config (overridable)."""
    defaults = {"epochs": 3, "batch_size": 128, "lr": 3e-3}
    sizes = {"expert_hidden": (16,), "tower": (8,)}
    return ExperimentConfig(
        model=preset(name, data.input_spec(), data.tasks, **sizes),
        training=TrainConfig(**{**defaults, **training}),
    )
