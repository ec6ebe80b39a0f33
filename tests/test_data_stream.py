"""Preprocessing fitted in one streaming pass (mtlsearch.data.stream) equals the in-memory fit
on the same rows: census-income and generated tables; bad shards fail in one line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _cli import run_main
from _data_helpers import shop_frame, write_spec
from conftest import shared_data_dir

from mtlsearch._errors import UserError
from mtlsearch.data import DatasetSpec, Preprocessor, census_spec, load_from_spec, read_table
from mtlsearch.data._builtin import CENSUS_FILES
from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate
from mtlsearch.data._tables import resolve_features
from mtlsearch.data.stream import Counter, Moments, fit_streaming, iter_frames


def assert_same_fit(a: Preprocessor, b: Preprocessor) -> None:
    """Vocabularies, hashing and classes exactly; means and standard deviations to rounding."""
    assert a.categorical == b.categorical
    assert [(n.column, n.indicator) for n in a.numeric] == [(n.column, n.indicator) for n in b.numeric]
    for x, y in zip(a.numeric, b.numeric, strict=True):
        assert x.mean == pytest.approx(y.mean, rel=1e-12, abs=1e-12)
        assert x.std == pytest.approx(y.std, rel=1e-12)
    assert [(t.task, t.classes) for t in a.tasks] == [(t.task, t.classes) for t in b.tasks]
    for x, y in zip(a.tasks, b.tasks, strict=True):
        assert (x.mean is None) == (y.mean is None)
        if x.mean is not None:
            assert x.mean == pytest.approx(y.mean, rel=1e-12) and x.std == pytest.approx(y.std, rel=1e-12)


def test_moments_and_counts_merge_batches_by_hand():
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, 1001)
    v[::10] = np.nan
    m = Moments()
    for part in np.array_split(v, 7):
        m.add(part)
    present = v[~np.isnan(v)]
    assert (m.n, m.missing) == (900, 101)
    assert m.mean == pytest.approx(present.mean(), rel=1e-13)
    assert m.std == pytest.approx(present.std(), rel=1e-13)
    c = Counter()
    for _ in range(40):  # more than one merge group
        c.add(pd.Series(["a", "b", "a"]))
    assert c.counts.sort_index().to_dict() == {"a": 80, "b": 40}


def test_census_income_streaming_equals_in_memory():
    train, test = (shared_data_dir("census-income-kdd") / CENSUS_FILES[k].name for k in ("train", "test"))
    spec = census_spec(train, test)
    ds = load_from_spec(spec)
    result = fit_streaming(spec, batch_rows=30_000)  # 7 batches of the 199,523 training rows
    assert result.rows == len(ds.train) == 199_523
    assert_same_fit(ds.preprocessor, result.preprocessor)
    income = result.tasks["income"]
    assert (income.rows, income.positives) == (199_523, int(ds.train.labels["income"].sum()))


def _shop_spec(path: str, **features) -> dict:
    return {
        "name": "shop",
        "files": {"path": path},
        "split": {"valid": 0.2, "test": 0.2, "seed": 3},
        "features": {"categorical": ["uid", "device"], "exclude": ["status", "rid"], **features},
        "tasks": [
            {"name": "ctr", "label": "click", "kind": "binary"},
            {"name": "cvr", "label": "buy", "kind": "binary", "where": {"click": 1}},
            {"name": "rating", "label": "rating", "kind": "regression"},
            {"name": "tier", "label": "tier", "kind": "multiclass"},
        ],
    }


def _in_memory(spec_path: Path) -> Preprocessor:
    """The in-memory fit on every row of the spec's table."""
    spec = DatasetSpec.load(spec_path)
    frame = read_table(spec.files.path, spec.files)
    numeric, categorical = resolve_features(frame, spec, "rows")
    fs = spec.features
    return Preprocessor.fit(
        frame, numeric, categorical, spec.tasks, min_frequency=fs.min_frequency,
        missing_indicator=fs.missing_indicator, hash_buckets=fs.hash_buckets,
        max_categories=fs.max_categories,
    )  # fmt: skip


