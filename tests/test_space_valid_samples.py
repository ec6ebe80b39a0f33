"""Every configuration a shipped search space can sample is one the builder accepts: no
trial of a committed ``search_spaces/*.yaml`` fails as an invalid sample (a combination the
builder refuses, such as one gate for all tasks over 'own+shared' experts, or a level with no
expert). Random draws through real Optuna trials, both encodings; configs only, no training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from _space_support import Answers, _space

from mtlsearch.arch import CategoricalFeature, ConfigError, InputSpec, TaskSpec, build_model
from mtlsearch.search import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
CHAINED_TASKS = (TaskSpec("ctr", "binary"), TaskSpec("cvr", "binary"), TaskSpec("ctcvr", "binary"))
NUMERIC = InputSpec(n_numeric=5)
WITH_IDS = InputSpec(n_numeric=5, categorical=(CategoricalFeature("u", 10, 4),))
DRAWS = 200


def test_the_shipped_spaces_are_found():
    assert {"wide.yaml", "ple.yaml", "quick.yaml"} <= {p.name for p in SPACES}


@pytest.mark.parametrize("encoding", ["conditional", "fixed"])
@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_sampled_configuration_of_a_shipped_space_is_valid(path, encoding):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load(path)
    tasks = CHAINED_TASKS if space.chained is not None else TASKS
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    invalid: dict[str, int] = {}
    for n in range(DRAWS):
        trial = study.ask()
        inputs = WITH_IDS if n % 2 else NUMERIC  # with and without task-specific embeddings
        try:
            cfg = space.suggest(trial, inputs, tasks, encoding).model
            if n % 10 == 0:  # the builder too, on a sample (keeps the test at a few seconds)
                build_model(cfg)
        except ConfigError as exc:
            key = str(exc)[:120]
            invalid[key] = invalid.get(key, 0) + 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
    assert not invalid, f"{path.name} ({encoding}): {sum(invalid.values())} of {DRAWS} invalid: {invalid}"


SHARING = (
    "levels: 1\nlevel: {n_shared: 2, n_specific: 1, select: {choice: [own+shared, shared, all]}, "
    "gate_sharing: {choice: [per_task, single]}, fusion: %s}\n"
)


@pytest.mark.parametrize("fusion", ["gate", "{choice: [gate, adatt]}"])
def test_one_gate_for_all_tasks_is_not_offered_over_each_tasks_own_experts(fusion):
    """select own+shared forces a gate per task (a single gate cannot mix each task's own
    experts): not sampled under the conditional encoding; drawn but forced under fixed."""
    space = _space(SHARING % fusion)
    for select, sampled in (("own+shared", False), ("shared", True), ("all", True)):
        trial = Answers({"l0.select": select, "l0.gate_sharing": "single", "l0.fusion": "gate"})
        lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
        assert ("l0.gate_sharing" in trial.params) == sampled, select
        assert lv.gate_sharing == ("single" if sampled else "per_task")
        names = list(trial.params)
        if sampled:  # drawn after the select it depends on
            assert names.index("l0.gate_sharing") > names.index("l0.select")
        fixed = Answers(dict(trial.values))
        lv = space.suggest(fixed, NUMERIC, TASKS, "fixed").model.levels[0]
        assert "l0.gate_sharing" in fixed.params and lv.gate_sharing == ("single" if sampled else "per_task")
    # one task: a single gate is the task's gate, own+shared included
    trial = Answers({"l0.select": "own+shared", "l0.gate_sharing": "single", "l0.fusion": "gate"})
    lv = space.suggest(trial, NUMERIC, TASKS[:1], "conditional").model.levels[0]
    assert trial.params["l0.gate_sharing"] == "single" and lv.gate_sharing == "single"


def test_gate_input_and_sharing_are_sampled_only_for_a_level_with_gates():
    space = _space(
        "levels: 1\nlevel: {n_shared: 2, n_specific: 1, select: shared, "
        "gate_kind: {choice: [softmax, none]}, gate_input: {choice: [raw, level]}, "
        "gate_sharing: {choice: [single, per_task]}}\n"
    )
    for kind in ("softmax", "none"):
        trial = Answers({"l0.gate_kind": kind})
        lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
        sampled = {"l0.gate_input", "l0.gate_sharing"} & set(trial.params)
        assert sampled == (set() if kind == "none" else {"l0.gate_input", "l0.gate_sharing"}), kind
        names = list(trial.params)
        assert all(names.index(n) > names.index("l0.gate_kind") for n in sampled)
        expected = ("raw", "single") if kind == "softmax" else ("level", "per_task")  # unread: defaults
        assert (lv.gate_kind, lv.gate_input, lv.gate_sharing) == (kind, *expected)
        fixed = Answers(dict(trial.values))  # NSGA-II: every parameter in every trial
        space.suggest(fixed, NUMERIC, TASKS, "fixed")
        assert {"l0.gate_input", "l0.gate_sharing"} <= set(fixed.params)


def test_a_space_whose_gate_kinds_all_have_gates_samples_gate_input_in_the_old_order():
    level = "levels: 1\nlevel: {select: shared, gate_kind: %s, gate_input: {choice: [level, raw]}}"
    for kinds, in_order in (("{choice: [softmax, topk]}", True), ("{choice: [softmax, none]}", False)):
        trial = Answers()
        _space(level % kinds).suggest(trial, NUMERIC, TASKS, "conditional")
        names = list(trial.params)
        assert (names.index("l0.gate_input") < names.index("l0.gate_kind")) == in_order, names


@pytest.mark.parametrize("select", ["own+shared", "all"])
def test_a_level_without_shared_experts_draws_task_experts_so_every_gate_sees_one(select):
    level = "levels: 1\nlevel: {n_shared: {int: [0, 2]}, n_specific: {int: [0, 3]}, select: SELECT, "
    space = _space(level.replace("SELECT", select) + "per_task: {choice: [false, true]}}\n")
    trial = Answers({"l0.n_shared": 0})  # the low end everywhere else: 0 experts would be drawn
    lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
    assert trial.ranges["l0.n_specific"] == (1, 3) and lv.n_specific == (1, 1)
    trial = Answers({"l0.n_shared": 1})
    lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
    assert trial.ranges["l0.n_specific"] == (0, 3) and lv.n_specific == (0, 0)
    # per task: each task's own (own+shared), or at least one in all (all: the last task's)
    trial = Answers({"l0.n_shared": 0, "l0.per_task": True})
    lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
    assert trial.ranges["l0.n_specific.a"] == ((1, 3) if select == "own+shared" else (0, 3))
    assert trial.ranges["l0.n_specific.b"] == (1, 3) and lv.n_specific == (
        (1, 1) if select == "own+shared" else (0, 1)
    )
    trial = Answers({"l0.n_shared": 0, "l0.per_task": True, "l0.n_specific.a": 2})
    space.suggest(trial, NUMERIC, TASKS, "conditional")
    assert trial.ranges["l0.n_specific.b"] == ((1, 3) if select == "own+shared" else (0, 3))
    # fixed (NSGA-II): the whole range in every trial, the smallest count >= 1 trains
    fixed = Answers({"l0.n_shared": 0})
    lv = space.suggest(fixed, NUMERIC, TASKS, "fixed").model.levels[0]
    assert fixed.ranges["l0.n_specific"] == (0, 3) and fixed.params["l0.n_specific"] == 0
    assert lv.n_specific == (1, 1)


def test_the_fixed_encoding_keeps_one_distribution_per_parameter():
    """NSGA-II: every parameter of wide.yaml's gates is sampled in every trial with the same
    distribution, whatever the trial draws."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load(ROOT / "search_spaces" / "wide.yaml")
    study = optuna.create_study(sampler=optuna.samplers.NSGAIISampler(seed=1, population_size=8))
    seen: dict[str, object] = {}
    for n in range(40):
        trial = study.ask()
        space.suggest(trial, WITH_IDS if n % 2 else NUMERIC, TASKS, "fixed")
        for i in range(space.max_levels):
            for key in ("select", "gate_input", "gate_kind", "gate_sharing", "top_k", "n_shared"):
                assert f"l{i}.{key}" in trial.params
        for name, dist in trial.distributions.items():
            assert seen.setdefault(name, dist) == dist, name
        study.tell(trial, 0.0)
