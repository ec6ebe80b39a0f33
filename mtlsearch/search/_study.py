"""Multi-objective Optuna studies over the builder's space, run by one or many workers.

The study stores its own recipe (space, dataset, objectives, sampler, budget) in its user
attributes, so ``mtlsearch worker --study NAME --storage URL`` can join it from any process
or machine that reaches the storage.

Exact budgets across workers: the budget is a set of *tickets*, WAITING trials enqueued
when the study is created or resumed (the named reference architectures first). A worker
only asks for a trial while a ticket is waiting; Optuna hands each waiting trial to exactly
one worker. A worker whose trial dies without reporting (SIGKILL, lost machine) loses its
lease (:mod:`mtlsearch.search._storage`); another worker's reaper FAILs the trial and
re-enqueues it as a fresh ticket, so it is retried, not lost (:mod:`mtlsearch.search._worker`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtlsearch._errors import StorageUnavailable, UserError
from mtlsearch.arch import ConfigError
from mtlsearch.search._front import PRESET_ATTR
from mtlsearch.search._objectives import Objective, from_dict, objective_values, to_dict
from mtlsearch.search._pruning import (
    PruningCallback,
    PruningRule,
    make_pruning,
    normalize_pruning,
    pruning_method,
)
from mtlsearch.search._rungs import MOASHAPruning
from mtlsearch.search._sampling import PrunedAsComplete
from mtlsearch.search._space import SearchSpace
from mtlsearch.search._storage import TICKET_ATTR, open_storage
from mtlsearch.search._worker import FAIL_ATTR, WORKER_ATTR

logger = logging.getLogger(__name__)

RECIPE_ATTR = "mtlsearch"
CONFIG_ATTR = "config"


# ---- samplers (a registry, so a new one is one entry) ---------------------------------------
# Each factory takes (seed, budget, number of enqueued reference trials). The reference
# trials carry no sampled parameters, so they must not count as a model-based sampler's
# random start-up trials.
def _nsga2(seed: int | None, n_trials: int, n_refs: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 4)))


def _tpe(seed: int | None, n_trials: int, n_refs: int) -> optuna.samplers.BaseSampler:
    # Named explicitly: Optuna 5's defaults changed; multivariate+group handles the
    # conditional level parameters, constant_liar keeps parallel workers apart.
    with warnings.catch_warnings():  # `group` is "experimental" since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=n_refs + max(5, min(10, n_trials // 5)),
        )


def _random(seed: int | None, n_trials: int, n_refs: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int | None, int, int], optuna.samplers.BaseSampler]] = {
    "nsga2": _nsga2,
    "tpe": _tpe,
    "random": _random,
}


# ---- storage ------------------------------------------------------------------------------
def default_storage_url() -> str:
    return f"sqlite:///{Path.cwd() / 'mtlsearch.db'}"


# ---- the recipe a study carries ----------------------------------------------------------------
@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to run trials of a study, stored in the study itself."""

    space_text: str
    space_source: str
    dataset: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    objectives: tuple[str, ...] = ()
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int = 20
    enqueue_references: bool = True
    pruning: dict[str, Any] | None = None  # {"method": none|dominance|moasha, ...}; see _pruning
    max_params: int | None = None
    references: int | None = None  # how many of the space's reference presets; None: all
    precision: str = "fp32"  # changes results, so part of the recipe (a resume must keep it)

    def __post_init__(self) -> None:
        # stored normalised: {"method": ..., every setting}, or None for no pruning; an old
        # stored dict without "method" is the dominance rule (resumable old studies)
        object.__setattr__(self, "pruning", normalize_pruning(self.pruning))
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler: unknown {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if self.n_trials < 1:
            raise UserError(f"--n-trials: must be >= 1, got {self.n_trials}")
        if self.references is not None and self.references < 0:
            raise UserError(f"--references: must be a count >= 0, all or none, got {self.references}")
        from mtlsearch.train import check_precision_text

        object.__setattr__(self, "precision", check_precision_text(self.precision, "--precision"))

    def reference_names(self, space: SearchSpace) -> tuple[str, ...]:
        """The reference presets this study enqueues: the first ``references`` of the space's
        list (all by default, none with ``enqueue_references=False``)."""
        if not self.enqueue_references:
            return ()
        names = tuple(space.reference_presets)
        return names if self.references is None else names[: self.references]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SearchSettings:
        data = json.loads(text)
        data["objectives"] = tuple(data["objectives"])
        return cls(**data)

    def same_search(self, other: SearchSettings) -> bool:
        """Whether two settings search the same space on the same data (budget, pruning may
        change). Objectives are compared by :func:`create_or_resume` once the data's tasks
        are known, since ``income`` and ``income:auc`` name the same objective."""
        keys = ("space_text", "dataset", "dataset_options", "max_params")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


# ---- observers -----------------------------------------------------------------------------
class SearchObserver(Protocol):
    """How tracking and progress displays watch a search without the search knowing them.

    Every method is optional in spirit: implement it as a no-op if not needed.
    """

    def on_study(self, study: optuna.Study, context: SearchContext) -> None: ...

    def on_trial_start(self, trial: optuna.Trial, config: Any) -> None: ...

    def on_epoch(self, trial: optuna.Trial, report: Any) -> None: ...

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial, result: Any | None) -> None: ...


