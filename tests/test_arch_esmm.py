"""Entire-space chained tasks (ESMM, Ma et al. SIGIR 2018; ESCM², Wang et al. SIGIR 2022).

``ctcvr = ctr x cvr`` is a task with ``product_of``: its output is the logit of the product
of the towers' probabilities; its loss is the BCE on that product over all impressions.
``cvr``'s own loss is ``none`` (ESMM), ``direct`` (masked to clicked rows) or ``ips``
(ESCM²'s regulariser). Everything is checked against plain tensor ops and scikit-learn.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _cli import run_main
from conftest import shared_data_dir
from optuna.trial import FixedTrial
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

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
from mtlsearch.arch._chained import product_logit
from mtlsearch.data import MTLDataset, TensorSplit
from mtlsearch.search._describe import describe_config
from mtlsearch.search._space import SearchSpace
from mtlsearch.train import ExperimentConfig, TrainConfig, fit
from mtlsearch.train._chained import loss_tasks
from mtlsearch.train._evaluate import Evaluator
from mtlsearch.train._fit import _masked_losses

ROOT = Path(__file__).resolve().parents[1]
N_NUM, CARD = 4, 5
INPUTS = InputSpec(n_numeric=N_NUM, categorical=(CategoricalFeature("shop", CARD, 2),))
LEVEL = LevelConfig(n_shared=1, n_specific=(1, 1), expert_hidden=(8,))
TOWER = TowerConfig(hidden=(4,))


def _config(loss: str = "none", **cvr: float) -> ArchConfig:
    tasks = (
        TaskSpec("ctr", "binary"),
        TaskSpec("cvr", "binary", loss=loss, **cvr),
        TaskSpec("ctcvr", "binary", product_of=("ctr", "cvr")),
    )
    return ArchConfig(INPUTS, tasks, (LEVEL,), (TOWER, TOWER), name="esmm")


def _split(n: int, seed: int) -> TensorSplit:
    """Impressions: ctr on all rows, cvr on clicked rows (its labels elsewhere are NaN:
    they must never be read), ctcvr = click and conversion on all rows."""
    gen = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=gen) < 0.5).float()
    click[:2], click[2:4] = 1.0, 0.0
    conv = (torch.rand(n, generator=gen) < 0.5).float() * click
    conv[0], conv[1] = 1.0, 0.0  # both classes among the clicked rows
    clicked = click.bool()
    return TensorSplit(
        numeric=torch.randn(n, N_NUM, generator=gen),
        categorical=torch.randint(0, CARD, (n, 1), generator=gen),
        labels={"ctr": click, "cvr": torch.where(clicked, conv, torch.nan), "ctcvr": conv},
        masks={
            "ctr": torch.ones(n, dtype=torch.bool),
            "cvr": clicked,
            "ctcvr": torch.ones(n, dtype=torch.bool),
        },
    )


def _dataset() -> MTLDataset:
    tasks = tuple(TaskSpec(n, "binary") for n in ("ctr", "cvr", "ctcvr"))
    return MTLDataset(
        name="impressions",
        tasks=tasks,
        numeric_features=tuple(f"x{i}" for i in range(N_NUM)),
        categorical_features=(("shop", CARD),),
        train=_split(64, 1),
        valid=_split(40, 2),
        test=_split(40, 3),
    )


def _bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row BCE on a probability, by hand."""
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def _losses(cfg: ArchConfig, split: TensorSplit, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tasks = loss_tasks(cfg)
    full = {t.name: bool(split.masks[t.name].all()) for t in tasks}
    return _masked_losses(outputs, split, tasks, full)[0]


# ---- the product ----------------------------------------------------------------------------
def test_the_product_task_is_the_product_of_the_towers_probabilities():
    cfg = _config()
    split = _split(32, 0)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        out = model(split.numeric, split.categorical)
    assert list(out) == ["ctr", "cvr", "ctcvr"]
    p = torch.sigmoid(out["ctr"].double()) * torch.sigmoid(out["cvr"].double())
    torch.testing.assert_close(torch.sigmoid(out["ctcvr"].double()), p, rtol=1e-5, atol=1e-7)
    # in log space: finite and exact at logits where 1 - p rounds to 0 or p underflows
    z = torch.tensor([[40.0, -40.0, 0.0, 80.0], [40.0, -60.0, 3.0, -80.0]], dtype=torch.float64)
    logs = [(F.logsigmoid(r), F.logsigmoid(-r)) for r in z]
    logit, log_p, log_1m = product_logit(logs)
    assert torch.isfinite(logit).all()
    torch.testing.assert_close(log_p, logs[0][0] + logs[1][0])
    p = torch.sigmoid(z[0]) * torch.sigmoid(z[1])
    torch.testing.assert_close(torch.exp(log_1m)[2:], (1 - p)[2:])
    # p1 = p2 = sigmoid(40): 1 - P ~ 2 e^-40 (float64 1 - P rounds it away), logit P ~ 40 - log 2
    torch.testing.assert_close(logit[0], torch.tensor(40.0 - np.log(2.0), dtype=torch.float64))


def test_esmm_loss_over_all_rows_by_hand_equals_the_trainers():
    """fit's first-epoch task losses (one batch, the initial weights) against the product's
    BCE over all 64 impressions and the CTR BCE, by hand; cvr has no loss of its own."""
    ds = _dataset()
    cfg = _config("none")
    tc = TrainConfig(lr=1e-3, batch_size=64, epochs=1, seed=3)
    result = fit(ExperimentConfig(cfg, tc), ds, progress=False)
    losses = result.history[0].task_losses
    assert set(losses) == {"ctr", "ctcvr"}
    model = build_model(cfg, seed=3).train()
    with torch.no_grad():
        out = model(ds.train.numeric, ds.train.categorical)
    p_ctr, p_cvr = torch.sigmoid(out["ctr"].double()), torch.sigmoid(out["cvr"].double())
    y = ds.train.labels
    assert losses["ctcvr"] == pytest.approx(float(_bce(p_ctr * p_cvr, y["ctcvr"].double()).mean()), rel=1e-5)
    assert losses["ctr"] == pytest.approx(float(_bce(p_ctr, y["ctr"].double()).mean()), rel=1e-5)
    assert result.history[0].train_loss == pytest.approx(losses["ctr"] + losses["ctcvr"], rel=1e-5)


def test_a_rows_cvr_label_outside_the_clicks_never_reaches_a_loss_and_the_gradient_is_the_products():
    split = _split(24, 4)
    unclicked = ~split.masks["cvr"]
    model = build_model(_config(), seed=0)
    out = model(split.numeric, split.categorical)
    for loss in ("none", "direct", "ips"):
        cfg = _config(loss)
        z = {k: v.detach().clone().requires_grad_(True) for k, v in out.items() if k != "ctcvr"}
        pairs = [(F.logsigmoid(z[k]), F.logsigmoid(-z[k])) for k in ("ctr", "cvr")]
        outputs = {**z, "ctcvr": product_logit(pairs)[0]}
        losses = _losses(cfg, split, outputs)
        assert all(torch.isfinite(v) for v in losses.values())  # the NaN labels were never read
        if loss == "none":
            assert "cvr" not in losses
        else:  # cvr's own term: zero gradient from every unclicked row
            (grad,) = torch.autograd.grad(losses["cvr"], z["cvr"])
            assert torch.equal(grad[unclicked], torch.zeros(int(unclicked.sum())))
            assert grad[~unclicked].abs().sum() > 0
    # ESMM: cvr learns only through the product, on every impression (that is ESMM's point):
    # L = mean BCE(P, y), P = p_ctr p_cvr, so dL/dz_cvr = (P - y)(1 - p_cvr) / (1 - P) / N
    losses = _losses(_config("none"), split, outputs)
    (grad,) = torch.autograd.grad(losses["ctcvr"], z["cvr"])
    p_ctr, p_cvr = torch.sigmoid(z["ctr"].detach()), torch.sigmoid(z["cvr"].detach())
    big = p_ctr * p_cvr
    y = split.labels["ctcvr"]
    by_hand = -(y - big) * (1 - p_cvr) / (1 - big) / len(split)
    torch.testing.assert_close(grad, by_hand, rtol=1e-4, atol=1e-7)
    assert (grad[unclicked] != 0).all()


def test_escm2_ips_term_by_hand():
    split = _split(30, 5)
    cfg = _config("ips", ips_weight=0.5, ips_clip=0.3)
    gen = torch.Generator().manual_seed(0)
    z_ctr = (torch.randn(30, generator=gen) * 2).requires_grad_(True)  # some p(ctr) below the clip
    z_cvr = torch.randn(30, generator=gen).requires_grad_(True)
    outputs = {"ctr": z_ctr, "cvr": z_cvr, "ctcvr": torch.zeros(30)}
    losses = _losses(cfg, split, outputs)
    clicked = split.masks["cvr"]
    p_ctr = torch.sigmoid(z_ctr.detach())
    assert (p_ctr[clicked] < 0.3).any() and (p_ctr[clicked] > 0.3).any()
    bce = _bce(torch.sigmoid(z_cvr.detach())[clicked], split.labels["cvr"][clicked])
    by_hand = 0.5 * (bce / p_ctr[clicked].clamp_min(0.3)).sum() / 30
    torch.testing.assert_close(losses["cvr"].detach(), by_hand, rtol=1e-5, atol=1e-7)
    # the propensity is a weight: the term sends no gradient into the CTR tower
    (to_ctr,) = torch.autograd.grad(losses["cvr"], z_ctr, allow_unused=True)
    assert to_ctr is None or torch.equal(to_ctr, torch.zeros(30))
    # defaults: weight 1, clip 0.01
    default = _losses(_config("ips"), split, outputs)["cvr"].detach()
    torch.testing.assert_close(
        default, (bce / p_ctr[clicked].clamp_min(0.01)).sum() / 30, rtol=1e-5, atol=1e-7
    )


# ---- metrics --------------------------------------------------------------------------------
def test_ctcvr_auc_over_all_rows_and_cvr_auc_over_clicked_rows_are_sklearns():
    split = _split(200, 6)
    cfg = _config()
    model = build_model(cfg, seed=1).eval()
    metrics = Evaluator(split, cfg.tasks).evaluate(model)
    with torch.no_grad():
        out = model(split.numeric, split.categorical)
    p_ctr, p_cvr = torch.sigmoid(out["ctr"]).double().numpy(), torch.sigmoid(out["cvr"]).double().numpy()
    clicked = split.masks["cvr"].numpy()
    assert metrics["ctcvr"]["auc"] == pytest.approx(
        roc_auc_score(split.labels["ctcvr"].numpy(), p_ctr * p_cvr)
    )
    assert metrics["cvr"]["auc"] == pytest.approx(
        roc_auc_score(split.labels["cvr"].numpy()[clicked], p_cvr[clicked])
    )
    assert metrics["ctr"]["auc"] == pytest.approx(roc_auc_score(split.labels["ctr"].numpy(), p_ctr))


# ---- validation, round trip, old configs --------------------------------------------------------
def _tasks_dict(*extra: dict) -> dict:
    return {
        "inputs": {"n_numeric": 3},
        "tasks": [{"name": "ctr", "kind": "binary"}, {"name": "cvr", "kind": "binary"}, *extra],
        "levels": [{"n_shared": 1, "n_specific": 0, "expert_hidden": [4]}],
        "towers": {"hidden": [2]},
    }


def _p(name: str, *factors: str) -> dict:
    return {"name": name, "kind": "binary", "product_of": list(factors)}


@pytest.mark.parametrize(
    ("extra", "where", "what"),
    [
        ([_p("ctcvr", "ctr", "cart")], "tasks[2].product_of[1]", "unknown task 'cart'"),
        ([{"name": "spend", "kind": "regression"}, _p("x", "ctr", "spend")],
         "tasks[3].product_of[1]", "'spend' is regression"),
        ([_p("a", "ctr", "b"), _p("b", "cvr", "a")], "tasks[2].product_of", "cycle a -> b -> a"),
        ([_p("ctcvr", "ctr", "ctcvr")], "tasks[2].product_of[1]", "factor of itself"),
        ([{**_p("ctcvr", "ctr", "cvr"), "kind": "regression"}], "tasks[2].kind", "binary"),
        ([_p("ctcvr", "ctr")], "tasks[2].product_of", "at least 2"),
        ([_p("ctcvr", "ctr", "cvr", "ctr")], "tasks[2].product_of[2]", "twice"),
    ],
)  # fmt: skip
def test_bad_products_are_one_line_errors_naming_the_field(extra, where, what):
    with pytest.raises(ConfigError) as exc:
        ArchConfig.from_dict(_tasks_dict(*extra))
    msg = str(exc.value)
    assert msg.startswith(f"{where}: ") and what in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("cvr", "where", "what"),
    [
        ({"loss": "ips", "ips_clip": 0}, "tasks[1].ips_clip", "(0, 1]"),
        ({"loss": "ips", "ips_weight": -1.0}, "tasks[1].ips_weight", ">= 0"),
        ({"ips_weight": 0.5}, "tasks[1].ips_weight", "only with loss: ips"),
        ({"loss": "masked"}, "tasks[1].loss", "unknown value 'masked'"),
    ],
)
def test_bad_factor_losses_are_refused(cvr, where, what):
    data = _tasks_dict({"name": "ctcvr", "kind": "binary", "product_of": ["ctr", "cvr"]})
    data["tasks"][1].update(cvr)
    with pytest.raises(ConfigError) as exc:
        ArchConfig.from_dict(data)
    assert str(exc.value).startswith(f"{where}: ") and what in str(exc.value)


