"""``mtlsearch data generate``: the MMoE synthetic data with Zipf id columns as Parquet shards,
and reading a folder / glob of shards (with its bad inputs) through a dataset spec."""

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
from mtlsearch.data import _generate as gen
from mtlsearch.data import load_dataset, read_table, synthetic_arrays
from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate, id_embeddings
from mtlsearch.data._synthetic import synthetic_labels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _frame(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))], ignore_index=True)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_and_rows_independent_of_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "CHUNK_ROWS", 1000)  # several chunks, cut across shards
    cfg = GeneratorConfig(rows=2500, numeric=3, ids=(IdColumn("u", 50),), conversion=True, seed=4)
    a = generate(cfg, tmp_path / "a", shard_rows=700)
    generate(cfg, tmp_path / "b", shard_rows=700)
    assert [p.name for p in a] == [f"part-0000{i}.parquet" for i in range(4)]
    assert [pq.read_metadata(p).num_rows for p in a] == [700, 700, 700, 400]
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    generate(cfg, tmp_path / "c", shard_rows=2500)  # one shard: the same rows
    pd.testing.assert_frame_equal(_frame(tmp_path / "a"), _frame(tmp_path / "c"))
    generate(GeneratorConfig(**{**cfg.__dict__, "seed": 5}), tmp_path / "d", shard_rows=700)
    assert not _frame(tmp_path / "a").equals(_frame(tmp_path / "d"))


def test_labels_follow_the_equations(tmp_path):
    """noise 0: y is exactly the MMoE label equation of x and the ids' embeddings, with the
    same w, alpha, beta as the in-memory generator of the same seed."""
    cfg = GeneratorConfig(rows=400, numeric=4, ids=(IdColumn("u", 30), IdColumn("i", 7)), noise_std=0.0)
    generate(cfg, tmp_path / "g")
    df = _frame(tmp_path / "g")
    draws = gen._Draws(cfg)
    ref = synthetic_arrays(n=1, d=4, correlation=0.5, seed=0)
    np.testing.assert_allclose(draws.w, ref.w)
    x = df[[f"x{i}" for i in range(4)]].to_numpy(np.float64)
    linear = x @ draws.w.T
    for c, prm in zip(cfg.ids, draws.ids, strict=True):
        ids = df[c.name].to_numpy()
        assert ids.min() >= 0 and ids.max() < c.cardinality
        linear += 0.5 * (id_embeddings(ids, prm.key, 4) @ prm.proj)
    want = synthetic_labels(linear, draws.alpha, draws.beta)
    np.testing.assert_allclose(df[["y1", "y2"]].to_numpy(np.float64), want, rtol=1e-5, atol=1e-4)
    # an id's embedding is a function of (key, id) only: the same vector in any batch
    e = id_embeddings(np.array([3, 5, 3]), 11, 4)
    np.testing.assert_array_equal(e[0], e[2])
    assert not np.allclose(e[0], e[1])
    # and the ids move the labels: within-id label means differ far beyond their noise
    by_id = df.groupby("i")["y1"].mean()
    assert by_id.max() - by_id.min() > 0.5


def test_zipf_counts_and_conversion_only_on_clicks(tmp_path):
    n, card, a = 40_000, 20, 1.0
    cfg = GeneratorConfig(rows=n, numeric=2, ids=(IdColumn("u", card),), zipf=a, conversion=True, seed=1)
    generate(cfg, tmp_path / "g")
    df = _frame(tmp_path / "g")
    counts = np.sort(df["u"].value_counts().to_numpy())[::-1]
    ranks = np.arange(1, card + 1)
    expected = n * ranks**-a / (ranks**-a).sum()  # rank 1: 11,104 rows; rank 2: half of it
    assert counts.size == card
    np.testing.assert_allclose(counts[:5], expected[:5], rtol=0.05)
    assert counts[0] / counts[1] == pytest.approx(2.0, rel=0.06)
    click, conv = df["click"].to_numpy(), df["conversion"].to_numpy()
    assert int((conv & (1 - click)).sum()) == 0  # a conversion only after a click
    assert 0.1 < click.mean() < 0.9 and 0.1 < conv[click == 1].mean() < 0.9