# ---- a loaded study with its data --------------------------------------------------------------
@dataclass
class SearchContext:
    study: optuna.Study
    settings: SearchSettings
    space: SearchSpace
    objectives: tuple[Objective, ...]
    data: Any  # MTLDataset
    encoding: str
    references: dict[str, Any]
    observers: list[Any] = field(default_factory=list)
    heartbeat: bool = True
    results: dict[int, Any] = field(default_factory=dict)  # trial number -> TrainResult
    threads: int | None = None  # torch threads of this process (None: torch's own setting)
    device: str | None = None  # this worker's device for every trial (None: the space's / torch's)
    nproc: int = 1  # processes per trial: > 1 trains each trial in a fresh DDP group (_launch)

    @property
    def pruning(self) -> PruningRule | None:
        """The study's pruning rule (None: no pruning), from the stored settings."""
        return make_pruning(self.settings.pruning)


def _load_data(settings: SearchSettings) -> Any:
    from mtlsearch.data import load_dataset

    data_dir = Path(settings.data_dir) if settings.data_dir else None
    return load_dataset(settings.dataset, data_dir=data_dir, seed=settings.seed, **settings.dataset_options)


def _context(
    study: optuna.Study | None,
    settings: SearchSettings,
    heartbeat: bool,
    data: Any = None,
    threads: int | None = None,
    device: str | None = None,
) -> SearchContext:
    """Everything a worker needs, checked: the space, the data, the objectives against the
    data's tasks (kind and metric), the space's feasibility. Writes nothing."""
    space = SearchSpace.from_yaml(settings.space_text, source=settings.space_source)
    data = data if data is not None else _load_data(settings)
    from mtlsearch.search._objectives import parse_objectives

    objectives = parse_objectives(list(settings.objectives), data.tasks)
    encoding = space.resolved_encoding(settings.sampler)
    space.check_feasible(data, data.tasks, encoding)
    names = settings.reference_names(space)
    references = space.reference_configs(data, data.tasks) if names else {}
    return SearchContext(
        study=study,  # type: ignore[arg-type]
        settings=settings,
        space=space,
        objectives=objectives,
        data=data,
        encoding=encoding,
        references={name: references[name] for name in names},
        heartbeat=heartbeat,
        threads=threads,
        device=device,
    )


def _check_same_recipe(study_name: str, stored: SearchSettings, settings: SearchSettings, given: Any) -> None:
    """A resume that names another sampler or seed than the study's is refused: silently
    keeping the stored one would run a different search than the command says. So is one
    that moves a MOASHA study's rungs (``--min-epochs``, ``--eta``, ``--rung-fraction``):
    values recorded at rung k would then mix epochs. Switching the pruner on or off, or
    between methods, is allowed (decisions already recorded stay as they are)."""
    if "pruning" in given and settings.pruning and stored.pruning:
        new, old = settings.pruning, stored.pruning
        if new["method"] == old["method"] == MOASHAPruning.method and new != old:
            option = {"min_epochs": "--min-epochs", "eta": "--eta", "rung_fraction": "--rung-fraction"}
            key = next(k for k in option if new.get(k) != old.get(k))
            raise UserError(
                f"{option[key]} {new.get(key)}: study {study_name} was made with {option[key]} "
                f"{old.get(key)}; its recorded rungs would no longer match; resume it with "
                f"{option[key]} {old.get(key)} (or without it), or choose another --study name"
            )
    for key in ("sampler", "seed", "precision"):
        if key in given and getattr(settings, key) != getattr(stored, key):
            raise UserError(
                f"--{key} {getattr(settings, key)}: study {study_name} was made with --{key} "
                f"{getattr(stored, key)}; resume it with --{key} {getattr(stored, key)} (or without "
                f"--{key}), or choose another --study name"
            )


