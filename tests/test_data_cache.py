"""The encoded cache (``cache: true`` in a dataset spec): one entry per spec + seed + data
files, read instead of re-encoding, atomic under two processes filling it at once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtlsearch.data import _tables, load_dataset
from mtlsearch.data._cache import encoded_root, publish
from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate


@pytest.fixture
def gen_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "cache"))
    cfg = GeneratorConfig(rows=2000, numeric=3, ids=(IdColumn("u", 300),), conversion=True, seed=2)
    generate(cfg, tmp_path / "data", shard_rows=700)
    spec = yaml.safe_load((tmp_path / "data" / "spec.yaml").read_text())
    spec["files"]["path"] = str(tmp_path / "data")
    spec["cache"] = True
    del spec["split"]["seed"]  # the caller's seed draws the split
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def assert_same(a, b) -> None:
    assert (a.name, a.tasks, a.numeric_features, a.categorical_features) == (
        b.name, b.tasks, b.numeric_features, b.categorical_features,
    )  # fmt: skip
    assert a.preprocessor == b.preprocessor and a.label_scaling == b.label_scaling
    for s in ("train", "valid", "test"):
        x, y = getattr(a, s), getattr(b, s)
        assert torch.equal(x.numeric, y.numeric) and torch.equal(x.categorical, y.categorical)
        for kind in ("labels", "masks", "weights"):
            gx, gy = getattr(x, kind), getattr(y, kind)
            assert list(gx) == list(gy) and all(torch.equal(gx[k], gy[k]) for k in gx)


def _entries() -> list[str]:
    return sorted(p.name for p in encoded_root().iterdir()) if encoded_root().exists() else []


def test_second_load_reads_the_cache(gen_spec, tmp_path, monkeypatch):
    first = load_dataset(gen_spec, seed=1)
    (entry,) = _entries()
    assert first.meta["cache"] == str(encoded_root() / entry)
    assert not [p for p in (tmp_path / "data").iterdir() if p.suffix not in (".parquet", ".yaml", ".json")]

    def no_reading(*a, **k):
        raise AssertionError("the tables were read again")

    monkeypatch.setattr(_tables, "_read_parts", no_reading)
    second = load_dataset(gen_spec, seed=1)
    assert_same(first, second)
    monkeypatch.undo()
    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "cache"))
    plain = yaml.safe_load(gen_spec.read_text())
    plain["cache"] = False
    gen_spec.write_text(yaml.safe_dump(plain))
    uncached = load_dataset(gen_spec, seed=1)
    assert_same(first, uncached)  # the in-memory path gives the same tensors
    assert "cache" not in uncached.meta


def test_other_seed_or_changed_file_is_a_new_entry(gen_spec, tmp_path):
    load_dataset(gen_spec, seed=1)
    load_dataset(gen_spec, seed=2)
    assert len(_entries()) == 2
    shard = tmp_path / "data" / "part-00001.parquet"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_dataset(gen_spec, seed=1)
    assert len(_entries()) == 3


def test_damaged_entry_is_encoded_again(gen_spec, caplog):
    first = load_dataset(gen_spec, seed=1)
    (entry,) = _entries()
    (encoded_root() / entry / "train" / "numeric.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = load_dataset(gen_spec, seed=1)
    assert "cannot be read" in caplog.text
    assert_same(first, again)
    assert_same(first, load_dataset(gen_spec, seed=1))


def test_entry_with_a_code_out_of_range_is_encoded_again(gen_spec, caplog):
    """Issue 12: a damaged entry of the right size (one categorical code set to 10**6) is
    caught on reading (codes checked against each column's cardinality), not by an
    IndexError in training."""
    import numpy as np

    first = load_dataset(gen_spec, seed=1)
    (entry,) = _entries()
    path = encoded_root() / entry / "train" / "categorical.npy"
    size = path.stat().st_size
    codes = np.load(path)
    codes[5, 0] = 10**6
    np.save(path, codes)
    assert path.stat().st_size == size
    with caplog.at_level(logging.WARNING):
        again = load_dataset(gen_spec, seed=1)
    card = first.categorical_features[0][1]
    assert "cannot be read" in caplog.text and f"span [0, 1000000], outside [0, {card})" in caplog.text
    assert_same(first, again)
    assert_same(first, load_dataset(gen_spec, seed=1))


def test_unwritable_cache_falls_back(gen_spec, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MTLSEARCH_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(gen_spec, seed=1)
    assert "cannot write the encoded cache" in caplog.text and "continuing without it" in caplog.text
    assert len(ds.train) > 0 and "cache" not in ds.meta


def test_publish_race_keeps_one_entry(tmp_path):
    final = tmp_path / "key"
    a, b = tmp_path / ".key.a.tmp", tmp_path / ".key.b.tmp"
    for d, text in ((a, "a"), (b, "b")):
        d.mkdir()
        (d / "dataset.json").write_text(text)
    assert publish(a, final) is True
    assert publish(b, final) is False  # the other writer won: this copy is dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
    assert (final / "dataset.json").read_text() == "a"


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from mtlsearch.data import load_dataset
ds = load_dataset(sys.argv[1], seed=1)
print(len(ds.train), float(ds.train.numeric.sum()))
"""


def test_two_processes_filling_at_once_end_with_one_valid_entry(gen_spec):
    env = {**os.environ, "MTLSEARCH_CACHE": os.environ["MTLSEARCH_CACHE"]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(gen_spec)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]
    assert len(_entries()) == 1  # no second entry, no temporary folder left
    cached = load_dataset(gen_spec, seed=1)
    assert outs[0].split() == [str(len(cached.train)), str(float(cached.train.numeric.sum()))]
