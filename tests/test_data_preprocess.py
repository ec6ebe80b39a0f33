"""The fitted preprocessing: train-only statistics, OOV bucket, missing values, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mtlsearch._errors import UserError
from mtlsearch.data import Preprocessor


@pytest.fixture
def train() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [20.0, 30.0, np.nan, 50.0, 40.0, 30.0],
            "income": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "city": ["a", "a", "b", None, "a", "c"],
            "zip": [101, 101, 102, 103, 101, 102],
        }
    )


def _fit(train: pd.DataFrame, **kw) -> Preprocessor:
    return Preprocessor.fit(train, ["age", "income"], ["city", "zip"], **kw)


def test_numeric_standardised_with_train_statistics(train: pd.DataFrame) -> None:
    pre = _fit(train)
    num, _ = pre.transform(train)
    assert num.dtype == torch.float32
    # age had missing values in train -> an indicator column; income had none -> no indicator
    assert pre.numeric_feature_names == ("age", "age:missing", "income")
    present = np.array(train["age"].notna())
    age = train["age"].to_numpy()[present]
    expected = (age - age.mean()) / age.std()
    np.testing.assert_allclose(num[present, 0].numpy(), expected, rtol=1e-5)
    # missing: imputed with the train mean (0 after scaling) and flagged
    assert num[~present, 0].tolist() == [0.0]
    assert num[:, 1].tolist() == (~present).astype(float).tolist()
    inc = train["income"].to_numpy()
    np.testing.assert_allclose(num[:, 2].numpy(), (inc - inc.mean()) / inc.std(), rtol=1e-5)


def test_statistics_come_from_train_only(train: pd.DataFrame) -> None:
    pre = _fit(train)
    other = train.assign(income=train["income"] * 100.0, city=["z", "a", "a", "a", "a", "a"])
    num, cat = pre.transform(other)
    inc = train["income"].to_numpy()
    np.testing.assert_allclose(num[:, 2].numpy(), (inc * 100 - inc.mean()) / inc.std(), rtol=1e-5)
    city_codes = pre.transform(train)[1][:, 0]
    assert cat[0, 0] == 0  # "z" was never seen in training: OOV bucket
    assert cat[1, 0] == city_codes[0]  # "a" keeps its training code


def test_categorical_codes_oov_and_cardinality(train: pd.DataFrame) -> None:
    pre = _fit(train)
    _, cat = pre.transform(train)
    assert cat.dtype == torch.int64
    # city: a, b, c and missing (its own category) -> 4 codes + the OOV bucket
    assert pre.categorical_cardinalities == (("city", 5), ("zip", 4))
    city = cat[:, 0].tolist()
    assert min(city) >= 1  # every training value has a code of its own
    assert len(set(city)) == 4
    assert city[0] == city[1] == city[4]  # "a"
    assert city[0] == 1  # the most frequent value first
    assert (cat < torch.tensor([5, 4])).all()


def test_min_frequency_sends_rare_values_to_oov(train: pd.DataFrame) -> None:
    pre = _fit(train, min_frequency=2)
    _, cat = pre.transform(train)
    # city: only "a" is seen twice or more; zip: 101 and 102
    assert pre.categorical_cardinalities == (("city", 2), ("zip", 3))
    assert cat[:, 0].tolist() == [1, 1, 0, 0, 1, 0]
    assert (cat[:, 1] == 0).tolist() == [False, False, False, True, False, False]


def test_missing_strings_are_a_category_not_code_minus_one() -> None:
    # pandas 3: astype(str) keeps missing values missing; they must still get a valid code
    df = pd.DataFrame({"s": pd.array(["x", pd.NA, "y", pd.NA], dtype="string")})
    pre = Preprocessor.fit(df, [], ["s"])
    _, cat = pre.transform(df)
    assert (cat >= 0).all()
    assert cat[1, 0] == cat[3, 0] != 0
    assert len(set(cat[:, 0].tolist())) == 3


def test_integer_codes_match_across_int_and_float_columns() -> None:
    # a column read as float because of a gap must encode like the same column read as int
    pre = Preprocessor.fit(pd.DataFrame({"code": [7, 8, 7]}), [], ["code"])
    a = pre.transform(pd.DataFrame({"code": [7, 8]}))[1]
    b = pre.transform(pd.DataFrame({"code": [7.0, 8.0]}))[1]
    c = pre.transform(pd.DataFrame({"code": ["7", "8"]}))[1]
    assert torch.equal(a, b) and torch.equal(a, c)


def test_json_round_trip_transforms_identically(train: pd.DataFrame) -> None:
    pre = _fit(train, min_frequency=2)
    text = json.dumps(pre.to_dict())  # JSON-able: no pickle needed to save it with a model
    again = Preprocessor.from_dict(json.loads(text))
    assert again.numeric_feature_names == pre.numeric_feature_names
    assert again.categorical_cardinalities == pre.categorical_cardinalities
    rows = train.sample(frac=1.0, random_state=0)
    for x, y in zip(pre.transform(rows), again.transform(rows), strict=True):
        assert torch.equal(x, y)


def test_transform_scores_raw_rows_without_labels(train: pd.DataFrame) -> None:
    pre = _fit(train)
    rows = [{"age": 33, "income": 2.5, "city": "b", "zip": 999}]
    num, cat = pre.transform(pd.DataFrame(rows))
    assert num.shape == (1, 3) and cat.shape == (1, 2)
    assert cat[0, 1] == 0  # unseen zip code


def test_missing_column_at_transform_names_it(train: pd.DataFrame) -> None:
    pre = _fit(train)
    with pytest.raises(UserError, match="'income'") as exc:
        pre.transform(train.rename(columns={"income": "incme"}))
    assert "incme" in str(exc.value)  # the closest existing name
    assert "\n" not in str(exc.value)


def test_non_numeric_strings_in_a_numeric_column(train: pd.DataFrame) -> None:
    bad = train.astype({"income": object})
    bad.loc[3, "income"] = "n/a"
    with pytest.raises(UserError, match="income") as exc:
        Preprocessor.fit(bad, ["age", "income"], ["city"])
    assert "'n/a'" in str(exc.value)
    pre = _fit(train)
    with pytest.raises(UserError, match="'n/a'"):
        pre.transform(bad)


def test_constant_and_all_missing_columns() -> None:
    df = pd.DataFrame({"const": [3.0, 3.0, 3.0], "x": [1.0, 2.0, 3.0]})
    num, _ = Preprocessor.fit(df, ["const", "x"], []).transform(df)
    assert torch.isfinite(num).all() and num[:, 0].abs().max() == 0
    empty = df.assign(x=np.nan)
    with pytest.raises(UserError, match=r"'x'.*all missing"):
        Preprocessor.fit(empty, ["x"], [])


def test_transform_is_vectorised_over_many_rows() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    df = pd.DataFrame({"v": rng.normal(size=n), "c": rng.integers(0, 1000, size=n).astype(str)})
    pre = Preprocessor.fit(df, ["v"], ["c"])
    num, cat = pre.transform(df)
    assert num.shape == (n, 1) and cat.shape == (n, 1)
    assert pre.categorical_cardinalities == (("c", 1001),)