def test_a_factor_loss_needs_a_product_and_ips_a_propensity():
    with pytest.raises(ConfigError, match=r"^tasks\[1\]\.loss: 'none' is only for a factor"):
        data = _tasks_dict()
        data["tasks"][1]["loss"] = "none"
        ArchConfig.from_dict(data)
    data = _tasks_dict({"name": "ctcvr", "kind": "binary", "product_of": ["cvr", "ctr"]})
    data["tasks"][1]["loss"] = "ips"
    with pytest.raises(ConfigError, match=r"^tasks\[1\]\.loss: 'ips' weighs by the factors before 'cvr'"):
        ArchConfig.from_dict(data)


def test_yaml_round_trip_and_numbers_from_strings():
    data = _tasks_dict({"name": "ctcvr", "kind": "binary", "product_of": ["ctr", "cvr"]})
    data["tasks"][1].update(loss="ips", ips_weight="1e-1", ips_clip="5e-2")  # YAML 1.1 strings
    cfg = ArchConfig.from_dict(data)
    assert cfg.tasks[1] == TaskSpec("cvr", "binary", loss="ips", ips_weight=0.1, ips_clip=0.05)
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ArchConfig.from_json(cfg.to_json()) == cfg
    assert [t.name for t in cfg.tower_tasks] == ["ctr", "cvr"] and len(cfg.towers) == 2


