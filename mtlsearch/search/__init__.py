"""Search layer: declarative spaces, multi-objective Optuna studies, workers, the front.

Knows the trainer and the builder; knows nothing of MLflow or the CLI. Observers (tracking,
progress displays) watch a search through :class:`SearchObserver` hooks.
"""

from mtlsearch.search._describe import describe_config
from mtlsearch.search._front import (
    FrontRow,
    front_table,
    gain,
    hypervolume,
    pareto_front,
    pareto_ranks,
    reference_point,
)
from mtlsearch.search._objectives import Objective, parse_objectives
from mtlsearch.search._pick import PICK_RULES, Bound, Pick, PickRule, parse_pick, pick_trial
from mtlsearch.search._pruning import PRUNERS, DominancePruning, make_pruning
from mtlsearch.search._rungs import MOASHAPruning, rung_epochs
from mtlsearch.search._space import SearchSpace
from mtlsearch.search._storage import open_storage
from mtlsearch.search._study import (
    CONFIG_ATTR,
    FAIL_ATTR,
    SAMPLERS,
    SearchContext,
    SearchObserver,
    SearchSettings,
    count_finished,
    create_or_resume,
    default_storage_url,
    join,
    load_study,
    objectives_of,
    settings_of,
)
from mtlsearch.search._worker import run_worker

__all__ = [
    "CONFIG_ATTR",
    "FAIL_ATTR",
    "PICK_RULES",
    "PRUNERS",
    "SAMPLERS",
    "Bound",
    "DominancePruning",
    "FrontRow",
    "MOASHAPruning",
    "Objective",
    "Pick",
    "PickRule",
    "SearchContext",
    "SearchObserver",
    "SearchSettings",
    "SearchSpace",
    "count_finished",
    "create_or_resume",
    "default_storage_url",
    "describe_config",
    "front_table",
    "gain",
    "hypervolume",
    "join",
    "load_study",
    "make_pruning",
    "objectives_of",
    "open_storage",
    "pareto_front",
    "pareto_ranks",
    "parse_objectives",
    "parse_pick",
    "pick_trial",
    "reference_point",
    "run_worker",
    "rung_epochs",
    "settings_of",
]
