"""Memory estimate before training: exact parameter bytes, optimizer state, the activation
formula by hand, the limit (argument, environment, free memory) and a huge config failing
at once, in-process and through the CLI, with nothing allocated."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from _train_support import REPO, binary_data, experiment, one_thread  # noqa: F401

import mtlsearch.train._fit as fit_module
from mtlsearch._errors import UserError
from mtlsearch.arch import (
    ArchConfig,
    CategoricalFeature,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
    count_parameters,
)
from mtlsearch.train import (
    MAX_MEMORY_ENV,
    OPTIMIZERS,
    ExperimentConfig,
    MemoryLimitExceeded,
    TrainConfig,
    available_memory,
    estimate_memory,
    fit,
    memory_limit,
)
from mtlsearch.train._fit import _make_optimizer
from mtlsearch.train._memory import OPTIMIZER_STATES, parse_size
from mtlsearch.train._weighting import make_loss_weighting

GIB = 1024**3


@pytest.fixture(autouse=True)
def no_env_limit(monkeypatch):
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)


def tiny() -> ArchConfig:
    """3 numeric + one categorical (5 codes, dim 2): input width 5. One level of 3 experts
    (one per task, one shared) with one hidden layer of 4; towers hidden (2,)."""
    return ArchConfig(
        inputs=InputSpec(n_numeric=3, categorical=(CategoricalFeature("c", 5, 2),)),
        tasks=(TaskSpec("a", "binary"), TaskSpec("b", "binary")),
        levels=(LevelConfig(n_shared=1, n_specific=(1, 1), expert_hidden=(4,)),),
        towers=(TowerConfig(hidden=(2,)), TowerConfig(hidden=(2,))),
    )


def huge(data) -> ExperimentConfig:
    cfg = experiment(data, "ple")
    levels = (replace(cfg.model.levels[0], expert_hidden=(200000, 200000)), *cfg.model.levels[1:])
    return replace(cfg, model=replace(cfg.model, levels=levels))


def test_parameter_bytes_of_a_hand_counted_config():
    # embedding 5*2 = 10; experts 3 * (5*4 + 4) = 72; two gates Linear(5, 2) = 2 * 12 = 24;
    # two towers (4*2 + 2) + (2*1 + 1) = 13 each = 26. Total 132 parameters, 528 bytes.
    est = estimate_memory(ExperimentConfig(tiny()))
    assert est.n_parameters == 132 == count_parameters(build_model(tiny()))
    assert est.parameter_bytes == 528
    assert est.gradient_bytes == 528
    assert est.buffer_bytes == 0 + 8 * (1 + 1) + 8 * (2 + 2)  # int64 offsets, cols, 2 gate selections


@pytest.mark.parametrize("name", ["ple", "mmoe", "shared_bottom", "omoe"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_parameter_bytes_equal_the_real_models(name, norm):
    data = binary_data(n=400)
    cfg = experiment(data, name)
    levels = tuple(replace(lv, norm=norm) for lv in cfg.model.levels)
    cfg = replace(cfg, model=replace(cfg.model, levels=levels))
    model = build_model(cfg.model, seed=0)  # for real
    est = estimate_memory(cfg)
    assert est.parameter_bytes == count_parameters(model) * 4
    assert est.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_optimizer_state_is_what_the_real_optimizer_holds(optimizer):
    data = binary_data(n=400)
    cfg = experiment(data, "ple", optimizer=optimizer)
    est = estimate_memory(cfg)
    model = build_model(cfg.model, seed=0)
    opt = _make_optimizer(
        cfg.training, model, make_loss_weighting(cfg.training.loss_weighting, cfg.model.tasks)
    )
    out = model(data.train.numeric[:64], data.train.categorical[:64])
    sum(o.float().sum() for o in out.values()).backward()
    opt.step()
    moments = sum(
        v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step"
    )
    everything = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values())
    assert moments == 2 * est.parameter_bytes  # Adam/AdamW: exp_avg and exp_avg_sq
    assert est.optimizer_bytes == everything == 2 * est.parameter_bytes + 4 * len(list(model.parameters()))


def test_every_optimizer_has_a_state_count():
    assert set(OPTIMIZER_STATES) == set(OPTIMIZERS)


def test_activations_by_hand():
    # Per row, (width x kept): input encoding 5x1, embedding lookups 2x1, experts layer 0
    # 3*4 x1 (relu), gate weights 2 gates * 3 experts x3 (logits, softmax, dense) = 18,
    # experts output copy 3*4 = 12, mixtures 2*4 = 8, towers (2 + 1) * 2 = 6. Sum 63.
    # Training, batch 100: 1.25 * 100 rows * 4 bytes * 63 = 31500.
    cfg = ExperimentConfig(tiny(), TrainConfig(batch_size=100))
    assert estimate_memory(cfg, eval_rows=50).activation_bytes == 31500
    # The batch never exceeds the training rows: 40 rows -> 1.25 * 40 * 4 * 63 = 12600.
    assert estimate_memory(cfg, train_rows=40, eval_rows=50).activation_bytes == 12600
    # Evaluation (no graph): widest step's input + 2 x output, widths in forward order
    # 5, 2, 12, 6, 12, 8, 2, 1, 2, 1 -> the mixture copy: 6 + 2*12 = 30 per row.
    # 3000 rows: 3000 * 4 * 30 = 360000 > training's 31500.
    assert estimate_memory(cfg, eval_rows=3000).activation_bytes == 360000
    # Dropout keeps its output and its mask: experts layer 0 kept 3 -> sum 63 + 2*12 = 87.
    drop = replace(tiny(), levels=(replace(tiny().levels[0], dropout=0.1),))
    assert estimate_memory(
        ExperimentConfig(drop, TrainConfig(batch_size=100)), eval_rows=1
    ).activation_bytes == (1.25 * 100 * 4 * 87)


def test_total_is_the_sum_of_its_parts():
    cfg = ExperimentConfig(tiny(), TrainConfig(batch_size=100))
    est = estimate_memory(cfg, eval_rows=50, data_bytes=1000)
    # params 528, buffers 48, grads 528, Adam 2*528 + a 4-byte step per parameter tensor
    # (11: embedding 1, experts 2, gates 4, both towers batched into one MLP 4), best copy
    # 528 + 48, activations 31500, data 1000
    assert est.optimizer_bytes == 1056 + 44
    assert est.total_bytes == 528 + 48 + 528 + (1056 + 44) + 576 + 31500 + 1000


def test_the_largest_tensor_is_named_with_its_shape_and_field():
    data = binary_data(n=400)
    est = estimate_memory(huge(data))
    assert est.largest_tensor == (
        "level 0 experts layer 1 weight (6 x 200000 x 200000 float32, 894.07 GiB; "
        "model.levels[0].expert_hidden)"
    )
    assert est.largest_tensor_bytes == 6 * 200000 * 200000 * 4
    big_table = ArchConfig(
        inputs=InputSpec(
            n_numeric=2,
            categorical=(CategoricalFeature("small", 10, 16), CategoricalFeature("user", 50_000_000, 16)),
        ),
        tasks=(TaskSpec("a", "binary"),),
        levels=(LevelConfig(n_shared=1, n_specific=(0,), expert_hidden=(8,)),),
        towers=(TowerConfig(),),
    )
    est = estimate_memory(ExperimentConfig(big_table))
    assert est.largest_tensor == (
        "embedding table of small, user (50000010 x 16 float32, 2.98 GiB; "
        "model.inputs.categorical[1].cardinality)"
    )


def test_a_huge_config_fails_at_once_without_building_the_model(monkeypatch):
    data = binary_data(n=400)

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fit_module, "build_model", no_build)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MemoryLimitExceeded) as info:
        fit(huge(data), data, progress=False, max_memory="64GiB")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100 * 1024  # nothing near the 894 GiB weight was touched
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert msg.startswith("model 'ple' needs about ")
    assert "more than the limit of 64.00 GiB (max_memory); largest tensor: " in msg
    assert msg.endswith(
        "largest tensor: level 0 experts layer 1 weight (6 x 200000 x 200000 float32, 894.07 GiB; "
        "model.levels[0].expert_hidden)"
    )


def test_the_limit_comes_from_the_argument_the_environment_or_free_memory(monkeypatch):
    assert memory_limit("8GiB") == (8 * GIB, "max_memory")
    monkeypatch.setenv(MAX_MEMORY_ENV, " 1.5GB ")
    assert memory_limit() == (1_500_000_000, "MTLSEARCH_MAX_MEMORY=1.5GB")
    assert memory_limit(1000)[0] == 1000  # the argument wins
    monkeypatch.delenv(MAX_MEMORY_ENV)
    limit, source = memory_limit()
    free = available_memory()
    assert free is not None and limit is not None
    assert abs(limit - 0.9 * free) < 0.05 * free  # free memory moves a little in between
    assert source.startswith("90% of the ") and source.endswith(" GiB available memory")


def test_fit_reads_the_environment_limit(monkeypatch, caplog):
    data = binary_data(n=400)
    cfg = experiment(data, "ple", epochs=1)
    monkeypatch.setenv(MAX_MEMORY_ENV, "1KiB")
    with pytest.raises(
        MemoryLimitExceeded,
        match=r"more than the limit of 1\.00 KiB \(MTLSEARCH_MAX_MEMORY=1KiB\); largest tensor: ",
    ):
        fit(cfg, data, progress=False)
    monkeypatch.setenv(MAX_MEMORY_ENV, "2GiB")
    with caplog.at_level(logging.DEBUG, logger="mtlsearch.train._memory"):
        result = fit(cfg, data, progress=False)
    assert result.n_params > 0
    assert any(
        "memory estimate for 'ple'" in r.message and "limit 2.00 GiB" in r.message for r in caplog.records
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * GIB), ("512 mib", 512 * 1024**2), ("1.5GB", 1_500_000_000), ("123", 123), (4096, 4096)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["8 gigs", "", "-1GiB", "0", "GiB", True])
def test_bad_sizes_are_one_line_naming_the_variable(text):
    with pytest.raises(UserError, match=r"^MTLSEARCH_MAX_MEMORY: ") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_a_bad_environment_value_fails_fit_before_training(monkeypatch):
    data = binary_data(n=400)
    monkeypatch.setenv(MAX_MEMORY_ENV, "lots")
    with pytest.raises(UserError, match=r"^MTLSEARCH_MAX_MEMORY: expected a size such as 8GiB"):
        fit(experiment(data, "ple", epochs=1), data, progress=False)


def test_available_memory_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2000 kB\nMemFree:   10 kB\nMemAvailable:   1000 kB\n")
    none = tmp_path / "no-cgroup"
    assert available_memory(meminfo=meminfo, cgroup=none) == 1_024_000
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("500000\n")
    (v2 / "memory.current").write_text("300000\n")
    (v2 / "memory.stat").write_text("anon 1\ninactive_file 100000\nactive_file 5\n")
    # 500000 - (300000 - 100000 reclaimable) = 300000 < 1024000
    assert available_memory(meminfo=meminfo, cgroup=v2) == 300_000
    (v2 / "memory.max").write_text("max\n")
    assert available_memory(meminfo=meminfo, cgroup=v2) == 1_024_000
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("800000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("400000\n")
    (v1 / "memory" / "memory.stat").write_text("inactive_file 1\ntotal_inactive_file 50000\n")
    assert available_memory(meminfo=meminfo, cgroup=v1) == 450_000
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available_memory(meminfo=meminfo, cgroup=v1) == 1_024_000
    # no MemAvailable: os.sysconf's free pages
    sysconf = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    got = available_memory(meminfo=tmp_path / "missing", cgroup=none)
    assert got is not None and abs(got - sysconf) < 0.1 * sysconf


def test_the_train_command_exits_2_with_one_line_and_writes_nothing(tmp_path):
    raw = yaml.safe_load((REPO / "examples" / "ple_synthetic.yaml").read_text())
    raw["model"]["levels"][0]["expert_hidden"] = [200000, 200000]
    config = tmp_path / "huge.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--dataset", "synthetic", "-o", "n=500", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != MAX_MEMORY_ENV}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: model 'ple' needs about ")
    assert " GiB available memory; set MTLSEARCH_MAX_MEMORY to change it); largest tensor: " in lines[0]
    assert lines[0].endswith(
        "largest tensor: level 0 experts layer 1 weight (6 x 200000 x 200000 float32, 894.07 GiB; "
        "model.levels[0].expert_hidden)"
    )
    assert not out.exists()


def test_in_a_search_the_trial_fails_with_the_reason_and_the_study_goes_on(tmp_path):
    from optuna.trial import TrialState

    from mtlsearch.search import SearchSettings, count_finished, create_or_resume, run_worker

    quick = (REPO / "search_spaces" / "quick.yaml").read_text()
    space = quick.replace(
        "expert_hidden: {choice: [[16], [32]]}", "expert_hidden: {choice: [[16], [200000, 200000]]}"
    )
    assert space != quick
    settings = SearchSettings(
        space_text=space,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 1500, "d": 20},
        sampler="random",
        seed=7,
        n_trials=6,
        enqueue_references=False,
    )
    ctx = create_or_resume("m", f"sqlite:///{tmp_path / 's.db'}", settings)
    run_worker(ctx)
    trials = ctx.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and any(t.state == TrialState.COMPLETE for t in trials)
    for t in failed:
        reason = t.user_attrs["fail_reason"]
        assert reason.startswith("MemoryLimitExceeded: model ") and "x 200000 x 200000 float32" in reason
    assert count_finished(ctx.study) == 6
