"""``train``, ``predict``, ``baselines`` and ``data`` on the command line: TSV rows, --sep, a table
given as a spec, --threads recorded, baselines saying what it trains, help texts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer

from mtlsearch.cli import app
from mtlsearch.cli._train import predict_reading

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
name: tabbed
files: {path: rows.tsv, sep: "\\t"}
split: {valid: 0.2, test: 0.2, seed: 0}
features: {numeric: [a, b], categorical: [cat]}
tasks:
  - {name: click, label: y, kind: binary}
  - {name: amount, label: r, kind: regression}
"""
CONFIG = """\
model:
  levels: [{n_shared: 1, n_specific: 1, expert_hidden: [8]}]
  towers: {hidden: [4]}
training: {lr: 0.01, batch_size: 64, epochs: 1, seed: 0}
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _main(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str, str]:
    from mtlsearch.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["mtlsearch", *args])
    code, handler, threads = 0, signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, handler)
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def _rows(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame(
        {
            "a": a.round(4),
            "b": b.round(4),
            "cat": rng.choice(["red", "green", "blue"], size=n),
            "y": (a + 0.5 * rng.normal(size=n) > 0).astype(int),
            "r": (2 * b + 0.1 * rng.normal(size=n)).round(4),
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model trained from a tab-separated table through a spec, with --threads 1."""
    tmp = tmp_path_factory.mktemp("tsv")
    _rows().to_csv(tmp / "rows.tsv", sep="\t", index=False)
    (tmp / "spec.yaml").write_text(SPEC)
    (tmp / "exp.yaml").write_text(CONFIG)
    proc = _cli(
        tmp, "train", "-c", "exp.yaml", "--data", "spec.yaml", "--out", "model", "--threads", "1", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    return tmp


def test_train_records_threads_and_the_specs_reading_options(trained):
    metrics = json.loads((trained / "model" / "metrics.json").read_text())
    assert metrics["threads"] == 1
    assert metrics["input"] == {"sep": "\t", "skipinitialspace": False}


def test_predict_reads_tsv_by_the_saved_separator_by_extension_and_by_sep(trained, monkeypatch, capsys):
    from mtlsearch.train import load_checkpoint, predict

    rows = _rows().head(50)
    rows.to_csv(trained / "plain.tsv", sep="\t", index=False)
    rows.to_csv(trained / "saved.txt", sep="\t", index=False)  # no .tsv: the model's spec says tab
    rows.to_csv(trained / "semi.csv", sep=";", index=False)
    expected = predict(load_checkpoint(trained / "model"), rows)
    for name, extra in (("plain.tsv", ()), ("saved.txt", ()), ("semi.csv", ("--sep", ";"))):
        out = f"{name}.pred.csv"
        code, _, err = _main(
            monkeypatch, capsys, trained, "predict", "-m", "model", "-i", name, "--output", out, *extra
        )
        assert code == 0, err
        got = pd.read_csv(trained / out)
        assert list(got.columns) == ["click", "amount"]
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-6)


def test_predict_reading_precedence():
    saved = {"sep": ";", "na_values": ["?"], "skipinitialspace": True}
    assert predict_reading(Path("x.csv"), saved, None) == {
        "sep": ";",
        "na_values": ("?",),
        "skipinitialspace": True,
    }
    assert predict_reading(Path("x.tsv"), saved, None)["sep"] == "\t"
    assert predict_reading(Path("x.tsv"), saved, ",")["sep"] == ","
    assert predict_reading(Path("x.csv"), {}, "tab") == {"sep": "\t"}
    assert predict_reading(Path("x.csv"), {}, None) == {}  # read_table's comma


def test_a_table_given_as_a_spec_says_what_it_looks_like(trained, monkeypatch, capsys):
    _rows().head(5).to_csv(trained / "rows.csv", index=False)
    code, _, err = _main(monkeypatch, capsys, trained, "train", "-c", "exp.yaml", "--data", "rows.csv")
    assert code == 2
    assert err.strip() == (
        "error: --data rows.csv: looks like a CSV table, not a dataset spec YAML; write a spec whose "
        "files.path names the table (schema: mtlsearch/data/_spec.py), or use --dataset NAME"
    )
    code, _, err = _main(monkeypatch, capsys, trained, "data", "describe", "rows.tsv")
    assert code == 2
    assert err.startswith("error: data describe rows.tsv: looks like a TSV table, not a dataset spec YAML;")


def test_baselines_says_which_model_and_seed_it_trains(tmp_path):
    proc = _cli(
        tmp_path,
        *("baselines", "--dataset", "synthetic", "-o", "n=1500", "-o", "d=20", "--epochs", "1"),
        *("--presets", "mmoe", "--seeds", "0,1", "--threads", "1", "-q"),
    )
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if ": training " in line]
    assert [line.split(": ", 1)[1] for line in said] == [
        "training single_task (2 models: y1, y2), seed 0 (run 1 of 4, 1 thread)",
        "training mmoe, seed 0 (run 2 of 4, 1 thread)",
        "training single_task (2 models: y1, y2), seed 1 (run 3 of 4, 1 thread)",
        "training mmoe, seed 1 (run 4 of 4, 1 thread)",
    ]


def test_every_option_of_every_command_has_help_and_train_shows_its_default(monkeypatch, capsys):
    root = typer.main.get_command(app)

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])
        if not getattr(cmd, "commands", None):
            yield path, cmd

    missing = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, cmd in walk(root, [])
        for param in cmd.params
        if param.param_type_name == "option" and not (param.help or "").strip()
    ]
    assert missing == []
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _main(monkeypatch, capsys, ROOT, "train", "--help")
    assert code == 0
    assert "Checkpoint directory (default: runs/<config>-<time>)." in out
    assert "--threads" in out