def warn_short_budget(ctx: SearchContext) -> str | None:
    """A warning (also logged) when the reference presets take the whole budget, so that no
    architecture is sampled; None when the budget leaves room for sampled trials."""
    names = list(ctx.references)
    n = ctx.settings.n_trials
    if not names or n > len(names):
        return None
    if n < len(names):
        what = (
            f"only the first {n} of the {len(names)} reference architectures run "
            f"({', '.join(names[:n])}; not {', '.join(names[n:])})"
        )
    else:
        what = f"the {n} reference architectures use the whole budget"
    message = (
        f"--n-trials {n}: {what} and no architecture is sampled; raise --n-trials or choose "
        "--references N, all or none"
    )
    logger.warning(message)
    return message


def create_or_resume(
    study_name: str,
    storage_url: str,
    settings: SearchSettings,
    heartbeat: bool = True,
    *,
    given: Any = ("sampler", "seed", "pruning"),
    threads: int | None = None,
    device: str | None = None,
    nproc: int = 1,
) -> SearchContext:
    """Create the study (or load it by name to resume) and top its tickets up to the budget.

    Before the storage is opened (so a bad command writes nothing, not even a SQLite file)
    the space, the data and the objectives are checked: an unknown task, or a metric the
    task's kind does not report (``income:mse`` on a binary task), is a :class:`UserError`.
    ``given`` names the settings the user chose explicitly: resuming a study with another
    ``sampler`` or ``seed`` among them is refused; ``pruning`` not among them keeps the
    study's stored pruning (its rungs and the decisions made on them), and a given one that
    moves a MOASHA study's rungs is refused. ``threads`` is recorded with every trial.
    ``precision`` is part of the recipe: a resume giving another one (in ``given``) is
    refused. ``device`` is this worker's (every trial trains there, recorded per trial).
    ``nproc`` (processes per trial) above the streamed training split's row groups is
    refused here too, before anything is written.
    """
    check_environment()
    checked = _context(None, settings, heartbeat, threads=threads, device=device)
    check_nproc(checked, nproc)
    storage = open_storage(storage_url, heartbeat)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        stored = (
            SearchSettings.from_json(study.user_attrs[RECIPE_ATTR])
            if RECIPE_ATTR in study.user_attrs
            else None
        )
        if stored is None:
            raise UserError(f"--study {study_name}: exists in {storage_url} but was not made by mtlsearch")
        if not stored.same_search(settings):
            raise UserError(
                f"--study {study_name}: exists with a different space or dataset (--space, --set, "
                "--dataset/--data, -o) or --max-params; choose another --study name"
            )
        _check_same_recipe(study_name, stored, settings, given)
        requested = settings.objectives
        settings = SearchSettings(
            **{
                **asdict(stored),
                "n_trials": settings.n_trials,
                "pruning": settings.pruning if "pruning" in given else stored.pruning,
                "objectives": stored.objectives,
            }
        )
        same_data = stored.seed == checked.settings.seed
        ctx = _context(
            study,
            settings,
            heartbeat,
            data=checked.data if same_data else None,
            threads=threads,
            device=device,
        )
        if requested:
            from mtlsearch.search._objectives import parse_objectives

            wanted = tuple(o.name for o in parse_objectives(list(requested), ctx.data.tasks))
            if wanted != tuple(stored.objectives):
                raise UserError(
                    f"--study {study_name}: exists with objectives {list(stored.objectives)}, not "
                    f"{list(wanted)}; choose another --study name"
                )
        study.set_user_attr(RECIPE_ATTR, settings.to_json())  # the budget may have changed
        ctx.study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=make_sampler(settings, len(ctx.references), ctx.objectives),
        )
        if ctx.study.metric_names is None:  # made before objectives were named
            _name_objectives(ctx.study, list(stored.objectives))
        logger.info(
            "resuming study %r: %d finished of %d", study_name, count_finished(ctx.study), settings.n_trials
        )
    else:
        data_ctx = checked
        objectives = data_ctx.objectives
        settings = SearchSettings(**{**asdict(settings), "objectives": tuple(o.name for o in objectives)})
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            directions=[o.direction for o in objectives],
            sampler=make_sampler(settings, len(data_ctx.references), objectives),
        )
        _name_objectives(study, [o.name for o in objectives])
        study.set_user_attr("uid", uuid.uuid4().hex)  # tells same-named studies apart (tracking)
        study.set_user_attr(RECIPE_ATTR, settings.to_json())
        study.set_user_attr("objectives", to_dict(objectives))
        data_ctx.study = study
        data_ctx.settings = settings
        ctx = data_ctx
    _top_up_tickets(ctx)
    return ctx


