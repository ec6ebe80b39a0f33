"""Splits partition the rows; batches are index slices of tensors held in memory."""

from __future__ import annotations

import torch
from _data_helpers import shop_frame, shop_spec, write_shop, write_spec

from mtlsearch.data import MTLDataset, TensorSplit, load_dataset

SPLITS = ("train", "valid", "test")


def _rids(ds: MTLDataset, split: str) -> set[float]:
    """Row ids (standardised, so still distinct) of a split."""
    j = ds.numeric_features.index("rid")
    return set(getattr(ds, split).numeric[:, j].tolist())


def test_one_file_split_is_disjoint_and_complete(tmp_path) -> None:
    ds = load_dataset(write_shop(tmp_path))
    ids = [_rids(ds, s) for s in SPLITS]
    assert [len(i) for i in ids] == [360, 120, 120]
    assert len(set().union(*ids)) == 600  # disjoint: no row in two splits


def test_valid_carved_from_the_test_file(tmp_path) -> None:
    """The Census-Income protocol: train on the train file, halve the test file."""
    frame = shop_frame(900)
    frame.iloc[:500].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[500:].to_csv(tmp_path / "test.csv", index=False)
    spec = shop_spec(
        files={"train": "train.csv", "test": "test.csv"},
        split={"valid": 0.5, "test": 0.0, "valid_from": "test"},
    )
    ds = load_dataset(write_spec(tmp_path, spec), seed=4)
    assert [len(getattr(ds, s)) for s in SPLITS] == [500, 200, 200]
    assert not _rids(ds, "valid") & _rids(ds, "test")
    assert not _rids(ds, "train") & (_rids(ds, "valid") | _rids(ds, "test"))
    other = load_dataset(write_spec(tmp_path, spec), seed=5)
    assert _rids(other, "valid") != _rids(ds, "valid")
    assert torch.equal(other.train.numeric, ds.train.numeric)  # the train file is not split


def _indexed(n: int) -> TensorSplit:
    ids = torch.arange(n, dtype=torch.float32)
    return TensorSplit(
        numeric=ids[:, None].repeat(1, 3),
        categorical=torch.arange(n)[:, None].repeat(1, 2),
        labels={"t": ids},
        masks={"t": torch.ones(n, dtype=torch.bool)},
    )


def test_in_order_batches_are_views_not_copies() -> None:
    split = _indexed(2_500)
    batches = list(split.batches(1024))
    assert [len(b) for b in batches] == [1024, 1024, 452]
    base = split.numeric.untyped_storage().data_ptr()
    for b in batches:  # slicing shares the table's memory: no per-epoch copy
        assert b.numeric.untyped_storage().data_ptr() == base
    assert torch.equal(torch.cat([b.labels["t"] for b in batches]), split.labels["t"])


def test_shuffled_batches_are_a_seeded_permutation() -> None:
    split = _indexed(2_500)

    def epoch(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b.labels["t"] for b in split.batches(1024, shuffle=True, generator=gen)])

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, split.labels["t"])  # every row exactly once
    gen = torch.Generator().manual_seed(0)
    for batch in split.batches(1024, shuffle=True, generator=gen):  # rows stay aligned
        assert torch.equal(batch.numeric[:, 0], batch.labels["t"])
        assert torch.equal(batch.categorical[:, 1].float(), batch.labels["t"])
