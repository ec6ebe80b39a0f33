"""A trial's recorded parameters are what trained: a value another parameter forces is not
sampled (conditional encoding), and ESMM errors in a space name the sub-field."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from _space_support import Answers, _space

from mtlsearch._errors import UserError
from mtlsearch.arch import CategoricalFeature, InputSpec, TaskSpec
from mtlsearch.search import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
NUMERIC = InputSpec(n_numeric=5)
WITH_IDS = InputSpec(n_numeric=5, categorical=(CategoricalFeature("u", 10, 4),))


def test_adatt_fusion_does_not_sample_select_under_the_conditional_encoding():
    space = _space(
        "levels: 2\nlevel: {n_shared: 2, n_specific: 1, fusion: {choice: [adatt, gate]}, "
        "select: {choice: [shared, own+shared, all]}}\n"
    )
    trial = Answers({"l0.fusion": "adatt", "l1.fusion": "gate", "l0.select": "shared", "l1.select": "shared"})
    cfg = space.suggest(trial, NUMERIC, TASKS, "conditional").model
    assert [lv.fusion for lv in cfg.levels] == ["adatt", "gate"]
    assert [lv.select for lv in cfg.levels] == ["all", "shared"]
    assert "l0.select" not in trial.params and trial.params["l1.select"] == "shared"
    # fixed (NSGA-II): every trial has the same parameters; the forced value is what trains
    fixed = Answers(dict(trial.values))
    cfg = space.suggest(fixed, NUMERIC, TASKS, "fixed").model
    assert [lv.select for lv in cfg.levels] == ["all", "shared"]
    assert {"l0.select", "l1.select"} <= set(fixed.params)


def test_a_space_without_adatt_samples_in_the_old_order():
    """Only a space whose fusion can be adatt draws select later (after fusion)."""
    level = "level: {select: {choice: [shared, all]}, gate_input: {choice: [level, raw]}, fusion: %s}\n"
    for fusion, select_first in (("gate", True), ("{choice: [gate, adatt]}", False)):
        trial = Answers()
        _space(level % fusion).suggest(trial, NUMERIC, TASKS, "conditional")
        names = list(trial.params)
        assert (names.index("l0.select") < names.index("l0.gate_input")) == select_first, names


def test_task_embedding_dim_is_sampled_only_for_data_with_categorical_features():
    space = SearchSpace.load(ROOT / "search_spaces" / "wide.yaml")
    for encoding in ("conditional", "fixed"):
        trial = Answers({"task_embedding_dim": 8, "l0.gate_sharing": "single", "l0.select": "shared"})
        cfg = space.suggest(trial, NUMERIC, TASKS, encoding).model
        assert "task_embedding_dim" not in trial.params and cfg.inputs.task_embedding_dim == 0
        assert cfg.levels[0].gate_sharing == "single"  # no task tables: nothing forces per-task gates
        trial = Answers({"task_embedding_dim": 8, "l0.gate_sharing": "single", "l0.select": "shared"})
        cfg = space.suggest(trial, WITH_IDS, TASKS, encoding).model
        assert trial.params["task_embedding_dim"] == 8 and cfg.inputs.task_embedding_dim == 8
        assert cfg.levels[0].gate_sharing == "per_task"  # STEM: every gate per task
        assert ("l0.gate_sharing" in trial.params) == (encoding == "fixed")


@pytest.mark.parametrize("inputs", [NUMERIC, WITH_IDS], ids=["numeric", "ids"])
def test_every_recorded_parameter_of_a_wide_search_is_what_trained(inputs):
    """Real Optuna trials (random sampler) over wide.yaml: each recorded value of select,
    gate_sharing, gate_input and task_embedding_dim equals the built config's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load(ROOT / "search_spaces" / "wide.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen_adatt = 0
    for _ in range(60):
        trial = study.ask()
        try:
            cfg = space.suggest(trial, inputs, TASKS, "conditional").model
        except Exception:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        params = trial.params
        if "task_embedding_dim" in params:
            assert params["task_embedding_dim"] == cfg.inputs.task_embedding_dim
        else:
            assert inputs is NUMERIC and cfg.inputs.task_embedding_dim == 0
        for i, lv in enumerate(cfg.levels):
            assert params[f"l{i}.fusion"] == lv.fusion
            if lv.fusion == "adatt":
                seen_adatt += 1
                assert f"l{i}.select" not in params and lv.select == "all"
            else:
                assert params[f"l{i}.select"] == lv.select
            if f"l{i}.gate_sharing" in params:
                assert params[f"l{i}.gate_sharing"] == lv.gate_sharing
            else:  # forced per task (STEM, or a gate per task over its own experts) or unread
                forced = cfg.inputs.task_embedding_dim > 0 or lv.select == "own+shared"
                assert (forced or lv.gate_kind == "none") and lv.gate_sharing == "per_task"
            if f"l{i}.gate_input" in params:
                assert params[f"l{i}.gate_input"] == lv.gate_input
            else:  # a level without gates reads no input
                assert lv.gate_kind == "none" and lv.gate_input == "level"
        study.tell(trial, 0.0)
    assert seen_adatt > 0


