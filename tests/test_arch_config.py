"""Config round-trips and the one clear error per invalid field."""

from __future__ import annotations

import pytest

from mtlsearch.arch import (
    PRESETS,
    ArchConfig,
    CategoricalFeature,
    ConfigError,
    InputSpec,
    TaskSpec,
    preset,
)

INPUTS = InputSpec(n_numeric=4, categorical=(CategoricalFeature("c", 10, 4),))
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "multiclass", 3))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml_and_json(name):
    cfg = preset(name, INPUTS, TASKS)
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ArchConfig.from_json(cfg.to_json()) == cfg


def test_round_trip_through_a_file(tmp_path):
    cfg = preset("ple", INPUTS, TASKS, n_levels=3)
    cfg.save(tmp_path / "arch.yaml")
    assert ArchConfig.load(tmp_path / "arch.yaml") == cfg


def test_config_is_immutable():
    cfg = preset("mmoe", INPUTS, TASKS)
    with pytest.raises(AttributeError):
        cfg.levels[0].n_shared = 3  # type: ignore[misc]


def _base() -> dict:
    return preset("ple", INPUTS, TASKS).to_dict()


def _mutate(path: str, value):
    data = _base()
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("levels.0.n_shared", 0, r"levels\[0\]\.n_specific\[1\]"),  # task b's gate: no expert
        ("levels.0.expert_hidden", [0], r"levels\[0\]\.expert_hidden\[0\]"),
        ("levels.0.expert_hidden", [], r"levels\[0\]\.expert_hidden"),
        ("towers.1.hidden", [8, -1], r"towers\[1\]\.hidden\[1\]"),
        ("tasks.0.kind", "ranking", r"tasks\[0\]\.kind"),
        ("tasks.1.n_classes", 1, r"tasks\[1\]\.n_classes"),
        ("levels", [], r"levels"),
        ("levels.0.select", "mine", r"levels\[0\]\.select"),
        ("levels.0.gate_kind", "hash", r"levels\[0\]\.gate_kind"),
        ("levels.0.activation", "swish2", r"levels\[0\]\.activation"),
        ("levels.0.dropout", 1.5, r"levels\[0\]\.dropout"),
        ("levels.0.n_specific", [1], r"levels\[0\]\.n_specific"),
        ("levels.0.colour", "red", r"levels\[0\]\.colour"),
        ("tasks", KeyError, r"model\.tasks"),
        ("levels.1.shared_gate", True, r"levels\[1\]\.shared_gate"),
    ],
)
def test_invalid_configs_raise_one_error_naming_the_field(path, value, field):
    data = _mutate(path, value)
    if path == "levels.0.n_shared":
        data["levels"][0]["n_specific"] = [1, 0]
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        ArchConfig.from_dict(data)


def test_shared_experts_above_a_level_without_shared_gate_are_rejected():
    data = _base()
    data["levels"][0]["shared_gate"] = False
    with pytest.raises(ConfigError, match=r"levels\[0\]\.shared_gate: level 1 has shared experts"):
        ArchConfig.from_dict(data)


def test_topk_larger_than_a_gates_selection_is_rejected():
    data = preset("mmoe", INPUTS, TASKS, n_experts=3).to_dict()
    data["levels"][0].update(gate_kind="topk", top_k=4)
    with pytest.raises(ConfigError, match=r"levels\[0\]\.top_k"):
        ArchConfig.from_dict(data)


def test_int_n_specific_and_single_tower_mapping_are_broadcast():
    data = _base()
    data["levels"][0]["n_specific"] = 3
    data["towers"] = {"hidden": [16]}
    cfg = ArchConfig.from_dict(data)
    assert cfg.levels[0].n_specific == (3, 3)
    assert [t.hidden for t in cfg.towers] == [(16,), (16,)]