def test_old_configs_build_the_same_network_and_products_add_no_parameter():
    old = ArchConfig(
        InputSpec(n_numeric=4),
        (TaskSpec("ctr", "binary"), TaskSpec("cvr", "binary")),
        (LEVEL,),
        (TOWER, TOWER),
    )
    # experts 3 x (4*8 + 8) = 120; gates (own + shared) 2 x (4*2 + 2) = 20; towers 2 x (8*4+4 + 4+1) = 82
    assert count_parameters(build_model(old, seed=0)) == 222
    assert "product_of" not in old.to_yaml() and "loss" not in old.to_yaml() and "ips" not in old.to_yaml()
    assert ArchConfig.from_yaml(old.to_yaml()) == old
    esmm = replace(old, tasks=(*old.tasks, TaskSpec("ctcvr", "binary", product_of=("ctr", "cvr"))))
    a, b = build_model(old, seed=7).state_dict(), build_model(esmm, seed=7).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---- the search space ---------------------------------------------------------------------------
SPACE = """
levels: 1
level: {n_shared: 1, n_specific: 1, expert_hidden: [8]}
chained:
  task: ctcvr
  product_of: [ctr, cvr]
  enabled: {choice: [false, true]}
  loss: {choice: [none, direct, ips]}
  ips_weight: {float: [0.01, 1.0], log: true}
training: {epochs: 1}
"""


