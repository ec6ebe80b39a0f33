"""``max_rows``: a seeded, stratified subsample of the training split for quick runs, taken by
every dataset (``load_dataset(..., max_rows=N)``) and by ``train``, ``baselines``, ``search``
and ``data describe`` as ``--max-rows N``; validation and test keep every row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from _cli import run_main
from _data_helpers import listing, write_shop

from mtlsearch._errors import UserError
from mtlsearch.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
SYNTH = {"n": 1000, "d": 6}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _positions(sub: torch.Tensor, full: torch.Tensor) -> list[int]:
    """Where each row of ``sub`` is in ``full`` (rows are unique random floats here)."""
    out = []
    for row in sub:
        hits = torch.nonzero((full == row).all(dim=1)).flatten().tolist()
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_the_subsample_is_training_rows_only_in_file_order():
    full = load_dataset("synthetic", seed=4, **SYNTH)
    part = load_dataset("synthetic", seed=4, max_rows=150, **SYNTH)
    assert len(full.train) == 800 and len(part.train) == 150
    pos = _positions(part.train.numeric, full.train.numeric)
    assert len(set(pos)) == 150 and pos == sorted(pos)  # distinct rows, the file's order kept
    for task in ("y1", "y2"):  # each label travels with its row
        assert torch.equal(part.train.labels[task], full.train.labels[task][pos])
    for split in ("valid", "test"):  # untouched
        a, b = getattr(full, split), getattr(part, split)
        assert torch.equal(a.numeric, b.numeric)
        assert all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert part.meta["max_rows"] == 150 and part.meta["train_rows"] == 800


def test_the_same_seed_gives_the_same_rows_another_seed_others():
    a = load_dataset("synthetic", seed=1, max_rows=100, **SYNTH)
    b = load_dataset("synthetic", seed=1, max_rows=100, **SYNTH)
    assert torch.equal(a.train.numeric, b.train.numeric)
    # seed 2: another generated table too, so compare which positions were drawn
    full2 = load_dataset("synthetic", seed=2, **SYNTH)
    c = load_dataset("synthetic", seed=2, max_rows=100, **SYNTH)
    full1 = load_dataset("synthetic", seed=1, **SYNTH)
    drawn_1 = _positions(a.train.numeric, full1.train.numeric)
    assert drawn_1 != _positions(c.train.numeric, full2.train.numeric)


def test_max_rows_at_or_above_the_training_rows_keeps_them_all():
    full = load_dataset("synthetic", seed=0, **SYNTH)
    for n in (800, 5000):
        part = load_dataset("synthetic", seed=0, max_rows=n, **SYNTH)
        assert torch.equal(part.train.numeric, full.train.numeric)
        assert part.meta["max_rows"] == n and part.meta["train_rows"] == 800


def test_a_spec_file_takes_max_rows_and_the_strata_keep_their_shares(tmp_path):
    """Strata = every binary task's state (outside its sample space, negative, positive);
    each gets floor(N * n_s / n) rows, the rows still missing go to the largest remainders."""
    spec = write_shop(tmp_path, n=1000)
    full = load_dataset(spec, seed=0)
    part = load_dataset(spec, seed=0, max_rows=101)
    assert len(part.train) == 101 and len(part.valid) == len(full.valid) and len(part.test) == len(full.test)

    def strata(split) -> list[int]:
        codes = []
        for i in range(len(split)):
            code = 0
            for task in ("ctr", "cvr"):  # the binary tasks, in order
                inside = bool(split.masks[task][i])
                code = code * 3 + (1 + int(split.labels[task][i]) if inside else 0)
            codes.append(code)
        return codes

    n = len(full.train)
    sizes = {s: strata(full.train).count(s) for s in set(strata(full.train))}
    got = {s: strata(part.train).count(s) for s in sizes}
    exact = {s: 101 * k / n for s, k in sizes.items()}
    floor = {s: math.floor(v) for s, v in exact.items()}
    extra = 101 - sum(floor.values())
    by_remainder = sorted(sizes, key=lambda s: (-(exact[s] - floor[s]), s))
    want = {s: floor[s] + (s in by_remainder[:extra]) for s in sizes}
    assert got == want and sum(got.values()) == 101


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "12", "abc"])
def test_a_bad_max_rows_is_one_line(bad):
    with pytest.raises(UserError) as err:
        load_dataset("synthetic", max_rows=bad, **SYNTH)
    assert str(err.value) == f"max_rows: must be an integer >= 1, got {bad!r}"


def test_too_few_rows_for_a_task_is_one_line(tmp_path):
    spec = write_shop(tmp_path, n=600)
    with pytest.raises(UserError) as err:
        load_dataset(spec, seed=0, max_rows=1)
    message = str(err.value)
    assert message.startswith("max_rows: 1 training row (of ") and "raise max_rows" in message
    assert "\n" not in message


def test_other_options_are_still_for_built_in_datasets_only(tmp_path):
    spec = write_shop(tmp_path, n=300)
    with pytest.raises(UserError, match=r"options \['group'\] are only for built-in datasets"):
        load_dataset(spec, group=2, max_rows=10)


# ---- the command line -------------------------------------------------------------------------
_main = run_main


def _config(tmp: Path) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "ple_synthetic.yaml").read_text())
    raw["training"]["epochs"] = 1
    path = tmp / "ple.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


_DATA = ("--dataset", "synthetic", "-o", "n=600", "-o", "d=6")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "error: --max-rows: must be an integer >= 1, got 0"),
        ("-5", "error: --max-rows: must be an integer >= 1, got -5"),
        ("abc", "error: --max-rows: must be an integer >= 1, got 'abc'"),
        ("2.5", "error: --max-rows: must be an integer >= 1, got '2.5'"),
    ],
)
@pytest.mark.parametrize("command", ["train", "baselines", "search", "describe"])
def test_a_bad_flag_exits_2_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, command, value, message
):
    work = tmp_path / "work"
    work.mkdir()
    config = _config(tmp_path)
    args = {
        "train": ["train", "--config", str(config), *_DATA, "--out", str(work / "run")],
        "baselines": ["baselines", *_DATA, "--epochs", "1", "--out", str(work / "b.json")],
        "search": [
            "search",
            "--space",
            str(ROOT / "search_spaces/quick.yaml"),
            *_DATA,
            "--no-mlflow",
            "--storage",
            f"sqlite:///{work / 's.db'}",
        ],
        "describe": ["data", "describe", "--dataset", "synthetic", "-o", "n=600"],
    }[command]
    code, _, err = _main(monkeypatch, capsys, work, *args, "--max-rows", value)
    assert code == 2
    assert err.strip() == message
    assert listing(work) == {}


def test_the_flag_and_the_option_must_agree(tmp_path, monkeypatch, capsys):
    code, _, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "data",
        "describe",
        "--dataset",
        "synthetic",
        "-o",
        "n=600",
        "-o",
        "max_rows=50",
        "--max-rows",
        "60",
    )
    assert code == 2 and err.strip() == "error: --max-rows 60 and --option max_rows=50: give one of them"
    code, _, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "data",
        "describe",
        "--dataset",
        "synthetic",
        "-o",
        "n=600",
        "-o",
        "max_rows=0.5",
    )
    assert code == 2 and err.strip() == "error: --option max_rows: must be an integer >= 1, got 0.5"


def test_describe_counts_the_subsample(tmp_path, monkeypatch, capsys):
    code, out, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "data",
        "describe",
        "--dataset",
        "synthetic",
        "-o",
        "n=600",
        "-o",
        "d=4",
        "--max-rows",
        "77",
    )
    assert code == 0, err
    rows = out.split("rows per split")[1].split("features")[0]
    assert [int(n) for n in __import__("re").findall(r"\b\d+\b", rows)] == [77, 60, 60]


def test_train_records_the_subsample_in_metrics_json(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    code, _, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        "--config",
        str(_config(tmp_path)),
        *_DATA,
        "--max-rows",
        "120",
        "--out",
        str(out_dir),
        "--quiet",
        "--threads",
        "1",
    )
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["max_rows"] == {"max_rows": 120, "train_rows": 480}


def test_search_stores_max_rows_so_that_every_worker_trains_on_the_same_rows(tmp_path, monkeypatch, capsys):
    from mtlsearch.search import join, settings_of

    storage = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "search",
        "--space",
        str(ROOT / "search_spaces/quick.yaml"),
        *_DATA,
        "--max-rows",
        "90",
        "--set",
        "training.epochs=1",
        "--references",
        "1",
        "--n-trials",
        "1",
        "--no-mlflow",
        "--storage",
        storage,
        "--study",
        "quick",
        "--quiet",
        "--threads",
        "1",
    )
    assert code == 0, err
    study = optuna.load_study(study_name="quick", storage=storage)
    assert settings_of(study).dataset_options == {"n": 600, "d": 6, "max_rows": 90}
    ctx = join("quick", storage, heartbeat=False, threads=1)  # what another worker loads
    again = load_dataset("synthetic", seed=0, max_rows=90, n=600, d=6)
    assert len(ctx.data.train) == 90 and torch.equal(ctx.data.train.numeric, again.train.numeric)
    assert len(ctx.data.valid) == 60
    # a resume with another subsample is another search
    code, _, err = _main(
        monkeypatch,
        capsys,
        tmp_path,
        "search",
        "--space",
        str(ROOT / "search_spaces/quick.yaml"),
        *_DATA,
        "--max-rows",
        "91",
        "--set",
        "training.epochs=1",
        "--references",
        "1",
        "--n-trials",
        "2",
        "--no-mlflow",
        "--storage",
        storage,
        "--study",
        "quick",
        "--quiet",
    )
    assert code == 2 and "exists with a different space or dataset" in err
    assert np.isfinite(study.trials[0].values[0])
