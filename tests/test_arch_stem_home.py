"""STEM's task-specific embeddings (Su et al., AAAI 2024) and HoME's expert normalisation and
collapse diagnostics (Wang et al. 2024), by hand with plain tensor ops; their config keys,
search-space keys and memory estimate; one network with every new key (AdaTT, STEM, HoME and
the sparse gates) exported as ``.pt2`` and ONNX with the eager outputs at 1, 7 and 1000 rows;
and a search over ``search_spaces/wide.yaml`` from the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from _cli import run_main
from optuna.trial import FixedTrial, TrialState

from mtlsearch._errors import UserError
from mtlsearch.arch import (
    ArchConfig,
    CategoricalFeature,
    ConfigError,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
    count_parameters,
)
from mtlsearch.data import TensorSplit
from mtlsearch.search import SearchSpace, describe_config
from mtlsearch.train import ExperimentConfig, TrainConfig, estimate_memory
from mtlsearch.train._evaluate import Evaluator

ROOT = Path(__file__).resolve().parents[1]
TWO = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
THREE = (*TWO, TaskSpec("c", "multiclass", 3))
CARDS = (("u", 20, 4), ("v", 7, 4), ("w", 5, 3))  # (name, cardinality, shared embedding size)
N_NUM = 4


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(task_dim: int = 3) -> InputSpec:
    cats = tuple(CategoricalFeature(n, c, d) for n, c, d in CARDS)
    return InputSpec(n_numeric=N_NUM, categorical=cats, task_embedding_dim=task_dim)


def _rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    numeric = torch.randn(n, N_NUM, generator=gen)
    codes = torch.stack([torch.randint(0, c, (n,), generator=gen) for _, c, _ in CARDS], dim=1)
    return numeric, codes


def _every_key() -> ArchConfig:
    """Every new key at once: STEM embeddings; AdaTT fusion with a DSelect-k and a noisy top-k
    gate; batch and layer expert norms; Swish experts; raw-input gates; a shared gate; batch
    norm in the experts."""
    levels = (
        LevelConfig(2, (2, 1, 1), (8,), activation="silu", select="all", fusion="adatt",
                    expert_norm="batch", gate_kind="dselect_k", top_k=2, shared_gate=True),
        LevelConfig(1, (1, 2, 0), (6,), select="all", fusion="adatt", expert_norm="layer",
                    gate_kind="noisy_top_k", top_k=2, gate_input="raw", norm="batch"),
    )  # fmt: skip
    return ArchConfig(_inputs(), THREE, levels, (TowerConfig(hidden=(4,)),) * 3)


def _trained_looking(cfg: ArchConfig) -> torch.nn.Module:
    """The network with random gate weights (a zero-initialised noisy top-k gate ties every
    logit) and batch-norm statistics moved away from 0 / 1, in eval mode."""
    network = build_model(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for level in network.levels:
            for g in level.gates:
                if isinstance(g, torch.nn.Linear):
                    g.weight.copy_(torch.randn(g.weight.shape, generator=gen))
        network.train()
        for seed in range(3):
            numeric, codes = _rows(64, seed)
            network(numeric * 2 + 0.5, codes)
    return network.eval()


# ---- STEM ---------------------------------------------------------------------------------------


def test_stem_sources_by_hand():
    """Source k = [numeric, shared embeddings, E_0, ..., E_{T-1}], E_t task t's table rows of
    the row's codes (feature offsets by cardinality); every source has the same values."""
    model = build_model(ArchConfig(_inputs(), TWO, (LevelConfig(1, (1, 1), (4,)),), (TowerConfig(),) * 2))
    enc = model.encoder
    numeric, codes = _rows(6, 0)
    sources = enc.routed(numeric, codes)
    assert len(sources) == 3  # a, b, shared
    tables = enc.task_tables.detach()
    assert tables.shape == (2, 20 + 7 + 5, 3)
    offsets = [0, 20, 27]
    per_task = [torch.cat([tables[t, offsets[f] + codes[:, f]] for f in range(3)], dim=1) for t in range(2)]
    expected = torch.cat([numeric, *(_shared_embeddings(enc, codes)), *per_task], dim=1)
    assert expected.shape[1] == _inputs().routed_dim(2) == N_NUM + 4 + 4 + 3 + 2 * 3 * 3
    for s in sources:
        assert torch.equal(s, expected)


