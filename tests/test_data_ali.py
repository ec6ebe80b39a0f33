"""Ali-CCP and AliExpress loaders on the samples in the shared data folder: click and
conversion, conversion in the clicked sample space (the PLE paper's setting), and ctcvr,
conversion over all impressions (the ESMM paper's and MTReclib's)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import shared_data_dir

from mtlsearch._errors import UserError
from mtlsearch.data import MTLDataset, load_dataset

SPLITS = ("train", "valid", "test")


def _rows(folder: Path, name: str) -> int:
    """Row count of a sample file as SOURCE.txt publishes it."""
    m = re.search(rf"{re.escape(name)}\s+\d+\s+(\d+)", (folder / "SOURCE.txt").read_text())
    assert m, f"{name} not in SOURCE.txt"
    return int(m.group(1))


def _check_click_conversion(ds: MTLDataset, frames: dict[str, pd.DataFrame], conversion: str) -> None:
    assert [t.name for t in ds.tasks] == ["ctr", "cvr", "ctcvr"]
    assert all(t.kind == "binary" for t in ds.tasks)
    for s in SPLITS:
        part, frame = getattr(ds, s), frames[s]
        clicked = torch.tensor(frame["click"].to_numpy() == 1)
        assert torch.equal(part.labels["ctr"], clicked.float())
        assert part.masks["ctr"].all()
        assert torch.equal(part.masks["cvr"], clicked)  # conversion only where click = 1
        converted = torch.tensor(frame[conversion].to_numpy() == 1) & clicked
        assert torch.equal(part.labels["cvr"].bool(), converted)
        # ctcvr: conversion over all impressions, unclicked rows 0 (the MTReclib / ESMM task)
        assert part.masks["ctcvr"].all()
        assert torch.equal(part.labels["ctcvr"], converted.float())
    names = set(ds.numeric_features) | {n for n, _ in ds.categorical_features}
    assert not names & {"click", conversion}


def test_ali_ccp_sample() -> None:
    folder = shared_data_dir("ali-ccp-sample")
    names = {s: f"ali_ccp_{f}_sample.csv" for s, f in zip(SPLITS, ("train", "val", "test"), strict=True)}
    frames = {s: pd.read_csv(folder / n) for s, n in names.items()}
    ds = load_dataset("ali-ccp", data_dir=shared_data_dir())  # finds the ali-ccp-sample/ folder
    for s in SPLITS:
        assert len(getattr(ds, s)) == _rows(folder, names[s])
    _check_click_conversion(ds, frames, "purchase")
    dense = [c for c in frames["train"].columns if c.startswith("D")]
    assert set(ds.numeric_features) == set(dense)  # no gaps in the sample: no indicators
    assert len(ds.categorical_features) == len(frames["train"].columns) - 2 - len(dense)


def test_aliexpress_sample_splits_the_test_file() -> None:
    folder = shared_data_dir("aliexpress-sample")
    train = pd.read_csv(folder / "aliexpress_train_sample.csv")
    test = pd.read_csv(folder / "aliexpress_test_sample.csv")
    ds = load_dataset("aliexpress", data_dir=folder, seed=0)
    assert len(ds.train) == _rows(folder, "aliexpress_train_sample.csv")
    assert len(ds.valid) + len(ds.test) == _rows(folder, "aliexpress_test_sample.csv")
    assert abs(len(ds.valid) - len(ds.test)) <= 1
    # recover which test rows went to validation through the (unique) numeric features
    key = [c for c in test.columns if c.startswith("numerical_")]
    num = {s: getattr(ds, s).numeric[:, : len(key)] for s in SPLITS}
    pre = ds.preprocessor
    test_num, _ = pre.transform(test)
    in_valid = torch.tensor([bool((num["valid"] == row).all(1).any()) for row in test_num[:, : len(key)]])
    assert int(in_valid.sum()) == len(ds.valid)
    frames = {
        "train": train,
        "valid": test[in_valid.numpy()].reset_index(drop=True),
        "test": test[~in_valid.numpy()].reset_index(drop=True),
    }
    _check_click_conversion(ds, frames, "conversion")
    assert "search_id" not in {n for n, _ in ds.categorical_features} | set(ds.numeric_features)
    assert {n for n, _ in ds.categorical_features} == {
        c for c in train.columns if c.startswith("categorical_")
    }
    # both conversions of the test file are kept apart by the stratified split
    assert int(ds.valid.labels["cvr"].sum()) >= 1 and int(ds.test.labels["cvr"].sum()) >= 1


def test_missing_files_name_where_they_were_looked_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MTLSEARCH_DATA", raising=False)
    monkeypatch.delenv("MTLSEARCH_SHARED_DATA", raising=False)
    for name in ("ali-ccp", "aliexpress"):
        with pytest.raises(UserError, match=str(tmp_path)) as exc:
            load_dataset(name, data_dir=tmp_path)
        assert name in str(exc.value) and "\n" not in str(exc.value)


def test_data_folder_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MTLSEARCH_DATA", str(shared_data_dir()))
    assert len(load_dataset("ali-ccp").train) == _rows(
        shared_data_dir("ali-ccp-sample"), "ali_ccp_train_sample.csv"
    )
