"""The dataset spec: parsing, validation errors that name the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlsearch._errors import UserError
from mtlsearch.data import DatasetSpec, MaskSpec, SpecError

BASE = {
    "name": "clicks",
    "files": {"path": "events.csv"},
    "tasks": [
        {"name": "ctr", "label": "click", "kind": "binary"},
        {
            "name": "cvr",
            "label": "buy",
            "kind": "binary",
            "mask": {"column": "click", "values": [1]},
        },
    ],
}


def spec_with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))  # deep copy
    data.update(changes)
    return data


def test_round_trip_is_identity(tmp_path: Path) -> None:
    spec = DatasetSpec.from_dict(
        spec_with(
            features={"numeric": ["age"], "categorical": "auto", "min_frequency": 3},
            split={"valid": 0.2, "test": 0.1, "seed": 7, "stratify": False},
        ),
        base_dir=tmp_path,
    )
    again = DatasetSpec.from_dict(spec.to_dict())
    assert again == spec
    assert DatasetSpec.from_dict(yaml.safe_load(spec.to_yaml())) == spec


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = DatasetSpec.load(path)
    assert spec.files.path == str((tmp_path / "sub" / "events.csv").resolve())


def test_mask_shorthands_mean_the_same_rule() -> None:
    long = DatasetSpec.from_dict(BASE).tasks[1].mask
    where = spec_with(
        tasks=[
            BASE["tasks"][0],
            {"name": "cvr", "label": "buy", "kind": "binary", "where": {"click": 1}},
        ]
    )
    assert DatasetSpec.from_dict(where).tasks[1].mask == long == (MaskSpec("click", values=(1,)),)
    bare = spec_with(
        tasks=[BASE["tasks"][0], {"name": "cvr", "label": "buy", "kind": "binary", "mask": "click"}]
    )
    assert DatasetSpec.from_dict(bare).tasks[1].mask == (MaskSpec("click"),)


def test_label_and_mask_columns_are_reserved() -> None:
    assert DatasetSpec.from_dict(BASE).label_columns == ("click", "buy")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (spec_with(taks=[]), "taks"),
        (spec_with(files={"path": "a.csv", "sepp": ";"}), "files.sepp"),
        (spec_with(split={"vaild": 0.1}), "split.vaild"),
        (
            spec_with(tasks=[{"name": "a", "label": "x", "kind": "binary", "postive": [1]}]),
            "tasks[0].postive",
        ),
    ],
)
def test_unknown_keys_are_named(data: dict, path: str) -> None:
    with pytest.raises(SpecError) as err:
        DatasetSpec.from_dict(data)
    msg = str(err.value)
    assert msg.startswith(f"{path}: unknown key")
    assert "did you mean" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"name": "x", "tasks": BASE["tasks"]}, "files"),
        ({"name": "x", "files": "a.csv"}, "tasks"),
        (spec_with(tasks=[{"name": "a", "kind": "binary"}]), "tasks[0].label"),
        (spec_with(files={"train": "a.csv"}), "files.test"),
    ],
)
def test_missing_fields_are_named(data: dict, path: str) -> None:
    with pytest.raises(SpecError) as err:
        DatasetSpec.from_dict(data)
    assert str(err.value).startswith(f"{path}: missing field")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"tasks": [{"name": "a", "label": "x", "kind": "binray"}]}, "tasks[0].kind"),
        (
            {"tasks": [{"name": "a", "label": "x", "kind": "regression", "positive": [1]}]},
            "tasks[0].positive",
        ),
        (
            {"tasks": [{"name": "a", "label": "x", "kind": "binary", "positive": [1], "threshold": 0.5}]},
            "tasks[0].threshold",
        ),
        (
            {
                "tasks": [
                    {"name": "a", "label": "x", "kind": "binary"},
                    {"name": "a", "label": "y", "kind": "binary"},
                ]
            },
            "tasks[1].name",
        ),
        ({"split": {"valid": 0.6, "test": 0.5}}, "split"),
        ({"split": {"valid": 1.5}}, "split.valid"),
        ({"features": {"numeric": ["click"]}}, "features.numeric"),
        ({"features": {"min_frequency": 0}}, "features.min_frequency"),
        ({"files": {"path": "a.csv", "train": "b.csv"}}, "files.train"),
        ({"files": {"path": "a.csv", "header": False}}, "files.columns"),
        ({"shuffle_buffer": 1000}, "shuffle_buffer"),  # a stream's setting, set without stream: true
    ],
)
def test_invalid_values_name_their_key(change: dict, path: str) -> None:
    with pytest.raises(SpecError) as err:
        DatasetSpec.from_dict(spec_with(**change))
    assert str(err.value).startswith(f"{path}: ")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfiles: a.csv\ntasks:\n  - {name: a, label: y, kind: binary, colour: red}\n")
    with pytest.raises(UserError) as err:
        DatasetSpec.load(bad)
    assert str(err.value).startswith(f"{bad}: tasks[0].colour: unknown key")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        DatasetSpec.load(broken)
    with pytest.raises(UserError, match="no such spec file"):
        DatasetSpec.load(tmp_path / "nope.yaml")
