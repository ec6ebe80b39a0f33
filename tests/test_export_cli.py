"""``mtlsearch export`` on a real tracked study: each rule, the exported config retrains to
the trial's metrics, the serving program scores where only torch is importable, errors."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from _tracking_support import DATA_OPTIONS, ROOT, SEED, run_cli, tracked_study
from optuna.trial import TrialState, create_trial

from mtlsearch.cli import main
from mtlsearch.search import SearchSettings, create_or_resume, objectives_of, pareto_front, pareto_ranks
from mtlsearch.train import load_checkpoint
from mtlsearch.train import predict as predict_rows


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return tracked_study(tmp_path_factory)


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path_factory, monkeypatch):
    """Run from an empty folder: an export must not create MLflow files in the cwd."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert not list(cwd.iterdir())


def export(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mtlsearch", "export", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _study_args(tracked) -> list[str]:
    return ["--study", tracked.name, "--storage", tracked.storage]


def _expected(study: optuna.Study, rule: str) -> int:
    """The rule worked out here, independently of mtlsearch.search._pick: y1:mse and params
    are both minimised, so the losses are the values themselves."""
    front = sorted(pareto_front(study, objectives_of(study)), key=lambda t: t.number)
    losses = np.array([t.values for t in front])
    norm = (losses - losses.min(0)) / np.where(np.ptp(losses, 0) > 0, np.ptp(losses, 0), 1)
    if rule == "knee":
        return front[int(np.argmin(np.linalg.norm(norm, axis=1)))].number
    weights = np.array([float(w) for w in rule.split(":")[1].split(",")])
    return front[int(np.argmax((1 - norm) @ weights))].number


@pytest.mark.parametrize("rule", ["knee", "weights:1,0", "weights:0,1", "weights:1,1"])
def test_each_rule_exports_the_trial_it_picks(tracked, tmp_path, capsys, monkeypatch, rule):
    study = tracked.load()
    expected = _expected(study, rule)
    out = tmp_path / "export"
    code, stdout, err = export(capsys, monkeypatch, *_study_args(tracked), "--pick", rule, "--out", str(out))
    assert code == 0, err
    info = json.loads((out / "pick.json").read_text())
    assert info["trial"] == expected and info["rule"] == rule
    trial = study.trials[expected]
    from mtlsearch.train import ExperimentConfig

    assert ExperimentConfig.load(out / "config.yaml").to_dict() == trial.user_attrs["config"]
    assert info["checkpoint"] == "mlflow", info["notes"]  # front members' models are logged
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.metrics["valid"] == trial.user_attrs["valid"]
    assert (out / "serving" / "model.pt2").is_file()
    assert f"trial {expected}" in stdout


def test_constraint_rule_exports_the_best_trial_within_the_bound(tracked, tmp_path, capsys, monkeypatch):
    study = tracked.load()
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    cap = sorted(t.user_attrs["n_params"] for t in complete)[len(complete) // 2]
    within = [t for t in complete if t.user_attrs["n_params"] <= cap]
    expected = min(within, key=lambda t: (t.values[0], t.number)).number
    out = tmp_path / "c"
    rule = f"constraint:best=y1,params<={cap}"
    code, _, err = export(capsys, monkeypatch, *_study_args(tracked), "--pick", rule, "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "pick.json").read_text())["trial"] == expected


@pytest.fixture(scope="module")
def knee_export(tracked, tmp_path_factory):
    out = tmp_path_factory.mktemp("knee") / "model"
    proc = run_cli("export", *_study_args(tracked), "--pick", "knee", "--out", str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_exported_config_retrains_to_the_trials_metrics(tracked, knee_export, tmp_path):
    study = tracked.load()
    info = json.loads((knee_export / "pick.json").read_text())
    trial = study.trials[info["trial"]]
    command = shlex.split(info["train_command"])
    opts = [a for k, v in DATA_OPTIONS.items() for a in ("--option", f"{k}={v}")]
    expected = ["mtlsearch", "train", "--config", "config.yaml", "--dataset", "synthetic", *opts]
    assert command == [*expected, "--data-seed", str(SEED)]
    # run it as written (from the export folder), in a fresh process like the search's
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *command[1:], "--out", str(tmp_path / "retrained"), "--quiet"],
        cwd=knee_export,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "retrained" / "metrics.json").read_text())
    assert metrics["valid"] == trial.user_attrs["valid"]  # the trainer is deterministic
    assert metrics["test"] == trial.user_attrs["test"]
    assert metrics["n_params"] == trial.user_attrs["n_params"]


SERVE = textwrap.dedent(
    """
    import sys
    sys.path.append(sys.argv[1])  # torch's site-packages only: no .pth files, no mtlsearch
    try:
        import mtlsearch
    except ImportError:
        pass
    else:
        raise SystemExit("mtlsearch is importable: " + mtlsearch.__file__)
    import torch
    program = torch.export.load(sys.argv[2])
    x = torch.load(sys.argv[3], weights_only=True)
    with torch.no_grad():
        torch.save(program.module()(x), sys.argv[4])
    print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("mtlsearch", "torch"))[:1])
    """
)


def test_the_serving_program_scores_in_a_process_with_only_torch(knee_export, tmp_path):
    from mtlsearch.data import load_dataset

    schema = json.loads((knee_export / "serving" / "schema.json").read_text())
    data = load_dataset("synthetic", seed=SEED, **DATA_OPTIONS)
    assert schema["inputs"] == list(data.numeric_features)
    assert schema["outputs"] == ["y1", "y2"]
    rows = data.test.numeric[:200]
    torch.save(rows.double(), tmp_path / "x.pt")  # the serving input: raw numeric columns, float64
    (tmp_path / "serve.py").write_text(SERVE)
    site = str(Path(torch.__file__).resolve().parents[1])
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "serve.py"), site,
         str(knee_export / "serving" / "model.pt2"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        cwd=work, capture_output=True, text=True, timeout=180, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    served = torch.load(tmp_path / "y.pt", weights_only=True).numpy()
    # mtlsearch's own predict, from raw rows through the checkpoint's preprocessing
    frame = pd.DataFrame(rows.numpy(), columns=list(data.numeric_features))
    expected = predict_rows(load_checkpoint(knee_export / "checkpoint"), frame)
    np.testing.assert_allclose(served, expected[["y1", "y2"]].to_numpy(), rtol=1e-5, atol=1e-5)


def test_a_trial_without_a_logged_model_exports_its_config_and_retrains_on_request(
    tracked, tmp_path, capsys, monkeypatch
):
    from mlflow import MlflowClient

    study = tracked.load()
    client = MlflowClient(tracked.tracking_uri)
    # a trial that was never on the front when it finished has no logged model
    never = [
        t
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if "model_logged" not in client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
    ]
    assert never, "every trial was on the front when it finished; the study should have dominated ones"
    off = never[0]
    assert pareto_ranks([off, *pareto_front(study, objectives_of(study))], objectives_of(study))[0] > 0
    plain = tmp_path / "plain"
    code, stdout, err = export(
        capsys, monkeypatch, *_study_args(tracked), "--pick", f"trial:{off.number}", "--out", str(plain)
    )
    assert code == 0, err
    assert sorted(p.name for p in plain.iterdir()) == ["config.yaml", "pick.json"]
    assert "pass --retrain" in stdout
    again = tmp_path / "retrained"
    args = [*_study_args(tracked), "--pick", f"trial:{off.number}", "--out", str(again), "--retrain"]
    code, _, err = export(capsys, monkeypatch, *args)
    assert code == 0, err
    info = json.loads((again / "pick.json").read_text())
    assert info["checkpoint"] == "retrained"
    valid = load_checkpoint(again / "checkpoint").metrics["valid"]
    for task, metrics in off.user_attrs["valid"].items():
        for name, value in metrics.items():
            assert valid[task][name] == pytest.approx(value, rel=1e-6)
    assert (again / "serving" / "model.pt2").is_file()


def test_an_existing_folder_is_kept_unless_overwrite(tracked, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = [*_study_args(tracked), "--pick", "knee", "--out", str(out)]
    code, _, err = export(capsys, monkeypatch, *args)
    assert (
        code == 2
        and err.strip() == f"error: --out {out}: already exists; pass --overwrite or choose another folder"
    )
    assert (out / "mine.txt").read_text() == "keep me"
    code, _, err = export(capsys, monkeypatch, *args, "--overwrite")
    assert code == 0, err
    assert not (out / "mine.txt").exists() and (out / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary leftovers


def test_a_rule_nothing_satisfies_writes_nothing(tracked, tmp_path, capsys, monkeypatch):
    out = tmp_path / "none"
    args = [*_study_args(tracked), "--pick", "constraint:best=y1,params<=1", "--out", str(out)]
    code, _, err = export(capsys, monkeypatch, *args)
    assert code == 2
    assert err.startswith("error: --pick constraint:best=y1,params<=1: no completed trial has params<=1")
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_a_malformed_rule_fails_before_the_storage_is_opened(tmp_path, capsys, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'nope' / 'x.db'}"
    code, _, err = export(
        capsys, monkeypatch, "--study", "s", "--storage", storage, "--pick", "kne", "--out", "o"
    )
    assert code == 2 and "--pick kne: unknown rule" in err
    assert not (tmp_path / "nope").exists()


def _settings(n_trials: int) -> SearchSettings:
    return SearchSettings(
        space_text=(ROOT / "search_spaces" / "quick.yaml").read_text(),
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options={"n": 300, "d": 4},
        n_trials=n_trials,
    )


def test_empty_and_all_failed_studies_are_clear_errors(tmp_path, capsys, monkeypatch):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume("empty", storage, _settings(2))  # two tickets waiting, nothing ran
    code, _, err = export(
        capsys, monkeypatch, "--study", "empty", "--storage", storage, "--pick", "knee", "--out", "o"
    )
    assert code == 2 and "--study empty: no completed trial to pick from (2 waiting)" in err

    ctx = create_or_resume("failed", storage, _settings(1))
    study = optuna.create_study(study_name="all-failed", storage=storage, directions=ctx.study.directions)
    for key, value in ctx.study.user_attrs.items():
        study.set_user_attr(key, value)
    for _ in range(3):
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "ValueError: boom"}))
    args = ["--study", "all-failed", "--storage", storage, "--pick", "trial:0", "--out", str(tmp_path / "o")]
    code, _, err = export(capsys, monkeypatch, *args)
    assert code == 2 and "no completed trial to pick from (3 fail)" in err
    assert not (tmp_path / "o").exists()


def test_an_unreachable_tracking_server_still_exports_the_config(tracked, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cfg"
    args = [*_study_args(tracked), "--pick", "knee", "--out", str(out), "--tracking-uri", "nosuchscheme://x"]
    code, stdout, err = export(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "could not fetch the model from MLflow" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "pick.json"]
