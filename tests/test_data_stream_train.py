"""Training and scoring on streamed splits (``stream: true``, issue 12 part 2): the same
preprocessing and metrics as the in-memory path, a seeded order that does not depend on
PYTHONHASHSEED, bad shards in one line, streaming predict, and the memory check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from _cli import run_main
from conftest import shared_data_dir

from mtlsearch._errors import UserError
from mtlsearch._yaml import dump_yaml
from mtlsearch.data import DatasetSpec, FileSpec, StreamSplit, census_spec, load_from_spec, read_table
from mtlsearch.data._builtin import CENSUS_FILES
from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate
from mtlsearch.train import ExperimentConfig, MemoryLimitExceeded, fit

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT = {
    "model": {
        "name": "mmoe",
        "levels": [{"n_shared": 2, "n_specific": 0, "expert_hidden": [8], "select": "shared"}],
        "towers": {"hidden": [4]},
    },
    "training": {"lr": 3.0e-3, "batch_size": 128, "epochs": 2, "seed": 3},
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _generated(tmp: Path, *, shuffle_buffer: int = 1_000_000, hash_user: int | None = None) -> Path:
    """Train (3 shards), valid and test folders of the generated click/conversion table, and
    ``stream.yaml`` / ``mem.yaml`` specs reading them streamed and in memory."""
    if not (tmp / "train").exists():
        for name, seed, rows, shard in (
            ("train", 0, 2400, 800),
            ("valid", 1, 1200, 1200),
            ("test", 2, 1200, 600),
        ):
            cfg = GeneratorConfig(
                rows=rows, numeric=4, seed=seed, conversion=True, ids=(IdColumn("user", 200),)
            )
            generate(cfg, tmp / name, shard_rows=shard)
    features: dict = {"numeric": [f"x{i}" for i in range(4)], "categorical": ["user"]}
    if hash_user:
        features["hash_buckets"] = {"user": hash_user}
    spec = {
        "name": "gen",
        "files": {"train": "train", "valid": "valid", "test": "test", "format": "parquet"},
        "stream": True,
        "shuffle_buffer": shuffle_buffer,
        "features": features,
        "tasks": [
            {"name": "ctr", "label": "click", "kind": "binary"},
            {"name": "cvr", "label": "conversion", "kind": "binary", "where": {"click": 1}},
        ],
    }
    (tmp / "stream.yaml").write_text(dump_yaml(spec))
    in_memory = {k: v for k, v in spec.items() if k != "shuffle_buffer"}  # a stream's setting only
    (tmp / "mem.yaml").write_text(dump_yaml({**in_memory, "stream": False}))
    (tmp / "exp.yaml").write_text(dump_yaml(EXPERIMENT))
    return tmp


def _train(spec: str | Path | DatasetSpec, exp: Path, **kw):
    ds = load_from_spec(spec)
    config = ExperimentConfig.load(exp, inputs=ds.input_spec(), tasks=ds.tasks)
    return ds, fit(config, ds, progress=False, **kw)


def _same_fit(a, b) -> None:
    assert a.categorical == b.categorical  # vocabularies exactly
    for x, y in zip(a.numeric, b.numeric, strict=True):
        assert (x.column, x.indicator) == (y.column, y.indicator)
        assert x.mean == pytest.approx(y.mean, rel=1e-12, abs=1e-15)
        assert x.std == pytest.approx(y.std, rel=1e-12)
    assert a.tasks == b.tasks


def test_generated_stream_trains_exactly_as_in_memory(tmp_path):
    """A shuffle buffer that covers the table gives the in-memory order, hence the same
    model: metrics equal to float rounding (here bitwise) in every epoch and on test."""
    d = _generated(tmp_path)
    mem, r_mem = _train(d / "mem.yaml", d / "exp.yaml")
    st, r_st = _train(d / "stream.yaml", d / "exp.yaml")
    assert isinstance(st.train, StreamSplit) and (len(st.train), len(st.valid), len(st.test)) == (
        2400,
        1200,
        1200,
    )
    _same_fit(st.preprocessor, mem.preprocessor)
    assert [h.valid for h in r_st.history] == [h.valid for h in r_mem.history]
    assert r_st.test == r_mem.test and r_st.best_epoch == r_mem.best_epoch
    assert r_st.valid["ctr"]["auc"] == pytest.approx(r_mem.valid["ctr"]["auc"], abs=1e-12)


def test_bounded_shuffle_buffer_sees_every_row_once_in_a_seeded_order(tmp_path):
    d = _generated(tmp_path, shuffle_buffer=300)
    st, mem = load_from_spec(d / "stream.yaml"), load_from_spec(d / "mem.yaml")
    plain = list(st.train.batches(128))
    assert [len(b) for b in plain] == [128] * 18 + [96]  # 2400 rows re-chunked across shards
    assert torch.equal(torch.cat([b.numeric for b in plain]), mem.train.numeric)  # file order

    def epoch(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b.numeric for b in st.train.batches(128, shuffle=True, generator=g)])

    first, again, other = epoch(7), epoch(7), epoch(8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, mem.train.numeric)
    key = lambda t: t[:, 0].sort().values  # noqa: E731  every row exactly once
    assert torch.equal(key(first), key(mem.train.numeric)) and torch.equal(key(other), key(first))
    # the bounded buffer trains too, on every row per epoch
    result = fit(
        ExperimentConfig.load(d / "exp.yaml", inputs=st.input_spec(), tasks=st.tasks), st, progress=False
    )
    assert len(result.history) == 2 and 0.0 < result.valid["ctr"]["auc"] < 1.0
    assert "targets" not in st.train._shared  # training never collected the training labels


_ORDER_SCRIPT = """
import hashlib, json, sys, torch
torch.set_num_threads(1)
from mtlsearch.data import load_from_spec
from mtlsearch.train import ExperimentConfig, fit
ds = load_from_spec(sys.argv[1])
g = torch.Generator().manual_seed(11)
h = hashlib.sha256()
for b in ds.train.batches(100, shuffle=True, generator=g):
    h.update(b.numeric.numpy().tobytes()); h.update(b.categorical.numpy().tobytes())
