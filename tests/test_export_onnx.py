"""ONNX export beside the torch.export program (``mtlsearch export --format onnx|pt2|both``).

One network uses every builder feature (three PLE levels; top-k, softmax and parameter-free
gates; per-task and single gates; raw-input gates; batch norm in experts, gates and a
tower; per-task towers of different shapes, one without hidden layers; binary,
regression and multiclass tasks; categorical embeddings sharing a table and one alone).
Its ``.pt2`` program and ONNX model must give the eager network's outputs, worked out here
by hand from its raw outputs, for batches of 1, 7 and 1000 rows.

The command runs on a small study not tracked in MLflow (``--retrain`` trains its one trial on a
CSV table), with ONNX export costing ~10 s a model on two busy cores: two real exports in
all; the other command runs reuse the first export's file.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import create_trial

from mtlsearch._errors import UserError
from mtlsearch.arch import (
    ArchConfig,
    CategoricalFeature,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    build_model,
    preset,
)
from mtlsearch.cli import main
from mtlsearch.data import load_dataset
from mtlsearch.search import SearchSettings, create_or_resume
from mtlsearch.tracking import _onnx
from mtlsearch.tracking._export import ServingExport, parity_batch, write_serving
from mtlsearch.tracking._serving import (
    CategoricalInput,
    NumericInput,
    ServingInputs,
    ServingModel,
    serving_schema,
)
from mtlsearch.train import ExperimentConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# ---- a network with every builder feature ----------------------------------------------
#: raw numeric columns: (name, mean, std, missing-value indicator, standardised)
NUMERIC = [
    ("age", 40.0, 12.0, True, True),
    ("income", 52000.0, 15000.0, True, True),
    ("score", 0.3, 2.0, False, True),
    ("count", 0.0, 1.0, False, False),  # used as given (data that needed no preprocessing)
]
#: categorical columns: (name, cardinality, embedding size); shop and device share a table
CATEGORICAL = [("shop", 40, 4), ("device", 6, 4), ("hour", 24, 3)]
SPEND_MEAN, SPEND_STD = 200.0, 80.0


def _rich_network() -> torch.nn.Module:
    tasks = (
        TaskSpec("click", "binary"),
        TaskSpec("spend", "regression"),
        TaskSpec("segment", "multiclass", 3),
    )
    levels = (
        # per-task top-k gates (own + shared) with batch norm on experts and gate logits
        LevelConfig(2, (1, 1, 1), (12, 8), activation="gelu", gate_kind="topk", top_k=2,
                    shared_gate=True, norm="batch"),
        # one softmax gate for all tasks over every expert, reading the raw input
        LevelConfig(2, (1, 0, 1), (8,), activation="silu", dropout=0.1, select="all",
                    gate_sharing="single", gate_input="raw", shared_gate=True),
        # parameter-free averaging gates
        LevelConfig(1, (1, 1, 0), (6,), activation="tanh", gate_kind="none"),
    )  # fmt: skip
    towers = (
        TowerConfig(hidden=(8,), norm="batch"),
        TowerConfig(hidden=(6, 4), activation="silu"),
        TowerConfig(hidden=()),
    )
    inputs = InputSpec(
        n_numeric=sum(1 + ind for _, _, _, ind, _ in NUMERIC),
        categorical=tuple(CategoricalFeature(n, c, d) for n, c, d in CATEGORICAL),
        embed_init_std=0.5,
    )
    network = build_model(ArchConfig(inputs, tasks, levels, towers), seed=0).train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # move the batch-norm running statistics away from 0 / 1
        numeric = torch.randn(64, inputs.n_numeric, generator=gen) * 2 + 0.5
        codes = torch.stack([torch.randint(0, c, (64,), generator=gen) for _, c, _ in CATEGORICAL], dim=1)
        network(numeric, codes)
    return network.eval()


def _rich_inputs() -> ServingInputs:
    return ServingInputs(
        numeric=tuple(NumericInput(n, m, s, ind, sc) for n, m, s, ind, sc in NUMERIC),
        categorical=tuple(CategoricalInput(n, c) for n, c, _ in CATEGORICAL),
        oov=False,  # codes as in the data: an invalid one is refused, never read as 0
        label_scaling=(("spend", SPEND_MEAN, SPEND_STD),),
        classes=(("segment", ("lo", "mid", "hi")),),
    )


def _rows(n: int, seed: int) -> torch.Tensor:
    """Raw rows: numbers around each column's mean, a fifth of age/income missing, codes."""
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for _, mean, std, indicator, _ in NUMERIC:
        col = mean + std * torch.randn(n, generator=gen, dtype=torch.float64)
        if indicator:
            col[torch.rand(n, generator=gen) < 0.2] = float("nan")
        cols.append(col)
    cols += [torch.randint(0, c, (n,), generator=gen).double() for _, c, _ in CATEGORICAL]
    return torch.stack(cols, dim=1)


