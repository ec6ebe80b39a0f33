"""Bad input: each case is one clear line naming the file and the column or key, a non-zero
exit from ``mtlsearch data describe``, and nothing written (the data folder and the cache
stay as they were)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import listing, shop_frame, shop_spec, write_spec

from mtlsearch import cli
from mtlsearch._errors import UserError
from mtlsearch.data import load_dataset


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder; the download cache points inside it so 'nothing written' covers it."""
    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTLSEARCH_DATA", raising=False)
    monkeypatch.delenv("MTLSEARCH_SHARED_DATA", raising=False)
    return tmp_path


def fails(
    folder: Path,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """Run the real console entry point; return its one-line message after checking the
    exit status and that no file appeared or changed."""
    before = listing(folder)
    monkeypatch.setattr(sys, "argv", ["mtlsearch", "data", "describe", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert listing(folder) == before
    return err


def spec_with(folder: Path, frame=None, **overrides) -> str:
    (shop_frame() if frame is None else frame).to_csv(folder / "shop.csv", index=False)
    return str(write_spec(folder, shop_spec(**overrides)))


def test_missing_data_file(folder, capsys, monkeypatch) -> None:
    spec = spec_with(folder, files={"path": "nowhere.csv"})
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "nowhere.csv" in err and "no such file" in err


def test_missing_spec_file(folder, capsys, monkeypatch) -> None:
    err = fails(folder, [str(folder / "nope.yaml")], capsys, monkeypatch)
    assert "nope.yaml" in err


def test_unreadable_file(folder, capsys, monkeypatch) -> None:
    (folder / "shop.parquet").write_text("this is not parquet\n")
    spec = str(write_spec(folder, shop_spec(files={"path": "shop.parquet"})))
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "shop.parquet" in err and "PARQUET" in err.upper()


def test_truncated_gzip_file(folder, capsys, monkeypatch) -> None:
    data = gzip.compress(shop_frame().to_csv(index=False).encode())
    (folder / "shop.csv.gz").write_bytes(data[: len(data) // 2])
    spec = str(write_spec(folder, shop_spec(files={"path": "shop.csv.gz"})))
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "shop.csv.gz" in err


def test_empty_file(folder, capsys, monkeypatch) -> None:
    spec = spec_with(folder)
    (folder / "shop.csv").write_text("")
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "shop.csv" in err and "empty" in err


def test_header_only_file(folder, capsys, monkeypatch) -> None:
    spec = spec_with(folder)
    (folder / "shop.csv").write_text(",".join(shop_frame().columns) + "\n")
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "shop.csv" in err and "no data rows" in err


def test_unknown_column_lists_the_closest_names(folder, capsys, monkeypatch) -> None:
    tasks = shop_spec()["tasks"]
    tasks[0] = {"name": "ctr", "label": "clik", "kind": "binary"}
    err = fails(folder, [spec_with(folder, tasks=tasks)], capsys, monkeypatch)
    assert "shop.csv" in err and "'clik'" in err and "'click'" in err


def test_unknown_feature_column(folder, capsys, monkeypatch) -> None:
    spec = spec_with(folder, features={"categorical": ["uid", "devise"]})
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "'devise'" in err and "'device'" in err


def test_binary_label_outside_the_default_set(folder, capsys, monkeypatch) -> None:
    frame = shop_frame()
    frame.loc[17, "click"] = 2
    err = fails(folder, [spec_with(folder, frame)], capsys, monkeypatch)
    assert "shop.csv" in err and "'click'" in err and "'2'" in err


def test_binary_label_outside_the_declared_set(folder, capsys, monkeypatch) -> None:
    frame = shop_frame()
    frame.loc[5, "status"] = "maybe"
    tasks = [
        {
            "name": "happy",
            "label": "status",
            "kind": "binary",
            "positive": ["yes"],
            "negative": ["no"],
        }
    ]
    spec = spec_with(folder, frame, tasks=tasks, features={"categorical": ["uid"], "numeric": ["price"]})
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "'status'" in err and "'maybe'" in err


def test_label_all_missing(folder, capsys, monkeypatch) -> None:
    frame = shop_frame().assign(rating=np.nan)
    err = fails(folder, [spec_with(folder, frame)], capsys, monkeypatch)
    assert "'rating'" in err and "all missing" in err


def test_numeric_feature_with_non_numeric_strings(folder, capsys, monkeypatch) -> None:
    frame = shop_frame().astype({"price": object})
    frame.loc[42, "price"] = "cheap"
    spec = spec_with(folder, frame, features={"categorical": ["uid"], "numeric": ["price", "visits"]})
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "shop.csv" in err and "'price'" in err and "'cheap'" in err


def test_spec_with_an_unknown_key(folder, capsys, monkeypatch) -> None:
    tasks = shop_spec()["tasks"]
    tasks[2] = {"name": "rating", "lable": "rating", "kind": "regression"}
    err = fails(folder, [spec_with(folder, tasks=tasks)], capsys, monkeypatch)
    assert "spec.yaml" in err and "tasks[2].lable" in err and "'label'" in err


def test_spec_with_an_unknown_top_level_key(folder, capsys, monkeypatch) -> None:
    spec = spec_with(folder, splitt={"valid": 0.1})
    err = fails(folder, [spec], capsys, monkeypatch)
    assert "spec.yaml" in err and "splitt" in err


def test_spec_with_a_missing_field(folder, capsys, monkeypatch) -> None:
    spec = shop_spec()
    del spec["files"]
    shop_frame().to_csv(folder / "shop.csv", index=False)
    err = fails(folder, [str(write_spec(folder, spec))], capsys, monkeypatch)
    assert "spec.yaml" in err and "files" in err and "missing" in err


def test_task_missing_a_field(folder, capsys, monkeypatch) -> None:
    tasks = shop_spec()["tasks"]
    del tasks[0]["kind"]
    err = fails(folder, [spec_with(folder, tasks=tasks)], capsys, monkeypatch)
    assert "tasks[0].kind" in err and "missing" in err


def test_split_without_positives_in_validation(folder, capsys, monkeypatch) -> None:
    frame = shop_frame(900)
    frame.iloc[:600].to_csv(folder / "train.csv", index=False)
    frame.iloc[600:750].assign(click=0, buy=0).to_csv(folder / "valid.csv", index=False)
    frame.iloc[750:].to_csv(folder / "test.csv", index=False)
    files = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
    err = fails(folder, [str(write_spec(folder, shop_spec(files=files)))], capsys, monkeypatch)
    assert "valid.csv" in err and "'ctr'" in err and "positive" in err


def test_rare_positives_and_a_random_split(folder, capsys, monkeypatch) -> None:
    # one positive in 600 rows cannot be in both training and validation rows
    frame = shop_frame().assign(click=0, buy=0)
    frame.loc[3, "click"] = 1
    tasks = shop_spec()["tasks"][:1]
    err = fails(folder, [spec_with(folder, frame, tasks=tasks)], capsys, monkeypatch)
    assert "shop.csv" in err and "'ctr'" in err and "positive" in err


def test_unknown_builtin_dataset(folder, capsys, monkeypatch) -> None:
    err = fails(folder, ["--dataset", "census-incme"], capsys, monkeypatch)
    assert "census-incme" in err and "census-income" in err


def test_library_raises_the_same_user_error(folder) -> None:
    frame = shop_frame().assign(rating=np.nan)
    spec = spec_with(folder, frame)
    with pytest.raises(UserError, match=r"'rating'.*all missing"):
        load_dataset(spec)


def test_console_script_exits_non_zero(folder) -> None:
    """The installed entry point, in a fresh process, as a user would run it."""
    import subprocess

    spec = spec_with(folder, files={"path": "nowhere.csv"})
    proc = subprocess.run(
        [sys.executable, "-c", "from mtlsearch.cli import main; main()", "data", "describe", spec],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nowhere.csv" in proc.stderr


def test_unseen_class_outside_training(folder, capsys, monkeypatch) -> None:
    frame = shop_frame(900)
    frame.loc[850, "tier"] = "platinum"  # a class the training rows never show
    frame.iloc[:500].to_csv(folder / "train.csv", index=False)
    frame.iloc[500:].to_csv(folder / "test.csv", index=False)
    spec = write_spec(folder, shop_spec(files={"train": "train.csv", "test": "test.csv"}))
    err = fails(folder, [str(spec)], capsys, monkeypatch)
    assert "test.csv" in err and "'tier'" in err and "'platinum'" in err


def test_spec_is_read_with_safe_load(folder, capsys, monkeypatch) -> None:
    spec = folder / "evil.yaml"
    spec.write_text(f"!!python/object/apply:os.system ['touch {folder / 'pwned'}']\n")
    err = fails(folder, [str(spec)], capsys, monkeypatch)
    assert "evil.yaml" in err
    assert not (folder / "pwned").exists()