def check_nproc(ctx: SearchContext, nproc: int) -> None:
    """Refuse ``nproc`` processes per trial when the streamed training split has fewer row
    groups (CSV: files) with rows than that (:meth:`StreamSplit.check_world`): one line."""
    from mtlsearch.data import is_streamed

    if nproc > 1 and is_streamed(ctx.data.train):
        ctx.data.train.check_world(nproc)


def check_environment() -> None:
    """Refuse bad ``$MTLSEARCH_*`` settings (lease, outage retry, memory cap) before anything
    is written: found by the first trial instead, they would fail every trial of the budget."""
    from mtlsearch.search._storage import grace_period, storage_retry_seconds
    from mtlsearch.train import memory_limit

    grace_period()  # checks the heartbeat interval too
    storage_retry_seconds()
    memory_limit()


def _name_objectives(study: optuna.Study, names: list[str]) -> None:
    """Optuna's own names for the objectives (``income:auc``, not ``values_0``), which its
    dashboards, ``trials_dataframe`` and the report then use."""
    with warnings.catch_warnings():  # experimental since 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def join(
    study_name: str,
    storage_url: str,
    seed: int | None = None,
    heartbeat: bool = True,
    threads: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    nproc: int = 1,
) -> SearchContext:
    """Load a running study as an extra worker (its recipe comes from the storage).
    ``precision``, if given, must be the study's (it is part of the recipe); ``device`` is
    this worker's; ``nproc`` is checked as in :func:`create_or_resume`."""
    check_environment()
    storage = open_storage(storage_url, heartbeat)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"--study {study_name}: no such study in {storage_url}") from None
    if RECIPE_ATTR not in study.user_attrs:
        raise UserError(f"--study {study_name}: was not made by mtlsearch (no recipe)")
    settings = SearchSettings.from_json(study.user_attrs[RECIPE_ATTR])
    if precision is not None and precision != settings.precision:
        raise UserError(
            f"--precision {precision}: study {study_name} runs with --precision {settings.precision}; "
            f"join it with --precision {settings.precision} (or without --precision)"
        )
    if seed is not None:
        settings = SearchSettings(**{**asdict(settings), "seed": seed})
    ctx = _context(study, settings, heartbeat, threads=threads, device=device)
    check_nproc(ctx, nproc)
    # Each worker needs its own sampler seed, or workers would propose the same points.
    sampler_seed = seed if seed is not None else settings.seed + 1 + (time.time_ns() % 100_000)
    ctx.study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(settings, len(ctx.references), ctx.objectives, seed=sampler_seed),
    )
    return ctx


def make_sampler(
    settings: SearchSettings,
    n_refs: int,
    objectives: Sequence[Objective] = (),
    seed: int | None = None,
) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``n_refs`` enqueued reference trials do not count as start-up.
    ``seed``: the sampler's seed (default the study's).

    Wrapped in :class:`~mtlsearch.search._sampling.PrunedAsComplete` (given the study's
    ``objectives``) so that TPE and NSGA-II learn from pruned trials' last rung values when
    the study prunes; NSGA-II is always wrapped so that it does not see the reference
    trials, which have no sampled parameters and would empty its search space. TPE and
    random without pruning are Optuna's own, unwrapped.
    """
    sampler = SAMPLERS[settings.sampler](settings.seed if seed is None else seed, settings.n_trials, n_refs)
    prunes = pruning_method(settings.pruning) != "none"
    if settings.sampler == "nsga2" or (settings.sampler == "tpe" and prunes):
        return PrunedAsComplete(sampler, objectives, hide_unsampled=settings.sampler == "nsga2")
    return sampler


# ---- tickets and counting -------------------------------------------------------------------
def _is_counted(t: FrozenTrial) -> bool:
    """A trial that used up budget: complete, pruned, or failed for a reason of its own
    (a trial lost with its worker is retried instead, and a surplus one never ran)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and FAIL_ATTR in t.user_attrs


def count_finished(study: optuna.Study) -> int:
    return sum(_is_counted(t) for t in study.get_trials(deepcopy=False))