def _shared_embeddings(enc, codes: torch.Tensor) -> list[torch.Tensor]:
    """The shared tables' rows: features of one size share a table (sizes ascending)."""
    w3, w4 = enc.tables[0].weight.detach(), enc.tables[1].weight.detach()
    return [w3[codes[:, 2]], torch.cat([w4[codes[:, 0]], w4[20 + codes[:, 1]]], dim=1)]


@pytest.mark.parametrize("loss_task", [0, 1, 2])
def test_stem_task_loss_reaches_only_its_own_and_the_shared_tables(loss_task):
    """All forward, task-specific backward: task j's loss gives task k's table (k != j) a zero
    gradient, its own and the shared tables a non-zero one, through every cross-task path the
    builder has (select: all, a shared gate, AdaTT residuals, raw-input gates, norms)."""
    model = _trained_looking(_every_key()).train()
    numeric, codes = _rows(32, 7)
    out = model(numeric, codes)
    name = THREE[loss_task].name
    out[name].sum().backward()
    grad = model.encoder.task_tables.grad
    for k in range(3):
        nonzero = int(torch.count_nonzero(grad[k]))
        assert (nonzero > 0) if k == loss_task else (nonzero == 0), (k, nonzero)
    assert all(torch.count_nonzero(t.weight.grad) > 0 for t in model.encoder.tables)


def test_stem_parameter_count_written_out():
    d, h, t = 3, 4, 2
    lv = LevelConfig(1, (1, 1), (h,))
    plain = ArchConfig(_inputs(0), TWO, (lv,), (TowerConfig(hidden=(t,)),) * 2)
    stem = replace(plain, inputs=_inputs(d))
    shared_tables = 20 * 4 + 7 * 4 + 5 * 3
    dim = N_NUM + 4 + 4 + 3
    routed = dim + 2 * 3 * d

    def count(width: int) -> int:
        experts = 3 * (width * h + h)
        gates = 2 * (width * 2 + 2)  # own + shared
        return shared_tables + experts + gates + 2 * (h * t + t + t + 1)

    assert count_parameters(build_model(plain, seed=0)) == count(dim)
    assert count_parameters(build_model(stem, seed=0)) == count(routed) + 2 * (20 + 7 + 5) * d


def test_stem_config_round_trips_and_errors_name_the_field(tmp_path):
    cfg = _every_key()
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert "task_embedding_dim: 3" in cfg.to_yaml()
    data = cfg.to_dict()
    data["levels"][0]["gate_sharing"] = "single"
    with pytest.raises(ConfigError, match=r"^levels\[0\]\.gate_sharing: a single gate for all tasks would"):
        ArchConfig.from_dict(data)
    for value, message in ((-1, "must be an integer >= 0, got -1"), (True, "must be an integer >= 0")):
        data = cfg.to_dict()
        data["inputs"]["task_embedding_dim"] = value
        with pytest.raises(ConfigError, match=rf"^inputs\.task_embedding_dim: {message}"):
            ArchConfig.from_dict(data)
    data = cfg.to_dict()
    data["inputs"]["categorical"] = []
    data["inputs"]["n_numeric"] = 3
    with pytest.raises(
        ConfigError, match=r"^inputs\.task_embedding_dim: task-specific embeddings \(3\) need"
    ):
        ArchConfig.from_dict(data)
    path = tmp_path / "arch.yaml"
    path.write_text(cfg.to_yaml().replace("task_embedding_dim: 3", "task_embedding_dim: -2"))
    with pytest.raises(ConfigError, match=rf"^{path}: inputs\.task_embedding_dim: must be"):
        ArchConfig.load(path)


def test_an_experiment_file_setting_task_embeddings_keeps_the_datasets_features():
    level = {"n_shared": 1, "n_specific": 1, "expert_hidden": [4]}
    raw = {"model": {"inputs": {"task_embedding_dim": 4, "embed_init_std": 0.01}, "levels": [level]}}
    cfg = ExperimentConfig.from_dict(raw, inputs=_inputs(0), tasks=TWO).model
    assert cfg.inputs == replace(_inputs(0), task_embedding_dim=4, embed_init_std=0.01)


# ---- HoME: expert normalisation -------------------------------------------------------------------


