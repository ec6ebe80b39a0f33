"""``mtlsearch train`` / ``baselines`` end to end through the console entry point."""

from __future__ import annotations

import sys

import pytest
import yaml
from _train_support import REPO, one_thread  # noqa: F401

from mtlsearch.cli import main
from mtlsearch.train import BaselineReport, ExperimentConfig, load_checkpoint

SYNTHETIC = ["--dataset", "synthetic", "--option", "n=1200", "--option", "d=8"]


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mtlsearch", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def small_config(tmp_path):
    """The example PLE config, trained for 2 epochs (to keep the test quick)."""
    raw = yaml.safe_load((REPO / "examples" / "ple_synthetic.yaml").read_text())
    raw["training"]["epochs"] = 2
    path = tmp_path / "ple.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_prints_the_table_and_writes_a_checkpoint(small_config, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(small_config), *SYNTHETIC, "--out", str(out_dir), "--quiet"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "y1" in out and "mse" in out and "expert utilisation" in out
    ckpt = load_checkpoint(out_dir)
    assert ckpt.config.model.task_names == ("y1", "y2")
    assert ckpt.config.model.inputs.n_numeric == 8  # filled in from the dataset
    assert ckpt.config.training.epochs == 2
    # the same command again must not clobber the checkpoint
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"training": {"lr": -1}}, "ple.yaml: training.lr: must be > 0"),
        ({"training": {"monitor": "income"}}, "ple.yaml: training.monitor: unknown task 'income'"),
        ({"trainig": {}}, "ple.yaml: trainig: unknown top-level key"),
    ],
)
def test_a_bad_config_is_one_line_exit_2_and_writes_nothing(
    small_config, tmp_path, capsys, monkeypatch, edit, message
):
    raw = yaml.safe_load(small_config.read_text())
    for key, value in edit.items():
        raw[key] = {**raw.get(key, {}), **value}
    small_config.write_text(yaml.safe_dump(raw))
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(small_config), *SYNTHETIC, "--out", str(out_dir)]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out_dir.exists()


def test_train_needs_exactly_one_data_source(small_config, capsys, monkeypatch):
    code, _, err = run_cli(["train", "--config", str(small_config)], capsys, monkeypatch)
    assert code == 2 and "exactly one of --data SPEC and --dataset NAME" in err


def test_baselines_prints_gains_and_writes_a_reusable_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "baselines.json"
    args = ["baselines", *SYNTHETIC, "--epochs", "1", "--presets", "mmoe", "--out", str(out), "-q"]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "single_task" in stdout and "mmoe" in stdout and "gain" in stdout
    report = BaselineReport.load(out)
    assert report.models == ["single_task", "mmoe"]
    assert report.training.epochs == 1
    from mtlsearch.train._verdict import label

    assert label(report.verdict("mmoe")) in stdout  # the table writes the verdict out
    reference = report.single_task_reference()
    assert set(reference) == {"y1", "y2"} and set(reference["y1"]) == {"mse", "mae"}


def test_example_config_round_trips_through_the_checkpoint(small_config, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    args = ["train", "--config", str(small_config), *SYNTHETIC, "--out", str(out_dir), "-q"]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    saved = ExperimentConfig.load(out_dir / "config.yaml")
    # the saved config is complete: it trains again without the dataset filling anything in
    assert saved.model.inputs.n_numeric == 8 and saved.model.levels[0].shared_gate


def test_ctrl_c_exits_130_even_with_a_thread_that_never_stops():
    """Optuna's heartbeat thread is not a daemon; a Ctrl-C that lands while it starts
    leaves it running, and the CLI must still exit (130) instead of waiting for it."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "import mtlsearch.cli as cli\n"
        "threading.Thread(target=threading.Event().wait).start()\n"
        "def interrupted(**kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "cli.app = interrupted\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted" in proc.stderr
