"""``mtlsearch search`` from the command line: --set, --objectives, --references, --max-params,
--threads, resume checks, progress of running trials, and the front/trial/studies views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from _cli import run_main
from optuna.trial import TrialState

from mtlsearch.arch import build_model, count_parameters
from mtlsearch.cli import join_multi_values
from mtlsearch.cli._search import ProgressObserver
from mtlsearch.search import describe_config
from mtlsearch.train import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces/quick.yaml")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _search(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(
        tmp,
        *("search", "--space", SPACE, "--dataset", "synthetic", "-o", "n=1500", "-o", "d=20", "--no-mlflow"),
        *("--storage", f"sqlite:///{tmp / 's.db'}", "--quiet", *extra),
    )


_main = run_main


def _search_args(tmp: Path, *extra: str) -> list[str]:
    return [
        *("search", "--space", SPACE, "--dataset", "synthetic", "-o", "n=1500", "-o", "d=20", "--no-mlflow"),
        *("--storage", f"sqlite:///{tmp / 's.db'}", "--quiet", *extra),
    ]


def _load(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 's.db'}")


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> Path:
    """One 2-trial search: --set training.epochs=1, one reference, space-separated objectives."""
    tmp = tmp_path_factory.mktemp("short")
    proc = _search(
        tmp,
        *("--study", "short", "--n-trials", "2", "--set", "training.epochs=1", "--set", "levels=1"),
        *("--references", "1", "--threads", "1", "--objectives", "y1", "y2:mae", "params"),
    )
    assert proc.returncode == 0, proc.stderr
    return tmp


def test_set_overrides_are_stored_in_the_study_space_and_used_by_every_trial(short):
    study = _load(short, "short")
    recipe = json.loads(study.user_attrs["mtlsearch"])
    text = recipe["space_text"]
    assert text.startswith("# --set training.epochs=1\n# --set levels=1\n")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["config"]["training"]["epochs"] == 1
        assert len(t.user_attrs["config"]["model"]["levels"]) == 1
        assert t.user_attrs["best_epoch"] == 0


def test_space_separated_objectives_and_one_reference_then_sampled(short):
    study = _load(short, "short")
    assert [o["name"] for o in study.user_attrs["objectives"]] == ["y1:mse", "y2:mae", "params"]
    first, second = study.get_trials()
    assert first.user_attrs["preset"] == "single_task"
    assert "preset" not in second.user_attrs  # sampled by the sampler
    assert {t.user_attrs["threads"] for t in (first, second)} == {1}


def test_resume_with_another_sampler_or_seed_is_refused(short, monkeypatch, capsys):
    for flag, value, stored in (("--sampler", "random", "tpe"), ("--seed", "5", "0")):
        args = _search_args(
            short,
            *("--study", "short", "--n-trials", "2", "--set", "training.epochs=1", "--set", "levels=1"),
            *("--references", "1", flag, value),
        )
        code, _, err = _main(monkeypatch, capsys, short, *args)
        assert code == 2, err
        assert err.strip() == (
            f"error: {flag} {value}: study short was made with {flag} {stored}; resume it with "
            f"{flag} {stored} (or without {flag}), or choose another --study name"
        )


def test_front_trial_and_studies_show_full_width_and_the_architecture(short):
    front = _cli(short, "front", "--study", "short", "--storage", f"sqlite:///{short / 's.db'}")
    assert front.returncode == 0, front.stderr
    assert "gain y2:mae" in front.stdout  # not squeezed to 80 columns although COLUMNS=80
    study = _load(short, "short")
    config = study.trials[0].user_attrs["config"]
    assert describe_config(config) == "L1 0s+1p[16] own+shared no-gate | tower [8] | lr 0.005"
    assert "L1 0s+1p[16] own+shared no-gate | tower [8] | lr 0.005" in front.stdout


def test_trial_and_studies_print_a_trial_and_every_study(short, monkeypatch, capsys):
    study = _load(short, "short")
    storage = f"sqlite:///{short / 's.db'}"
    code, out, err = _main(monkeypatch, capsys, short, "trial", "0", "--study", "short", "--storage", storage)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"trial 0 of short: COMPLETE · model single_task · parameters "
        f"{study.trials[0].user_attrs['n_params']:,} · threads 1 · seconds "
        f"{study.trials[0].user_attrs['seconds']}"
    )
    assert "  epochs: 1" in lines
    assert any(line.split()[:2] == ["│", "y1"] for line in lines)

    code, out, err = _main(monkeypatch, capsys, short, "studies", "--storage", storage)
    assert code == 0, err
    row = next(line for line in out.splitlines() if "│ short" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    best_y1 = min(t.values[0] for t in study.trials)
    best_y2 = min(t.values[1] for t in study.trials)
    assert cells == ["short", "finished", "2/2", "2", "0", "0", "0", "0",
                     f"y1:mse {best_y1:.4f}, y2:mae {best_y2:.4f}"]  # fmt: skip

    code, _, err = _main(monkeypatch, capsys, short, "trial", "7", "--study", "short", "--storage", storage)
    assert code == 2
    assert err.strip() == "error: trial 7: study short has no such trial (0..1)"


def test_bad_objectives_and_set_paths_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    cases = [
        (("--objectives", "y1:auc"), "error: --objectives y1:auc: task 'y1' is regression, its metrics are "
         "['mae', 'mse'], not 'auc'"),
        (("--objectives", "income"), "error: --objectives: unknown task 'income'; tasks are ['y1', 'y2'] "
         "(or cost objectives ['latency', 'params'])"),
        (("--set", "training.epoch=2"), "error: --set training.epoch: unknown key 'epoch' in training; "
         "expected one of ['batch_size', 'class_weights', 'epochs', 'loss_weighting', 'lr', 'monitor', "
         "'optimizer', 'patience', 'pos_weight', 'seed', 'weight_decay']"),
        (("--set", "tower.hidden.x=2"), "error: --set tower.hidden.x: tower.hidden takes a value, not keys; "
         "write --set tower.hidden=VALUE"),
        (("--references", "some"), "error: --references 'some': expected a count, all or none"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = _main(monkeypatch, capsys, tmp_path, *_search_args(tmp_path, "--study", "bad", *args))
        assert code == 2, err
        assert err.strip() == message
    assert not (tmp_path / "s.db").exists()


def test_max_params_fails_too_big_configs_without_training_them(tmp_path):
    proc = _search(
        tmp_path,
        *("--study", "mp", "--n-trials", "2", "--set", "training.epochs=1", "--references", "2"),
        *("--max-params", "900"),
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "--n-trials 2: the 2 reference architectures use the whole budget and no architecture is "
        "sampled; raise --n-trials or choose --references N, all or none"
    ) in proc.stderr
    single, shared = _load(tmp_path, "mp").get_trials()
    # single_task: two towers of [16] experts then [8] towers on 20 inputs, counted by hand
    per_task = (20 * 16 + 16) + (16 * 8 + 8) + (8 + 1)
    assert single.user_attrs["n_params"] == 2 * per_task == 962
    config = ExperimentConfig.from_dict(single.user_attrs["config"])
    assert count_parameters(build_model(config.model, seed=0)) == 962
    assert single.state == TrialState.FAIL
    assert single.user_attrs["fail_reason"] == "infeasible: 962 parameters > --max-params 900; not trained"
    assert single.user_attrs["infeasible"] is True
    assert "valid" not in single.user_attrs and "seconds" not in single.user_attrs  # never trained
    assert shared.state == TrialState.COMPLETE and shared.user_attrs["n_params"] <= 900


def test_the_warning_names_the_references_that_do_not_run(short):
    from mtlsearch.search._study import warn_short_budget

    refs = {name: None for name in ("single_task", "shared_bottom", "mmoe", "cgc", "ple")}
    ctx = SimpleNamespace(references=refs, settings=SimpleNamespace(n_trials=3))
    assert warn_short_budget(ctx) == (
        "--n-trials 3: only the first 3 of the 5 reference architectures run (single_task, "
        "shared_bottom, mmoe; not cgc, ple) and no architecture is sampled; raise --n-trials or "
        "choose --references N, all or none"
    )
    ctx.settings.n_trials = 6
    assert warn_short_budget(ctx) is None


def test_multi_value_options_are_joined_and_nothing_else_is():
    assert join_multi_values(["search", "--objectives", "a:auc", "b:auc", "params", "--seed", "1"]) == [
        "search", "--objectives", "a:auc,b:auc,params", "--seed", "1",
    ]  # fmt: skip
    assert join_multi_values(["search", "--objectives=a", "b", "-q"]) == [
        "search",
        "--objectives",
        "a,b",
        "-q",
    ]
    assert join_multi_values(["trial", "3", "--study", "s"]) == ["trial", "3", "--study", "s"]


class _Progress:
    def __init__(self) -> None:
        self.status = ""

    def update(self, task_id, status=None, **_):
        if status is not None:
            self.status = status


def test_progress_shows_running_trials_with_preset_and_epoch():
    study = optuna.create_study(directions=["minimize"])
    objective = SimpleNamespace(name="y1:mse", direction="minimize", is_cost=False)
    ctx = SimpleNamespace(study=study, objectives=(objective,), settings=SimpleNamespace(n_trials=3))
    progress = _Progress()
    obs = ProgressObserver(progress, 0, ctx)
    config = SimpleNamespace(training=SimpleNamespace(epochs=3))
    obs.on_trial_start(SimpleNamespace(number=0, user_attrs={"preset": "mmoe"}), config)
    obs.on_trial_start(SimpleNamespace(number=1, user_attrs={}), config)
    obs.on_epoch(SimpleNamespace(number=0), SimpleNamespace(epoch=1))
    assert progress.status.startswith("running #0 mmoe epoch 2/3, #1 searched epoch 0/3 · failed 0")
    obs.on_trial_end(study, SimpleNamespace(number=0), None)
    assert progress.status.startswith("running #1 searched epoch 0/3 · failed 0")
