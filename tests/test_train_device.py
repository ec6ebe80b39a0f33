"""``--device`` and ``--precision`` on the CPU: missing devices, bf16/fp16 training, the
checkpoint and the search recipe (issue 13). GPU runs are in tests/test_gpu.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from _cli import run_main
from _train_support import REPO, binary_data, experiment, one_thread  # noqa: F401

from mtlsearch._errors import UserError
from mtlsearch.arch import build_model
from mtlsearch.train import (
    LOSS_WEIGHTINGS,
    LossWeightingConfig,
    TrainConfig,
    check_device_text,
    fit,
    load_checkpoint,
    make_loss_weighting,
    make_precision,
    predict,
    resolve_device,
)
from mtlsearch.train._fit import _masked_losses
from mtlsearch.train._precision import fp16_supported

SYNTHETIC = ["--dataset", "synthetic", "--option", "n=1200", "--option", "d=8"]
SPACE = str(REPO / "search_spaces/quick.yaml")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present here")


@pytest.fixture
def small_config(tmp_path) -> Path:
    raw = yaml.safe_load((REPO / "examples" / "ple_synthetic.yaml").read_text())
    raw["training"]["epochs"] = 1
    path = tmp_path / "ple.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---- devices ----------------------------------------------------------------------------------
def test_device_texts_are_checked_for_form_then_presence():
    assert check_device_text(" CUDA:1 ") == "cuda:1"
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected and resolve_device(None) == expected
    for bad in ("gpu", "cpu:1", "cuda:-1", "cuda:x", 0):
        with pytest.raises(UserError, match=r"^training\.device: "):
            TrainConfig(device=bad)  # type: ignore[arg-type]


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_train_on_a_missing_gpu_is_one_line_exit_2(device, small_config, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["train", "-c", str(small_config), *SYNTHETIC, "--out", str(out), "--device", device, "-q"]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args)
    assert code == 2
    assert err.strip() == (
        f"error: --device {device}: no CUDA device is present (torch.cuda.is_available() is False)"
    )
    assert not out.exists()


@no_gpu
def test_a_missing_gpu_in_the_config_names_the_file_and_field(small_config, tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load(small_config.read_text())
    raw["training"]["device"] = "cuda:0"
    small_config.write_text(yaml.safe_dump(raw))
    args = ["train", "-c", str(small_config), *SYNTHETIC, "--out", str(tmp_path / "run"), "-q"]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args)
    assert code == 2
    assert err.strip() == (
        f"error: {small_config}: training.device cuda:0: no CUDA device is present "
        "(torch.cuda.is_available() is False)"
    )
    # --device wins over the config's value
    args += ["--device", "cpu", "--threads", "1"]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, err


@no_gpu
def test_search_on_a_missing_gpu_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    args = [
        *("search", "--space", SPACE, "--dataset", "synthetic", "-o", "n=600", "-o", "d=8", "--no-mlflow"),
        *("--storage", f"sqlite:///{tmp_path / 's.db'}", "--quiet", "--device", "cuda:7"),
    ]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args)
    assert code == 2
    assert (
        err.strip()
        == "error: --device cuda:7: no CUDA device is present (torch.cuda.is_available() is False)"
    )
    assert not (tmp_path / "s.db").exists()


@no_gpu
@pytest.mark.parametrize("command", ["baselines", "worker", "export"])
def test_other_training_commands_refuse_a_missing_gpu_before_reading_anything(
    command, tmp_path, monkeypatch, capsys
):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = {
        "baselines": ["baselines", "--dataset", "synthetic", "-o", "n=600", "--out", str(tmp_path / "b")],
        "worker": ["worker", "--study", "none", "--storage", storage],
        "export": [
            "export",
            "--study",
            "none",
            "--storage",
            storage,
            "--pick",
            "knee",
            "--out",
            "o",
            "--retrain",
        ],
    }[command]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--device", "cuda")
    assert code == 2
    assert (
        err.strip() == "error: --device cuda: no CUDA device is present (torch.cuda.is_available() is False)"
    )
    assert (
        not (tmp_path / "s.db").exists() and not (tmp_path / "b").exists() and not (tmp_path / "o").exists()
    )


# ---- precisions -------------------------------------------------------------------------------
def test_bf16_on_cpu_trains_close_to_fp32():
    """Tolerance: 3 epochs of bf16 autocast (8-bit mantissa in the matmuls, float32
    weights and optimiser) move the validation AUC by < 0.001 and the logloss by < 0.006
    here; we allow 0.01 and 0.02 (the AUCs are about 0.80, the loglosses 0.56)."""
    data = binary_data()
    ref = fit(experiment(data), data, progress=False)
    low = fit(experiment(data, precision="bf16"), data, progress=False)
    assert (ref.precision, low.precision, low.device) == ("fp32", "bf16", "cpu")
    for task in ("a", "b"):
        for metric, tol in (("auc", 0.01), ("logloss", 0.02)):
            value = low.valid[task][metric]
            assert isinstance(value, float) and math.isfinite(value)
            assert abs(value - ref.valid[task][metric]) < tol, (task, metric, value, ref.valid[task][metric])
    assert low.valid != ref.valid  # autocast really ran: not bitwise fp32


def test_fp16_on_cpu_trains_with_a_loss_level_method_and_refuses_a_gradient_one():
    data = binary_data(n=1500)
    result = fit(experiment(data, precision="fp16", epochs=2), data, progress=False)
    assert result.precision == "fp16"
    assert all(math.isfinite(v) for m in result.valid.values() for v in m.values())
    for method in ("famo", "gradnorm", "upgrad"):
        with pytest.raises(UserError) as err:
            TrainConfig(precision="fp16", loss_weighting=LossWeightingConfig(method=method))
        assert str(err.value).startswith(f"training.precision fp16: loss weighting {method!r} does its own")
    supported = sorted(n for n, c in LOSS_WEIGHTINGS.items() if fp16_supported(c))
    assert supported == ["dwa", "dynamic", "fixed", "gls", "rlw", "uncertainty"]


@pytest.mark.parametrize("method", ["uncertainty", "gls"])
def test_fp16_loss_scaling_multiplies_the_gradients_by_exactly_the_scale(method):
    """The scaled backward must give S times the fp32 gradients of the method's own
    backward (uncertainty: S * total differentiated; gls: given S * L_k, homogeneous)."""
    data = binary_data(n=300)
    cfg = experiment(data, loss_weighting=LossWeightingConfig(method=method))
    grads = []
    for precision in ("fp32", "fp16"):
        model = build_model(cfg.model, seed=0).train()
        weighting = make_loss_weighting(cfg.training.loss_weighting, data.tasks)
        weighting.attach(model)
        tool = make_precision(precision, torch.device("cpu"))
        batch = data.train.take(slice(0, 256))
        full = {t.name: True for t in data.tasks}
        losses, counts = _masked_losses(model(batch.numeric, batch.categorical), batch, data.tasks, full)
        total = tool.backward(weighting, losses, counts)
        scale = tool.scaler.get_scale() if precision == "fp16" else 1.0
        params = [*model.parameters(), *weighting.parameters()]
        grads.append((total, [p.grad / scale for p in params if p.grad is not None]))
    (t32, g32), (t16, g16) = grads
    assert torch.allclose(t16, t32, rtol=1e-6)  # the reported total is unscaled
    assert len(g16) == len(g32) > 0
    for a, b in zip(g16, g32, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


# ---- the CLI: bad values, checkpoint -------------------------------------------------------------
def test_bad_precisions_name_the_flag_or_the_field(small_config, tmp_path, monkeypatch, capsys):
    base = ["train", "-c", str(small_config), *SYNTHETIC, "--out", str(tmp_path / "run"), "-q"]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *base, "--precision", "fp8")
    assert code == 2
    assert (
        err.strip() == "error: --precision: unknown precision 'fp8'; expected one of ['fp32', 'bf16', 'fp16']"
    )
    raw = yaml.safe_load(small_config.read_text())
    raw["training"]["precision"] = 16
    small_config.write_text(yaml.safe_dump(raw))
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *base)
    assert code == 2
    assert err.strip() == (
        f"error: {small_config}: training.precision: unknown precision 16; expected one of "
        "['fp32', 'bf16', 'fp16']"
    )
    raw["training"]["precision"] = "fp32"
    raw["training"]["loss_weighting"] = {"method": "famo"}
    small_config.write_text(yaml.safe_dump(raw))
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *base, "--precision", "fp16")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --precision fp16: loss weighting 'famo' does its own backward")


def test_train_bf16_records_it_in_the_checkpoint_which_predicts(small_config, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["train", "-c", str(small_config), *SYNTHETIC, "--out", str(out), "-q", "--threads", "1"]
    code, stdout, err = run_main(
        monkeypatch, capsys, tmp_path, *args, "--precision", "bf16", "--device", "cpu"
    )
    assert code == 0, err
    assert "on cpu, bf16" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["device"], metrics["precision"]) == ("cpu", "bf16")
    ckpt = load_checkpoint(out)
    assert (ckpt.config.training.precision, ckpt.config.training.device) == ("bf16", "cpu")
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["precision"] == "bf16"
    import pandas as pd

    rows = pd.DataFrame(
        {f"x{i}": [0.1 * i, -0.2, 0.3] for i in range(8)}  # the synthetic features' names
    )
    pred = predict(ckpt, rows)
    assert len(pred) == 3 and pred.notna().all().all()
    assert {"y1", "y2"} <= set(pred.columns)


def test_yaml_round_trip_keeps_precision_and_device():
    tc = TrainConfig(precision="BF16", device="auto")
    assert (tc.precision, tc.device) == ("bf16", "auto")
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    assert TrainConfig.from_dict({}).precision == "fp32"


# ---- search: precision is part of the recipe, the device is the worker's -------------------------
def test_search_records_bf16_and_refuses_a_resume_with_another_precision(tmp_path, monkeypatch, capsys):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = [
        *("search", "--space", SPACE, "--dataset", "synthetic", "-o", "n=600", "-o", "d=8", "--no-mlflow"),
        *("--storage", storage, "--quiet", "--study", "p", "--n-trials", "1", "--references", "1"),
        *("--set", "training.epochs=1", "--set", "levels=1", "--threads", "1"),
    ]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--precision", "bf16")
    assert code == 0, err
    study = optuna.load_study(study_name="p", storage=storage)
    assert json.loads(study.user_attrs["mtlsearch"])["precision"] == "bf16"
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert (trial.user_attrs["precision"], trial.user_attrs["device"]) == ("bf16", "cpu")
    assert trial.user_attrs["config"]["training"]["precision"] == "bf16"
    assert trial.user_attrs["config"]["training"]["device"] is None  # stored without the worker's
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *args, "--precision", "fp32")
    assert code == 2
    assert err.strip() == (
        "error: --precision fp32: study p was made with --precision bf16; resume it with "
        "--precision bf16 (or without --precision), or choose another --study name"
    )
    worker = ["worker", "--study", "p", "--storage", storage, "--no-mlflow", "-q", "--precision", "fp16"]
    code, _, err = run_main(monkeypatch, capsys, tmp_path, *worker)
    assert code == 2
    assert err.strip() == (
        "error: --precision fp16: study p runs with --precision bf16; join it with --precision bf16 "
        "(or without --precision)"
    )
