"""What a user sees of early stopping (MOASHA rungs): the progress line and ``mtlsearch front``
count the trials stopped at each rung, a stopped trial's MLflow run says where it stopped and
with which values, the HTML report plots every trial's metric path over epochs with the rungs
marked, and the front (and so ``export`` and the gains over single-task) holds full-fidelity
trials only.

The studies are built by hand with the pruner's contract: ``epoch_values`` (task objectives
per epoch), ``rung_decisions`` (``{"rung", "epoch", "values", "seen", "decision"}``),
``stopped_rung`` and ``pruned_reason`` on PRUNED trials, and the study's ``pruning`` setting.
"""

from __future__ import annotations

import base64
import json
import re
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from _cli import run_main
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mtlsearch._errors import UserError
from mtlsearch.search import Objective, SearchSettings, front_table, pick_trial
from mtlsearch.search._objectives import to_dict
from mtlsearch.tracking import MlflowObserver, write_report
from mtlsearch.tracking._figures import epoch_paths_figure
from mtlsearch.tracking._mlflow import pruned_tags
from mtlsearch.tracking._summary import (
    epoch_paths,
    pruning_text,
    rung_counts,
    rung_epochs,
    rung_text,
)

OBJECTIVES = (
    Objective("a:auc", "maximize", "a", "auc"),
    Objective("b:auc", "maximize", "b", "auc"),
    Objective("params", "minimize"),
)
MOASHA = {"method": "moasha", "min_epochs": 1, "eta": 3}
EPOCHS = 5  # rungs at epochs 1 and 3 (1 * 3**k <= 5)
DIST = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


def _decision(rung, epoch, values, decision, seen=(0, 1)):
    return {"rung": rung, "epoch": epoch, "values": values, "seen": list(seen), "decision": decision}


def _path(start_a, start_b, n):
    """A rising metric path: ``n`` epochs of (a, b)."""
    return [[round(start_a + 0.01 * e, 4), round(start_b + 0.01 * e, 4)] for e in range(n)]


def _completed(values, path, preset=None):
    decisions = [
        _decision(0, 1, path[0], "continue"),
        _decision(1, 3, path[2], "continue"),
    ]
    attrs = {"epoch_values": path, "rung_decisions": decisions, "n_params": int(values[2])}
    if preset:
        attrs["preset"] = preset
    return create_trial(values=values, params={"lr": 0.01}, distributions=DIST, user_attrs=attrs)


def _stopped(path, rung, reason=None, decisions=None):
    attrs = {"epoch_values": path, "pruned_reason": reason or f"stopped at rung {rung}"}
    if rung is not None:
        attrs["stopped_rung"] = rung
        attrs["rung_decisions"] = decisions
    return create_trial(state=TrialState.PRUNED, params={"lr": 0.02}, distributions=DIST, user_attrs=attrs)