cfg = ExperimentConfig.load(sys.argv[2], inputs=ds.input_spec(), tasks=ds.tasks)
r = fit(cfg, ds, progress=False)
print(json.dumps({"order": h.hexdigest(), "valid": r.valid, "test": r.test}))
"""


def test_same_seed_same_order_and_metrics_across_hash_seeds(tmp_path):
    d = _generated(tmp_path, shuffle_buffer=500, hash_user=97)
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", _ORDER_SCRIPT, str(d / "stream.yaml"), str(d / "exp.yaml")],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert len(outs[0]["order"]) == 64 and set(outs[0]["valid"]) == {"ctr", "cvr"}


def test_census_subset_stream_equals_in_memory(tmp_path):
    train, test = (shared_data_dir("census-income-kdd") / CENSUS_FILES[k].name for k in ("train", "test"))
    base = census_spec(train, test)
    rows_train = read_table(train, base.files).iloc[:3000]
    rows_test = read_table(test, base.files)
    parts = {"train": rows_train, "valid": rows_test.iloc[:2000], "test": rows_test.iloc[2000:4000]}
    for name, frame in parts.items():
        frame.reset_index(drop=True).to_parquet(tmp_path / f"{name}.parquet", index=False)
    files = FileSpec(**{k: str(tmp_path / f"{k}.parquet") for k in parts})
    mem_spec = replace(base, files=files)
    stream_spec = replace(mem_spec, stream=True, shuffle_buffer=10_000)
    exp = tmp_path / "exp.yaml"
    exp.write_text(dump_yaml({**EXPERIMENT, "training": {**EXPERIMENT["training"], "batch_size": 256}}))
    mem, r_mem = _train(mem_spec, exp)
    st, r_st = _train(stream_spec, exp)
    _same_fit(st.preprocessor, mem.preprocessor)
    for task, metrics in r_mem.valid.items():
        for name, value in metrics.items():
            assert r_st.valid[task][name] == pytest.approx(value, abs=1e-9)
    assert r_st.test.keys() == r_mem.test.keys()


def test_a_stream_spec_needs_three_files(tmp_path):
    with pytest.raises(UserError) as exc:
        DatasetSpec.from_dict(
            {"files": "t.parquet", "stream": True, "tasks": [{"name": "a", "label": "a", "kind": "binary"}]}
        )
    assert str(exc.value).startswith("stream: needs files.train, files.valid and files.test")


def _one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_shards_fail_in_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    d = _generated(tmp_path)
    shard = d / "train" / "part-00001.parquet"
    good = shard.read_bytes()
    table = pq.read_table(shard)
    shard.write_bytes(good[: len(good) // 2])  # truncated
    args = ("train", "-c", str(d / "exp.yaml"), "--data", str(d / "stream.yaml"), "-q", "--threads", "1")
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--out", str(d / "run1"))
    assert code == 2 and _one_error(err).startswith(f"error: {shard}: cannot read as PARQUET (")
    assert not (d / "run1").exists()
    pq.write_table(table.drop_columns(["user"]), shard)  # another schema in the middle of the set
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--out", str(d / "run2"))
    assert code == 2 and _one_error(err) == (
        f"error: {shard}: no column 'user' (the first file of the set, part-00000.parquet, has it)"
    )
    assert not (d / "run2").exists()
    # mid-training: the shard is replaced after the data was loaded
    shard.write_bytes(good)
    ds = load_from_spec(d / "stream.yaml")
    config = ExperimentConfig.load(d / "exp.yaml", inputs=ds.input_spec(), tasks=ds.tasks)
    pq.write_table(table.set_column(0, "x0", table["x0"].cast("string")), shard)
    with pytest.raises(UserError) as exc:
        fit(config, ds, progress=False)
    assert str(exc.value) == (
        f"{shard}: column 'x0' is string here but float in the first file of the set (part-00000.parquet)"
    )


def test_streaming_predict_equals_in_memory_predict(tmp_path, monkeypatch, capsys):
    d = _generated(tmp_path, shuffle_buffer=500)
    run = d / "run"
    args = ("train", "-c", str(d / "exp.yaml"), "--data", str(d / "stream.yaml"), "-q", "--threads", "1")
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--out", str(run))
    assert code == 0, err
    outputs = {}
    for name, extra in (("mem.parquet", ()), ("st.parquet", ("--stream",)), ("st.csv", ("--stream",))):
        code, _, err = run_main(
            monkeypatch, capsys, tmp_path, "predict", "-m", str(run), "-i", str(d / "test"),
            "--output", str(d / name), *extra,
        )  # fmt: skip
        assert code == 0, err
        outputs[name] = pd.read_parquet(d / name) if name.endswith("parquet") else pd.read_csv(d / name)
    mem = outputs["mem.parquet"]
    assert list(mem.columns) == ["ctr", "cvr"] and len(mem) == 1200
    pd.testing.assert_frame_equal(outputs["st.parquet"], mem, check_exact=False, atol=1e-7)
    pd.testing.assert_frame_equal(outputs["st.csv"], mem, check_exact=False, atol=1e-7)
    assert pq.ParquetFile(d / "st.parquet").metadata.num_row_groups == 2  # one per input shard
    # a bad shard mid-way: one line, nothing at --output
    shard = d / "test" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    code, _, err = run_main(
        monkeypatch, capsys, tmp_path, "predict", "-m", str(run), "-i", str(d / "test"),
        "--output", str(d / "bad.parquet"), "--stream",
    )  # fmt: skip
    assert code == 2 and _one_error(err).startswith(f"error: {shard}: cannot read as PARQUET (")
    assert not (d / "bad.parquet").exists() and not list(d.glob(".bad.parquet*"))


def test_memory_check_names_the_biggest_table_and_not_the_streamed_table(tmp_path, monkeypatch, capsys):
    d = _generated(tmp_path, shuffle_buffer=300, hash_user=1_000_000)
    ds = load_from_spec(d / "stream.yaml")
    # held at once: the buffer and one record batch, (300 + 256) rows of 4 numeric float32,
    # 1 int64 id, and per task a float32 label and a bool mask: 4*4 + 8 + 2*5 = 34 bytes a row
    small = StreamSplit(str(d / "train"), ds.train.files, ds.preprocessor, ds.train.columns,
                        shuffle_buffer=300, read_rows=256)  # fmt: skip
    assert small.resident_bytes() == 556 * 34
    assert ds.train.resident_bytes() == 2400 * 34  # a record batch covers these 2400 rows
    config = ExperimentConfig.load(d / "exp.yaml", inputs=ds.input_spec(), tasks=ds.tasks)
    with pytest.raises(MemoryLimitExceeded) as exc:
        fit(config, ds, progress=False, max_memory="64MiB")
    msg = str(exc.value)
    assert "\n" not in msg
    # 1,000,001 rows (the buckets and code 0) x 16 float32 = 61.04 MiB
    assert "largest tensor: embedding table of user (1000001 x 16 float32, 61.04 MiB" in msg
    code, _, err = run_main(
        monkeypatch, capsys, tmp_path, "train", "-c", str(d / "exp.yaml"), "--data", str(d / "stream.yaml"),
        "-q", "--threads", "1", "--max-memory", "64MiB", "--out", str(d / "run"),
    )  # fmt: skip
    assert code == 2 and "embedding table of user (1000001 x 16 float32" in _one_error(err)
    assert not (d / "run").exists()


def test_hash_of_streamed_rows_is_the_in_memory_one(tmp_path):
    """The encoded rows, batch by batch, are the in-memory tensors (hashed ids included)."""
    d = _generated(tmp_path, hash_user=101)
    st, mem = load_from_spec(d / "stream.yaml"), load_from_spec(d / "mem.yaml")
    for split in ("valid", "test"):
        got = torch.cat([b.categorical for b in getattr(st, split).batches(500)])
        assert torch.equal(got, getattr(mem, split).categorical)
        assert torch.equal(
            torch.cat([b.numeric for b in getattr(st, split).batches(500)]), getattr(mem, split).numeric
        )
    assert int(mem.train.categorical.max()) <= 101 and int(mem.train.categorical.min()) >= 1


def test_label_missing_outside_the_mask_and_a_shard_without_the_tasks_rows(tmp_path):
    """Issue 12: ``conversion`` is null wherever click = 0 and one shard has no click at all;
    the "all missing" check counts only the rows in cvr's mask (click == 1), so the set trains,
    and a shard with clicks but no conversion label is still refused in one line."""
    d = _generated(tmp_path)
    for i, shard in enumerate(sorted((d / "train").glob("*.parquet"))):
        frame = pd.read_parquet(shard)
        if i == 1:
            frame["click"] = frame["click"] * 0  # keeps the dtype of the other shards
        frame["conversion"] = frame["conversion"].astype("float64").where(frame["click"] == 1)
        frame.to_parquet(shard, index=False)
    ds = load_from_spec(d / "stream.yaml")
    mem = load_from_spec(d / "mem.yaml")
    _same_fit(ds.preprocessor, mem.preprocessor)
    shard = d / "train" / "part-00002.parquet"
    frame = pd.read_parquet(shard)
    assert int(frame["click"].sum()) > 0
    frame["conversion"] = float("nan")
    frame.to_parquet(shard, index=False)
    with pytest.raises(UserError) as exc:
        load_from_spec(d / "stream.yaml")
    assert str(exc.value) == f"{shard}: label column 'conversion' of task 'cvr' is all missing in this file"


def test_search_with_more_processes_than_row_groups_writes_nothing(tmp_path, monkeypatch, capsys):
    """Issue 12: ``search --nproc 4`` on a streamed train split of 3 row groups is refused in
    one line before the header, the progress bar, the study or an MLflow run exist."""
    d = _generated(tmp_path)
    assert sum(pq.ParquetFile(f).num_row_groups for f in (d / "train").glob("*.parquet")) == 3
    code, out, err = run_main(
        monkeypatch, capsys, tmp_path, "search", "--space", str(REPO / "search_spaces" / "quick.yaml"),
        "--data", str(d / "stream.yaml"), "--n-trials", "2", "--no-references", "--threads", "1",
        "--nproc", "4", "--storage", f"sqlite:///{d / 's.db'}", "--tracking-uri", f"sqlite:///{d / 'm.db'}",
    )  # fmt: skip
    assert code == 2 and "3 row groups with rows, fewer than the 4 processes" in _one_error(err)
    assert "study" not in out and not (d / "s.db").exists() and not (d / "m.db").exists()


@pytest.mark.parametrize("size", ["abc", "-5"])
def test_bad_max_memory_is_refused_before_the_data_is_read(tmp_path, monkeypatch, capsys, size):
    """Issue 12: ``--max-memory`` is parsed when ``train`` starts and named as the flag:
    the data spec given here does not even exist, so any reading would fail differently."""
    (tmp_path / "exp.yaml").write_text(dump_yaml(EXPERIMENT))
    code, _, err = run_main(
        monkeypatch, capsys, tmp_path, "train", "-c", str(tmp_path / "exp.yaml"),
        "--data", str(tmp_path / "missing.yaml"), "-q", "--threads", "1", f"--max-memory={size}",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 2 and _one_error(err).startswith("error: --max-memory: ")
    assert repr(size) in _one_error(err) and not (tmp_path / "run").exists()


def test_memory_estimate_counts_the_collected_validation_predictions(tmp_path, monkeypatch):
    """Issue 12: a streamed split's estimate includes what exact AUC collects on the larger
    of valid/test (1200 rows each here): 4 B x rows x outputs (2 binary tasks: 2 outputs)
    plus 9 B x rows x tasks (float32 label, bool mask, float32 weight) = 1200 x 26 bytes."""
    import mtlsearch.train._fit as fit_module

    d = _generated(tmp_path)
    ds = load_from_spec(d / "stream.yaml")
    config = ExperimentConfig.load(d / "exp.yaml", inputs=ds.input_spec(), tasks=ds.tasks)
    seen = {}

    def capture(config, **kw):
        seen.update(kw)
        raise MemoryLimitExceeded("stop here")

    monkeypatch.setattr(fit_module, "check_memory", capture)
    with pytest.raises(MemoryLimitExceeded):
        fit(config, ds, progress=False)
    held = sum(s.resident_bytes() for s in (ds.train, ds.valid, ds.test))
    assert ds.train.resident_bytes() == 2400 * 34
    assert seen["data_bytes"] == held + 1200 * (4 * 2 + 9 * 2)