def _write_shards(frame: pd.DataFrame, folder: Path, fmt: str) -> None:
    folder.mkdir(exist_ok=True)
    for i, (lo, hi) in enumerate(((0, 400), (400, 700), (700, 1000))):
        part = frame.iloc[lo:hi]
        if fmt == "parquet":
            part.to_parquet(folder / f"part-{i}.parquet", index=False)
        else:
            part.to_csv(folder / f"part-{i}.csv", index=False)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize(
    "features",
    [{}, {"min_frequency": 1, "max_categories": 12}, {"hash_buckets": {"uid": 16}, "min_frequency": 30}],
)
def test_shards_streaming_equals_in_memory(tmp_path, fmt, features):
    frame = shop_frame(n=1000, seed=1)
    frame.loc[frame.index[:400], "rating"] = np.nan  # the first shard's ratings are all missing
    _write_shards(frame, tmp_path / "shards", fmt)
    spec_path = write_spec(tmp_path, _shop_spec("shards", **features))
    with pytest.raises(
        UserError, match=r"part-0\.\w+: label column 'rating' of task 'rating' is all missing in this"
    ):
        fit_streaming(spec_path, batch_rows=97)
    frame.loc[frame.index[0], "rating"] = 3.5
    _write_shards(frame, tmp_path / "shards", fmt)
    result = fit_streaming(spec_path, batch_rows=97)
    assert result.rows == 1000 and len(result.files) == 3
    assert_same_fit(_in_memory(spec_path), result.preprocessor)
    assert result.preprocessor.numeric[0].indicator  # price has gaps
    st = result.tasks
    clicked = frame["click"] == 1
    assert (st["ctr"].rows, st["ctr"].positives) == (1000, int(frame["click"].sum()))
    assert st["cvr"].rows == int(clicked.sum())
    assert st["cvr"].positives == int(frame.loc[clicked, "buy"].sum())
    rating = frame["rating"].dropna()
    assert st["rating"].rows == len(rating) == 601
    # labels are float32 once encoded (as in memory)
    assert st["rating"].moments.mean == pytest.approx(
        rating.to_numpy("float32").mean(dtype="float64"), rel=1e-12
    )
    assert st["tier"].classes == frame["tier"].value_counts().to_dict()


def test_generated_table_streaming_equals_in_memory(tmp_path):
    out = tmp_path / "g"
    cfg = GeneratorConfig(rows=5000, numeric=3, ids=(IdColumn("u", 3000), IdColumn("i", 20)), conversion=True)
    generate(cfg, out, shard_rows=1500)
    frames = list(iter_frames(out, columns=["x0", "u"], batch_rows=1000))
    assert [(len(f), Path(s).name) for f, s in frames][:3] == [
        (1000, "part-00000.parquet"),
        (500, "part-00000.parquet"),
        (1000, "part-00001.parquet"),
    ]
    assert list(frames[1][0].index[:2]) == [1000, 1001]  # rows numbered within their file
    result = fit_streaming(out / "spec.yaml", batch_rows=700)
    assert result.rows == 5000
    assert_same_fit(_in_memory(out / "spec.yaml"), result.preprocessor)
    counts = read_table(out)["u"].value_counts()
    assert len(result.preprocessor.categorical[0].vocab) == int((counts >= 2).sum())


def _one_line(spec_path: Path) -> str:
    with pytest.raises(UserError) as exc:
        fit_streaming(spec_path, batch_rows=50)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_bad_shards(tmp_path, monkeypatch, capsys):
    out = tmp_path / "g"
    generate(GeneratorConfig(rows=600, numeric=2, ids=(IdColumn("u", 50),)), out, shard_rows=200)
    spec = out / "spec.yaml"
    last = out / "part-00002.parquet"
    table = pq.read_table(last)
    pq.write_table(table.drop_columns(["u"]), last)
    assert _one_line(spec) == f"{last}: no column 'u' (the first file of the set, part-00000.parquet, has it)"
    pq.write_table(table.set_column(0, "x0", table["x0"].cast("string")), last)
    assert "column 'x0' is string here but float in the first file" in _one_line(spec)
    pq.write_table(table, last)
    data = last.read_bytes()
    last.write_bytes(data[:-100])  # truncated footer
    assert _one_line(spec).startswith(f"{last}: cannot read as PARQUET (")
    last.write_bytes(data[:4] + b"\0" * (len(data) - 12) + data[-8:])  # footer kept, pages zeroed
    assert _one_line(spec).startswith(f"{last}: cannot read as PARQUET (")
    for p in out.glob("*.parquet"):
        p.unlink()
    assert _one_line(spec) == f"{out}: the folder holds no .parquet/.pq files"
    code, _, err = run_main(monkeypatch, capsys, tmp_path, "data", "scan", str(spec))
    assert code == 2 and err.strip() == f"error: {out}: the folder holds no .parquet/.pq files"


def test_cli_scan_saves_the_streamed_preprocessor(tmp_path, monkeypatch, capsys):
    out = tmp_path / "g"
    generate(
        GeneratorConfig(rows=800, numeric=2, ids=(IdColumn("u", 40),), conversion=True), out, shard_rows=300
    )
    code, stdout, err = run_main(
        monkeypatch, capsys, tmp_path, "data", "scan", str(out / "spec.yaml"), "--save", "pre.json",
        "--batch-rows", "128",
    )  # fmt: skip
    assert code == 0, err
    assert "800 rows in 3 file(s)" in stdout and "ctr" in stdout and "cvr" in stdout
    saved = Preprocessor.load(tmp_path / "pre.json")
    assert_same_fit(_in_memory(out / "spec.yaml"), saved)
    assert not math.isnan(saved.numeric[0].std)