@pytest.mark.parametrize(
    ("chained", "field"),
    [
        ("{task: ctcvr, product_of: [ctr, 3]}", "chained.product_of[1]"),
        ("{task: ctcvr, product_of: [ctr, '']}", "chained.product_of[1]"),
        ("{task: ctcvr, product_of: [ctr]}", "chained.product_of"),
        ("{task: ctcvr, product_of: [ctr, ctr]}", "chained.product_of[1]"),
        ("{task: ctcvr, product_of: [ctr, ctcvr]}", "chained.product_of[1]"),
        ("{task: 5, product_of: [ctr, cvr]}", "chained.task"),
        ("{task: ctcvr, product_of: [ctr, cvr], enabled: {choice: [true, 2]}}", "chained.enabled"),
        ("{task: ctcvr, product_of: [ctr, cvr], loss: {choice: [none, bad]}}", "chained.loss"),
        ("{task: ctcvr, product_of: [ctr, cvr], ips_weight: {choice: [0.1, -1]}}", "chained.ips_weight"),
        ("{task: ctcvr, product_of: [ctr, cvr], lossy: 1}", "chained.lossy"),
    ],
)
def test_esmm_errors_name_the_sub_field(chained, field):
    with pytest.raises(UserError) as err:
        _space(f"chained: {chained}\n")
    message = str(err.value)
    assert f"space.yaml: {field}:" in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("kinds", "field"),
    [
        ({"ctr": "binary", "cvr": "regression", "ctcvr": "binary"}, "chained.product_of[1]"),
        ({"ctr": "binary", "cvr": "binary", "ctcvr": "regression"}, "chained.task"),
        ({"ctr": "binary", "ctcvr": "binary"}, "chained.product_of[1]"),  # the data lacks cvr
    ],
)
def test_esmm_errors_against_the_data_name_the_sub_field(kinds, field):
    space = _space("chained: {task: ctcvr, product_of: [ctr, cvr], enabled: {choice: [false, true]}}\n")
    tasks = tuple(TaskSpec(n, k) for n, k in kinds.items())
    with pytest.raises(UserError) as err:
        space.check_feasible(NUMERIC, tasks, "conditional", draws=4)
    message = str(err.value)
    assert message.startswith(f"space.yaml: {field}: ") and "\n" not in message, message


def test_arch_show_prints_the_chained_task_and_the_factor_loss(tmp_path, monkeypatch, capsys):
    from _cli import run_main

    code, out, err = run_main(
        monkeypatch, capsys, tmp_path, "arch", "show", str(ROOT / "examples" / "esmm_aliexpress.yaml")
    )
    assert code == 0, err
    assert "chained tasks: ctcvr=ctr*cvr cvr:ips0.1" in out
    code, out, err = run_main(
        monkeypatch, capsys, tmp_path, "arch", "show", str(ROOT / "examples" / "ple_synthetic.yaml")
    )
    assert code == 0 and "chained" not in out, err


