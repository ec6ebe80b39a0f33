"""MOASHA as a pruner: rung schedule, ranking, promotions on constructed studies, samplers that
learn from stopped trials, resume, the CLI options, the data-fraction fidelity, and two worker
processes on PostgreSQL whose every decision a single-process replay reproduces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from _cli import run_main
from _train_support import binary_data, experiment, one_thread  # noqa: F401 (autouse fixture)
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mtlsearch._errors import UserError
from mtlsearch.search import (
    MOASHAPruning,
    Objective,
    SearchSettings,
    count_finished,
    create_or_resume,
    objectives_of,
    pareto_front,
    run_worker,
)
from mtlsearch.search._pruning import PRUNERS, DominancePruning, PruningCallback, make_pruning
from mtlsearch.search._rungs import (
    crowding_distances,
    decide,
    front_indices,
    replay,
    rung_epochs,
)
from mtlsearch.search._sampling import PrunedAsComplete
from mtlsearch.search._study import RECIPE_ATTR, fraction_rows, make_sampler

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()
SPACE = str(ROOT / "search_spaces" / "quick.yaml")
SMALL = {"n": 1500, "d": 20}
OBJS = (Objective("a:auc", "maximize", "a", "auc"), Objective("b:mse", "minimize", "b", "mse"))
SIGNS = (1.0, -1.0)
MOASHA = {"method": "moasha", "min_epochs": 1, "eta": 3}


def _settings(**kw) -> SearchSettings:
    base = dict(
        space_text=QUICK,
        space_source="quick.yaml",
        dataset="synthetic",
        dataset_options=SMALL,
        sampler="tpe",
        seed=5,
        n_trials=5,
        enqueue_references=False,
        pruning=MOASHA,
    )
    base.update(kw)
    return SearchSettings(**base)


def _url(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


class _Report:
    def __init__(self, epoch: int, auc: float, mse: float) -> None:
        self.epoch = epoch
        self.valid = {"a": {"auc": auc}, "b": {"mse": mse}}


# ---- schedule and ranking ---------------------------------------------------------------------
def test_rungs_sit_at_r_eta_k_epochs_strictly_below_the_last_epoch():
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(1, 3, 9) == [1, 3]  # 9 is the last epoch: not a rung
    assert rung_epochs(1, 3, 3) == [1]
    assert rung_epochs(2, 2, 17) == [2, 4, 8, 16]
    assert rung_epochs(1, 3, 1) == [] and rung_epochs(4, 3, 4) == []
    assert MOASHAPruning(min_epochs=3, eta=2).rungs(13) == [3, 6, 12]


def test_fronts_and_crowding_distance_match_a_hand_computation():
    # losses (lower is better); points 0-3 trade off, 4 is dominated by 1 and 2, 5 by 4
    losses = [(0, 4), (1, 2), (3, 1), (4, 0), (3, 3), (4, 4)]
    assert front_indices(losses) == [0, 0, 0, 0, 1, 2]
    assert front_indices([(1, 1), (1, 1)]) == [0, 0]  # equal vectors share a front
    # spans 4 and 4; point 1: (3-0)/4 + (4-1)/4 = 1.5; point 2: (4-1)/4 + (2-0)/4 = 1.25
    dist = crowding_distances(losses, [0, 1, 2, 3])
    assert dist == {0: math.inf, 1: 1.5, 2: 1.25, 3: math.inf}
    assert crowding_distances(losses, [4]) == {4: math.inf}


def test_a_chain_lets_exactly_ceil_n_over_eta_go_on():
    # trial i is dominated by every j < i; each decides as the last of n arrivals
    went_on = []
    for n in range(1, 10):
        seen = [(i, [0.9 - 0.01 * i, 0.1 + 0.01 * i]) for i in range(n)]
        went_on.append(sum(decide(i, seen, SIGNS, 3, 0, 1).goes_on for i in range(n)))
    assert went_on == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # the first arrival at a rung always goes on; the second only if it ranks first of two
    assert decide(7, [(7, [0.5, 0.9])], SIGNS, 3, 0, 1).decision == "continue"
    assert decide(8, [(7, [0.9, 0.1]), (8, [0.5, 0.9])], SIGNS, 3, 0, 1).decision == "stop"
    assert decide(8, [(7, [0.5, 0.9]), (8, [0.9, 0.1])], SIGNS, 3, 0, 1).decision == "continue"


def test_top_one_over_eta_with_crowding_and_ties():
    # One front on a line (auc = mse = p: each higher p buys auc with mse), dyadic p so the
    # crowding distances 2 * (p_next - p_prev) are exact.
    def front(ps, numbers):
        return [(n, [p, p]) for n, p in zip(numbers, ps, strict=True)]

    seen = [*front([0, 1 / 8, 2 / 8, 3 / 8, 7 / 8, 1], range(6)), (6, [5 / 8, 5 / 8])]
    # crowding: ends inf; 1/8: 4/8, 2/8: 4/8, 3/8: 6/8, new 5/8: 1, 7/8: 6/8 -> new is 3rd of 7
    new = decide(6, seen, SIGNS, 3, 0, 1)
    assert (new.position, new.quota, new.crowding, new.decision) == (2, 3, 1.0, "continue")
    assert [decide(n, seen, SIGNS, 3, 0, 1).decision for n in range(7)] == [
        "continue", "stop", "stop", "stop", "stop", "continue", "continue",
    ]  # fmt: skip
    # Equal crowding at the cut: five equally spaced points, eta 2 -> 3 go on: both ends,
    # then the interior tie goes to the lowest trial number.
    seen = front([0, 1 / 4, 2 / 4, 3 / 4, 1], [10, 11, 12, 13, 14])
    assert [decide(n, seen, SIGNS, 2, 0, 1).decision for n in (10, 11, 12, 13, 14)] == [
        "continue", "continue", "stop", "stop", "continue",
    ]  # fmt: skip
    # Identical vectors: the earlier trial keeps the place.
    same = [(3, [0.8, 0.2]), (1, [0.8, 0.2]), (2, [0.8, 0.2])]
    assert [decide(n, same, SIGNS, 3, 0, 1).decision for n in (1, 2, 3)] == ["continue", "stop", "stop"]
    # A NaN metric counts as the worst value of its objective.
    nan = [(0, [float("nan"), 0.5]), (1, [0.6, 0.5]), (2, [0.7, 0.4])]
    assert decide(0, nan, SIGNS, 3, 0, 1).position == 2


# ---- promotions on a constructed study ----------------------------------------------------------
def _rung0_study(tmp_path: Path, vectors, **extra) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], storage=_url(tmp_path))
    for i, (state, values) in enumerate(vectors):
        attrs = {"rung_values": {"0": values}, "rung_times": {"0": float(i + 1)}, **extra}
        study.add_trial(create_trial(state=state, values=values if state == TrialState.COMPLETE else None,
                                     user_attrs=attrs))  # fmt: skip
    return study


def test_at_rung_0_a_dominated_trial_stops_and_a_non_dominated_one_goes_on(tmp_path):
    study = _rung0_study(
        tmp_path,
        [
            (TrialState.COMPLETE, [0.90, 0.20]),  # 0 dominates 1, 1 dominates 2
            (TrialState.PRUNED, [0.80, 0.30]),
            (TrialState.COMPLETE, [0.70, 0.40]),
            (TrialState.FAIL, [0.99, 0.01]),  # a failed trial is no evidence
        ],
    )
    rule = make_pruning(MOASHA)
    dominated = PruningCallback(study.ask(), OBJS, rule, epochs=9)  # rungs at epochs 1 and 3
    with pytest.raises(optuna.TrialPruned, match=r"rung 0 \(epoch 1\): ranked 3 of 4 .* top 2 go on"):
        dominated(_Report(0, 0.75, 0.35))  # beaten by 0 and 1, beats 2: third of 4, ceil(4/3) = 2
    study.tell(dominated.trial, state=TrialState.PRUNED)

    on_front = PruningCallback(study.ask(), OBJS, rule, epochs=9)
    on_front(_Report(0, 0.95, 0.25))  # best AUC so far: on the front with trial 0
    on_front(_Report(1, 0.50, 0.90))  # epoch 2 is no rung: nothing is decided
    trials = study.get_trials()
    assert trials[4].user_attrs["rung_decisions"] == [
        {"rung": 0, "epoch": 1, "values": [0.75, 0.35], "seen": [0, 1, 2, 4], "decision": "stop"}
    ]
    assert trials[4].user_attrs["stopped_rung"] == 0
    assert trials[4].user_attrs["pruned_reason"].startswith("MOASHA rung 0 (epoch 1): ranked 3 of 4")
    assert trials[5].user_attrs["rung_decisions"] == [
        {"rung": 0, "epoch": 1, "values": [0.95, 0.25], "seen": [0, 1, 2, 4, 5], "decision": "continue"}
    ]
    assert trials[5].user_attrs["rung_values"] == {"0": [0.95, 0.25]}
    assert "stopped_rung" not in trials[5].user_attrs
    assert replay(trials, OBJS, 3) == []


def test_a_named_reference_is_never_stopped_and_its_values_still_count(tmp_path):
    study = _rung0_study(
        tmp_path, [(TrialState.COMPLETE, [0.90, 0.20]), (TrialState.COMPLETE, [0.80, 0.30])],
        epoch_values=[[0.9, 0.1]] * 3,
    )  # fmt: skip
    reference = study.ask()
    reference.set_user_attr("preset", "single_task")  # as --references enqueues it
    cb = PruningCallback(reference, OBJS, make_pruning(MOASHA), epochs=9)
    cb(_Report(0, 0.10, 9.0))  # the worst of 3 at rung 0: quota ceil(3/3) = 1, yet it goes on
    cb(_Report(1, 0.10, 9.0))
    cb(_Report(2, 0.10, 9.0))  # rung 1 (epoch 3): alone there, goes on anyway
    attrs = study.get_trials()[2].user_attrs
    assert [(d["rung"], d["seen"], d["decision"], d.get("reference")) for d in attrs["rung_decisions"]] == [
        (0, [0, 1, 2], "continue", True),
        (1, [2], "continue", True),
    ]
    assert "stopped_rung" not in attrs and "pruned_reason" not in attrs
    study.tell(reference, [0.10, 9.0])
    # its rung-0 values count for the next trial, which ranks 3rd of 4 (quota 2): stopped
    later = PruningCallback(study.ask(), OBJS, make_pruning(MOASHA), epochs=9)
    with pytest.raises(optuna.TrialPruned, match=r"ranked 3 of 4"):
        later(_Report(0, 0.50, 1.0))
    study.tell(later.trial, state=TrialState.PRUNED)
    assert replay(study.get_trials(), OBJS, 3) == []
    # the dominance rule, which would stop the same trial at epoch 2 (three finished trials
    # better at every epoch), leaves a reference alone too
    rule = DominancePruning(margin=0.01, min_dominating=1, warmup=1)
    plain = PruningCallback(study.ask(), OBJS, rule, epochs=3)
    plain(_Report(0, 0.1, 9.0))
    with pytest.raises(optuna.TrialPruned):
        plain(_Report(1, 0.1, 9.0))
    named = study.ask()
    named.set_user_attr("preset", "mmoe")
    kept = PruningCallback(named, OBJS, rule, epochs=3)
    for e in range(3):
        kept(_Report(e, 0.1, 9.0))


def test_nothing_is_stopped_at_the_last_epoch_by_any_rule(tmp_path):
    # four finished trials, better on both tasks at every epoch (the dominance rule reads these)
    study = _rung0_study(tmp_path, [(TrialState.COMPLETE, [0.9, 0.1])] * 4, epoch_values=[[0.9, 0.1]] * 3)
    # MOASHA with 1 epoch (the first rung would be the last epoch) and with r = 3 = epochs
    for rule, epochs in ((make_pruning(MOASHA), 1), (MOASHAPruning(min_epochs=3, eta=3), 3)):
        cb = PruningCallback(study.ask(), OBJS, rule, epochs=epochs)
        for e in range(epochs):
            cb(_Report(e, 0.1, 9.0))  # the worst trial of all
        assert "rung_decisions" not in cb.trial.user_attrs
    # The dominance rule stops the same trial at epoch 2 of 3, never at epoch 3 of 3.
    rule = DominancePruning(margin=0.01, min_dominating=3, warmup=1)
    cb = PruningCallback(study.ask(), OBJS, rule, epochs=3)
    cb(_Report(0, 0.1, 9.0))
    with pytest.raises(optuna.TrialPruned):
        cb(_Report(1, 0.1, 9.0))
    last = PruningCallback(study.ask(), OBJS, rule, epochs=2)
    last(_Report(0, 0.1, 9.0))
    last(_Report(1, 0.1, 9.0))  # epoch 2 of 2: the result is complete and kept


# ---- settings and the registry -------------------------------------------------------------------
def test_pruning_settings_registry_old_dicts_and_one_line_errors():
    assert sorted(PRUNERS) == ["dominance", "moasha", "none"]
    assert _settings(pruning=None).pruning is None
    assert _settings(pruning={"method": "none"}).pruning is None
    assert _settings(pruning={"method": "none"}).to_json() == _settings(pruning=None).to_json()
    # a dict stored before the registry (no "method") is the dominance rule
    old = json.loads(_settings(pruning=None).to_json()) | {"pruning": {"margin": 0.02}}
    assert SearchSettings.from_json(json.dumps(old)).pruning == {
        "method": "dominance", "margin": 0.02, "min_dominating": 3, "warmup": 1,
    }  # fmt: skip
    assert _settings().pruning == {"method": "moasha", "min_epochs": 1, "eta": 3, "rung_fraction": None}
    bad = {
        "--pruner: unknown 'asha'": {"method": "asha"},
        "--eta: must be an integer >= 2, got 1": {**MOASHA, "eta": 1},
        "--min-epochs: must be an integer >= 1, got 0": {**MOASHA, "min_epochs": 0},
        "--rung-fraction: must be a number in (0, 1], got 1.5": {**MOASHA, "rung_fraction": 1.5},
        "--prune-margin: must be a number >= 0, got -1": {"method": "dominance", "margin": -1},
        "pruning.rungs: unknown setting of --pruner moasha": {**MOASHA, "rungs": 3},
    }
    for message, spec in bad.items():
        with pytest.raises(UserError) as err:
            _settings(pruning=spec)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ---- samplers ---------------------------------------------------------------------------------
def test_samplers_see_pruned_trials_as_complete_with_their_last_rung_values(tmp_path):
    objs = (*OBJS, Objective("params", "minimize"), Objective("latency", "minimize"))
    study = optuna.create_study(directions=["maximize", "minimize"] * 2, storage=_url(tmp_path))
    x = {"distributions": {"x": FloatDistribution(0, 1)}}
    study.add_trial(create_trial(values=[0.95, 0.1, 900, 3.0]))  # a reference: nothing sampled
    study.add_trial(create_trial(values=[0.9, 0.2, 1000, 1.0], params={"x": 0.9}, **x))
    study.add_trial(create_trial(values=[0.8, 0.3, 800, 2.0], params={"x": 0.8}, **x))
    stopped = {"rung_values": {"0": [0.6, 0.5], "1": [0.7, 0.4]}, "stopped_rung": 1, "n_params": 500}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.1}, user_attrs=stopped, **x))
    dominance = {"epoch_values": [[0.5, 0.6], [0.55, 0.58]], "n_params": 700}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.2}, user_attrs=dominance, **x))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.3}, **x))  # nothing recorded
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.4}, **x))

    tpe = PrunedAsComplete(optuna.samplers.TPESampler(seed=0), objs)
    seen = {t.number: t for t in tpe.view(study.get_trials(deepcopy=False))}
    states = [TrialState.COMPLETE] * 5 + [TrialState.PRUNED, TrialState.FAIL]
    assert [seen[n].state for n in range(7)] == states
    # last rung values, own parameter count, the worst latency of complete trials (3.0)
    assert seen[3].values == [0.7, 0.4, 500.0, 3.0]
    assert seen[4].values == [0.55, 0.58, 700.0, 3.0]  # the dominance rule: last epoch's values
    assert study.get_trials()[3].state == TrialState.PRUNED  # the storage is untouched
    assert [t.number for t in pareto_front(study, objs)] == [0, 1, 2]  # the front: COMPLETE only

    # NSGA-II: a reference trial (no parameters) emptied Optuna's intersection search space,
    # so every parameter was sampled at random; the view leaves references out.
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    plain = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    assert plain.infer_relative_search_space(study, frozen) == {}
    nsga = PrunedAsComplete(optuna.samplers.NSGAIISampler(seed=0, population_size=4), objs, True)
    assert nsga.infer_relative_search_space(study, frozen) == {"x": FloatDistribution(0, 1)}
    view = nsga._study(study)
    assert [t.number for t in view.get_trials(states=(TrialState.COMPLETE,))] == [1, 2, 3, 4]

    # Which samplers are wrapped: NSGA-II always; TPE only when the study prunes.
    def sampler(name, pruning):
        return make_sampler(_settings(sampler=name, pruning=pruning), 0, OBJS)

    assert type(sampler("tpe", None)) is optuna.samplers.TPESampler  # --pruner none: as before
    assert type(sampler("random", MOASHA)) is optuna.samplers.RandomSampler
    assert isinstance(sampler("tpe", MOASHA).inner, optuna.samplers.TPESampler)
    assert sampler("nsga2", None).hide_unsampled is True


def _late_stopped_proposals(sampler, n: int = 40) -> int:
    """A study with a reference trial first, then trials whose ``lr`` above 1e-2 are always
    stopped at rung 0 with poor values: how many of the last n/2 proposals fall there (a
    third of the log range: about n/6 for a sampler that learns nothing)."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({}, user_attrs={"preset": "mmoe"})
    late = 0
    for i in range(n):
        trial = study.ask()
        if i == 0:
            study.tell(trial, [0.7, 0.3])  # the reference: nothing sampled
            continue
        lr, y = trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_float("y", 0, 1)
        if lr > 1e-2:
            trial.set_user_attr("rung_values", {"0": [0.55, 0.6]})
            trial.set_user_attr("stopped_rung", 0)
            study.tell(trial, state=TrialState.PRUNED)
            late += i >= n // 2
        else:
            study.tell(trial, [0.8 + 0.1 * y, 0.2 + 0.1 * y])
    return late


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_nsga2_stops_proposing_a_learning_rate_whose_trials_were_all_stopped():
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def nsga(seed):
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)

    plain = [_late_stopped_proposals(nsga(seed)) for seed in range(3)]
    wrapped = [_late_stopped_proposals(PrunedAsComplete(nsga(seed), OBJS, True)) for seed in range(3)]
    # Optuna 5.0, seeds 0-2: plain NSGA-II samples at random (the reference emptied its search
    # space): [9, 6, 7] of 20 in the stopped region; through the view [2, 4, 4].
    assert sum(wrapped) < sum(plain) / 2 and sum(wrapped) < 60 / 3, (plain, wrapped)  # 60 late proposals