def test_the_space_chooses_esmm_and_the_cvr_loss():
    space = SearchSpace.from_yaml(SPACE)
    ds = _dataset()
    base = {"levels": 1, "l0.n_shared": 1, "l0.n_specific": 1, "l0.per_task": False}

    def tasks(**params):
        cfg = space.suggest(FixedTrial({**base, **params}), INPUTS, ds.tasks).model
        return {t.name: (t.product_of, t.loss, t.ips_weight) for t in cfg.tasks}, len(cfg.towers)

    assert tasks(**{"chained.enabled": False}) == (
        {n: ((), "direct", None) for n in ("ctr", "cvr", "ctcvr")},
        3,
    )
    esmm = tasks(**{"chained.enabled": True, "chained.loss": "none"})
    assert esmm == ({"ctr": ((), "direct", None), "cvr": ((), "none", None),
                     "ctcvr": (("ctr", "cvr"), "direct", None)}, 2)  # fmt: skip
    escm2 = tasks(**{"chained.enabled": True, "chained.loss": "ips", "chained.ips_weight": 0.2})
    trial = {**base, "chained.enabled": True, "chained.loss": "ips", "chained.ips_weight": 0.2}
    described = describe_config(space.suggest(FixedTrial(trial), INPUTS, ds.tasks).to_dict())
    assert "| ctcvr=ctr*cvr cvr:ips0.2 |" in described  # the front table's architecture column
    assert escm2[0]["cvr"] == ((), "ips", 0.2)
    assert space.check_feasible(INPUTS, ds.tasks, "fixed", draws=30) == 1.0
    with pytest.raises(UserError, match=r"chained\.loss: unknown choice 'masked'"):
        SearchSpace.from_yaml(SPACE.replace("[none, direct, ips]", "[none, masked]"))
    with pytest.raises(UserError, match="the data has no task 'ctcvr'"):
        space.check_feasible(INPUTS, ds.tasks[:2], "fixed", draws=3)