def _state_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _top_up_tickets(ctx: SearchContext) -> None:
    study = ctx.study
    trials = study.get_trials(deepcopy=False)
    finished = sum(_is_counted(t) for t in trials)
    pending = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    missing = ctx.settings.n_trials - finished - pending
    if missing <= 0:
        return
    done_presets = {
        t.user_attrs.get(PRESET_ATTR)
        for t in trials
        if _is_counted(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)
    }
    for name in ctx.references:
        if missing == 0:
            break
        if name in done_presets:
            continue
        study.enqueue_trial({}, user_attrs={TICKET_ATTR: True, PRESET_ATTR: name}, skip_if_exists=False)
        missing -= 1
    for _ in range(missing):
        study.enqueue_trial({}, user_attrs={TICKET_ATTR: True}, skip_if_exists=False)


# ---- running trials -------------------------------------------------------------------------
class _Surplus(Exception):
    """The trial was created after the last ticket was taken (a race between workers)."""


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return f"invalid sample: {exc}"
    if isinstance(exc, Infeasible):
        return f"infeasible: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Infeasible(Exception):
    """A configuration that breaks a constraint known before training (``--max-params``)."""


def make_objective(ctx: SearchContext) -> Callable[[optuna.Trial], Sequence[float]]:
    """The function Optuna calls per trial: config -> trainer -> objective values.

    With ``max_params`` the configuration's parameters are counted before training (built
    on the meta device, nothing allocated): one above the limit is recorded as FAIL with
    ``fail_reason`` "infeasible: ..." and user attrs ``infeasible`` and ``n_params``, untrained.
    Every trial records the torch thread count it ran with (user attr ``threads``; per
    process with ``nproc`` > 1), the number of processes that trained it (``processes``), the
    worker's device (``device``) and the study's precision (``precision``).
    """
    import torch

    from mtlsearch.data import is_streamed
    from mtlsearch.train import (
        ExperimentConfig,
        TrainConfig,
        estimate_memory,
        fit,
        measure_latency,
        resolve_device,
    )

    streamed = is_streamed(ctx.data.train)
    if ctx.nproc > 1 and streamed:  # refused here, before the first trial, not in every trial
        ctx.data.train.check_world(ctx.nproc)
    if ctx.nproc > 1:  # each trial trains in a fresh DDP group of ctx.nproc processes
        from mtlsearch.search._launch import group_fit

        fit = functools.partial(group_fit, ctx)  # same contract as train.fit

    def objective(trial: optuna.Trial) -> Sequence[float]:
        if not trial.user_attrs.get(TICKET_ATTR):
            trial.set_user_attr("surplus", True)
            raise _Surplus("no ticket left: another worker took the last one")
        # First thing: a RUNNING trial without a worker was lost between Optuna's ask and
        # this line (see _worker.reap).
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        config: Any = None
        try:
            name = trial.user_attrs.get(PRESET_ATTR)
            if name:
                config = ctx.references[name]
            else:
                config = ctx.space.suggest(trial, ctx.data, ctx.data.tasks, ctx.encoding)
            recipe = {"seed": ctx.settings.seed, "precision": ctx.settings.precision}
            training = TrainConfig.from_dict({**config.training.to_dict(), **recipe})
            config = ExperimentConfig(model=config.model, training=training)
            # stored (and shown to observers) without this worker's device: an exported config
            # trains anywhere; the device is the trial's user attr ``device``
            stored = config
            trial.set_user_attr(CONFIG_ATTR, stored.to_dict())
            if ctx.device is not None:
                config = ExperimentConfig(model=config.model, training=replace(training, device=ctx.device))
                training = config.training
            # with --nproc N: the threads of each of the N processes that train the trial
            threads = (ctx.threads or 1) if ctx.nproc > 1 else torch.get_num_threads()
            trial.set_user_attr("threads", threads)
            trial.set_user_attr("processes", ctx.nproc)
            trial.set_user_attr("device", str(resolve_device(training.device)) if training.device else None)
            trial.set_user_attr("precision", training.precision)
            if ctx.settings.max_params is not None:
                n_params = estimate_memory(config).n_parameters
                if n_params > ctx.settings.max_params:
                    trial.set_user_attr("n_params", n_params)
                    trial.set_user_attr("infeasible", True)
                    raise Infeasible(
                        f"{n_params:,} parameters > --max-params {ctx.settings.max_params:,}; not trained"
                    )
            for obs in ctx.observers:
                obs.on_trial_start(trial, stored)
            rule = ctx.pruning
            epochs = config.training.epochs
            # observers see every epoch first, the one a rule stops the trial at included (its
            # MLflow run then holds the rung epoch's metrics); then the rule records and decides
            callbacks: list[Callable[[Any], None]] = [
                (lambda report, o=o: o.on_epoch(trial, report)) for o in ctx.observers
            ]
            callbacks.append(PruningCallback(trial, ctx.objectives, rule, epochs))
            rows = fraction_rows(rule, epochs, len(ctx.data.train), ctx.settings.seed, streamed=streamed)
            result = fit(config, ctx.data, callbacks=callbacks, progress=False, epoch_rows=rows)
            costs = {"params": float(result.n_params)}
            if any(o.name == "latency" for o in ctx.objectives):
                costs["latency"] = measure_latency(result.model, ctx.data)
            values = objective_values(ctx.objectives, result.valid, costs)
            bad = [o.name for o, v in zip(ctx.objectives, values, strict=True) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"objective {bad[0]} is not finite (e.g. a split with one class)")
            if ctx.settings.max_params is not None:
                trial.set_constraint("params", result.n_params - ctx.settings.max_params)
            trial.set_user_attr("valid", result.valid)
            trial.set_user_attr("test", result.test)
            trial.set_user_attr("n_params", result.n_params)
            trial.set_user_attr("best_epoch", result.best_epoch)
            trial.set_user_attr("utilisation", result.utilisation)  # for reports without MLflow
            trial.set_user_attr("seconds", round(result.seconds, 3))
            trial.set_user_attr("costs", costs)
            ctx.results[trial.number] = result
            return values
        except optuna.TrialPruned:
            if config is not None:
                _record_pruned_size(trial, config)
            raise
        except StorageUnavailable:
            raise
        except Exception as exc:
            trial.set_user_attr(FAIL_ATTR, _fail_reason(exc))  # the runner keeps the traceback
            raise

    return objective


