"""Hashed ids (``hash_buckets``), the top-k cap (``max_categories``) and the trained OOV row
(``min_frequency`` default 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _data_helpers import write_spec

from mtlsearch._errors import UserError
from mtlsearch.arch import build_model, preset
from mtlsearch.data import DatasetSpec, Preprocessor, load_dataset
from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate
from mtlsearch.data._hashing import HASH_KEY, bucket_codes, stable_hash
from mtlsearch.data._preprocess import MISSING, HashedEncoder, category_keys
from mtlsearch.train import ExperimentConfig, TrainConfig, fit

KEYS = ["u1", "u2", "3", "élan", "", "a much longer key with spaces"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hash_is_siphash_with_a_fixed_key_and_pinned_values():
    h = stable_hash(pd.Series(KEYS))
    assert h.dtype == np.uint64
    # pandas' hash_array (SipHash-2-4, key HASH_KEY) of the UTF-8 bytes: pinned here, because a
    # saved model's codes depend on it; if pandas ever changes it this test must fail
    want = pd.util.hash_array(np.array(KEYS, dtype=object), hash_key=HASH_KEY, categorize=False)
    np.testing.assert_array_equal(h, want)
    assert stable_hash(pd.Series(["u1", "u2", "élan"])).tolist() == [
        2984610181246591869,
        223635902931355421,
        2479890473999587497,
    ]
    assert len(set(h.tolist())) == len(KEYS)


_CHILD = """
import json, sys
import pandas as pd
from mtlsearch.data._preprocess import HashedEncoder
keys = json.loads(sys.argv[1])
codes = HashedEncoder("u", 1000).encode(pd.Series(keys + [None]))
print(json.dumps([hash("u1"), codes.tolist()]))
"""


def test_codes_are_the_same_in_processes_with_different_pythonhashseed():
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(KEYS)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outs.append(json.loads(run.stdout))
    assert outs[0][0] != outs[1][0]  # Python's own hash() differs: the salt is really different
    assert outs[0][1] == outs[1][1]  # the bucket codes do not
    enc = HashedEncoder("u", 1000)
    here = enc.encode(pd.Series([*KEYS, None])).tolist()
    assert outs[0][1] == here
    assert here[-1] == 0  # missing
    assert all(1 <= c <= 1000 for c in here[:-1])
    # 3 (int column), 3.0 (float column with a gap) and "3" (text) are one key
    three = here[KEYS.index("3")]
    assert enc.encode(pd.Series([3, 4])).tolist()[0] == three
    assert enc.encode(pd.Series([3.0, np.nan])).tolist() == [three, 0]


def test_buckets_spread_and_missing_is_code_zero():
    keys = category_keys(pd.Series(np.arange(16_000)))
    codes = bucket_codes(keys, 16, MISSING)
    counts = np.bincount(codes, minlength=17)
    assert counts[0] == 0 and counts[1:].min() > 850 and counts[1:].max() < 1150  # 1000 each
    one = bucket_codes(pd.Series([MISSING, "x"]), 1, MISSING)
    assert one.tolist() == [0, 1]


# ---- through a dataset spec --------------------------------------------------------------
def _table(tmp_path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, 300, n),
            "city": rng.choice(["a", "b", "c", "d"], n, p=[0.5, 0.3, 0.15, 0.05]),
            "x": rng.normal(size=n),
            "y": rng.integers(0, 2, n),
        }
    )
    frame.loc[::37, "user"] = None
    frame.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def _spec(**features) -> dict:
    return {
        "name": "t",
        "files": {"path": "t.csv"},
        "split": {"valid": 0.2, "test": 0.2, "seed": 0},
        "features": {"numeric": ["x"], "categorical": ["user", "city"], **features},
        "tasks": [{"name": "y", "label": "y", "kind": "binary"}],
    }


def test_spec_hash_buckets_hash_the_column(tmp_path):
    raw = pd.read_csv(_table(tmp_path))
    ds = load_dataset(write_spec(tmp_path, _spec(hash_buckets={"user": 64})))
    pre = ds.preprocessor
    assert ds.categorical_features == (("user", 65), ("city", 5))
    assert isinstance(pre.categorical[0], HashedEncoder)
    with pytest.raises(UserError, match=r"column 'user' is hashed .*no vocabulary"):
        pre.categorical[0].vocab  # noqa: B018 -- the serving export reads it
    _, cat = pre.transform(raw)
    want = bucket_codes(category_keys(raw["user"]), 64, MISSING)
    np.testing.assert_array_equal(cat[:, 0].numpy(), want)
    assert (cat[torch.tensor(raw["user"].isna().to_numpy()), 0] == 0).all()
    # the preprocessor's JSON round trip keeps the hashing
    back = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back == pre
    assert torch.equal(back.transform(raw)[1], cat)
    # the spec round trip keeps hash_buckets
    spec = DatasetSpec.load(tmp_path / "spec.yaml")
    assert spec.features.hash_buckets == {"user": 64}
    assert DatasetSpec.from_dict(yaml.safe_load(spec.to_yaml())).features.hash_buckets == {"user": 64}


def test_hash_buckets_under_auto_make_a_numeric_column_categorical(tmp_path):
    _table(tmp_path)
    ds = load_dataset(
        write_spec(tmp_path, {**_spec(hash_buckets={"user": 8}), "features": {"hash_buckets": {"user": 8}}})
    )
    assert ds.numeric_features == ("x",)
    assert ds.categorical_features == (("user", 9), ("city", 5))


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"hash_buckets": {"user": 0}}, "features.hash_buckets.user: expected a number of buckets"),
        ({"hash_buckets": {"x": 8}}, "features.hash_buckets.x: the column is listed in features.numeric"),
        ({"hash_buckets": {"zip": 8}}, "features.hash_buckets.zip: not in features.categorical"),
        ({"hash_buckets": [8]}, "features.hash_buckets: expected a mapping"),
        ({"max_categories": 0}, "features.max_categories: expected an integer >= 1"),
    ],
)
def test_bad_hash_and_cap_options(tmp_path, features, message):
    _table(tmp_path)
    with pytest.raises(UserError) as exc:
        load_dataset(write_spec(tmp_path, _spec(**features)))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_hashed_column_missing_from_the_file(tmp_path):
    _table(tmp_path)
    spec = {**_spec(), "features": {"hash_buckets": {"usr": 8}}}
    with pytest.raises(UserError, match=r"no column 'usr' \(features.hash_buckets\); closest: 'user'"):
        load_dataset(write_spec(tmp_path, spec))


def test_max_categories_keeps_the_most_frequent(tmp_path):
    raw = pd.read_csv(_table(tmp_path))
    ds = load_dataset(write_spec(tmp_path, _spec(max_categories=2, min_frequency=1)))
    city = ds.preprocessor.categorical[1]
    assert city.vocab == ("a", "b")  # a: 50%, b: 30% of the rows
    _, cat = ds.preprocessor.transform(raw)
    assert (cat[torch.tensor(raw["city"].isin(["c", "d"]).to_numpy()), 1] == 0).all()


# ---- the OOV row is trained --------------------------------------------------------------
@pytest.fixture(scope="module")
def ids_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ids") / "g"
    cfg = GeneratorConfig(rows=3000, numeric=3, ids=(IdColumn("u", 4000),), zipf=1.1, seed=7)
    generate(cfg, out)
    return out


def _oov_rows(ids_folder: Path, tmp_path: Path, **features) -> tuple:
    spec = yaml.safe_load((ids_folder / "spec.yaml").read_text())
    spec["files"]["path"] = str(ids_folder)
    spec["features"].update(features)
    ds = load_dataset(write_spec(tmp_path, spec))
    cfg = ExperimentConfig(
        model=preset("mmoe", ds.input_spec(), ds.tasks, expert_hidden=(8,), tower=(4,)),
        training=TrainConfig(epochs=1, batch_size=256, lr=1e-2, seed=0),
    )
    before = build_model(cfg.model, seed=0).state_dict()
    after = fit(cfg, ds, progress=False).model.state_dict()
    (key,) = [k for k in after if k.endswith("tables.0.weight")]
    return ds, before[key], after[key]


def test_rare_training_ids_train_the_oov_row(ids_folder, tmp_path):
    ds, before, after = _oov_rows(ids_folder, tmp_path)  # min_frequency: the default, 2
    pre = ds.preprocessor
    assert ds.meta["spec"]["features"]["min_frequency"] == 2
    train_codes = ds.train.categorical[:, 0]
    assert int((train_codes == 0).sum()) > 100  # the training singletons share code 0
    seen = torch.bincount(train_codes, minlength=pre.categorical[0].cardinality)[1:]
    assert int(seen.min()) >= 2  # every value with a code of its own was seen twice or more
    # a value never seen in training gets code 0 in the test rows
    assert pre.categorical[0].encode(pd.Series([pre.categorical[0].vocab[0], "999999"])).tolist() == [1, 0]
    assert int((ds.test.categorical[:, 0] == 0).sum()) > 0
    assert not torch.equal(before[0], after[0])  # the OOV row moved in one epoch


def test_min_frequency_one_leaves_the_oov_row_untrained(ids_folder, tmp_path):
    ds, before, after = _oov_rows(ids_folder, tmp_path, min_frequency=1)
    assert int((ds.train.categorical[:, 0] == 0).sum()) == 0
    assert torch.equal(before[0], after[0])  # never looked up in training: its initial draw
    assert not torch.equal(before[1], after[1])
