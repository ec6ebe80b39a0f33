"""Studies on SQLite in a temp dir: seeding, references, failures, resume, pruning, the front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mtlsearch.search import (
    DominancePruning,
    Objective,
    SearchSettings,
    count_finished,
    create_or_resume,
    front_table,
    hypervolume,
    pareto_front,
    run_worker,
)
from mtlsearch.search._pruning import EPOCH_ATTR, PruningCallback

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()
SMALL = {"n": 1500, "d": 20}


def _settings(**kw) -> SearchSettings:
    base = dict(
        space_text=QUICK,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options=SMALL,
        sampler="random",
        seed=7,
        n_trials=7,
    )
    base.update(kw)
    return SearchSettings(**base)


def _url(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_same_seed_gives_same_first_parameters_and_references_come_first(tmp_path):
    runs = []
    for i in range(2):
        ctx = create_or_resume("s", _url(tmp_path, f"{i}.db"), _settings(sampler="tpe"))
        run_worker(ctx)
        runs.append(ctx.study.get_trials())
    a, b = runs
    assert [t.user_attrs.get("preset") for t in a[:5]] == [
        "single_task",
        "shared_bottom",
        "mmoe",
        "cgc",
        "ple",
    ]
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]  # same seed, same numbers
    assert a[5].params and a[6].params != a[5].params
    assert count_finished(ctx.study) == 7


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    # Half this space cannot build (MMoE wiring with zero shared experts).
    space = QUICK.replace("select: own+shared", "select: shared").replace(
        "n_shared: {int: [1, 2]}", "n_shared: {int: [0, 1]}"
    )
    ctx = create_or_resume(
        "f", _url(tmp_path), _settings(space_text=space, n_trials=8, enqueue_references=False, seed=3)
    )
    run_worker(ctx)
    trials = ctx.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "expected some invalid samples in this space"
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("invalid sample: levels[")
    assert any(t.state == TrialState.COMPLETE for t in trials)
    assert count_finished(ctx.study) == 8


def test_an_interrupted_search_resumes_by_name_and_finishes(tmp_path):
    url = _url(tmp_path)
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "search",
        "--space",
        str(ROOT / "search_spaces/quick.yaml"),
        "--dataset",
        "synthetic",
        "--data-option",
        "n=1500",
        "--data-option",
        "d=20",
        "--n-trials",
        "12",
        "--study",
        "r",
        "--storage",
        url,
        "--no-mlflow",
        "--quiet",
        "--sampler",
        "random",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A child inherits an ignored SIGINT from a background parent; restore the default so
    # that Python turns Ctrl-C into KeyboardInterrupt as in a terminal.
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    study = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="r", storage=url)
        except KeyError:
            continue
        if sum(t.state == TrialState.COMPLETE for t in study.get_trials()) >= 1:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out.decode()[-2000:]
    assert count_finished(study) < 12
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    study = optuna.load_study(study_name="r", storage=url)
    assert count_finished(study) == 12
    presets = [t.user_attrs.get("preset") for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(p for p in presets if p) == sorted(["single_task", "shared_bottom", "mmoe", "cgc", "ple"])


# ---- pruning -----------------------------------------------------------------------------------
OBJS = (
    Objective("a:auc", "maximize", "a", "auc"),
    Objective("b:mse", "minimize", "b", "mse"),
)


def test_resuming_accepts_objective_shorthand_and_refuses_other_objectives_without_writing(tmp_path):
    from mtlsearch._errors import UserError
    from mtlsearch.search._study import RECIPE_ATTR

    url = _url(tmp_path)
    create_or_resume("s", url, _settings(objectives=("y1", "y2:mse", "params"), n_trials=3))
    # The same objectives spelt differently, or left out, resume the study and may raise the budget.
    ctx = create_or_resume("s", url, _settings(objectives=("y1:mse,y2", "params"), n_trials=4))
    assert [o.name for o in ctx.objectives] == ["y1:mse", "y2:mse", "params"]
    assert create_or_resume("s", url, _settings(n_trials=4)).settings.n_trials == 4
    # Other objectives are refused, and the stored budget is left as it was.
    with pytest.raises(UserError, match=r"exists with objectives \['y1:mse', 'y2:mse', 'params'\]"):
        create_or_resume("s", url, _settings(objectives=("y1",), n_trials=9))
    stored = SearchSettings.from_json(optuna.load_study(study_name="s", storage=url).user_attrs[RECIPE_ATTR])
    assert stored.n_trials == 4
    with pytest.raises(UserError, match="different space or dataset"):
        create_or_resume("s", url, _settings(dataset_options={"n": 1600, "d": 20}))


def test_dominance_rule_counts_only_trials_better_on_every_task_by_the_margin():
    rule = DominancePruning(margin=0.01, min_dominating=2, warmup=1)
    finished = [[[0.7, 0.5], [0.90, 0.20]], [[0.7, 0.5], [0.92, 0.25]], [[0.7, 0.5], [0.80, 0.10]]]
    # Epoch 1: (0.85, 0.30) is beaten on both tasks by the first two trials.
    assert rule.should_prune(1, [0.85, 0.30], finished, OBJS) == (True, 2)
    # A point on the front (best mse) is not dominated by anyone.
    assert rule.should_prune(1, [0.86, 0.05], finished, OBJS) == (False, 0)
    # Within the margin is not dominated: 0.905 vs 0.90 AUC is less than 1% apart.
    assert rule.dominated_by([0.899, 0.2], [[0.90, 0.19]], OBJS) == 0
    # Warm-up epochs are never pruned.
    assert rule.should_prune(0, [0.1, 9.0], finished, OBJS) == (False, 0)


class _Report:
    def __init__(self, epoch, auc, mse):
        self.epoch = epoch
        self.valid = {"a": {"auc": auc}, "b": {"mse": mse}}


def test_pruning_callback_stops_a_dominated_trial_and_not_one_on_the_front(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=_url(tmp_path))
    for hist in ([[0.8, 0.4], [0.90, 0.20]], [[0.8, 0.4], [0.91, 0.22]], [[0.8, 0.4], [0.93, 0.21]]):
        study.add_trial(create_trial(values=hist[-1], user_attrs={EPOCH_ATTR: hist}))
    rule = DominancePruning(margin=0.01, min_dominating=3, warmup=1)

    dominated = PruningCallback(study.ask(), OBJS, rule)
    dominated(_Report(0, 0.6, 0.9))  # warm-up
    with pytest.raises(optuna.TrialPruned, match="dominated at epoch 2 by 3"):  # 1-based: the second epoch
        dominated(_Report(1, 0.80, 0.40))
    assert dominated.trial.user_attrs[EPOCH_ATTR] == [[0.6, 0.9], [0.80, 0.40]]

    on_front = PruningCallback(study.ask(), OBJS, rule)
    on_front(_Report(0, 0.6, 0.9))
    on_front(_Report(1, 0.95, 0.30))  # best AUC so far: never dominated


# ---- the front -------------------------------------------------------------------------------
def _study_with(values_by_preset, tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=_url(tmp_path))
    for preset, values in values_by_preset:
        attrs = {"preset": preset} if preset else {}
        study.add_trial(
            create_trial(
                values=values,
                user_attrs=attrs,
                params={"x": 0.1},
                distributions={"x": FloatDistribution(0, 1)},
            )
        )
    return study


def test_front_gains_and_seesaw_flags_against_single_task(tmp_path):
    study = _study_with(
        [
            ("single_task", [0.90, 0.30]),
            ("mmoe", [0.95, 0.35]),
            ("ple", [0.93, 0.25]),
            (None, [0.89, 0.20]),
            (None, [0.85, 0.40]),
        ],
        tmp_path,
    )
    front = {r.trial: r for r in front_table(study, OBJS)}
    assert sorted(front) == [1, 2, 3]  # trial 0 and 4 are dominated by trial 2
    # one seed per trial: the signs alone give no verdict (the shared rule, train/_verdict.py)
    assert {r.verdict for r in front.values()} == {"one_seed"}
    assert front[1].gains["a:auc"] == pytest.approx(0.05) and front[1].gains["b:mse"] == pytest.approx(-0.05)
    assert front[2].gains["a:auc"] == pytest.approx(0.03)
    assert front[2].gains["b:mse"] == pytest.approx(0.05)  # single - mtl for minimised metrics
    assert front[3].name == "searched"


def test_hypervolume_of_a_known_front(tmp_path):
    study = _study_with([(None, [0.9, 0.5]), (None, [0.7, 0.2])], tmp_path)
    ref = __import__("numpy").array([-0.5, 1.0])  # loss space: (-auc, mse)
    # Union of rectangles [(-0.9,0.5)->(-0.5,1)] and [(-0.7,0.2)->(-0.5,1)]:
    # 0.4*0.5 + 0.2*0.8 - 0.2*0.5 = 0.26
    assert hypervolume(study.get_trials(), OBJS, ref) == pytest.approx(0.26)
    assert len(pareto_front(study, OBJS)) == 2


def test_ctrl_c_while_a_result_is_recorded_releases_the_trial(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) that lands while the worker records a finished trial must
    still release it: FAIL without a reason of its own, so a resume retries it at once
    instead of waiting for the heartbeat's grace period."""

    def interrupted_tell(self, *args, **kwargs):
        raise KeyboardInterrupt

    ctx = create_or_resume("k", _url(tmp_path), _settings(n_trials=2, enqueue_references=False))
    monkeypatch.setattr(optuna.Study, "tell", interrupted_tell)
    with pytest.raises(KeyboardInterrupt):
        run_worker(ctx)
    monkeypatch.undo()
    first = ctx.study.get_trials()[0]
    assert first.state == TrialState.FAIL and "fail_reason" not in first.user_attrs  # retried, not counted
    assert count_finished(ctx.study) == 0
    resumed = create_or_resume("k", _url(tmp_path), _settings(n_trials=2, enqueue_references=False))
    run_worker(resumed)
    assert count_finished(resumed.study) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_lost_before_its_objective_started_is_retried_not_waited_for(tmp_path, monkeypatch):
    """A Ctrl-C between Optuna's ask and the objective leaves a RUNNING trial with no
    heartbeat and no worker; a resumed search must retry it after the grace period rather
    than wait for it forever."""
    monkeypatch.setenv("MTLSEARCH_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("MTLSEARCH_GRACE_PERIOD", "3")
    ctx = create_or_resume("o", _url(tmp_path), _settings(n_trials=3, enqueue_references=False))
    orphan = ctx.study.ask()  # takes a ticket, as a worker's ask does, then "dies"
    time.sleep(3.3)  # past the grace period
    run_worker(ctx, timeout=60, poll=0.1)
    trials = ctx.study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert "fail_reason" not in trials[orphan.number].user_attrs  # lost, not a failure of its own
    assert count_finished(ctx.study) == 3


def test_a_trial_without_a_ticket_fails_uncounted_and_leaves_the_budget_exact(tmp_path):
    """Two workers racing for the last ticket: the loser's ``ask`` creates a trial with no
    ticket. It must fail without a reason of its own, so that it is not counted."""
    from mtlsearch.search._study import make_objective
    from mtlsearch.search._worker import TrialRunner

    ctx = create_or_resume("s", _url(tmp_path), _settings(n_trials=1, enqueue_references=False))
    run_worker(ctx)
    assert count_finished(ctx.study) == 1
    surplus = TrialRunner(ctx, make_objective(ctx)).run_one()  # no ticket is waiting
    assert surplus is not None and surplus.state == TrialState.FAIL
    assert surplus.user_attrs.get("surplus") is True and "fail_reason" not in surplus.user_attrs
    assert count_finished(ctx.study) == 1
