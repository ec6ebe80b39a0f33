"""Census-Income (KDD) from the real UCI files, checked against the counts published beside
them (SOURCE.txt) and the label correlations the MMoE paper reports.

Each group is loaded once per session (about 5 s each on 2 cores)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import shared_data_dir

from mtlsearch.data import MTLDataset, describe, load_dataset
from mtlsearch.data._builtin import CENSUS_FILES

CENSUS = "census-income-kdd"


def _source_text() -> str:
    return (shared_data_dir(CENSUS) / "SOURCE.txt").read_text()


def _published_rows() -> dict[str, int]:
    text = _source_text()
    return {
        split: int(re.search(rf"census-income\.{name}\.gz\s*:\s*(\d+) rows", text).group(1))
        for split, name in (("train", "data"), ("test", "test"))
    }


def _published_positives(task: str) -> dict[str, int]:
    """Positive counts of 'Task A' (income) / 'Task B' (never married) in SOURCE.txt."""
    block = re.search(rf"Task {task},.*?\n\s*train (\d+) / \d+.*?test (\d+) / \d+", _source_text(), re.S)
    assert block, f"Task {task} not found in SOURCE.txt"
    return {"train": int(block.group(1)), "test": int(block.group(2))}


def _paper_correlation(group: int) -> float:
    text = (shared_data_dir().parent / "reference" / "papers.md").read_text()
    m = re.search(
        r"Absolute Pearson correlation of the labels: ([\d.]+) \(group 1\), ([\d.]+) \(group 2\)",
        text,
    )
    assert m, "the MMoE correlations are not in papers.md"
    return float(m.group(group))


@pytest.fixture(scope="session")
def census1() -> MTLDataset:
    return load_dataset("census-income", data_dir=shared_data_dir(CENSUS), group=1, seed=0)


@pytest.fixture(scope="session")
def census2() -> MTLDataset:
    # the shared root works too: the loader looks in its census-income-kdd/ sub-folder
    return load_dataset("census-income", data_dir=shared_data_dir(), group=2, seed=0)


def test_published_sha256_is_the_one_checked() -> None:
    text = _source_text()
    for f in CENSUS_FILES.values():
        m = re.search(rf"{re.escape(f.name)}\s+\d+\s+([0-9a-f]{{64}})", text)
        assert m and m.group(1) == f.sha256


def test_row_counts_and_the_one_to_one_test_split(census1: MTLDataset) -> None:
    rows = _published_rows()
    assert len(census1.train) == rows["train"]
    assert len(census1.valid) + len(census1.test) == rows["test"]
    assert abs(len(census1.valid) - len(census1.test)) <= 2


@pytest.mark.parametrize(("task", "letter"), [("income", "A"), ("marital", "B")])
def test_group1_label_counts(census1: MTLDataset, task: str, letter: str) -> None:
    published = _published_positives(letter)
    assert int(census1.train.labels[task].sum()) == published["train"]
    held_out = census1.valid.labels[task].sum() + census1.test.labels[task].sum()
    assert int(held_out) == published["test"]
    for split in (census1.train, census1.valid, census1.test):
        assert split.masks[task].all()
    # the seeded 1:1 split is stratified: validation and test see the same positive rate
    rate_v, rate_t = (float(s.labels[task].mean()) for s in (census1.valid, census1.test))
    assert abs(rate_v - rate_t) < 0.002


def test_inputs_leave_out_labels_weight_education_and_marital(census1: MTLDataset) -> None:
    names = set(census1.numeric_features) | {n for n, _ in census1.categorical_features}
    for column in ("instance_weight", "education", "marital_stat", "income_50k"):
        assert column not in names
    # the names file's continuous attributes; the other 31 remaining columns are nominal
    assert set(census1.numeric_features) == {
        "age",
        "wage_per_hour",
        "capital_gains",
        "capital_losses",
        "stock_dividends",
        "num_emp",
        "weeks_worked",
    }
    # 42 fields less the income label, the weight, education, marital status and 7 numeric
    assert len(census1.categorical_features) == 42 - 1 - 1 - 2 - 7


def test_tensors_are_ready_for_the_model(census1: MTLDataset) -> None:
    cards = torch.tensor([c for _, c in census1.categorical_features])
    for split in (census1.train, census1.valid, census1.test):
        assert split.numeric.dtype == torch.float32 and torch.isfinite(split.numeric).all()
        assert split.categorical.dtype == torch.int64
        assert (split.categorical >= 0).all() and (split.categorical < cards).all()
    # standardised with the training rows' statistics
    assert census1.train.numeric.mean(0).abs().max() < 1e-3
    assert (census1.train.numeric.std(0) - 1).abs().max() < 1e-3


def test_group1_label_correlation_matches_the_paper(census1: MTLDataset) -> None:
    summary = describe(census1)
    assert abs(summary.correlation[("income", "marital")]) == pytest.approx(_paper_correlation(1), abs=0.005)
    assert summary.tasks["income"]["train"].positive_rate == pytest.approx(
        _published_positives("A")["train"] / _published_rows()["train"]
    )


def test_group2_education_and_never_married(census2: MTLDataset) -> None:
    assert [t.name for t in census2.tasks] == ["education", "marital"]
    names = set(census2.numeric_features) | {n for n, _ in census2.categorical_features}
    assert not names & {"instance_weight", "education", "marital_stat"}
    assert int(census2.train.labels["marital"].sum()) == _published_positives("B")["train"]
    corr = describe(census2).correlation[("education", "marital")]
    assert abs(corr) == pytest.approx(_paper_correlation(2), abs=0.005)