# ---- a real study, resumed --------------------------------------------------------------------------
class _EpochCounter:
    """A search observer counting the epochs it is shown, per trial."""

    def __init__(self) -> None:
        self.epochs: dict[int, int] = {}

    def on_study(self, study, context) -> None:
        pass

    def on_trial_start(self, trial, config) -> None:
        self.epochs[trial.number] = 0

    def on_epoch(self, trial, report) -> None:
        self.epochs[trial.number] += 1

    def on_trial_end(self, study, trial, result) -> None:
        pass


def test_a_moasha_study_stops_trials_at_rung_0_and_a_resume_keeps_its_rungs_and_decisions(tmp_path):
    url = _url(tmp_path)
    ctx = create_or_resume("m", url, _settings(n_trials=4))
    seen_epochs = _EpochCounter()
    ctx.observers.append(seen_epochs)
    run_worker(ctx)
    first = {t.number: t.user_attrs.get("rung_decisions") for t in ctx.study.get_trials()}
    trials = ctx.study.get_trials()
    # observers (MLflow's run of the trial) see every epoch trained, the stopping one included
    assert seen_epochs.epochs == {t.number: len(t.user_attrs["epoch_values"]) for t in trials}
    assert count_finished(ctx.study) == 4
    # quick.yaml trains 3 epochs: one rung, at epoch 1; each trial decided there once,
    # single process: each saw every earlier trial
    for t in trials:
        (d,) = t.user_attrs["rung_decisions"]
        assert (d["rung"], d["epoch"], d["seen"]) == (0, 1, list(range(t.number + 1)))
        assert d["values"] == t.user_attrs["epoch_values"][0]
        if t.state == TrialState.PRUNED:
            assert d["decision"] == "stop" and t.user_attrs["stopped_rung"] == 0
            assert len(t.user_attrs["epoch_values"]) == 1 and t.user_attrs["n_params"] > 0
        else:
            assert t.state == TrialState.COMPLETE and d["decision"] == "continue"
            assert len(t.user_attrs["epoch_values"]) == 3
    assert trials[0].state == TrialState.COMPLETE  # the first arrival always goes on
    assert any(t.state == TrialState.PRUNED for t in trials)
    assert replay(trials, ctx.objectives, 3) == []

    # A resume whose command names no pruner keeps the stored one; one that moves the rungs
    # is refused before anything is written.
    with pytest.raises(UserError, match=r"^--eta 2: study m was made with --eta 3"):
        create_or_resume("m", url, _settings(n_trials=6, pruning={**MOASHA, "eta": 2}))
    resumed = create_or_resume("m", url, _settings(n_trials=6, pruning=None), given=("sampler", "seed"))
    assert resumed.settings.pruning == _settings().pruning
    assert json.loads(resumed.study.user_attrs[RECIPE_ATTR])["pruning"]["method"] == "moasha"
    run_worker(resumed)
    after = resumed.study.get_trials()
    assert count_finished(resumed.study) == 6
    assert first == {t.number: t.user_attrs["rung_decisions"] for t in after[:4]}
    for t in after[4:]:
        assert t.user_attrs["rung_decisions"][0]["seen"] == list(range(t.number + 1))
    assert replay(after, resumed.objectives, 3) == []


