"""The trainer on a sample of the real Census-Income (KDD) data, group 1 (income, marital).

The full files are loaded with the papers' protocol (the preprocessing is fitted on all
training rows); training uses a 20,000-row sample of the training split so that the test
stays short.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from _train_support import experiment, one_thread  # noqa: F401
from conftest import shared_data_dir

from mtlsearch._errors import UserError
from mtlsearch.data import census_spec, load_dataset
from mtlsearch.train import fit, load_checkpoint, predict, save_checkpoint


@pytest.fixture(scope="module")
def census():
    folder = shared_data_dir("census-income-kdd")
    data = load_dataset("census-income", data_dir=folder.parent, group=1)
    sample = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:20_000]
    small = replace(
        data,
        train=data.train.take(sample),
        valid=data.valid.take(slice(0, 10_000)),
        test=data.test.take(slice(0, 10_000)),
    )
    return small, folder


@pytest.fixture(scope="module")
def raw_rows(census):
    """Raw rows of the census test file, with the column names the preprocessing expects."""
    _, folder = census
    files = census_spec(folder / "census-income.data.gz", folder / "census-income.test.gz").files
    return pd.read_csv(
        folder / "census-income.test.gz",
        header=None,
        names=list(files.columns),
        skipinitialspace=True,
        na_values=["?"],
        nrows=500,
    )


@pytest.mark.parametrize("name", ["ple", "mmoe"])
def test_ple_and_mmoe_learn_census_within_two_epochs(census, name):
    data, _ = census
    result = fit(experiment(data, name, epochs=2, batch_size=256), data, progress=False)
    # published single-task test AUCs are 0.94 (income) and 0.99 (marital); chance is 0.5
    assert result.valid["income"]["auc"] > 0.85, result.valid
    assert result.valid["marital"]["auc"] > 0.9, result.valid


def test_census_checkpoint_scores_raw_rows_with_unseen_values(census, raw_rows, tmp_path):
    data, _ = census
    result = fit(experiment(data, "cgc", epochs=1, batch_size=512), data, progress=False)
    loaded = load_checkpoint(save_checkpoint(result, data, tmp_path / "ckpt"))
    pred = predict(loaded, raw_rows)
    assert list(pred.columns) == ["income", "marital"] and len(pred) == len(raw_rows)
    assert ((pred >= 0) & (pred <= 1)).all().all()
    unseen = raw_rows.assign(country_self="Atlantis", det_occ_code=999)
    scored = predict(loaded, unseen)
    assert np.isfinite(scored.to_numpy()).all()
    with pytest.raises(UserError, match="country_self"):
        predict(loaded, raw_rows.drop(columns=["country_self"]))