def test_a_plain_postgresql_url_names_the_psycopg2_form():
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3 (not installed); the one-line error says
    what to write instead. Fails on the driver import, before any connection."""
    from mtlsearch.search._storage import open_storage

    with pytest.raises(UserError) as err:
        open_storage("postgresql://postgres@127.0.0.1:5432/test")
    message = str(err.value)
    assert "cannot open (ImportError" in message and "\n" not in message
    assert message.endswith("use postgresql+psycopg2://postgres@127.0.0.1:5432/test"), message


def test_a_written_config_leaves_an_unset_device_out_and_reads_back_equal():
    """export's config.yaml (ExperimentConfig.save) and every checkpoint's config: no
    ``device: null``; a set device is kept."""
    from dataclasses import replace

    from mtlsearch.train import ExperimentConfig

    space = SearchSpace.load(ROOT / "search_spaces" / "quick.yaml")
    cfg = space.suggest(Answers(), NUMERIC, TASKS, "conditional")
    assert cfg.training.device is None and "device" in cfg.to_dict()["training"]
    text = cfg.to_yaml()
    assert "device" not in text and ExperimentConfig.from_yaml(text) == cfg
    on_cpu = replace(cfg, training=replace(cfg.training, device="cpu"))
    assert "device: cpu" in on_cpu.to_yaml() and ExperimentConfig.from_yaml(on_cpu.to_yaml()) == on_cpu


def test_generate_cache_writes_a_spec_whose_splits_are_cached(tmp_path, monkeypatch, capsys):
    from _cli import run_main

    from mtlsearch.data import load_dataset

    monkeypatch.setenv("MTLSEARCH_CACHE", str(tmp_path / "cache"))
    args = ("data", "generate", "--rows", "300", "--numeric", "2", "--ids", "u:9", "--cache", "-q")
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--out", "gen")
    assert code == 0, err
    assert "cache: true" in (tmp_path / "gen" / "spec.yaml").read_text()
    first = load_dataset(str(tmp_path / "gen" / "spec.yaml"))
    assert len(list((tmp_path / "cache" / "encoded").iterdir())) == 1
    again = load_dataset(str(tmp_path / "gen" / "spec.yaml"))
    assert again.train.numeric.shape == first.train.numeric.shape == (240, 2)
    assert again.train.categorical.equal(first.train.categorical)


def test_a_gate_setting_is_sampled_only_for_a_gate_kind_that_reads_it():
    """top_k (topk, noisy_top_k, dselect_k), balance_weight (noisy_top_k), smooth_step_gamma and
    entropy_weight (dselect_k): drawn after gate_kind, and only when the drawn kind reads them."""
    space = _space(
        "levels: 1\nlevel: {n_shared: 3, n_specific: 1, "
        "gate_kind: {choice: [softmax, topk, noisy_top_k, dselect_k]}, top_k: {int: [1, 2]}, "
        "balance_weight: {float: [0.001, 0.1], log: true}, smooth_step_gamma: {float: [0.5, 2.0]}, "
        "entropy_weight: {choice: [0.0, 0.1]}}\n"
    )
    gate_fields = {"l0.top_k", "l0.balance_weight", "l0.smooth_step_gamma", "l0.entropy_weight"}
    expected = {
        "softmax": set(),
        "topk": {"l0.top_k"},
        "noisy_top_k": {"l0.top_k", "l0.balance_weight"},
        "dselect_k": {"l0.top_k", "l0.smooth_step_gamma", "l0.entropy_weight"},
    }
    for kind, sampled in expected.items():
        trial = Answers({"l0.gate_kind": kind, "l0.top_k": 1, "l0.balance_weight": 0.05})
        lv = space.suggest(trial, NUMERIC, TASKS, "conditional").model.levels[0]
        assert set(trial.params) & gate_fields == sampled, kind
        names = list(trial.params)
        assert all(names.index(n) > names.index("l0.gate_kind") for n in sampled)
        assert lv.gate_kind == kind
        assert lv.top_k == (1 if "l0.top_k" in sampled else 2)  # unread: the default
        assert lv.balance_weight == (0.05 if kind == "noisy_top_k" else 0.01)
        fixed = Answers(dict(trial.values))  # NSGA-II: every parameter in every trial
        space.suggest(fixed, NUMERIC, TASKS, "fixed")
        assert gate_fields <= set(fixed.params)


def test_a_space_whose_gates_all_read_top_k_samples_it_in_the_old_order():
    # select: shared, so that gate_sharing is sampled (under own+shared, a gate per task is forced)
    level = "levels: 1\nlevel: {gate_kind: %s, top_k: {int: [1, 2]}, select: shared, "
    level += "gate_sharing: {choice: [per_task, single]}}"
    cases = (("topk", True), ("{choice: [topk, dselect_k]}", True), ("{choice: [topk, softmax]}", False))
    for kinds, in_order in cases:
        trial = Answers()
        _space(level % kinds).suggest(trial, NUMERIC, TASKS, "conditional")
        names = list(trial.params)
        assert (names.index("l0.top_k") < names.index("l0.gate_sharing")) == in_order, names