def _one_level(expert_norm: str, activation: str = "relu", n: int = 3, width: int = 4) -> ArchConfig:
    level = LevelConfig(n, (0,), (width,), activation=activation, select="shared", expert_norm=expert_norm)
    return ArchConfig(InputSpec(n_numeric=N_NUM), (TaskSpec("a", "binary"),), (level,), (TowerConfig(),))


def _mixture(model, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    gate = model.levels[0].gates[0]
    g = torch.softmax(x @ gate.weight.T + gate.bias, dim=-1)  # (B, E)
    return torch.einsum("be,ebd->bd", g, normed)


def test_layer_expert_norm_by_hand():
    model = build_model(_one_level("layer"), seed=0).eval()
    norm = model.levels[0].expert_norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn(3, 1, 4))
        norm.bias.copy_(torch.randn(3, 1, 4))
    x = torch.randn(10, N_NUM)
    no_codes = torch.zeros(10, 0, dtype=torch.long)
    with torch.no_grad():
        (h,) = model.expert_outputs(x, no_codes)  # (E, B, D), after the ReLU
        mean = h.mean(-1, keepdim=True)
        var = ((h - mean) ** 2).mean(-1, keepdim=True)  # biased, per expert and row
        normed = (h - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
        tasks, _, _ = model.levels[0]([x], x)
    torch.testing.assert_close(tasks[0], _mixture(model, x, normed), rtol=1e-5, atol=1e-5)


def test_batch_expert_norm_by_hand_in_training_and_eval():
    model = build_model(_one_level("batch", activation="silu"), seed=0).train()
    norm = model.levels[0].expert_norm
    x = torch.randn(12, N_NUM)
    with torch.no_grad():
        h = torch.nn.functional.silu(
            torch.einsum("bi,eio->ebo", x, model.levels[0].experts.weights[0])
            + model.levels[0].experts.biases[0]
        )
        mean = h.mean(1, keepdim=True)  # per expert and unit, over the batch
        var = ((h - mean) ** 2).mean(1, keepdim=True)
        expected = (h - mean) / torch.sqrt(var + 1e-5)  # weight 1, bias 0 at the start
        tasks, _, _ = model.levels[0]([x], x)
    torch.testing.assert_close(tasks[0], _mixture(model, x, expected), rtol=1e-5, atol=1e-5)
    unbiased = var.squeeze(1) * 12 / 11
    torch.testing.assert_close(norm.running_mean, 0.1 * mean.squeeze(1).flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * unbiased.flatten(), rtol=1e-5, atol=1e-6)
    model.eval()  # eval: the running statistics
    with torch.no_grad():
        tasks, _, _ = model.levels[0]([x], x)
        rm, rv = norm.running_mean.view(3, 1, 4), norm.running_var.view(3, 1, 4)
        expected = (h - rm) / torch.sqrt(rv + 1e-5)
    torch.testing.assert_close(tasks[0], _mixture(model, x, expected), rtol=1e-5, atol=1e-5)


def test_expert_norm_parameter_count_and_errors():
    d, n, w = N_NUM, 3, 4
    base = n * (d * w + w) + (d * n + n) + (w * 32 + 32 + 32 + 1)
    assert count_parameters(build_model(_one_level("none"), seed=0)) == base
    for kind in ("batch", "layer"):
        assert count_parameters(build_model(_one_level(kind), seed=0)) == base + 2 * n * w
    data = _one_level("layer").to_dict()
    assert ArchConfig.from_yaml(_one_level("layer").to_yaml()) == _one_level("layer")
    data["levels"][0]["expert_norm"] = "group"
    with pytest.raises(ConfigError, match=r"^levels\[0\]\.expert_norm: unknown value 'group'"):
        ArchConfig.from_dict(data)


# ---- HoME: dead ReLU units ----------------------------------------------------------------------


def _split(n: int = 40) -> TensorSplit:
    gen = torch.Generator().manual_seed(0)
    ones = torch.ones(n, dtype=torch.bool)
    return TensorSplit(torch.randn(n, N_NUM, generator=gen), torch.zeros(n, 0, dtype=torch.long),
                       {"a": torch.ones(n)}, {"a": ones})  # fmt: skip


@pytest.mark.parametrize("activation,expected", [("relu", [0.5, 0.0, 1.0]), ("silu", [0.0, 0.0, 0.0])])
def test_dead_unit_share_of_constructed_experts(activation, expected):
    """Expert 0: units 0 and 1 get no input and bias -1 (ReLU: 0 on every row); expert 1: all
    units alive; expert 2: every unit's bias far below any input. Swish is not 0 there."""
    model = build_model(_one_level("layer", activation=activation), seed=0)
    experts = model.levels[0].experts
    with torch.no_grad():
        w, b = experts.weights[0], experts.biases[0]  # (3, 4, 4), (3, 1, 4)
        w[0, :, :2], b[0, 0, :2] = 0.0, -1.0
        w[1].zero_()
        b[1].fill_(0.5)
        b[2].fill_(-10.0)
    util = Evaluator(_split(), (TaskSpec("a", "binary"),)).utilisation(model)
    assert util["level0/dead_units"] == dict(zip(["shared/0", "shared/1", "shared/2"], expected, strict=True))
    assert sum(util["level0/task:a"].values()) == pytest.approx(1.0)  # the gate's entry is unchanged


# ---- search space, describe, memory -----------------------------------------------------------


def test_search_space_samples_stem_and_home_keys_and_repairs():
    space = SearchSpace.from_dict(
        {
            "levels": 1,
            "level": {
                "n_shared": 1,
                "n_specific": 1,
                "gate_sharing": "single",
                "select": "all",
                "expert_norm": {"choice": ["none", "batch", "layer"]},
                "activation": {"choice": ["relu", "silu"]},
            },
            "task_embedding_dim": {"choice": [0, 4]},
        }
    )
    params = {"l0.expert_norm": "layer", "l0.activation": "silu", "task_embedding_dim": 4}
    cfg = space.suggest(FixedTrial(params), _inputs(0), TWO).model
    lv = cfg.levels[0]
    assert (cfg.inputs.task_embedding_dim, lv.expert_norm, lv.activation) == (4, "layer", "silu")
    assert lv.gate_sharing == "per_task"  # STEM's gates are per task
    cfg = space.suggest(FixedTrial({**params, "task_embedding_dim": 0}), _inputs(0), TWO).model
    assert (cfg.inputs.task_embedding_dim, cfg.levels[0].gate_sharing) == (0, "single")
    numeric_only = space.suggest(FixedTrial(params), InputSpec(n_numeric=N_NUM), TWO).model
    assert numeric_only.inputs.task_embedding_dim == 0  # no categorical feature: no task tables


@pytest.mark.parametrize(
    "data,message",
    [
        ({"task_embedding_dim": {"choice": [0, -4]}}, r"task_embedding_dim: needs integers >= 0, got -4"),
        (
            {"level": {"expert_norm": {"choice": ["none", "group"]}}},
            r"level\.expert_norm: unknown choice 'group'",
        ),
    ],
)
def test_search_space_rejects_bad_stem_and_home_values_naming_the_key(data, message):
    with pytest.raises(UserError, match=message):
        SearchSpace.from_dict(data)


def test_wide_space_holds_every_new_key_and_builds():
    space = SearchSpace.load(ROOT / "search_spaces" / "wide.yaml")
    assert set(space.level["fusion"].values()) == {"gate", "adatt"}
    assert set(space.level["expert_norm"].values()) == {"none", "batch", "layer"}
    assert {"relu", "silu"} <= set(space.level["activation"].values())
    assert set(space.task_embedding_dim.values()) == {0, 4, 8}
    assert space.check_feasible(_inputs(0), TWO, "fixed", draws=50) > 0.5


def test_describe_shows_the_new_keys():
    text = describe_config({"model": _every_key().to_dict()})
    assert text == (
        "L1 2s+2,1,1p[8] all+sg dselect_k2 adatt expert-batchnorm silu | "
        "L2 1s+1,2,0p[6] all noisy_top2 raw-input batchnorm adatt expert-layernorm | "
        "task-emb 3 | tower [4]"
    )


def test_memory_estimate_counts_the_new_parameters_on_the_meta_device():
    cfg = _every_key()
    est = estimate_memory(ExperimentConfig(model=cfg, training=TrainConfig(batch_size=64)))
    assert est.n_parameters == count_parameters(build_model(cfg, seed=0))
    plain = replace(
        cfg,
        inputs=_inputs(0),
        levels=tuple(replace(lv, fusion="gate", expert_norm="none") for lv in cfg.levels),
    )
    plain_est = estimate_memory(ExperimentConfig(model=plain, training=TrainConfig(batch_size=64)))
    assert est.activation_bytes > plain_est.activation_bytes
    huge = replace(cfg, inputs=replace(_inputs(512), categorical=(CategoricalFeature("id", 2_000_000, 4),)))
    big = estimate_memory(ExperimentConfig(model=huge, training=TrainConfig(batch_size=64)))
    assert big.largest_tensor.startswith("task-specific embedding tables (STEM) (3 x 2000000 x 512 float32")
    assert big.largest_tensor.endswith("; model.inputs.task_embedding_dim)")


# ---- export: .pt2 and ONNX ----------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    model: torch.nn.Module  # the eager serving model
    pt2: torch.nn.Module
    onnx: object  # onnxruntime.InferenceSession


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from mtlsearch.tracking._export import write_serving
    from mtlsearch.tracking._serving import ServingModel, serving_schema

    torch.set_num_threads(1)
    network = _trained_looking(_every_key())
    model = ServingModel(network).eval()
    out = tmp_path_factory.mktemp("every-key") / "serving"
    written = write_serving(model, serving_schema(network), out, formats=("pt2", "onnx"))
    assert written.parity["onnx"] < 1e-4
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return Exported(model, torch.export.load(out / "model.pt2").module(), session)


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_every_new_key_exports_to_pt2_and_onnx_with_the_eager_outputs(exported, rows):
    from mtlsearch.tracking._serving import serving_input

    numeric, codes = _rows(rows, seed=100 + rows)
    x = serving_input(numeric, codes)
    with torch.no_grad():
        eager = exported.model(x).numpy()
        pt2 = exported.pt2(x).numpy()
    assert eager.shape == (rows, 1 + 1 + 3) and np.isfinite(eager).all()
    onnx_out = exported.onnx.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(pt2, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_out, eager, rtol=1e-5, atol=1e-5)


# ---- a search over wide.yaml from the command line --------------------------------------------


@pytest.mark.slow
def test_a_search_over_the_wide_space_runs_from_the_cli(tmp_path, monkeypatch, capsys):
    gen = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({f"x{i}": gen.normal(size=n) for i in range(4)})
    frame["user"] = gen.integers(0, 30, n).astype(str)
    frame["item"] = gen.integers(0, 12, n).astype(str)
    frame["y1"] = (frame["x0"] + gen.normal(size=n) > 0).astype(int)
    frame["y2"] = frame["x1"] * 2 + gen.normal(size=n)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "spec.yaml").write_text(
        "name: tiny\nfiles: {path: rows.csv, format: csv}\n"
        "features: {numeric: [x0, x1, x2, x3], categorical: [user, item]}\n"
        "tasks:\n- {name: y1, label: y1, kind: binary}\n- {name: y2, label: y2, kind: regression}\n"
    )
    code, out, err = run_main(
        monkeypatch, capsys, tmp_path,
        *("search", "--space", str(ROOT / "search_spaces" / "wide.yaml"), "--data", "spec.yaml"),
        *("--no-mlflow", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--quiet", "--study", "w"),
        *("--n-trials", "2", "--references", "0", "--threads", "1", "--set", "training.epochs=1"),
        *("--set", "level.fusion=adatt", "--set", "level.expert_norm=layer"),
        *("--set", "level.activation=silu", "--set", "task_embedding_dim=4"),
    )  # fmt: skip
    assert code == 0, err
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 's.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        model = t.user_attrs["config"]["model"]
        assert model["inputs"]["task_embedding_dim"] == 4
        assert {(lv["fusion"], lv["select"], lv["expert_norm"]) for lv in model["levels"]} == {
            ("adatt", "all", "layer")
        }
        util = t.user_attrs["utilisation"]
        assert {f"level{i}/dead_units" for i in range(len(model["levels"]))} <= set(util)
    assert "task-emb 4" in out and "adatt expert-layernorm silu" in out
    assert json.loads(study.user_attrs["mtlsearch"])["space_text"].startswith("# --set training.epochs=1\n")