def _by_hand(network: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The predictions for raw rows ``x``, from the network's raw outputs: standardise,
    impute 0, add the indicators; sigmoid / label units / softmax."""
    numeric = []
    for j, (_, mean, std, indicator, scaled) in enumerate(NUMERIC):
        col = x[:, j]
        if scaled:
            numeric.append(torch.nan_to_num((col - mean) / std, nan=0.0))
            if indicator:
                numeric.append(torch.isnan(col).double())
        else:
            numeric.append(col)
    codes = x[:, len(NUMERIC) :].long()
    with torch.no_grad():
        out = network(torch.stack(numeric, dim=1).float(), codes)
    click = 1 / (1 + torch.exp(-out["click"].double()))
    spend = out["spend"].double() * SPEND_STD + SPEND_MEAN
    logits = out["segment"].double()
    segment = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return torch.cat([click[:, None], spend[:, None], segment], dim=1).numpy()


@dataclass(frozen=True)
class Rich:
    network: torch.nn.Module
    model: ServingModel
    out: Path  # the serving folder: model.pt2 + model.onnx
    written: ServingExport
    pt2: torch.nn.Module  # model.pt2 loaded (a load takes a second or two)
    onnx: onnxruntime.InferenceSession


@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> Rich:
    torch.set_num_threads(1)
    network = _rich_network()
    model = ServingModel(network, _rich_inputs()).eval()
    schema = serving_schema(network, inputs=model.inputs)
    out = tmp_path_factory.mktemp("rich") / "serving"
    written = write_serving(model, schema, out, formats=("pt2", "onnx"))
    pt2 = torch.export.load(out / "model.pt2").module()
    return Rich(network, model, out, written, pt2, _session(out / "model.onnx"))


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_onnx_and_pt2_give_the_eager_outputs_for_any_batch(rich, rows):
    x = _rows(rows, seed=rows)
    expected = _by_hand(rich.network, x)
    assert expected.shape == (rows, 5) and np.isfinite(expected).all()
    with torch.no_grad():
        pt2 = rich.pt2(x).numpy()
    onnx_out = rich.onnx.run(None, {"x": x.numpy()})[0]
    assert onnx_out.dtype == np.float64 and onnx_out.shape == (rows, 5)
    np.testing.assert_allclose(pt2, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_out[:, 2:].sum(axis=1), 1.0, rtol=0, atol=1e-6)


def test_the_onnx_file_has_a_dynamic_batch_axis_and_the_schema_describes_it(rich):
    out, written = rich.out, rich.written
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    (outp,) = proto.graph.output
    assert inp.name == "x" and outp.name == "predictions"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    batch, width = inp.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value  # symbolic, not fixed
    assert width.dim_value == len(NUMERIC) + len(CATEGORICAL)
    assert {o.domain or "": o.version for o in proto.opset_import}[""] == _onnx.OPSET == 21
    assert not list(out.glob(".*"))  # no temporary file left
    schema = json.loads((out / "schema.json").read_text())
    assert schema["format"] == "torch.export (.pt2)"  # both formats: the .pt2 stays the default
    assert schema["onnx"]["file"] == "model.onnx" and schema["onnx"]["opset"] == 21
    assert schema["onnx"]["parity"]["rows"] == 256
    assert schema["onnx"]["parity"]["max_abs_difference"] == written.parity["onnx"] < 1e-4
    assert sorted(written.files) == ["onnx", "pt2"]


def test_the_parity_batch_follows_the_contract(rich):
    model = rich.model
    x = parity_batch(model, rows=256, seed=0)
    assert x.dtype == torch.float64 and x.shape == (256, 7)
    torch.testing.assert_close(x, parity_batch(model, rows=256, seed=0), rtol=0, atol=0, equal_nan=True)
    codes = x[:, 4:]
    assert (codes >= 0).all() and (codes == codes.floor()).all()
    assert (codes < torch.tensor([40.0, 6.0, 24.0])).all()  # no OOV code: all valid
    missing = torch.isnan(x[:, :4]).sum(dim=0)
    assert missing[3] == 0 and (missing[:3] > 5).all()  # only the standardised columns miss
    age = x[:, 0][~torch.isnan(x[:, 0])]
    assert abs(age.mean().item() - 40.0) < 3 and abs(age.std().item() - 12.0) < 3
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()  # the eager program accepts every row


def test_a_row_the_pt2_program_refuses_is_nan_in_onnx_and_leaves_the_others_alone(rich):
    good = _rows(4, seed=3)
    bad = _rows(6, seed=4)
    bad[0, 0] = float("inf")  # an infinite standardised value
    bad[1, 4] = -1.0  # negative code
    bad[2, 4] = 40.0  # shop code 40: inside the shared table, device's first row
    bad[3, 5] = 2.5  # fractional code
    bad[4, 6] = float("nan")  # NaN code
    bad[5, 1] = -float("inf")
    refusals = [
        "numeric input 'age'",
        "categorical input 'shop'",
        "categorical input 'shop'",
        "categorical input 'device'",
        "categorical input 'hour'",
        "numeric input 'income'",
    ]
    for i, message in enumerate(refusals):
        with pytest.raises(RuntimeError, match=message):
            rich.pt2(bad[i : i + 1])
    x = torch.cat([good[:2], bad, good[2:]])
    y = rich.onnx.run(None, {"x": x.numpy()})[0]
    assert np.isnan(y[2:8]).all()
    np.testing.assert_allclose(y[[0, 1, 8, 9]], _by_hand(rich.network, good), rtol=1e-5, atol=1e-6)


def test_parity_tolerance_is_absolute_below_one_and_relative_above():
    expected = np.array([[0.5, 250.0, np.nan]])

    def off(*by: float) -> np.ndarray:
        return expected + np.array([by])

    assert _onnx.within_tolerance(off(9e-5, 0.02, 0.0), expected)  # 0.02 <= 1e-4 * 250
    assert not _onnx.within_tolerance(off(2e-4, 0.0, 0.0), expected)  # 2e-4 > 1e-4 * 1
    assert not _onnx.within_tolerance(off(0.0, 0.03, 0.0), expected)  # 0.03 > 1e-4 * 250
    assert not _onnx.within_tolerance(np.array([[0.5, 250.0, 1.0]]), expected)  # NaN vs number
    assert _onnx.max_abs_difference(off(1e-3, 0.02, 0.0), expected) == pytest.approx(0.02)
    assert _onnx.max_abs_difference(np.array([[0.5, 250.0, 1.0]]), expected) == np.inf


def test_a_failed_parity_check_writes_no_onnx_model(rich, tmp_path, monkeypatch):
    """ONNX Runtime made to answer 1e-3 off: the export fails in one line, nothing left."""
    model, out = rich.model, rich.out
    monkeypatch.setattr(_onnx, "to_onnx", lambda m, example, path: shutil.copyfile(out / "model.onnx", path))
    real = _onnx.run_onnx
    monkeypatch.setattr(_onnx, "run_onnx", lambda path, x: real(path, x) + 1e-3)
    with pytest.raises(UserError) as err:
        _onnx.save_onnx(model, parity_batch(model), tmp_path / "serving")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("--format onnx: ONNX Runtime vs eager: max abs difference 0.001 over 256 rows")
    assert "tolerance 0.0001" in message
    assert not list((tmp_path / "serving").iterdir())


# ---- the command -------------------------------------------------------------------------
SPEC = """\
name: shop
files: {path: table.csv}
split: {valid: 0.2, test: 0.1, seed: 0}
features:
  numeric: [age, salary]
  categorical: [city]
tasks:
  - {name: click, label: click, kind: binary}
  - {name: spend, label: spend, kind: regression}
"""
ROWS = [
    {"age": "33.5", "salary": "48000.25", "city": "paris"},
    {"age": "", "salary": "61234.75", "city": "atlantis"},
    {"age": "71", "salary": "39999.99", "city": ""},
]


def _table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    age = rng.uniform(18, 80, n).round(1)
    salary = rng.normal(52000, 15000, n).round(2)
    city = rng.choice(["paris", "lyon", "nice", "metz"], n)
    score = (age - 45) / 15 + (salary - 52000) / 15000 + (city == "paris")
    frame = pd.DataFrame({"age": age, "salary": salary, "city": city})
    frame["click"] = (score + rng.normal(0, 0.5, n) > 0).astype(int)
    frame["spend"] = (200 + 80 * score + rng.normal(0, 10, n)).round(2)
    frame.loc[rng.random(n) < 0.15, "age"] = np.nan
    return frame


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(storage URL, study name): one completed trial with a recorded config, not tracked in
    MLflow, so ``export --retrain`` trains it."""
    folder = tmp_path_factory.mktemp("study")
    _table(600).to_csv(folder / "table.csv", index=False)
    (folder / "shop.yaml").write_text(SPEC)
    storage = f"sqlite:///{folder / 's.db'}"
    settings = SearchSettings(
        space_text=(ROOT / "search_spaces" / "quick.yaml").read_text(),
        space_source="quick.yaml",
        dataset=str(folder / "shop.yaml"),
        n_trials=1,
    )
    ctx = create_or_resume("made", storage, settings)
    data = load_dataset(folder / "shop.yaml", seed=0)
    config = ExperimentConfig(
        model=preset("mmoe", data.input_spec(embed_dim=3), data.tasks, expert_hidden=(8,), tower=(4,)),
        training=TrainConfig(epochs=1, batch_size=128, lr=3e-3),
    )
    made = optuna.create_study(study_name="onnx", storage=storage, directions=ctx.study.directions)
    for key, value in ctx.study.user_attrs.items():
        made.set_user_attr(key, value)
    values = [0.5] * len(ctx.study.directions)
    made.add_trial(create_trial(values=values, user_attrs={"config": config.to_dict()}))
    return storage, "onnx", folder


def export(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mtlsearch", "export", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _args(study, out: Path, fmt: str) -> list[str]:
    storage, name, _ = study
    return ["--study", name, "--storage", storage, "--pick", "trial:0", "--out", str(out), "--retrain",
            "--format", fmt]  # fmt: skip


@pytest.fixture(scope="module")
def both(study, tmp_path_factory):
    """``mtlsearch export --format both`` (run in-process: the module's fixtures are kept)."""
    out = tmp_path_factory.mktemp("both") / "best"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["mtlsearch", "export", *_args(study, out, "both")])
    stdout = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(stdout):
            main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        mp.undo()
    assert code == 0, stdout.getvalue()
    return out, stdout.getvalue()


def _encode(serving: Path) -> np.ndarray:
    sys.path.insert(0, str(serving))
    try:
        import encode

        return encode.Encoder.load(serving).encode(ROWS)
    finally:
        sys.path.remove(str(serving))
        sys.modules.pop("encode", None)


def test_export_both_writes_and_checks_both_programs(both):
    out, stdout = both
    serving = out / "serving"
    assert sorted(p.name for p in serving.iterdir()) == [
        "encode.py", "model.onnx", "model.pt2", "schema.json", "vocab.json"
    ]  # fmt: skip
    lines = [line for line in stdout.splitlines() if line.startswith("ONNX Runtime vs eager")]
    assert len(lines) == 1
    reported = float(lines[0].rsplit(" ", 1)[1])
    info = json.loads((out / "pick.json").read_text())
    assert info["formats"] == ["pt2", "onnx"] and info["checkpoint"] == "retrained"
    assert f"{info['parity_max_abs_difference']['onnx']:.3g}" == lines[0].rsplit(" ", 1)[1]
    assert reported < 1e-4
    assert f"onnx:       {serving / 'model.onnx'}" in stdout
    # the ONNX model reads what the .pt2 program reads: raw rows encoded by encode.py
    x = _encode(serving)
    assert x.dtype == np.float64 and x.shape == (3, 3)
    with torch.no_grad():
        pt2 = torch.export.load(serving / "model.pt2").module()(torch.from_numpy(x)).numpy()
    y = _session(serving / "model.onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(y, pt2, rtol=1e-5, atol=1e-6)
    assert y.shape == (3, 2) and np.isfinite(y).all()


def test_export_onnx_alone_writes_no_pt2(both, study, tmp_path, capsys, monkeypatch):
    """The retrained trial is the same network (the trainer is deterministic), so the
    first export's ONNX file stands in for the exporter; the parity check runs for real."""
    first = both[0] / "serving" / "model.onnx"
    monkeypatch.setattr(_onnx, "to_onnx", lambda m, example, path: shutil.copyfile(first, path))
    out = tmp_path / "onnx-only"
    code, stdout, err = export(capsys, monkeypatch, *_args(study, out, "onnx"))
    assert code == 0, err
    names = sorted(p.name for p in (out / "serving").iterdir())
    assert names == ["encode.py", "model.onnx", "schema.json", "vocab.json"]
    schema = json.loads((out / "serving" / "schema.json").read_text())
    assert schema["format"] == "ONNX (.onnx)" and "onnxruntime.InferenceSession" in schema["load"]
    assert f"serving:    {out / 'serving' / 'model.onnx'}" in stdout
    assert "ONNX Runtime vs eager: max abs difference" in stdout
    assert json.loads((out / "pick.json").read_text())["formats"] == ["onnx"]


def test_a_failed_parity_check_fails_the_export_and_writes_nothing(
    both, study, tmp_path, capsys, monkeypatch
):
    first = both[0] / "serving" / "model.onnx"
    monkeypatch.setattr(_onnx, "to_onnx", lambda m, example, path: shutil.copyfile(first, path))
    real = _onnx.run_onnx
    monkeypatch.setattr(_onnx, "run_onnx", lambda path, x: real(path, x) * 1.01)
    out = tmp_path / "x"
    code, _, err = export(capsys, monkeypatch, *_args(study, out, "both"))
    assert code == 2
    assert err.startswith("error: --format onnx: ONNX Runtime vs eager: max abs difference")
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "both"])
def test_a_missing_onnx_extra_is_one_line_naming_the_install(fmt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    storage = f"sqlite:///{tmp_path / 'nope' / 'x.db'}"
    out = str(tmp_path / "o")
    args = ["--study", "s", "--storage", storage, "--pick", "knee", "--out", out, "--format", fmt]
    code, _, err = export(capsys, monkeypatch, *args)
    assert code == 2
    assert err.strip() == (
        f"error: --format {fmt}: needs onnxruntime (not installed); pip install 'mtlsearch[onnx]'"
    )
    assert not list(tmp_path.iterdir())  # nothing written, the storage never opened


def test_an_unknown_format_is_refused_before_the_storage_is_opened(tmp_path, capsys, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'nope' / 'x.db'}"
    args = ["--study", "s", "--storage", storage, "--pick", "knee", "--out", "o", "--format", "tflite"]
    code, _, err = export(capsys, monkeypatch, *args)
    assert code == 2
    assert err.strip() == "error: --format: unknown value 'tflite'; expected one of ['both', 'onnx', 'pt2']"
    assert not list(tmp_path.iterdir())