def test_pruner_none_runs_as_before_no_rungs_no_wrapping(tmp_path):
    ctx = create_or_resume("n", _url(tmp_path), _settings(n_trials=2, pruning={"method": "none"}))
    assert ctx.pruning is None and type(ctx.study.sampler) is optuna.samplers.TPESampler
    run_worker(ctx)
    for t in ctx.study.get_trials():
        assert t.state == TrialState.COMPLETE and len(t.user_attrs["epoch_values"]) == 3
        assert not {"rung_values", "rung_times", "rung_decisions", "stopped_rung"} & set(t.user_attrs)


# ---- data-fraction fidelity ----------------------------------------------------------------------
def test_epochs_up_to_rung_0_train_on_a_seeded_row_subsample(monkeypatch):
    from mtlsearch.train import _fit, fit

    rule = MOASHAPruning(min_epochs=2, eta=3, rung_fraction=0.25)
    hook = fraction_rows(rule, epochs=4, n_rows=100, seed=3)
    rows = hook(0)
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 25
    assert hook(1).tolist() == rows.tolist() and hook(2) is None and hook(3) is None
    assert fraction_rows(rule, epochs=4, n_rows=100, seed=3)(0).tolist() == rows.tolist()  # seeded
    assert fraction_rows(rule, epochs=2, n_rows=100, seed=3) is None  # no rung before the last epoch
    assert fraction_rows(MOASHAPruning(), epochs=4, n_rows=100, seed=3) is None  # no fraction
    assert fraction_rows(DominancePruning(), epochs=4, n_rows=100, seed=3) is None

    data = binary_data(n=600, d=6)
    trained_on: list[int] = []
    real = _fit._train_epoch

    def spy(model, weighting, optimizer, train, *args, **kwargs):
        trained_on.append(len(train))
        return real(model, weighting, optimizer, train, *args, **kwargs)

    monkeypatch.setattr(_fit, "_train_epoch", spy)
    n = len(data.train)
    hook = fraction_rows(rule, epochs=4, n_rows=n, seed=0)
    fit(experiment(data, epochs=4), data, progress=False, epoch_rows=hook)
    assert trained_on == [round(0.25 * n), round(0.25 * n), n, n]


