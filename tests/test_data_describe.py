"""``describe`` and ``mtlsearch data describe``: rows per split, features, label statistics
within each sample space, masked fractions and label correlations."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from _data_helpers import write_shop, write_spec
from conftest import shared_data_dir

from mtlsearch import cli
from mtlsearch.data import DatasetDescription, describe, load_dataset


def run(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps to the terminal width
    monkeypatch.setattr(sys, "argv", ["mtlsearch", "data", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_matches_the_tensors(tmp_path) -> None:
    ds = load_dataset(write_shop(tmp_path))
    d = describe(ds)
    assert isinstance(d, DatasetDescription)
    assert d.rows == {"train": 360, "valid": 120, "test": 120}
    kinds = {f.name: (f.kind, f.cardinality) for f in d.features}
    assert kinds["device"] == ("categorical", 4)
    assert kinds["price:missing"][0] == "numeric"
    click = ds.train.labels["ctr"]
    assert d.tasks["ctr"]["train"].positive_rate == pytest.approx(float(click.mean()))
    assert d.tasks["ctr"]["train"].masked == 0.0
    assert d.tasks["cvr"]["train"].masked == pytest.approx(1 - float(click.mean()))
    bought = ds.train.labels["cvr"][ds.train.masks["cvr"]]
    assert d.tasks["cvr"]["train"].positive_rate == pytest.approx(float(bought.mean()))
    rating = ds.train.labels["rating"].double()
    assert d.tasks["rating"]["valid"].rows == 120
    assert d.tasks["rating"]["train"].mean == pytest.approx(float(rating.mean()), rel=1e-5)
    assert d.tasks["rating"]["train"].std == pytest.approx(float(rating.std(unbiased=False)), rel=1e-4)
    tier = d.tasks["tier"]["train"]
    assert tier.n_classes == 3
    assert tier.majority_share == pytest.approx(float(torch.bincount(ds.train.labels["tier"]).max()) / 360)
    # Pearson over training rows in both sample spaces; multiclass labels have no order
    assert set(d.correlation) == {("ctr", "cvr"), ("ctr", "rating"), ("cvr", "rating")}
    assert math.isnan(d.correlation[("ctr", "cvr")])  # ctr is constant (1) where cvr applies
    expected = np.corrcoef(click.numpy(), rating.numpy())[0, 1]
    assert d.correlation[("ctr", "rating")] == pytest.approx(expected, abs=1e-6)


def test_cli_describe_a_spec(tmp_path, capsys, monkeypatch) -> None:
    spec = write_shop(tmp_path)
    code, out, err = run(["describe", str(spec)], capsys, monkeypatch)
    assert code == 0, err
    for text in ("rows per split", "360", "120", "device", "categorical", "price:missing"):
        assert text in out
    for task in ("ctr", "cvr", "rating", "tier"):
        assert task in out
    d = describe(load_dataset(spec))
    assert f"pos {100 * d.tasks['ctr']['train'].positive_rate:.2f}%" in out
    assert f"{100 * d.tasks['cvr']['valid'].masked:.2f}%" in out  # masked fraction
    assert "label correlation" in out
    assert f"{d.correlation[('ctr', 'rating')]:+.4f}" in out


def test_cli_describe_a_builtin(capsys, monkeypatch) -> None:
    args = ["describe", "--dataset", "ali-ccp", "--data-dir", str(shared_data_dir())]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0, err
    assert "ali-ccp" in out and "ctr" in out and "cvr" in out and "D508" in out


def test_cli_builtin_options(capsys, monkeypatch) -> None:
    args = ["describe", "--dataset", "synthetic", "--set", "n=500", "--set", "d=4", "--seed", "3"]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0, err
    assert "x3" in out and "y1" in out and "y2" in out
    code, _, err = run(["describe", "--dataset", "synthetic", "--set", "corr=0.5"], capsys, monkeypatch)
    assert code == 2 and "'corr'" in err and "correlation" in err


def test_cli_needs_exactly_one_source(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run(["describe"], capsys, monkeypatch)
    assert code == 2 and "exactly one" in err
    spec = write_shop(tmp_path)
    code, _, err = run(["describe", str(spec), "--dataset", "synthetic"], capsys, monkeypatch)
    assert code == 2 and "exactly one" in err


def test_cli_lists_the_builtins(capsys, monkeypatch) -> None:
    code, out, _ = run(["list"], capsys, monkeypatch)
    assert code == 0
    for name in ("census-income", "synthetic", "ali-ccp", "aliexpress"):
        assert name in out


def test_cli_refuses_a_streamed_spec_before_reading_its_data(tmp_path, capsys, monkeypatch) -> None:
    """``stream: true``: the one-line refusal (exit 2) comes from the spec, before the
    preprocessing is fitted: the spec's files are not Parquet, so reading them would fail."""
    for split in ("train", "valid", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "part-0.parquet").write_text("not a parquet file\n")
    spec = {
        "name": "clicks",
        "files": {"train": "train", "valid": "valid", "test": "test", "format": "parquet"},
        "stream": True,
        "tasks": [{"name": "ctr", "label": "click", "kind": "binary"}],
    }
    path = write_spec(tmp_path, spec)

    def no_load(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr("mtlsearch.cli._data.load_dataset", no_load)
    code, out, err = run(["describe", str(path)], capsys, monkeypatch)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (
        "error: clicks: a streamed dataset (stream: true) is not described in memory; "
        "`mtlsearch data scan SPEC` summarises it in one streaming pass"
    ), err
    assert out == ""
