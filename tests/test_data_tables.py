"""User tables end to end: splits, train-only preprocessing, labels and masks, raw-row scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtlsearch.data import DatasetSpec, Preprocessor, describe, load_dataset, load_from_spec
from mtlsearch.data._tables import split_indices


def events(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Impressions with a click, a purchase only after a click, and mixed feature types."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(1)
    age[rng.random(n) < 0.1] = np.nan
    click = (rng.random(n) < 0.3).astype(int)
    buy = click * (rng.random(n) < 0.3).astype(int)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "age": age,
            "city": rng.choice(["paris", "rome", "oslo", None], n, p=[0.5, 0.3, 0.15, 0.05]),
            "device": rng.integers(0, 5, n),
            "spend": rng.gamma(2.0, 10.0, n),
            "segment": rng.choice(["1", "2", "10"], n),
            "click": click,
            "buy": buy,
        }
    )


def write_spec(tmp_path: Path, data: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


SPEC = {
    "name": "shop",
    "files": {"path": "events.csv"},
    "features": {"numeric": ["age"], "categorical": ["city", "device"], "exclude": ["id"]},
    "split": {"valid": 0.2, "test": 0.2},
    "tasks": [
        {"name": "ctr", "label": "click", "kind": "binary"},
        {"name": "cvr", "label": "buy", "kind": "binary", "where": {"click": 1}},
        {"name": "spend", "label": "spend", "kind": "regression"},
        {"name": "segment", "label": "segment", "kind": "multiclass"},
    ],
}


@pytest.fixture()
def shop(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = events()
    frame.to_csv(tmp_path / "events.csv", index=False)
    return write_spec(tmp_path, SPEC), frame


def test_single_file_split_is_a_seeded_partition(shop) -> None:
    spec, frame = shop
    a = load_dataset(spec, seed=1)
    b = load_dataset(spec, seed=1)
    c = load_dataset(spec, seed=2)
    assert sum(len(s) for s in (a.train, a.valid, a.test)) == len(frame)
    assert len(a.valid) == pytest.approx(0.2 * len(frame), abs=4)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split).numeric, getattr(b, split).numeric)
    assert not torch.equal(a.valid.numeric, c.valid.numeric)


def test_split_seed_in_the_spec_wins_over_the_callers(tmp_path: Path) -> None:
    events().to_csv(tmp_path / "events.csv", index=False)
    spec = write_spec(tmp_path, {**SPEC, "split": {"valid": 0.2, "test": 0.2, "seed": 5}})
    assert torch.equal(load_dataset(spec, seed=1).valid.numeric, load_dataset(spec, seed=2).valid.numeric)


def test_split_indices_stratify_rare_positives() -> None:
    strata = np.zeros(1000, dtype=np.int64)
    strata[:20] = 1  # 2% positives
    rest, valid, test = split_indices(1000, (0.1, 0.1), strata, seed=3)
    assert np.array_equal(np.sort(np.concatenate([rest, valid, test])), np.arange(1000))
    assert (strata[valid] == 1).sum() == 2 and (strata[test] == 1).sum() == 2


def test_preprocessing_is_fitted_on_training_rows_only(tmp_path: Path) -> None:
    frame = events()
    train, valid, test = frame.iloc[:400], frame.iloc[400:500].copy(), frame.iloc[500:].copy()
    test.loc[test.index[:5], "city"] = "lima"  # never seen in training
    test.loc[test.index[5:10], "age"] = 1000.0  # would move a mean fitted on all rows
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    files = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
    ds = load_from_spec(write_spec(tmp_path, {**SPEC, "files": files}))
    age = ds.preprocessor.numeric[0]
    assert age.mean == pytest.approx(train["age"].mean())
    assert age.std == pytest.approx(train["age"].std(ddof=0))
    city = ds.preprocessor.categorical[0]
    assert "lima" not in city.vocab
    assert (ds.test.categorical[:5, 0] == 0).all()  # the OOV bucket
    assert (ds.train.categorical[:, 0] > 0).all()  # min_frequency 1: every training value known


def test_missing_values_get_an_indicator_and_a_category(shop) -> None:
    spec, _ = shop
    ds = load_dataset(spec)
    assert ds.numeric_features == ("age", "age:missing")
    raw = pd.read_csv(Path(ds.meta["spec"]["files"]["path"]))
    pre = ds.preprocessor
    num, cat = pre.transform(raw)
    missing = torch.tensor(raw["age"].isna().to_numpy())
    assert (num[missing, 0] == 0).all() and (num[missing, 1] == 1).all() and (num[~missing, 1] == 0).all()
    city_codes = cat[:, 0][torch.tensor(raw["city"].isna().to_numpy())]
    assert (city_codes == 1 + pre.categorical[0].vocab.index("<missing>")).all()


def test_min_frequency_sends_rare_values_to_the_oov_bucket(tmp_path: Path) -> None:
    frame = events()
    frame.loc[:2, "city"] = "tiny"  # 3 rows
    frame.to_csv(tmp_path / "events.csv", index=False)
    data = {
        **SPEC,
        "features": {**SPEC["features"], "min_frequency": 5},
        "split": {"valid": 0.1, "test": 0.1},
    }
    ds = load_dataset(write_spec(tmp_path, data))
    assert "tiny" not in ds.preprocessor.categorical[0].vocab
    _, cat = ds.preprocessor.transform(frame.iloc[:3])
    assert (cat[:, 0] == 0).all()


def test_labels_and_sample_spaces(shop) -> None:
    spec, frame = shop
    ds = load_dataset(spec)
    pre = ds.preprocessor
    labels, masks = pre.transform_targets(frame)
    assert torch.equal(masks["cvr"], torch.tensor(frame["click"].to_numpy() == 1))
    assert masks["ctr"].all() and masks["spend"].all()
    assert torch.equal(labels["ctr"], torch.tensor(frame["click"].to_numpy(np.float32)))
    # multiclass classes in numeric order, whatever the dtype they were read with
    segment = pre.tasks[3]
    assert segment.classes == ("1", "2", "10")
    assert [t.n_classes for t in ds.tasks] == [None, None, None, 3]
    expected = frame["segment"].map({"1": 0, "2": 1, "10": 2}).to_numpy()
    assert torch.equal(labels["segment"], torch.tensor(expected))


def test_binary_label_transforms(tmp_path: Path) -> None:
    frame = events()
    frame["outcome"] = np.where(frame["click"] == 1, "yes", "no")
    frame.to_csv(tmp_path / "events.csv", index=False)
    data = {
        **SPEC,
        "tasks": [
            {
                "name": "by_set",
                "label": "outcome",
                "kind": "binary",
                "positive": ["yes"],
                "negative": ["no"],
            },
            {"name": "by_threshold", "label": "spend", "kind": "binary", "threshold": 25.0},
        ],
    }
    ds = load_dataset(write_spec(tmp_path, data))
    labels, _ = ds.preprocessor.transform_targets(frame)
    assert torch.equal(labels["by_set"], torch.tensor(frame["click"].to_numpy(np.float32)))
    assert torch.equal(labels["by_threshold"], torch.tensor((frame["spend"] > 25).to_numpy(np.float32)))


def test_missing_labels_leave_the_sample_space(tmp_path: Path) -> None:
    frame = events()
    frame.loc[frame.index[::7], "spend"] = np.nan
    frame.to_csv(tmp_path / "events.csv", index=False)
    ds = load_dataset(write_spec(tmp_path, SPEC))
    _, masks = ds.preprocessor.transform_targets(frame)
    assert torch.equal(masks["spend"], torch.tensor(frame["spend"].notna().to_numpy()))


def test_auto_features_follow_dtypes_and_skip_labels(tmp_path: Path) -> None:
    frame = events()
    frame.to_parquet(tmp_path / "events.parquet")
    data = {**SPEC, "files": {"path": "events.parquet"}, "features": {"exclude": ["id"]}}
    ds = load_dataset(write_spec(tmp_path, data))
    numeric = {n for n in ds.numeric_features if not n.endswith(":missing")}
    assert numeric == {"age", "device"}  # spend and segment are labels, id excluded
    assert [n for n, _ in ds.categorical_features] == ["city"]


def test_saved_preprocessor_scores_raw_rows(tmp_path: Path) -> None:
    frame = events()
    for name, part in (
        ("train", frame.iloc[:400]),
        ("valid", frame.iloc[400:500]),
        ("test", frame.iloc[500:]),
    ):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    files = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
    ds = load_from_spec(write_spec(tmp_path, {**SPEC, "files": files}))
    path = tmp_path / "pre.json"
    ds.preprocessor.save(path)
    json.loads(path.read_text())  # plain JSON, no pickle
    restored = Preprocessor.load(path)
    assert restored == ds.preprocessor
    # raw rows as a scoring request would send them: dicts, no label columns
    rows = frame.iloc[500:].drop(columns=["click", "buy", "spend", "segment"]).to_dict("records")
    num, cat = restored.transform(rows)
    assert torch.equal(num, ds.test.numeric) and torch.equal(cat, ds.test.categorical)


def test_shuffled_batches_cover_each_row_once(shop) -> None:
    spec, _ = shop
    ds = load_dataset(spec)
    ids = torch.arange(len(ds.train), dtype=torch.float32)
    split = type(ds.train)(ds.train.numeric, ds.train.categorical, {"id": ids}, {"id": ids > -1})
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([b.labels["id"] for b in split.batches(64, shuffle=True, generator=gen)])
    assert torch.equal(seen.sort().values, ids)
    again = torch.cat(
        [b.labels["id"] for b in split.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0))]
    )
    assert torch.equal(seen, again)


def test_describe_reports_rates_masks_and_correlation(shop) -> None:
    spec, _ = shop
    ds = load_dataset(spec)
    s = describe(ds)
    assert s.rows == {"train": len(ds.train), "valid": len(ds.valid), "test": len(ds.test)}
    train_click = ds.train.labels["ctr"]
    assert s.tasks["ctr"]["train"].positive_rate == pytest.approx(float(train_click.mean()))
    assert s.tasks["cvr"]["train"].masked == pytest.approx(1 - float(train_click.mean()))
    spend = ds.train.labels["spend"]
    assert s.tasks["spend"]["train"].mean == pytest.approx(float(spend.mean()), rel=1e-5)
    assert set(s.correlation) == {("ctr", "cvr"), ("ctr", "spend"), ("cvr", "spend")}
    assert np.isnan(s.correlation[("ctr", "cvr")])  # ctr is constant where cvr applies
    expected = np.corrcoef(train_click.numpy(), spend.numpy())[0, 1]
    assert s.correlation[("ctr", "spend")] == pytest.approx(expected, abs=1e-6)


def test_spec_object_and_file_give_the_same_data(shop) -> None:
    spec_path, _ = shop
    spec = DatasetSpec.load(spec_path)
    a, b = load_from_spec(spec), load_dataset(spec_path)
    assert torch.equal(a.train.categorical, b.train.categorical)
