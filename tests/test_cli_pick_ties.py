"""``knee`` and ``weights`` ties are broken by a stated rule, not by the lower trial number.

Objectives a, b, c (all maximised). Normalised losses over the front (0 = the front's best):

    trial  a    b    c    losses (a, b, c)   knee distance     mean normalised task metric
    0      0.4  0.2  1    (0.6, 0.8, 0)      sqrt(.36+.64) = 1  1 - 1.4/3 = 0.5333
    1      1.0  0.0  1    (0,   1,   0)      1                  1 - 1/3   = 0.6667
    2      0.0  1.0  0    (1,   0,   1)      sqrt(2)

Trials 0 and 1 tie on the knee distance.
"""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from mtlsearch.search import Objective, pick_trial
from mtlsearch.search._pick import TIE_BREAK

OBJECTIVES = tuple(Objective(f"{t}:auc", "maximize", t, "auc") for t in "abc")
VALUES = [(0.4, 0.2, 1.0), (1.0, 0.0, 1.0), (0.0, 1.0, 0.0)]


def _study(params: list[int]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize"] * 3)
    for i, (values, n) in enumerate(zip(VALUES, params, strict=True)):
        study.add_trial(
            create_trial(
                values=list(values),
                params={"x": i / 10},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={"n_params": n},
            )
        )
    return study


def test_a_knee_tie_goes_to_fewer_parameters():
    pick = pick_trial(_study([500, 900, 100]), "knee", OBJECTIVES)
    assert pick.trial.number == 0
    assert pick.tied == (0, 1)
    assert abs(pick.score - 1.0) < 1e-12


def test_with_equal_parameters_the_higher_mean_normalised_task_metric_wins():
    pick = pick_trial(_study([500, 500, 100]), "knee", OBJECTIVES)
    assert pick.trial.number == 1  # not the lower trial number 0
    assert pick.explain() == (
        f"knee: trial 1, score 1 of 3 candidates; tied with trial 0, broken by {TIE_BREAK}"
    )
    assert TIE_BREAK == "fewer parameters, then higher mean normalised task metric, then lower trial number"


def test_a_weights_tie_uses_the_same_rule():
    # weights 1,1,0: scores (1 - loss) summed over a and b: trial 0: 0.4 + 0.2 = 0.6,
    # trial 1: 1 + 0 = 1, trial 2: 0 + 1 = 1 -> trials 1 and 2 tie; 2 has fewer parameters.
    pick = pick_trial(_study([500, 500, 100]), "weights:1,1,0", OBJECTIVES)
    assert pick.trial.number == 2
    assert pick.tied == (1, 2)
    # without a parameter difference: quality 1 has 0.6667, 2 has 1 - 2/3 = 0.3333 -> trial 1
    assert pick_trial(_study([500, 500, 500]), "weights:1,1,0", OBJECTIVES).trial.number == 1


def test_no_tie_no_explanation_of_ties():
    pick = pick_trial(_study([500, 500, 100]), "weights:0,0,1", OBJECTIVES)
    # c: trials 0 and 1 score 1, trial 2 scores 0: tie 0/1, equal params, quality 1 wins
    assert pick.trial.number == 1
    single = pick_trial(_study([500, 500, 100]), "weights:1,0,0", OBJECTIVES)
    assert single.trial.number == 1 and single.tied == (1,)
    assert "tied" not in single.explain()