def fraction_rows(
    rule: PruningRule | None, epochs: int, n_rows: int, seed: int, *, streamed: bool = False
) -> Callable[[int], Any] | None:
    """The trainer's ``epoch_rows`` hook for MOASHA's data-fraction fidelity, or None.

    With ``rung_fraction`` F the epochs up to and including rung 0 train on the same
    ``max(1, round(F * n_rows))`` training rows in every trial (a subsample drawn once with
    ``seed``, kept in row order), so that the rung-0 comparison is between equals; later
    epochs use every row. No rung before the last epoch, or no F: None (all rows, always).
    ``streamed``: the training split is streamed; the rows are then the ones with the
    smallest stable hash of ``(seed, row)`` (:func:`mtlsearch.data.hashed_indices`, memory
    for the chosen rows only, not a permutation of all of them).
    """
    if not isinstance(rule, MOASHAPruning):
        return None
    low = rule.fraction_epochs(epochs)
    if low == 0:
        return None
    import torch

    k = max(1, round(float(rule.rung_fraction) * n_rows))  # type: ignore[arg-type]
    if streamed:
        from mtlsearch.data import hashed_indices

        idx = torch.from_numpy(hashed_indices(n_rows, k, seed))
        return lambda epoch: idx if epoch < low else None
    idx = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return lambda epoch: idx if epoch < low else None


def _record_pruned_size(trial: optuna.Trial, config: Any) -> None:
    """A pruned trial's parameter count (user attr ``n_params``, counted on the meta device),
    so that samplers can show its ``params`` objective (see ``_sampling``)."""
    if "n_params" in trial.user_attrs:
        return
    from mtlsearch.train import estimate_memory

    try:
        trial.set_user_attr("n_params", estimate_memory(config).n_parameters)
    except Exception as exc:  # a count is a nicety: never turn a prune into a failure
        logger.debug("trial %d: could not count parameters of a pruned trial: %s", trial.number, exc)


def settings_of(study: optuna.Study) -> SearchSettings:
    return SearchSettings.from_json(study.user_attrs[RECIPE_ATTR])


def objectives_of(study: optuna.Study) -> tuple[Objective, ...]:
    return from_dict(study.user_attrs["objectives"])


def load_study(study_name: str, storage_url: str) -> optuna.Study:
    storage = open_storage(storage_url, heartbeat=False)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"--study {study_name}: no such study in {storage_url}") from None
    if RECIPE_ATTR not in study.user_attrs:
        raise UserError(f"--study {study_name}: was not made by mtlsearch")
    return study