def build(study: optuna.Study, pruning=MOASHA) -> optuna.Study:
    """Trials 0-2 completed (0 single-task, 1 and 2 searched; 2 is dominated), 3 and 4
    stopped at rung 0 (3 with partial values better than every completed trial), 5 stopped at
    rung 1, 6 pruned by the dominance rule (no rung), 7 failed."""
    settings = SearchSettings(
        space_text="levels: 1\n",
        space_source="space.yaml",
        dataset="synthetic",
        dataset_options={"max_rows": 500},
        n_trials=8,
        pruning=pruning,
    )
    study.set_user_attr("mtlsearch", settings.to_json())
    study.set_user_attr("objectives", to_dict(OBJECTIVES))
    study.add_trial(_completed([0.84, 0.94, 1000], _path(0.80, 0.90, EPOCHS), "single_task"))
    study.add_trial(_completed([0.89, 0.92, 2000], _path(0.85, 0.88, EPOCHS)))
    study.add_trial(_completed([0.82, 0.90, 3000], _path(0.78, 0.86, EPOCHS)))
    study.add_trial(_stopped([[0.99, 0.99]], 0, decisions=[_decision(0, 1, [0.99, 0.99], "stop")]))
    study.add_trial(_stopped([[0.70, 0.75]], 0, decisions=[_decision(0, 1, [0.70, 0.75], "stop")]))
    five = _path(0.75, 0.80, 3)
    study.add_trial(
        _stopped(
            five,
            1,
            "stopped at rung 1 (epoch 3): dominated by trials 0, 1 among 3 seen",
            [_decision(0, 1, five[0], "continue"), _decision(1, 3, five[2], "stop", (0, 1, 2))],
        )
    )
    study.add_trial(_stopped(_path(0.6, 0.6, 2), None, "dominated at epoch 1 by 3 finished trials"))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "RuntimeError: boom"}))
    return study


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The hand-built study in a SQLite storage (the CLI reads it from there)."""
    folder = tmp_path_factory.mktemp("moasha")
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(
        study_name="moasha", storage=storage, directions=["maximize", "maximize", "minimize"]
    )
    build(study)
    return SimpleNamespace(study=study, storage=storage, folder=folder)


# ---- counting -----------------------------------------------------------------------------------
def test_rung_counts_say_who_stopped_and_who_went_on_at_each_rung(stored):
    counts = rung_counts(stored.study.get_trials())
    # rung 0: 3 and 4 stopped; 0, 1, 2 and 5 went on. rung 1: 5 stopped; 0, 1, 2 went on.
    assert [(c.rung, c.epoch, c.continued, c.stopped) for c in counts] == [(0, 1, 4, 2), (1, 3, 3, 1)]
    assert rung_text(counts) == "rung 0 (epoch 1): 2, rung 1 (epoch 3): 1"
    assert rung_counts([create_trial(values=[0.8, 0.9, 100.0])]) == []  # no rung decisions: none


def test_pruning_settings_in_words():
    assert pruning_text(MOASHA) == "moasha (min_epochs 1, eta 3)"
    assert pruning_text({"margin": 0.01}) == "dominance (margin 0.01)"
    assert pruning_text(None) == "off"


def test_rung_epochs_come_from_the_decisions_else_from_the_moasha_setting(stored):
    trials = stored.study.get_trials()
    assert rung_epochs(trials, EPOCHS, MOASHA) == [(0, 1), (1, 3)]
    # before any decision: rung k at min_epochs * eta**k, up to the epochs
    assert rung_epochs([], 5, MOASHA) == [(0, 1), (1, 3)]
    assert rung_epochs([], 9, MOASHA) == [(0, 1), (1, 3), (2, 9)]
    assert rung_epochs([], 8, {"method": "moasha", "min_epochs": 2, "eta": 2}) == [(0, 2), (1, 4), (2, 8)]
    assert rung_epochs([], 8, {"margin": 0.01}) == []
    assert rung_epochs([], 8, None) == []


# ---- the progress line and `mtlsearch front` --------------------------------------------------
class _Progress:
    def __init__(self) -> None:
        self.status = ""

    def update(self, task_id, status=None, **_):
        if status is not None:
            self.status = status


def test_the_progress_line_counts_the_stopped_trials_per_rung(stored):
    from mtlsearch.cli._search import ProgressObserver

    ctx = SimpleNamespace(study=stored.study, objectives=OBJECTIVES, settings=SimpleNamespace(n_trials=8))
    progress = _Progress()
    ProgressObserver(progress, 0, ctx)
    # 4 pruned: 2 at rung 0, 1 at rung 1, and the dominance-pruned trial 6 at no rung
    assert "failed 1 · pruned 4 (rung 0: 2, rung 1: 1) · front 2 · " in progress.status


_main = run_main


def test_front_lists_full_fidelity_trials_and_counts_the_stopped_ones(stored, monkeypatch, capsys):
    code, out, err = _main(
        monkeypatch, capsys, stored.folder, "front", "--study", "moasha", "--storage", stored.storage
    )
    assert code == 0, err
    # trial 3 stopped with a (0.99, 0.99) that would beat every completed trial: not on the front
    table = out.split("Pareto front of moasha")[1].split("stopped early")[0]
    assert re.findall(r"^\s*│?\s*(\d+)\s+│", table, flags=re.M) == ["0", "1"]
    assert (
        "stopped early: 4 trials, at rung 0 (epoch 1): 2, rung 1 (epoch 3): 1; the front holds "
        "completed (full-fidelity) trials only"
    ) in out
    assert [r.trial for r in front_table(stored.study, OBJECTIVES)] == [0, 1]


def test_trial_says_why_and_where_a_stopped_trial_stopped_and_its_epoch_values(stored, monkeypatch, capsys):
    """``mtlsearch trial`` on a PRUNED trial: its reason, rung and epoch, its values there
    and its validation values after every epoch it trained (the task objectives, in order)."""

    def show(number):
        code, out, err = _main(
            monkeypatch,
            capsys,
            stored.folder,
            "trial",
            str(number),
            "--study",
            "moasha",
            "--storage",
            stored.storage,
        )
        assert code == 0, err
        return out

    out = show(5)
    assert "trial 5 of moasha: PRUNED" in out
    assert "pruned_reason: stopped at rung 1 (epoch 3): dominated by trials 0, 1 among 3 seen" in out
    assert "stopped at rung 1 (epoch 3): validation a:auc 0.7700, b:auc 0.8200" in out
    table = out.split("trial 5: validation after each epoch (3 epochs, stopped early)")[1]
    rows = re.findall(r"^\s*│?\s*(\d)\s+│\s*([\d.]+)\s+│\s*([\d.]+)\s+│\s*(.*?)\s*│?$", table, flags=re.M)
    assert [r[:3] for r in rows] == [
        ("1", "0.7500", "0.8000"),
        ("2", "0.7600", "0.8100"),
        ("3", "0.7700", "0.8200"),
    ]
    assert [r[3] for r in rows] == ["rung 0: continue (2 seen)", "", "rung 1: stop (3 seen)"]
    header = table.split("epoch")[1].splitlines()[0]
    assert header.index("a:auc") < header.index("b:auc") and "params" not in header  # task objectives only

    out = show(3)  # one epoch, stopped at rung 0
    assert "stopped at rung 0 (epoch 1): validation a:auc 0.9900, b:auc 0.9900" in out
    assert "validation after each epoch (1 epoch, stopped early)" in out

    out = show(6)  # the dominance rule: a reason, no rung
    assert "pruned_reason: dominated at epoch 1 by 3 finished trials" in out
    assert "stopped after epoch 2" in out and "rung" not in out.replace("pruned_reason", "")
    assert re.search(r"^\s*│?\s*2\s+│\s*0\.6100\s+│\s*0\.6100", out, flags=re.M)


def test_a_one_member_front_and_one_stopped_trial_are_counted_in_the_singular(tmp_path, monkeypatch, capsys):
    from mtlsearch.cli._common import count

    assert [count(n, "trial") for n in (0, 1, 2)] == ["0 trials", "1 trial", "2 trials"]
    storage = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(
        study_name="one", storage=storage, directions=["maximize", "maximize", "minimize"]
    )
    settings = SearchSettings(
        space_text="levels: 1\n", space_source="space.yaml", dataset="synthetic", n_trials=2
    )
    study.set_user_attr("mtlsearch", settings.to_json())
    study.set_user_attr("objectives", to_dict(OBJECTIVES))
    study.add_trial(_completed([0.84, 0.94, 1000], _path(0.80, 0.90, EPOCHS)))
    study.add_trial(_stopped([[0.70, 0.75]], 0, decisions=[_decision(0, 1, [0.70, 0.75], "stop")]))
    code, out, err = _main(monkeypatch, capsys, tmp_path, "front", "--study", "one", "--storage", storage)
    assert code == 0, err
    assert "Pareto front of one (1 trial)" in out and "stopped early: 1 trial, at rung 0" in out


def test_export_picks_only_full_fidelity_trials(stored):
    """``export`` chooses through pick_trial: a stopped trial is never the pick."""
    assert pick_trial(stored.study, "knee", OBJECTIVES).trial.number in (0, 1)
    assert pick_trial(stored.study, "constraint:max=a:auc", OBJECTIVES).trial.number == 1
    with pytest.raises(UserError, match="trial 3 is pruned"):
        pick_trial(stored.study, "trial:3", OBJECTIVES)


# ---- the HTML report ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    study = build(optuna.create_study(directions=["maximize", "maximize", "minimize"]))  # in memory: quicker
    out = write_report(study, tmp_path_factory.mktemp("report") / "report.html")
    return out.read_text()


def test_the_report_plots_the_metric_paths_and_tables_the_rungs(page):
    section = page.split("<h2>Task metrics over epochs</h2>")[1].split("<h2>")[0]
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(images) == 1 and base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td></tr>", section)
    assert rows == [("0", "1", "4", "2"), ("1", "3", "3", "1")]  # rung, epoch, went on, stopped
    assert "moasha (min_epochs 1, eta 3)" in page
    assert "rung 0 (epoch 1): 2, rung 1 (epoch 3): 1" in page
    assert "the 4 trials stopped early are left out" in page


def test_the_report_lists_where_each_stopped_trial_stopped_and_its_values_there(page):
    table = page.split("<h2>Failed and pruned trials</h2>")[1]
    row = re.search(r"<tr><td>5</td>(.*?)</tr>", table).group(1)
    assert "rung 1, epoch 3" in row and "a:auc 0.77, b:auc 0.82" in row
    assert "dominated by trials 0, 1 among 3 seen" in row
    row3 = re.search(r"<tr><td>3</td>(.*?)</tr>", table).group(1)
    assert "rung 0, epoch 1" in row3 and "a:auc 0.99, b:auc 0.99" in row3
    row6 = re.search(r"<tr><td>6</td>(.*?)</tr>", table).group(1)  # dominance: no rung
    assert "rung" not in row6.split("dominated")[0] and "dominated at epoch 1" in row6
    front = page.split("<h2>Front members")[1].split("<h2>")[0]
    assert re.findall(r"<tr><td>(\d+)</td>", front) == ["0", "1"]


def test_the_figure_ends_stopped_trials_at_their_rung_and_marks_the_rungs(stored, tmp_path):
    paths = epoch_paths(stored.study, OBJECTIVES)
    assert [p.number for p in paths] == [0, 1, 2, 3, 4, 5, 6]  # the failed trial recorded none
    fig = epoch_paths_figure(paths, OBJECTIVES, [(0, 1), (1, 3)])
    axes = fig.axes
    assert len(axes) == 2  # one panel per task objective, none for params
    for k, ax in enumerate(axes):
        lines = {line.get_gid(): line for line in ax.get_lines()}
        assert [float(lines[f"rung-{r}"].get_xdata()[0]) for r in (0, 1)] == [1.0, 3.0]
        assert list(lines["trial-0"].get_xdata()) == [1, 2, 3, 4, 5]  # completed: every epoch
        assert list(lines["trial-5"].get_xdata()) == [1, 2, 3]  # stopped at rung 1 (epoch 3)
        assert list(lines["trial-3"].get_xdata()) == [1]
        # the end mark sits on the stopped trial's value at its rung
        assert list(lines["stop-5"].get_xdata()) == [3]
        assert float(lines["stop-5"].get_ydata()[0]) == pytest.approx([0.77, 0.82][k])
        assert lines["stop-5"].get_marker() == "x"
        assert "stop-0" not in lines and "trial-7" not in lines
        colors = {n: lines[f"trial-{n}"].get_color() for n in (0, 1, 2, 3)}
        assert colors[0] == colors[1] == "#d62728"  # the front
        assert colors[2] == "#9aa5b1" and colors[3] == "#7b3fa0"
    png = tmp_path / "paths.png"
    fig.savefig(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_rungs_the_paths_are_drawn_and_no_rung_table_is_made():
    from mtlsearch.tracking._report import _epochs_html

    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for values, start in (([0.8, 0.9, 10.0], 0.7), ([0.85, 0.8, 20.0], 0.75)):
        attrs = {"epoch_values": _path(start, start, EPOCHS)}
        study.add_trial(create_trial(values=values, user_attrs=attrs))
    html = _epochs_html(study, OBJECTIVES, None)
    assert html.count("data:image/png;base64,") == 1 and "<th>rung</th>" not in html
    fig = epoch_paths_figure(epoch_paths(study, OBJECTIVES), OBJECTIVES, [])
    assert not [line for ax in fig.axes for line in ax.get_lines() if str(line.get_gid()).startswith("rung")]


# ---- MLflow -------------------------------------------------------------------------------------
def test_pruned_tags_name_the_rung_and_its_values(stored):
    trials = stored.study.get_trials()
    tags = pruned_tags(trials[5], OBJECTIVES)
    assert tags == {
        "stopped_rung": "1",
        "stopped_epoch": "3",
        "rung_values": json.dumps({"a:auc": 0.77, "b:auc": 0.82}),
        "pruned_reason": "stopped at rung 1 (epoch 3): dominated by trials 0, 1 among 3 seen",
    }
    assert pruned_tags(trials[6], OBJECTIVES) == {
        "pruned_reason": "dominated at epoch 1 by 3 finished trials"
    }
    assert pruned_tags(trials[0], OBJECTIVES) == {}


class _Config:
    def to_dict(self):
        return {"model": {"levels": [{"n_shared": 1}]}, "training": {"epochs": EPOCHS}}

    def to_yaml(self):
        return "model: {levels: [{n_shared: 1}]}\ntraining: {epochs: 5}\n"


def test_a_stopped_trials_run_is_killed_and_tagged_with_its_rung(tmp_path):
    study = optuna.create_study(
        study_name="runs", storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["maximize"] * 2
    )
    objectives = OBJECTIVES[:2]
    settings = SimpleNamespace(
        dataset="synthetic", dataset_options={}, objectives=("a", "b"), sampler="tpe", seed=0,
        n_trials=4, space_source="space.yaml", max_params=None, space_text="levels: 1\n", pruning=MOASHA,
    )  # fmt: skip
    ctx = SimpleNamespace(objectives=objectives, settings=settings, data=None)
    observer = MlflowObserver(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_models=False)
    try:
        observer.on_study(study, ctx)
        trial = study.ask()
        observer.on_trial_start(trial, _Config())
        path = _path(0.6, 0.7, 3)
        trial.set_user_attr("epoch_values", path)
        trial.set_user_attr(
            "rung_decisions", [_decision(0, 1, path[0], "continue"), _decision(1, 3, path[2], "stop")]
        )
        trial.set_user_attr("stopped_rung", 1)
        trial.set_user_attr("pruned_reason", "stopped at rung 1 (epoch 3)")
        study.tell(trial, state=TrialState.PRUNED)
        observer.on_trial_end(study, study.trials[0], None)
        client = MlflowClient(observer.tracking_uri)
        run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED"
        tags = run.data.tags
        assert tags["state"] == "PRUNED" and tags["stopped_rung"] == "1" and tags["stopped_epoch"] == "3"
        assert json.loads(tags["rung_values"]) == {"a:auc": 0.62, "b:auc": 0.72}
        assert tags["pruned_reason"] == "stopped at rung 1 (epoch 3)"
        assert tags["pareto_front"] == "false" and tags["compare"] == "false"
        parent = client.get_run(observer.parent_run_id)
        assert parent.data.tags["setting.pruning"] == "moasha (min_epochs 1, eta 3)"
    finally:
        observer.close("FINISHED")
        mlflow.set_tracking_uri(None)
