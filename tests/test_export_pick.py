"""Pick rules on a study with known values (built with ``optuna.create_trial``).

Objectives: a:auc (max), b:auc (max), params (min). The expected picks are worked out by
hand in the comments, from the values below.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mtlsearch._errors import UserError
from mtlsearch.search import Objective, pareto_front, parse_pick, pick_trial

OBJECTIVES = (
    Objective("a:auc", "maximize", "a", "auc"),
    Objective("b:auc", "maximize", "b", "auc"),
    Objective("params", "minimize"),
)

# number: (a, b, params, a:logloss); trial 5 fails.
VALUES = {
    0: (0.70, 0.70, 1000, 0.50),
    1: (0.80, 0.60, 2000, 0.45),
    2: (0.60, 0.80, 2000, 0.60),
    3: (0.75, 0.75, 3000, 0.55),
    4: (0.74, 0.74, 3500, 0.40),  # dominated by 3
    6: (0.90, 0.50, 500, 0.30),
}
FRONT = {0, 1, 2, 3, 6}


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    study = optuna.create_study(directions=[o.direction for o in OBJECTIVES])
    dist = {"x": FloatDistribution(0, 1)}
    for number in range(7):
        if number == 5:
            study.add_trial(
                create_trial(
                    state=TrialState.FAIL,
                    params={"x": 0.5},
                    distributions=dist,
                    user_attrs={"fail_reason": "boom"},
                )
            )
            continue
        a, b, params, logloss = VALUES[number]
        attrs = {
            "valid": {"a": {"auc": a, "logloss": logloss}, "b": {"auc": b, "logloss": 0.5}},
            "n_params": params,
            "costs": {"params": float(params)},
        }
        if number == 0:
            attrs["preset"] = "single_task"
        study.add_trial(
            create_trial(
                values=[a, b, float(params)], params={"x": number / 10}, distributions=dist, user_attrs=attrs
            )
        )
    return study


def _pick(study: optuna.Study, rule: str) -> int:
    return pick_trial(study, rule, OBJECTIVES).trial.number


def test_the_study_front_is_as_designed(study):
    assert {t.number for t in pareto_front(study, OBJECTIVES)} == FRONT


def test_trial_rule_picks_that_trial_even_off_the_front(study):
    assert _pick(study, "trial:4") == 4
    assert _pick(study, "trial:0") == 0


def test_knee_is_the_front_point_nearest_the_ideal_after_normalising(study):
    # Normalised losses over the front (0 = best): a over [0.6, 0.9], b over [0.5, 0.8],
    # params over [500, 3000]. Squared distances: t0 .667²+.333²+.2² = .596,
    # t1 .333²+.667²+.6² = .916, t2 1+0+.36 = 1.36, t3 .5²+.167²+1 = 1.28, t6 0+1+0 = 1.
    pick = pick_trial(study, "knee", OBJECTIVES)
    assert pick.trial.number == 0
    assert pick.score == pytest.approx(0.5956**0.5, abs=1e-3)
    assert pick.candidates == len(FRONT)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("weights:1,0,0", 6),  # best a
        ("weights:0,1,0", 2),  # best b
        ("weights:0,0,1", 6),  # fewest params
        # (1-norm a)+(1-norm b): t0 .333+.667, t1 .667+.333, t2 0+1, t3 .5+.833, t6 1+0
        ("weights:1,1,0", 3),
        # + (1-norm params): t0 1+.8, t1 1+.4, t2 1+.4, t3 1.333+0, t6 1+1
        ("weights:1,1,1", 6),
    ],
)
def test_weights_maximise_the_weighted_normalised_sum(study, rule, expected):
    assert _pick(study, rule) == expected


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("constraint:best=a,b>=0.7", 3),  # b >= .7: t0 t2 t3 t4 -> best a is t3 (.75)
        ("constraint:best=a:auc,b:auc>=0.7,params<=2000", 0),  # t0 t2 -> t0 (.70 > .60)
        ("constraint:min=params,a>=0.75", 6),  # t1 t3 t6 -> t6 (500)
        # a bound on a validation metric that is no objective: a:logloss <= .5 keeps t0 t1 t4
        # t6; the best b among them is t4 (.74), a dominated trial
        ("constraint:best=b,a:logloss<=0.5", 4),
        ("constraint:best=b", 2),
    ],
)
def test_constraint_takes_the_best_goal_within_the_bounds(study, rule, expected):
    assert _pick(study, rule) == expected


def test_ties_go_to_the_lowest_trial_number(study):
    # t1 and t2 both have 2000 params: a tie on the goal
    assert _pick(study, "constraint:min=params,params>=2000,params<=2000") == 1


def test_a_rule_nothing_satisfies_says_so_with_the_best_value_seen(study):
    with pytest.raises(UserError, match=r"b:auc>=0\.95.*best value.* 0\.8"):
        pick_trial(study, "constraint:best=a,b>=0.95", OBJECTIVES)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("trial:5", "trial 5 is fail: boom"),
        ("trial:99", "no trial 99"),
        ("weights:1,1", "expected 3 weights"),
        ("constraint:best=nosuch", "unknown metric 'nosuch'"),
    ],
)
def test_rules_that_do_not_fit_the_study_are_user_errors(study, rule, message):
    with pytest.raises(UserError, match=message):
        pick_trial(study, rule, OBJECTIVES)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("bogus", "unknown rule"),
        ("trial:x", "expected trial:N"),
        ("weights:", "expected weights"),
        ("weights:1,-1", "must be >= 0"),
        ("weights:0,0", "not all zero"),
        ("weights:1,abc", "'abc' is not a number"),
        ("constraint:a>=0.5", "no goal"),
        ("constraint:best=a,best=b", "more than one goal"),
        ("constraint:best=a,b=>0.5", "cannot read 'b=>0.5'"),
        ("constraint:best=a,b>=nan", "not a finite number"),
    ],
)
def test_malformed_rules_are_one_line_errors_naming_the_rule(rule, message):
    with pytest.raises(UserError, match=message) as err:
        parse_pick(rule)
    assert str(err.value).startswith(f"--pick {rule}")
    assert "\n" not in str(err.value)


def test_an_empty_or_all_failed_study_is_an_error():
    empty = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    with pytest.raises(UserError, match=r"no completed trial to pick from \(no trials\)"):
        pick_trial(empty, "knee", OBJECTIVES)
    failed = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for _ in range(2):
        failed.add_trial(create_trial(state=TrialState.FAIL))
    with pytest.raises(UserError, match=r"no completed trial to pick from \(2 fail\)"):
        pick_trial(failed, "trial:0", OBJECTIVES)


def test_infeasible_trials_are_not_picked_by_knee_or_constraint():
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    study.add_trial(create_trial(values=[0.9, 0.9, 10.0], constraints={"params": 5.0}))
    study.add_trial(create_trial(values=[0.6, 0.6, 20.0]))
    assert pick_trial(study, "knee", OBJECTIVES).trial.number == 1
    assert pick_trial(study, "constraint:best=a", OBJECTIVES).trial.number == 1
    assert pick_trial(study, "trial:0", OBJECTIVES).trial.number == 0  # explicit choice wins
