"""Parquet shard sets whose column types differ only in safe ways (int64 beside float64 with
missing values, int32 beside int64, an all-null column of Arrow type ``null``, dictionary
strings beside plain ones) load as one unified schema, in memory and streamed, and give the
values of the same rows in one combined file; incompatible types stay refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _cli import run_main

from mtlsearch._errors import UserError
from mtlsearch._yaml import dump_yaml
from mtlsearch.data import load_dataset
from mtlsearch.data._io import check_parquet_set
from mtlsearch.data._streamsplit import cat_splits

ROWS = 60  # per shard


def _rows(seed: int, n: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.integers(0, 50, n).astype("float64"),
            "n": rng.integers(-5, 5, n).astype("int64"),
            "z": rng.normal(size=n),
            "c": rng.choice(["a", "b", "c", "d"], n),
            "click": rng.integers(0, 2, n).astype("int64"),
        }
    )


def _shard_a(rows: pd.DataFrame) -> pa.Table:
    """x int64 (no missing), n int32, z all null (Arrow type null), c dictionary strings."""
    return pa.table(
        {
            "x": pa.array(rows["x"].to_numpy().astype("int64")),
            "n": pa.array(rows["n"].to_numpy().astype("int32")),
            "z": pa.nulls(len(rows)),
            "c": pa.array(rows["c"].tolist()).dictionary_encode(),
            "click": pa.array(rows["click"].to_numpy()),
        }
    )


def _shard_b(rows: pd.DataFrame) -> pa.Table:
    """x float64 with missing values, n int64, z float64, c plain string (the columns in
    another order than the first shard's)."""
    x = rows["x"].to_numpy().copy()
    x[::7] = np.nan
    return pa.table(
        {
            "click": pa.array(rows["click"].to_numpy()),
            "c": pa.array(rows["c"].tolist(), pa.string()),
            "x": pa.array(x, from_pandas=True),
            "n": pa.array(rows["n"].to_numpy()),
            "z": pa.array(rows["z"].to_numpy()),
        }
    )


def _combined(a: pa.Table, b: pa.Table) -> pd.DataFrame:
    """The rows of both shards, as one pandas frame would hold them (x float64, z float64
    with missing values in shard a's rows, c strings)."""
    first = a.to_pandas()
    first["z"] = np.nan
    first["c"] = first["c"].astype(str)
    return pd.concat([first, b.to_pandas()[list(first.columns)]], ignore_index=True)


def _write_spec(path: Path, train: str, *, stream: bool) -> Path:
    spec = {
        "name": "shards",
        "files": {"train": train, "valid": "valid.parquet", "test": "test.parquet", "format": "parquet"},
        "stream": stream,
        "features": {"numeric": ["x", "n", "z"], "categorical": ["c"], "min_frequency": 1},
        "tasks": [{"name": "ctr", "label": "click", "kind": "binary"}],
    }
    path.write_text(dump_yaml(spec))
    return path


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """``shards/`` (two retyped shards), ``combined.parquet`` (their rows in one file) and
    the valid/test files, with in-memory and streamed specs for both train tables."""
    a, b = _shard_a(_rows(0)), _shard_b(_rows(1))
    (tmp_path / "shards").mkdir()
    pq.write_table(a, tmp_path / "shards" / "part-0.parquet")
    pq.write_table(b, tmp_path / "shards" / "part-1.parquet")
    _combined(a, b).to_parquet(tmp_path / "combined.parquet")
    _rows(2).to_parquet(tmp_path / "valid.parquet")
    _rows(3).to_parquet(tmp_path / "test.parquet")
    for stream in (False, True):
        tag = "stream" if stream else "mem"
        _write_spec(tmp_path / f"shards-{tag}.yaml", "shards", stream=stream)
        _write_spec(tmp_path / f"combined-{tag}.yaml", "combined.parquet", stream=stream)
    return tmp_path


def _whole(split):
    """A split's rows as one TensorSplit (a streamed split read in file order)."""
    if hasattr(split, "numeric"):
        return split
    return cat_splits(list(split.batches(1000, shuffle=False)))


def _same_rows(a, b, *, exact: bool) -> None:
    assert torch.equal(a.categorical, b.categorical)
    if exact:
        assert torch.equal(a.numeric, b.numeric)
    else:  # streamed: the numeric moments merge per batch, equal to float rounding
        torch.testing.assert_close(a.numeric, b.numeric, rtol=1e-6, atol=1e-6)
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
        assert torch.equal(a.labels[k], b.labels[k]) and torch.equal(a.masks[k], b.masks[k])


def test_unified_schema_of_a_retyped_set(tables):
    schema = check_parquet_set(sorted((tables / "shards").glob("*.parquet")))
    assert schema.names == ["x", "n", "z", "c", "click"]  # the first shard's order
    assert [str(t) for t in schema.types] == ["double", "int64", "double", "string", "int64"]


@pytest.mark.parametrize("tag", ["mem", "stream"])
def test_retyped_shards_load_as_the_combined_file(tables, tag):
    shards = load_dataset(tables / f"shards-{tag}.yaml")
    one = load_dataset(tables / f"combined-{tag}.yaml")
    assert len(shards.train) == len(one.train) == 2 * ROWS
    assert shards.categorical_features == one.categorical_features
    assert shards.preprocessor.categorical == one.preprocessor.categorical  # same vocabulary
    for x, y in zip(shards.preprocessor.numeric, one.preprocessor.numeric, strict=True):
        assert (x.column, x.indicator) == (y.column, y.indicator)
        assert x.mean == pytest.approx(y.mean, rel=1e-12) and x.std == pytest.approx(y.std, rel=1e-12)
    train_a, train_b = _whole(shards.train), _whole(one.train)
    _same_rows(train_a, train_b, exact=tag == "mem")
    clicks = int(_combined(_shard_a(_rows(0)), _shard_b(_rows(1)))["click"].sum())
    assert int(train_a.labels["ctr"].sum()) == clicks
    assert bool(train_a.numeric.isfinite().all())  # the missing x and z are encoded, not NaN
    for split in ("valid", "test"):
        _same_rows(_whole(getattr(shards, split)), _whole(getattr(one, split)), exact=tag == "mem")


@pytest.mark.parametrize("tag", ["mem", "stream"])
def test_a_string_beside_a_number_is_refused_in_one_line(tables, tag):
    second = tables / "shards" / "part-1.parquet"
    table = pq.read_table(second)
    retyped = table.set_column(table.schema.get_field_index("c"), "c", pa.array(range(ROWS), pa.int64()))
    pq.write_table(retyped, second)
    with pytest.raises(UserError) as exc:
        load_dataset(tables / f"shards-{tag}.yaml")
    assert str(exc.value) == (
        f"{second}: column 'c' is int64 here but dictionary<values=string, indices=int32, ordered=0> "
        "in the first file of the set (part-0.parquet)"
    )


def test_cli_refuses_a_timestamp_beside_a_number(tables, monkeypatch, capsys):
    second = tables / "shards" / "part-1.parquet"
    table = pq.read_table(second)
    when = pa.array(np.arange(ROWS).astype("datetime64[ms]"), pa.timestamp("ms"))
    pq.write_table(table.set_column(table.schema.get_field_index("n"), "n", when), second)
    code, _, err = run_main(monkeypatch, capsys, tables, "data", "scan", str(tables / "shards-stream.yaml"))
    assert code == 2 and err.strip() == (
        f"error: {second}: column 'n' is timestamp[ms] here but int32 in the first file of the set "
        "(part-0.parquet)"
    )


def test_refusals_name_the_file_that_fixed_the_type(tmp_path):
    """A column all null in the first file takes its type from the next file; a third file
    whose type conflicts with that one is refused naming it."""
    paths = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    pq.write_table(pa.table({"v": pa.nulls(2)}), paths[0])
    pq.write_table(pa.table({"v": pa.array(["a", "b"])}), paths[1])
    pq.write_table(pa.table({"v": pa.array([1, 2])}), paths[2])
    with pytest.raises(UserError) as exc:
        check_parquet_set(paths)
    assert str(exc.value) == (
        f"{paths[2]}: column 'v' is int64 here but string in another file of the set (part-1.parquet)"
    )
    pq.write_table(pa.table({"v": pa.array([1.5, 2.5], pa.float32())}), paths[1])  # float32 beside int:
    assert str(check_parquet_set(paths).field("v").type) == "double"  # both widen to float64


def test_an_integer_float64_cannot_hold_fails_naming_the_file(tables):
    second = tables / "shards" / "part-1.parquet"
    first = tables / "shards" / "part-0.parquet"
    table = pq.read_table(first)
    big = pa.array(np.full(ROWS, 2**53 + 1, dtype="int64"))
    pq.write_table(table.set_column(table.schema.get_field_index("x"), "x", big), first)
    for tag in ("mem", "stream"):
        with pytest.raises(UserError) as exc:
            load_dataset(tables / f"shards-{tag}.yaml")
        assert str(exc.value).startswith(f"{first}: cannot read as PARQUET (Integer value 9007199254740993")
    assert second.exists()


def test_a_float32_shard_beside_a_float64_one_reads_as_float64(tmp_path):
    paths = [tmp_path / f"part-{i}.parquet" for i in range(2)]
    pq.write_table(pa.table({"v": pa.array([0.1, 0.2], pa.float32())}), paths[0])
    pq.write_table(pa.table({"v": pa.array([0.3, 0.4], pa.float64())}), paths[1])
    assert str(check_parquet_set(paths).field("v").type) == "double"
    pq.write_table(pa.table({"v": pa.array([0.3, 0.4], pa.float16())}), paths[1])
    assert str(check_parquet_set(paths).field("v").type) == "float"  # half beside single: single
