"""Search spaces: static checks, the trial -> config mapping, references."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from mtlsearch._errors import UserError
from mtlsearch.arch import InputSpec, TaskSpec
from mtlsearch.search import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
INPUTS = InputSpec(n_numeric=5)


def _space(text: str) -> SearchSpace:
    return SearchSpace.from_yaml(text, source="space.yaml")


@pytest.mark.parametrize("name", ["quick", "ple", "wide", "census"])
def test_shipped_spaces_parse_and_mostly_build(name):
    space = SearchSpace.load(ROOT / "search_spaces" / f"{name}.yaml")
    for encoding in ("fixed", "conditional"):
        assert space.check_feasible(INPUTS, TASKS, encoding) > 0.5
    refs = space.reference_configs(INPUTS, TASKS)
    assert "single_task" in refs and refs["single_task"].model.name == "single_task"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("levels: 1\ncolour: red\n", "space.yaml: colour: unknown key"),
        ("level: {n_experts: 3}\n", "space.yaml: level.n_experts: unknown key"),
        ("level: {n_shared: {int: [3, 1]}}\n", "space.yaml: level.n_shared.int: empty range [3, 1]"),
        ("level: {select: {choice: [own+shared, mine]}}\n", "level.select: unknown choice 'mine'"),
        ("level: {gate_kind: hash}\n", "level.gate_kind: unknown choice 'hash'"),
        ("training: {lr: {float: [0.1, 0.01]}}\n", "training.lr.float: empty range"),
        ("training: {optimizer: {choice: [adam, lion]}}\n", "training.optimizer"),
        ("training: {lr: {float: [0.001, 0.01], step: 2, foo: 1}}\n", "training.lr.foo: unknown key"),
        ("reference: {presets: [mmoe, ple2]}\n", "unknown preset 'ple2'"),
        ("level: {n_shared: {uniform: [1, 2]}}\n", "level.n_shared: expected one of 'int'"),
        ("level: {norm: {choice: [none, layer]}}\n", "level.norm: unknown choice 'layer'"),
        ("tower: {norm: group}\n", "tower.norm: unknown choice 'group'"),
        ("embed_init_std: {choice: [0.01, 0]}\n", "embed_init_std: needs numbers > 0, got 0"),
    ],
)
def test_bad_spaces_give_one_error_naming_file_and_key(text, needle):
    with pytest.raises(UserError) as err:
        _space(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_space_that_can_never_build_is_rejected_before_any_trial():
    space = _space("level: {n_shared: 0, n_specific: 0}\n")
    with pytest.raises(UserError, match=r"space.yaml: no combination in this space builds"):
        space.check_feasible(INPUTS, TASKS, "conditional")


def test_missing_space_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"nope\.yaml: search space file not found"):
        SearchSpace.load(tmp_path / "nope.yaml")


def test_same_trial_parameters_give_the_same_config():
    space = SearchSpace.load(ROOT / "search_spaces" / "wide.yaml")
    params = {
        "levels": 2,
        "l0.n_shared": 2,
        "l0.n_specific": 1,
        "l0.per_task": False,
        "l0.expert_hidden": "[64, 32]",
        "l0.activation": "gelu",
        "l0.dropout": 0.1,
        "l0.select": "own+shared",
        "l0.gate_input": "level",
        "l0.gate_kind": "topk",
        "l0.top_k": 3,
        "l0.gate_sharing": "per_task",
        "l0.shared_gate": "auto",
        "l0.fusion": "gate",
        "l0.expert_norm": "none",
        "l1.n_shared": 1,
        "l1.per_task": True,
        "l1.n_specific.a": 0,
        "l1.n_specific.b": 2,
        "l1.expert_hidden": "[32]",
        "l1.activation": "relu",
        "l1.dropout": 0.0,
        "l1.select": "all",
        "l1.gate_input": "raw",
        "l1.gate_kind": "softmax",
        "l1.top_k": 1,
        "l1.gate_sharing": "single",
        "l1.shared_gate": "auto",
        "l1.fusion": "gate",
        "l1.expert_norm": "none",
        "tower.hidden": "[16]",
        "tower.dropout": 0.0,
        "embedding_dim": 8,
        "task_embedding_dim": 0,
        "training.optimizer": "adamw",
        "training.lr": 0.003,
        "training.batch_size": 512,
        "training.weight_decay": 1e-5,
        "training.loss_weighting": "uncertainty",
    }
    a = space.suggest(FixedTrial(params), INPUTS, TASKS, "conditional")
    b = space.suggest(FixedTrial(params), INPUTS, TASKS, "conditional")
    assert a == b
    lv0, lv1 = a.model.levels
    # PLE's rule for shared_gate: auto (every level but the top); top_k capped at the
    # smallest selection (task gate: 1 own + 2 shared = 3 experts, so 3 stays).
    assert lv0.shared_gate and not lv1.shared_gate
    assert lv0.top_k == 3 and lv0.expert_hidden == (64, 32)
    assert lv1.n_specific == (0, 2) and lv1.gate_sharing == "single" and lv1.gate_input == "raw"
    assert a.training.loss_weighting.method == "uncertainty"


def test_fixed_encoding_samples_every_level_so_trials_share_parameters():
    space = SearchSpace.load(ROOT / "search_spaces" / "quick.yaml")

    class Recorder:
        def __init__(self):
            self.names = []

        def suggest_int(self, name, low, high, step=1, log=False):
            self.names.append(name)
            return low

        def suggest_float(self, name, low, high, log=False):
            self.names.append(name)
            return low

        def suggest_categorical(self, name, choices):
            self.names.append(name)
            return choices[0]

    fixed, cond = Recorder(), Recorder()
    space.suggest(fixed, INPUTS, TASKS, "fixed")
    space.suggest(cond, INPUTS, TASKS, "conditional")
    assert "l1.n_shared" in fixed.names  # levels=1 was drawn, level 2 sampled anyway
    assert "l1.n_shared" not in cond.names


def test_norm_and_embedding_init_are_searchable_and_reach_the_config():
    space = _space(
        "levels: 2\n"
        "level: {n_shared: 1, n_specific: 1, norm: {choice: [none, batch]}}\n"
        "tower: {norm: {choice: [none, batch]}}\n"
        "embed_init_std: {choice: [1.0, 1e-4]}\n"  # 1e-4: a float (YAML 1.2), not PyYAML's string
    )
    params = {"l0.norm": "batch", "l1.norm": "none", "tower.norm": "batch", "embed_init_std": 1e-4}
    cfg = space.suggest(FixedTrial(params), INPUTS, TASKS, "conditional").model
    assert [lv.norm for lv in cfg.levels] == ["batch", "none"]
    assert {t.norm for t in cfg.towers} == {"batch"}
    assert cfg.inputs.embed_init_std == 0.0001
    assert {"l0.norm", "l1.norm", "tower.norm", "embed_init_std"} <= set(space._param_leaves(TASKS))


def test_a_space_without_embed_init_std_keeps_the_inputs_own():
    space = _space("levels: 1\nlevel: {n_shared: 1, n_specific: 0}\n")
    inputs = InputSpec(n_numeric=5, embed_init_std=0.5)
    cfg = space.suggest(FixedTrial({}), inputs, TASKS, "conditional").model
    assert cfg.inputs.embed_init_std == 0.5