def test_cli_generates_a_spec_that_trains(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    code, stdout, _ = run_main(
        monkeypatch, capsys, tmp_path,
        "data", "generate", "--rows", "3000", "--out", str(out), "--ids", "user:200,item:1e1",
        "--conversion", "--shard-rows", "1000", "--numeric", "4", "--seed", "2", "-q",
    )  # fmt: skip
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "generate.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "spec.yaml",
    ]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    ds = load_dataset(out / "spec.yaml")
    assert [t.name for t in ds.tasks] == ["ctr", "cvr"]
    assert ds.numeric_features == ("x0", "x1", "x2", "x3")
    assert [n for n, _ in ds.categorical_features] == ["user", "item"]
    assert sum(len(s) for s in (ds.train, ds.valid, ds.test)) == 3000
    cvr_rows = ds.train.masks["cvr"]
    assert bool((ds.train.masks["ctr"] & (ds.train.labels["ctr"] == 1)).eq(cvr_rows).all())
    config = tmp_path / "ple.yaml"
    config.write_text(
        (REPO / "examples" / "ple_synthetic.yaml").read_text().replace("epochs: 8", "epochs: 1")
    )
    code, stdout, stderr = run_main(
        monkeypatch, capsys, tmp_path,
        "train", "--config", str(config), "--data", str(out / "spec.yaml"), "--threads", "1", "-q",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, stderr
    assert "cvr" in stdout and (tmp_path / "run" / "metrics.json").is_file()


def test_cli_refuses_a_non_empty_folder_and_bad_ids(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main(
        monkeypatch, capsys, tmp_path, "data", "generate", "--rows", "10", "--out", str(out)
    )
    assert code == 2 and "not empty" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    for bad, word in (("user", "name:cardinality"), ("user:0", "cardinality"), ("x0:5", "already used")):
        code, _, err = run_main(
            monkeypatch, capsys, tmp_path, "data", "generate", "--rows", "10", "--out", str(tmp_path / "n"),
            "--ids", bad,
        )  # fmt: skip
        assert code == 2 and word in err, err
        assert len(err.strip().splitlines()) == 1
    # --force never deletes a folder of other files: only an earlier run's output (generate.json)
    code, _, err = run_main(
        monkeypatch, capsys, tmp_path, "data", "generate", "--rows", "10", "--out", str(out), "--force", "-q"
    )
    assert code == 2 and str(out) in err and "generate.json" in err, err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    gen_out = tmp_path / "g2"
    args = ("data", "generate", "--rows", "10", "--numeric", "2", "--out", str(gen_out), "-q")
    assert run_main(monkeypatch, capsys, tmp_path, *args)[0] == 0
    (gen_out / "extra.txt").write_text("left by the user")
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--seed", "1", "--force")
    assert code == 0, err
    assert sorted(p.name for p in gen_out.iterdir()) == ["generate.json", "part-00000.parquet", "spec.yaml"]
    assert '"seed": 1' in (gen_out / "generate.json").read_text()


def test_cli_refuses_the_current_folder_and_its_ancestors(tmp_path, monkeypatch, capsys):
    """``--out .`` (or a path that resolves to the current folder or above it) would make the
    final rename fail with EBUSY and, under --force, delete the user's working tree."""
    work = tmp_path / "a" / "b"
    (work / "gf").mkdir(parents=True)
    for out, force in ((".", ()), ("gf/..", ("--force",)), ("..", ("--force",)), (str(tmp_path), ())):
        code, _, err = run_main(
            monkeypatch, capsys, work, "data", "generate", "--rows", "10", "--out", out, "-q", *force
        )
        assert code == 2, (out, err)
        assert len(err.strip().splitlines()) == 1 and "current folder" in err and out in err, err
    assert [p.name for p in work.iterdir()] == ["gf"] and not any((work / "gf").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "CHUNK_ROWS", 100)

    def stop(n: int) -> None:
        if n >= 300:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(GeneratorConfig(rows=1000, numeric=2), tmp_path / "g", on_rows=stop)
    assert list(tmp_path.iterdir()) == []


# ---- reading sets of files ---------------------------------------------------------------
@pytest.fixture
def shards(tmp_path: Path) -> Path:
    generate(
        GeneratorConfig(rows=900, numeric=2, ids=(IdColumn("u", 9),), seed=3), tmp_path / "s", shard_rows=300
    )
    return tmp_path / "s"


def test_folder_glob_and_file_read_the_same_rows(shards):
    whole = read_table(shards)
    assert len(whole) == 900 and list(whole.index) == list(range(900))
    pd.testing.assert_frame_equal(whole, read_table(shards / "part-*.parquet"))
    pd.testing.assert_frame_equal(whole.iloc[:300], read_table(shards / "part-00000.parquet"))
    pd.testing.assert_frame_equal(
        whole.iloc[300:].reset_index(drop=True), read_table(shards / "part-0000[12]*")
    )


def _one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as exc:
        read_table(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_sets_of_files(shards, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no data")
    assert _one_line_error(empty) == f"{empty}: the folder holds no .parquet or .csv files"
    assert _one_line_error(tmp_path / "nothing-*.parquet").endswith("no file matches the pattern")

    third = shards / "part-00002.parquet"
    table = pq.read_table(third)
    pq.write_table(table.drop_columns(["x1"]), third)
    assert (
        _one_line_error(shards)
        == f"{third}: no column 'x1' (the first file of the set, part-00000.parquet, has it)"
    )
    pq.write_table(
        table.set_column(table.schema.get_field_index("u"), "u", table["u"].cast(pa.string())), third
    )
    assert _one_line_error(shards) == (
        f"{third}: column 'u' is string here but int64 in the first file of the set (part-00000.parquet)"
    )
    pq.write_table(table, third)
    data = third.read_bytes()
    third.write_bytes(data[: len(data) // 2])  # truncated: no footer
    msg = _one_line_error(shards)
    assert msg.startswith(f"{third}: cannot read as PARQUET (")
    third.write_bytes(b"not parquet at all, just text" * 10)
    assert _one_line_error(shards / "part-*.parquet").startswith(f"{third}: cannot read as PARQUET (")
    # through the CLI: exit 2 and the same one line
    code, _, err = run_main(monkeypatch, capsys, tmp_path, "data", "describe", str(shards / "spec.yaml"))
    assert code == 2 and str(third) in err and len(err.strip().splitlines()) == 1
