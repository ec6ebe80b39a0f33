"""In-memory tensors for training: splits, batches, and the dataset bundle.

A batch is an index slice of tensors already in memory (after one seeded permutation per
epoch), never a per-row ``Dataset.__getitem__``: batching costs one gather per tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlsearch.arch import CategoricalFeature, InputSpec, TaskSpec


@dataclass(frozen=True)
class TensorSplit:
    """One split: ``numeric`` float32 (N, n_num), ``categorical`` int64 (N, n_cat),
    ``labels[task]`` float32 (N,) for binary/regression or int64 (N,) for multiclass, and
    ``masks[task]`` bool (N,), True where the sample is in the task's sample space, and
    ``weights[task]`` float32 (N,) the row weights of a task whose spec names a ``weight``
    column (finite and >= 0 in the task's sample space, 0 outside it). A task absent from
    ``weights`` weighs every row 1; the trainer's loss for task k is then
    ``sum_i w_i loss_i / sum_i w_i`` over its sample space (see ``mtlsearch.train``)."""

    numeric: Tensor
    categorical: Tensor
    labels: dict[str, Tensor]
    masks: dict[str, Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.numeric.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tensors are (a streamed split has the same property)."""
        return self.numeric.device

    def take(self, idx: Tensor | slice) -> TensorSplit:
        return TensorSplit(
            numeric=self.numeric[idx],
            categorical=self.categorical[idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            masks={k: v[idx] for k, v in self.masks.items()},
            weights={k: v[idx] for k, v in self.weights.items()},
        )

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[TensorSplit]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(
                self.numeric.device
            )  # one copy, not one per batch
            for start in range(0, n, batch_size):
                yield self.take(order[start : start + batch_size])
        else:
            for start in range(0, n, batch_size):
                yield self.take(slice(start, start + batch_size))


@dataclass(frozen=True)
class MTLDataset:
    """Train/valid/test splits with the schema an architecture needs.

    ``preprocessor`` is the fitted transform from raw rows to tensors (None for generated
    data that is already numeric); it is saved with a trained model so that an exported
    model scores raw rows.

    ``label_scaling`` maps a regression task to the ``(mean, std)`` (label units) of its
    training labels when the trainer should learn it standardised: the split tensors keep
    the labels in their own units, the loss reads ``(y - mean) / std``, and predictions and
    metrics come back in label units. Empty (no standardisation) unless the loader fits it.
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    numeric_features: tuple[str, ...]
    categorical_features: tuple[tuple[str, int], ...]  # (name, cardinality incl. OOV)
    train: TensorSplit
    valid: TensorSplit
    test: TensorSplit
    preprocessor: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    label_scaling: dict[str, tuple[float, float]] = field(default_factory=dict)

    def input_spec(self, embed_dim: int | None = None) -> InputSpec:
        """The architecture's input encoder for this data.

        Default embedding size: ``min(16, round(1.6 * cardinality ** 0.56))`` (the fastai
        rule, capped), so small vocabularies get small tables.
        """

        def dim(card: int) -> int:
            return embed_dim if embed_dim else max(1, min(16, round(1.6 * card**0.56)))

        return InputSpec(
            n_numeric=len(self.numeric_features),
            categorical=tuple(
                CategoricalFeature(name, card, dim(card)) for name, card in self.categorical_features
            ),
        )