# ---- the command line ------------------------------------------------------------------------------
_main = run_main


def test_cli_pruner_options_bad_values_exit_2_on_one_line(monkeypatch, capsys, tmp_path):
    base = ("search", "--space", SPACE, "--dataset", "synthetic", "-o", "n=1500", "-o", "d=20", "--no-mlflow",
            "--storage", f"sqlite:///{tmp_path / 's.db'}", "--quiet", "--references", "none")  # fmt: skip
    bad = {
        ("--pruner", "asha"): "--pruner: unknown 'asha'",
        ("--pruner", "moasha", "--eta", "1"): "--eta: must be an integer >= 2, got 1",
        ("--pruner", "moasha", "--min-epochs", "0"): "--min-epochs: must be an integer >= 1, got 0",
        ("--pruner", "moasha", "--rung-fraction", "0"): "--rung-fraction: must be a number in (0, 1]",
        ("--eta", "2"): "--eta: applies to --pruner moasha only",
        ("--pruner", "moasha", "--prune-margin", "0.1"): "--prune-margin: applies to --pruner dominance",
        ("--prune", "--pruner", "moasha"): "--prune and --pruner moasha: choose one",
    }
    for args, message in bad.items():
        code, _, err = _main(monkeypatch, capsys, tmp_path, *base, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
    assert not (tmp_path / "s.db").exists()  # nothing written

    code, _, err = _main(monkeypatch, capsys, tmp_path, *base, "--n-trials", "2", "--pruner", "moasha",
                         "--eta", "2", "--study", "c")  # fmt: skip
    assert code == 0, err
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert json.loads(study.user_attrs[RECIPE_ATTR])["pruning"] == {
        "method": "moasha", "min_epochs": 1, "eta": 2, "rung_fraction": None,
    }  # fmt: skip
    # eta 2 on 3 epochs: rungs at epochs 1 and 2; a trial stopped at the first has one decision
    for t in study.get_trials():
        epochs = [d["epoch"] for d in t.user_attrs["rung_decisions"]]
        assert epochs == ([1] if t.user_attrs.get("stopped_rung") == 0 else [1, 2]), epochs
    # a resume without --pruner keeps the study's rungs; one that moves them exits 2
    code, _, err = _main(monkeypatch, capsys, tmp_path, *base, "--n-trials", "2", "--study", "c",
                         "--pruner", "moasha", "--eta", "3")  # fmt: skip
    assert code == 2 and "--eta 3: study c was made with --eta 2" in err
    code, _, err = _main(monkeypatch, capsys, tmp_path, *base, "--n-trials", "3", "--study", "c")
    assert code == 0, err
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert json.loads(study.user_attrs[RECIPE_ATTR])["pruning"]["eta"] == 2
    assert study.get_trials()[2].user_attrs["rung_decisions"][0]["seen"] == [0, 1, 2]


# ---- two workers on PostgreSQL ---------------------------------------------------------------------
@pytest.mark.services
def test_two_workers_on_postgresql_decide_as_a_single_process_replay(tmp_path):
    import uuid

    from _services import require_postgres
    from test_search_distributed import _assert_exact, _logs, _worker, create_storage

    url = require_postgres()
    name = f"moasha-{uuid.uuid4().hex[:10]}"
    create_or_resume(name, url, _settings(n_trials=8, seed=2), heartbeat=False)
    procs = [_worker(name, url, tmp_path) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, _logs(tmp_path)
    study = optuna.load_study(study_name=name, storage=create_storage(url))
    _assert_exact(study, 8)
    trials = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    decisions = {t.number: t.user_attrs["rung_decisions"] for t in trials}
    assert all(len(d) == 1 and d[0]["rung"] == 0 for d in decisions.values())
    # every decision equals the single-process replay of what its trial saw in the storage
    assert replay(study.get_trials(), objectives_of(study), 3) == []
    kinds = {d[0]["decision"] for d in decisions.values()}
    assert kinds == {"continue", "stop"}, decisions
    # written before read: of any two trials at the rung, at least one saw the other
    for a in decisions:
        assert a in decisions[a][0]["seen"]
        for b in decisions:
            assert a in decisions[b][0]["seen"] or b in decisions[a][0]["seen"], (a, b)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part
    for t in trials:
        assert (t.state == TrialState.PRUNED) == (decisions[t.number][0]["decision"] == "stop")