# ---- end to end: the AliExpress sample, predict, export --------------------------------------------
CONFIG = """\
model:
  name: esmm
  tasks:
    - {name: ctr, kind: binary}
    - {name: cvr, kind: binary, loss: ips, ips_weight: 0.5}
    - {name: ctcvr, kind: binary, product_of: [ctr, cvr]}
  levels: [{n_shared: 2, n_specific: 1, expert_hidden: [16]}]
  towers: {hidden: [8]}
training: {lr: 0.01, batch_size: 32, epochs: 2, seed: 0}
"""


def test_train_ctcvr_on_the_aliexpress_sample_from_the_cli_and_predict(tmp_path, monkeypatch, capsys):
    data = shared_data_dir("aliexpress-sample")
    (tmp_path / "esmm.yaml").write_text(CONFIG)
    args = ["--config", "esmm.yaml", "--dataset", "aliexpress", "--data-dir", str(data), "--threads", "1"]
    code, out, err = run_main(monkeypatch, capsys, tmp_path, "train", *args, "-q", "--out", "run")
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ctr", "cvr", "ctcvr"}
    assert set(metrics["history"][0]["task_losses"]) == {"ctr", "cvr", "ctcvr"}  # cvr: the IPS term
    assert 0.0 <= metrics["test"]["ctcvr"]["auc"] <= 1.0
    assert "ctcvr" in out
    from mtlsearch.train import load_checkpoint, predict  # what `mtlsearch predict` runs

    pred = predict(load_checkpoint(tmp_path / "run"), pd.read_csv(data / "aliexpress_test_sample.csv"))
    assert len(pred) == 20
    np.testing.assert_allclose(pred["ctcvr"], pred["ctr"] * pred["cvr"], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    onnxruntime = pytest.importorskip("onnxruntime")
    from mtlsearch.tracking._export import write_serving
    from mtlsearch.tracking._serving import ServingModel, serving_schema

    torch.set_num_threads(1)
    network = build_model(_config("ips", ips_weight=0.3), seed=0).eval()
    model = ServingModel(network).eval()
    out = tmp_path_factory.mktemp("esmm") / "serving"
    write_serving(model, serving_schema(network), out, formats=("pt2", "onnx"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return network, torch.export.load(out / "model.pt2").module(), session


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_pt2_and_onnx_give_the_eager_product(exported, rows):
    network, pt2, session = exported
    gen = torch.Generator().manual_seed(rows)
    numeric = torch.randn(rows, N_NUM, generator=gen) * 3
    codes = torch.randint(0, CARD, (rows, 1), generator=gen)
    with torch.no_grad():
        eager = network(numeric, codes)
    p_ctr, p_cvr = torch.sigmoid(eager["ctr"].double()), torch.sigmoid(eager["cvr"].double())
    expected = torch.stack([p_ctr, p_cvr, p_ctr * p_cvr], dim=1).numpy()
    x = torch.cat([numeric, codes.float()], dim=1)
    with torch.no_grad():
        got_pt2 = pt2(x).double().numpy()
    got_onnx = session.run(None, {"x": x.numpy()})[0]
    assert got_pt2.shape == got_onnx.shape == (rows, 3)
    np.testing.assert_allclose(got_pt2, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_onnx, expected, rtol=1e-5, atol=1e-6)


def test_the_shipped_example_and_space_build():
    cfg = ExperimentConfig.load(ROOT / "examples" / "esmm_aliexpress.yaml", inputs=INPUTS)
    assert [t.name for t in cfg.model.tower_tasks] == ["ctr", "cvr"]
    assert cfg.model.tasks[1].loss == "ips" and cfg.model.tasks[2].product_of == ("ctr", "cvr")
    space = SearchSpace.load(ROOT / "search_spaces" / "esmm.yaml")
    assert space.check_feasible(INPUTS, _dataset().tasks, "fixed", draws=20) == 1.0
