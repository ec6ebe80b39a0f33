"""``mtlsearch search``, ``worker``, ``front``, ``trial`` and ``studies``: run and inspect
architecture searches."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import optuna
import typer
from optuna.trial import FrozenTrial, TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtlsearch._errors import StorageUnavailable, UserError
from mtlsearch.cli._common import (
    check_device_flag,
    check_precision_flag,
    check_spec_path,
    count,
    device_option,
    max_rows_option,
    precision_option,
    set_threads,
    threads_option,
    with_max_rows,
)
from mtlsearch.cli._common import console as make_console

logger = logging.getLogger("mtlsearch")

NPROC_TRIAL_HELP = (
    "Processes per trial: each trial trains in a fresh DDP group of N processes (gloo on the CPU, "
    "NCCL on CUDA) launched by this worker; a rank that dies fails that trial only."
)
console = make_console(stderr=True)
_STORAGE_HELP = "The study's Optuna storage URL (default sqlite:///mtlsearch.db in this folder)."


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``--data-option key=value`` pairs; values parsed as YAML scalars (1 -> int, 0.5 -> float)."""
    from mtlsearch._yaml import option_value

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option {pair!r}: expected key=value")
        out[key] = option_value(value, f"--option {key}")
    return out


class ProgressObserver:
    """Terminal progress of a study: done/total, the running trials (number, preset or
    "searched", epoch k/n), failures, front size, best per task, HV."""

    def __init__(self, progress: Progress, task_id: Any, ctx: Any) -> None:
        self.progress = progress
        self.task_id = task_id
        self.ctx = ctx
        self._lock = threading.Lock()
        self._running: dict[int, list[Any]] = {}  # trial number -> [label, epochs done, epochs]
        self._summary = ""
        self.refresh(ctx.study)

    def on_study(self, study, context) -> None:
        pass

    def on_trial_start(self, trial: optuna.Trial, config: Any) -> None:
        label = trial.user_attrs.get("preset") or "searched"
        with self._lock:
            self._running[trial.number] = [label, 0, config.training.epochs]
        self._show()

    def on_epoch(self, trial: optuna.Trial, report: Any) -> None:
        with self._lock:
            if trial.number in self._running:
                self._running[trial.number][1] = report.epoch + 1
        self._show()

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial, result: Any) -> None:
        with self._lock:
            self._running.pop(trial.number, None)
        self.refresh(study)

    def running_text(self) -> str:
        """``running #5 mmoe epoch 2/3, #6 searched epoch 0/3`` (empty when none runs)."""
        with self._lock:
            items = sorted(self._running.items())
        if not items:
            return ""
        return "running " + ", ".join(f"#{n} {label} epoch {k}/{e}" for n, (label, k, e) in items)

    def _show(self) -> None:
        running = self.running_text()
        status = f"{running} · {self._summary}" if running else self._summary
        self.progress.update(self.task_id, status=status)

    def refresh(self, study: optuna.Study) -> None:
        from mtlsearch.search import count_finished, hypervolume, pareto_front

        with self._lock:
            trials = study.get_trials(deepcopy=False)
            objectives = self.ctx.objectives
            done = count_finished(study)
            failed = sum(t.state == TrialState.FAIL and "fail_reason" in t.user_attrs for t in trials)
            pruned = _pruned_text(trials)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            front = pareto_front(study, objectives) if complete else []
            best = []
            for i, o in enumerate(objectives):
                if complete and not o.is_cost:
                    pick = max if o.direction == "maximize" else min
                    best.append(f"{o.name} {pick(t.values[i] for t in complete):.4f}")
            hv = hypervolume(complete, objectives) if complete else 0.0
            self._summary = (
                f"failed {failed} · pruned {pruned} · front {len(front)} · "
                f"best {', '.join(best) or '-'} · HV {hv:.4g}"
            )
            self.progress.update(self.task_id, completed=done, total=self.ctx.settings.n_trials)
        self._show()


def quiet_libraries() -> None:
    """Per-epoch and per-trial log lines would drown the progress display; -v brings them back."""
    if logging.getLogger().level > logging.DEBUG:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("mtlsearch.train").setLevel(logging.WARNING)


def _run(ctx: Any, n_jobs: int, timeout: float | None, quiet: bool) -> None:
    """Run ``n_jobs`` workers in this process until the budget is used up (torch's thread
    count is set by the command, see ``--threads``).

    With several workers (threads) an interrupt lands in the main thread, which is only
    waiting: it stops the loops, releases every trial this process runs (so that they are
    retried at once) and re-raises; the CLI then exits without waiting for the trainers.
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=quiet,
        transient=False,
    )
    status = "KILLED"
    try:
        _run_in(ctx, n_jobs, timeout, progress)
        status = "FINISHED"
    except StorageUnavailable:
        status = "FAILED"
        raise
    finally:  # observers that keep runs open (MLflow) end them: a stopped worker leaves none RUNNING
        for obs in ctx.observers:
            close = getattr(obs, "close", None)
            if callable(close):
                close(status)


def _run_in(ctx: Any, n_jobs: int, timeout: float | None, progress: Progress) -> None:
    from mtlsearch.search import run_worker
    from mtlsearch.search._study import make_objective
    from mtlsearch.search._worker import TrialRunner

    with progress:
        task_id = progress.add_task(ctx.study.study_name, total=ctx.settings.n_trials, status="")
        ctx.observers.append(ProgressObserver(progress, task_id, ctx))
        runner = TrialRunner(ctx, make_objective(ctx))
        if n_jobs == 1:
            run_worker(ctx, timeout=timeout, runner=runner)
            return
        stop = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                run_worker(ctx, timeout=timeout, runner=runner, stop=stop)
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=work, daemon=True, name=f"worker-{i}") for i in range(n_jobs)]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
        except BaseException:
            stop.set()
            runner.release_all()
            raise
        if errors:
            raise errors[0]


def _failure_summary(study: optuna.Study) -> str | None:
    """One line when no trial of the study completed: the failures counted by kind (the
    exception type, or "invalid sample"), each with its first trial's reason as the example."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    kinds: dict[str, list[tuple[int, str]]] = {}
    for t in trials:
        reason = t.user_attrs.get("fail_reason")
        if t.state == TrialState.FAIL and reason:
            first = str(reason).splitlines()[0] if str(reason).strip() else "?"
            kinds.setdefault(first.split(": ", 1)[0], []).append((t.number, first))
    if not kinds:
        return None
    parts = []
    for kind, items in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        number, example = items[0]
        example = example if len(example) <= 300 else example[:297] + "..."
        parts.append(f"{len(items)} x {kind} (trial {number}: {example})")
    return (
        f"every trial of study {study.study_name} failed ({sum(len(v) for v in kinds.values())}): "
        + "; ".join(parts[:5])
        + (f"; and {count(len(parts) - 5, 'other kind')}" if len(parts) > 5 else "")
        + " — tracebacks in each trial's fail_traceback attribute, or run with -v"
    )


def _finish(ctx: Any, print_front: bool = True) -> None:
    """Print the front; exit 1 with a summary when every trial failed."""
    summary = _failure_summary(ctx.study)
    if summary is not None:
        typer.secho(f"error: {summary}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    if print_front:
        _print_front(ctx.study, ctx.objectives)


def _attach_tracking(
    ctx: Any, tracking_uri: str | None, enabled: bool, storage_url: str | None = None
) -> None:
    """Hook the MLflow observer in, if the tracking layer is installed and wanted. Without a
    URI it logs where the study already logs, else to mlflow.db beside the study's storage."""
    if not enabled:
        return
    try:
        from mtlsearch.tracking import MlflowObserver
    except ImportError:  # tracking layer not present in this build
        logger.debug("mtlsearch.tracking not available; not logging to MLflow")
        return
    observer = MlflowObserver(tracking_uri=tracking_uri, storage_url=storage_url)
    observer.on_study(ctx.study, ctx)
    ctx.observers.append(observer)


def _references(text: str | None, no_references: bool) -> tuple[bool, int | None]:
    """``--references N|all|none`` (and the older ``--no-references``) as (enqueue, count)."""
    if no_references:
        if text not in (None, "none", "0"):
            raise UserError(f"--no-references and --references {text}: choose one")
        return False, 0
    if text is None or text.strip().lower() == "all":
        return True, None
    if text.strip().lower() == "none":
        return False, 0
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"--references {text!r}: expected a count, all or none") from None
    if count < 0:
        raise UserError(f"--references {text!r}: expected a count >= 0, all or none")
    return count > 0, count


def _pruning(
    pruner: str | None,
    prune: bool | None,
    margin: float | None,
    min_epochs: int | None,
    eta: int | None,
    rung_fraction: float | None,
) -> tuple[dict[str, Any] | None, bool]:
    """The ``SearchSettings.pruning`` dict the pruner options ask for, and whether any was
    given (none given: a new study does not prune, a resumed one keeps its pruning). The
    rule's own checks (``--eta`` >= 2, ...) run when the settings are made."""
    from mtlsearch.search import PRUNERS

    if pruner is not None and pruner not in PRUNERS:
        raise UserError(f"--pruner: unknown {pruner!r}; expected one of {sorted(PRUNERS)}")
    if prune is not None:
        alias = "dominance" if prune else "none"
        flag = "--prune" if prune else "--no-prune"
        if pruner is not None and pruner != alias:
            raise UserError(f"{flag} and --pruner {pruner}: choose one ({flag} means --pruner {alias})")
        logger.warning("%s is deprecated: use --pruner %s", flag, alias)
        pruner = alias
    method = pruner or "none"
    moasha = {"min_epochs": min_epochs, "eta": eta, "rung_fraction": rung_fraction}
    options = {"min_epochs": "--min-epochs", "eta": "--eta", "rung_fraction": "--rung-fraction"}
    for key, value in moasha.items():
        if value is not None and method != "moasha":
            raise UserError(f"{options[key]}: applies to --pruner moasha only (the pruner is {method})")
    if margin is not None and method != "dominance":
        raise UserError(f"--prune-margin: applies to --pruner dominance only (the pruner is {method})")
    given = pruner is not None
    if method == "none":
        return None, given
    if method == "dominance":
        return {"method": method, **({} if margin is None else {"margin": margin})}, given
    return {"method": method, **{k: v for k, v in moasha.items() if v is not None}}, given


def search(
    space: Path = typer.Option(..., "--space", help="Search-space YAML (see search_spaces/)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Built-in dataset: synthetic, census-income, ali-ccp, aliexpress."
    ),
    data: Path | None = typer.Option(None, "--data", help="Dataset spec YAML for your own tables."),
    data_option: list[str] | None = typer.Option(
        None,
        "--option",
        "-o",
        "--data-option",
        help="Built-in dataset option, KEY=VALUE (repeatable), e.g. group=2 or n=20000.",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder holding the built-in dataset's files (default: $MTLSEARCH_DATA)."
    ),
    max_rows: str | None = max_rows_option(),
    set_items: list[str] | None = typer.Option(
        None,
        "--set",
        help="Override a constant or leaf of the space, PATH=VALUE (repeatable), e.g. training.epochs=2 "
        "or level.n_shared={int: [1, 3]}; stored with the study.",
    ),
    n_trials: int = typer.Option(
        8, "--n-trials", help="Trials in the study's budget (resume raises or keeps it)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop this process after S seconds."),
    study_name: str | None = typer.Option(
        None, "--study", help="Study name (default: from space and dataset); resumes if it exists."
    ),
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
    sampler: str | None = typer.Option(
        None, "--sampler", help="nsga2 | tpe | random (default tpe; a resume keeps the study's)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seeds the sampler and every trial's training (default 0; a resume keeps it)."
    ),
    objectives: list[str] | None = typer.Option(
        None,
        "--objectives",
        help="TASK[:METRIC], params, latency: space- or comma-separated, or repeated "
        "(default: every task's primary metric).",
    ),
    max_params: int | None = typer.Option(
        None, "--max-params", help="Constraint: parameter count <= N (checked before training)."
    ),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Workers in this process (threads)."),
    threads: int | None = threads_option(),
    nproc: int = typer.Option(1, "--nproc", min=1, metavar="N", help=NPROC_TRIAL_HELP),
    device: str | None = device_option(),
    precision: str | None = precision_option(),
    pruner: str | None = typer.Option(
        None,
        "--pruner",
        help="Stop unpromising trials early: none (default), dominance (dominated at the same epoch by "
        "finished trials) or moasha (multi-objective asynchronous successive halving). A resume keeps "
        "the study's.",
    ),
    min_epochs: int | None = typer.Option(
        None, "--min-epochs", help="MOASHA: epoch of the first rung, r (default 1); rungs at r*eta^k."
    ),
    eta: int | None = typer.Option(
        None, "--eta", help="MOASHA: reduction factor (default 3): the top 1/eta at a rung go on."
    ),
    rung_fraction: float | None = typer.Option(
        None,
        "--rung-fraction",
        help="MOASHA: epochs up to the first rung train on this seeded fraction of the training rows.",
    ),
    prune: bool | None = typer.Option(
        None, "--prune/--no-prune", help="Deprecated: same as --pruner dominance / --pruner none."
    ),
    prune_margin: float | None = typer.Option(
        None, "--prune-margin", help="Dominance pruning: relative margin (default 0.01)."
    ),
    references: str | None = typer.Option(
        None,
        "--references",
        help="Named architectures enqueued first: N (the first N of the space's list), all or none "
        "(default all).",
    ),
    no_references: bool = typer.Option(False, "--no-references", help="Same as --references none."),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: where the study logs, else mlflow.db beside the study).",
    ),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run (or resume) a multi-objective architecture search."""
    from mtlsearch.search import SearchSettings, SearchSpace, create_or_resume, default_storage_url
    from mtlsearch.search._space import apply_overrides
    from mtlsearch.search._study import warn_short_budget

    if (dataset is None) == (data is None):
        if dataset is None and data is None:
            raise UserError("give --dataset NAME or --data SPEC")
        raise UserError("give either --dataset or --data, not both")
    if n_jobs < 1:
        raise UserError(f"--n-jobs: must be >= 1, got {n_jobs}")
    if not space.is_file():
        raise UserError(f"--space {space}: no such file")
    parsed = SearchSpace.read(space)  # size cap, no aliases, every value checked
    if set_items:
        parsed = SearchSpace.from_yaml(apply_overrides(parsed.text, set_items, str(space)), str(space))
    if data is not None and not data.is_file():
        raise UserError(f"--data {data}: no such file")
    if data is not None:
        check_spec_path(data)
    enqueue, n_refs = _references(references, no_references)
    on_device = _device_name(device)
    precision_name = check_precision_flag(precision)
    pruning, pruning_given = _pruning(pruner, prune, prune_margin, min_epochs, eta, rung_fraction)
    source = dataset or str(data.resolve())  # type: ignore[union-attr]
    name = study_name or f"{space.stem}-{Path(source).stem}"
    settings = SearchSettings(
        space_text=parsed.text,
        space_source=parsed.source,
        dataset=source,
        dataset_options=with_max_rows(_parse_options(data_option), max_rows),  # stored: workers agree
        data_dir=str(data_dir.resolve()) if data_dir else None,
        objectives=tuple(objectives or ()),
        sampler=sampler or "tpe",
        seed=0 if seed is None else seed,
        n_trials=n_trials,
        enqueue_references=enqueue,
        pruning=pruning,
        max_params=max_params,
        references=n_refs,
        precision=precision_name or "fp32",
    )
    quiet_libraries()
    n_threads = set_threads(threads, n_jobs * nproc)  # with --nproc: the threads of each rank
    storage_url = storage or default_storage_url()
    given = {
        k for k, v in (("sampler", sampler), ("seed", seed), ("precision", precision_name)) if v is not None
    }
    if pruning_given:
        given.add("pruning")
    ctx = create_or_resume(
        name, storage_url, settings, given=given, threads=n_threads, device=on_device, nproc=nproc
    )
    ctx.nproc = nproc
    warn_short_budget(ctx)
    _attach_tracking(ctx, tracking_uri, not no_mlflow, storage_url)
    console.print(
        f"study [bold]{name}[/] in {storage_url} · objectives {[o.name for o in ctx.objectives]} · "
        f"{n_jobs} x {n_threads} threads · {on_device}, {ctx.settings.precision}"
    )
    _run(ctx, n_jobs, timeout, quiet)
    _finish(ctx)


def _device_name(device: str | None) -> str:
    """This worker's device for every trial, resolved (``cuda:0``, ``cpu``): checked before
    the study is opened, so a missing device is one line and nothing is written."""
    from mtlsearch.train import resolve_device

    return str(resolve_device(check_device_flag(device), "--device"))


def worker(
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str = typer.Option(..., "--storage", help="The study's storage URL (e.g. postgresql://...)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Sampler seed of this worker (default: distinct per worker)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after S seconds."),
    threads: int | None = threads_option(),
    nproc: int = typer.Option(1, "--nproc", min=1, metavar="N", help=NPROC_TRIAL_HELP),
    device: str | None = device_option(),
    precision: str | None = typer.Option(
        None,
        "--precision",
        metavar="fp32|bf16|fp16",
        help="Must be the study's precision (part of its recipe); default: the study's.",
        show_default=False,
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: the one the study logs to).",
    ),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Join a running study from another process or machine and run its trials."""
    from mtlsearch.search import join

    quiet_libraries()
    on_device = _device_name(device)
    precision_name = check_precision_flag(precision)
    n_threads = set_threads(threads, nproc)  # with --nproc: the threads of each rank
    ctx = join(
        study_name,
        storage,
        seed=seed,
        threads=n_threads,
        device=on_device,
        precision=precision_name,
        nproc=nproc,
    )
    ctx.nproc = nproc
    _attach_tracking(ctx, tracking_uri, not no_mlflow, storage)
    _run(ctx, 1, timeout, quiet)
    _finish(ctx, print_front=False)


def front(
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
) -> None:
    """Print the study's current Pareto front with each task's gain over single-task and
    each member's architecture (levels, experts, gate wiring, learning rate)."""
    from mtlsearch.search import default_storage_url, load_study, objectives_of

    study = load_study(study_name, storage or default_storage_url())
    _print_front(study, objectives_of(study))


def _pruned_text(trials: list[FrozenTrial]) -> str:
    """``5 (rung 0: 3, rung 1: 2)``: the pruned trials, and how many stopped at each rung."""
    from mtlsearch.tracking._summary import rung_counts

    n = sum(t.state == TrialState.PRUNED for t in trials)
    at = ", ".join(f"rung {c.rung}: {c.stopped}" for c in rung_counts(trials) if c.stopped)
    return f"{n} ({at})" if at else str(n)


def _stopped_line(trials: list[FrozenTrial]) -> str | None:
    """Under the front: how many trials stopped at each rung, and that the front leaves them out."""
    from mtlsearch.tracking._summary import rung_counts, rung_text

    n = sum(t.state == TrialState.PRUNED for t in trials)
    if not n:
        return None
    at = rung_text(rung_counts(trials))
    return (
        f"stopped early: {count(n, 'trial')}" + (f", at {at}" if at else "")
        + "; the front holds completed (full-fidelity) trials only"
    )  # fmt: skip


def _print_front(study: optuna.Study, objectives: Any) -> None:
    from mtlsearch.search import CONFIG_ATTR, describe_config, front_table

    rows = front_table(study, objectives)
    out = make_console()
    stopped = _stopped_line(study.get_trials(deepcopy=False))
    if not rows:
        out.print(f"study {study.study_name}: no completed trial yet")
        if stopped:
            out.print(stopped, markup=False, highlight=False)
        return
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    table = Table(title=f"Pareto front of {study.study_name} ({count(len(rows), 'trial')})")
    table.add_column("trial", justify="right")
    table.add_column("model")
    for o in objectives:
        table.add_column(f"{o.name} ({'max' if o.direction == 'maximize' else 'min'})", justify="right")
    task_objs = [o for o in objectives if not o.is_cost]
    for o in task_objs:
        table.add_column(f"gain {o.name}", justify="right")
    table.add_column("vs single-task")
    table.add_column("architecture")
    for r in rows:
        gains = [r.gains[o.name] for o in task_objs]
        verdict = _verdict_text(r)
        table.add_row(
            str(r.trial),
            r.name,
            *[f"{r.values[o.name]:.5g}" for o in objectives],
            *["-" if g is None else f"{g:+.4f}" for g in gains],
            verdict,
            describe_config(by_number[r.trial].user_attrs.get(CONFIG_ATTR)),
        )
    out.print(table)
    if stopped:
        out.print(stopped, markup=False, highlight=False)
    from mtlsearch.train._verdict import RULE

    out.print(RULE, style="dim")
    try:
        from mtlsearch.tracking._mlflow import front_link
    except ImportError:  # tracking layer not present in this build
        return
    link = front_link(study)
    if link:
        out.print(link, soft_wrap=True)


def _verdict_text(row: Any) -> str:
    """The front row's verdict against single-task, as the shared verdict rule writes it."""
    code = getattr(row, "verdict", None)
    if code is None:
        return "beats on all tasks" if row.beats_single else ("seesaw" if row.seesaw else "")
    from mtlsearch.train._verdict import label

    return label(code)


def trial(
    number: int = typer.Argument(..., help="Trial number (as in `mtlsearch front`)."),
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
) -> None:
    """Print one trial: its state, objective values, config YAML (architecture + training)
    and validation/test metrics; for a trial stopped early, why and where it stopped and its
    validation values after each epoch it trained."""
    from mtlsearch._yaml import dump_yaml
    from mtlsearch.search import CONFIG_ATTR, default_storage_url, describe_config, load_study, objectives_of

    study = load_study(study_name, storage or default_storage_url())
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UserError(f"trial {number}: study {study_name} has no such trial (0..{len(trials) - 1})")
    t = trials[number]
    out = make_console()
    attrs = t.user_attrs
    head = [f"trial {t.number} of {study_name}: {t.state.name}", f"model {attrs.get('preset', 'searched')}"]
    for key, label in (("n_params", "parameters"), ("threads", "threads"), ("seconds", "seconds")):
        if key in attrs:
            head.append(f"{label} {attrs[key]:,}" if key == "n_params" else f"{label} {attrs[key]}")
    out.print(" · ".join(head), markup=False, highlight=False)
    if attrs.get("fail_reason"):
        out.print(f"fail_reason: {attrs['fail_reason']}", markup=False, highlight=False)
    objectives = objectives_of(study)
    if t.values:
        names = [o.name for o in objectives]
        out.print(
            "objectives: " + ", ".join(f"{n} {v:.6g}" for n, v in zip(names, t.values, strict=False)),
            markup=False,
            highlight=False,
        )
    task_names = [o.name for o in objectives if not o.is_cost]
    if t.state == TrialState.PRUNED:
        for line in _stop_lines(t, task_names):
            out.print(line, markup=False, highlight=False)
    if CONFIG_ATTR in attrs:
        out.print(f"config ({describe_config(attrs[CONFIG_ATTR])}):", markup=False, highlight=False)
        out.print(dump_yaml(attrs[CONFIG_ATTR]).rstrip(), markup=False, highlight=False)
    valid, test = attrs.get("valid") or {}, attrs.get("test") or {}
    if valid:
        table = Table(title=f"trial {t.number}: metrics (best epoch {attrs.get('best_epoch', 0) + 1})")
        for col in ("task", "metric", "valid", "test"):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, metrics in valid.items():
            for i, (m, v) in enumerate(metrics.items()):
                tv = (test.get(task) or {}).get(m)
                table.add_row(task if i == 0 else "", m, f"{v:.4f}", "-" if tv is None else f"{tv:.4f}")
        out.print(table)
    elif attrs.get("epoch_values"):  # stopped early (or still running): the metrics it has
        out.print(_epoch_table(t, task_names))


def _number(v: Any) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return "-"


def _values_text(names: list[str], values: Any) -> str:
    """``a:auc 0.7700, b:auc 0.8200`` (the task objectives' values, in the study's order)."""
    if not isinstance(values, list):
        return ""
    if len(values) != len(names):
        return ", ".join(_number(v) for v in values)
    return ", ".join(f"{n} {_number(v)}" for n, v in zip(names, values, strict=True))


def _stop_lines(t: FrozenTrial, task_names: list[str]) -> list[str]:
    """Why and where a PRUNED trial stopped: its ``pruned_reason`` and, when it stopped at a
    MOASHA rung, the rung, its epoch and the task objectives' validation values there."""
    from mtlsearch.tracking._summary import stop_decision, stopped_rung

    attrs = t.user_attrs
    lines = [f"pruned_reason: {attrs.get('pruned_reason') or '(none recorded)'}"]
    rung = stopped_rung(t)
    if rung is not None:
        decision = stop_decision(t) or {}
        values = decision.get("values")
        if values is None:
            values = (attrs.get("rung_values") or {}).get(str(rung))
        epoch = decision.get("epoch")
        where = f"stopped at rung {rung}" + (f" (epoch {epoch})" if isinstance(epoch, int) else "")
        there = _values_text(task_names, values)
        lines.append(where + (f": validation {there}" if there else ""))
    else:
        epochs = attrs.get("epoch_values")
        if isinstance(epochs, list) and epochs:
            lines.append(f"stopped after epoch {len(epochs)}")
    return lines


def _epoch_table(t: FrozenTrial, task_names: list[str]) -> Table:
    """The task objectives' validation values after each epoch (user attr ``epoch_values``),
    with the MOASHA decision taken at each rung epoch."""
    rows = [v if isinstance(v, list) else [] for v in t.user_attrs.get("epoch_values") or []]
    decisions = {
        d["epoch"]: d
        for d in t.user_attrs.get("rung_decisions") or []
        if isinstance(d, dict) and isinstance(d.get("epoch"), int)
    }
    width = max((len(v) for v in rows), default=0)
    names = task_names if width == len(task_names) else [f"value {i + 1}" for i in range(width)]
    title = f"trial {t.number}: validation after each epoch ({count(len(rows), 'epoch')}"
    table = Table(title=title + (", stopped early)" if t.state == TrialState.PRUNED else ")"))
    table.add_column("epoch", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    if decisions:
        table.add_column("rung decision")
    for e, values in enumerate(rows, start=1):
        cells = [_number(values[i]) if i < len(values) else "-" for i in range(width)]
        if decisions:
            d = decisions.get(e)
            seen = len(d.get("seen") or []) if d else 0
            cells.append(f"rung {d.get('rung')}: {d.get('decision')} ({seen} seen)" if d else "")
        table.add_row(str(e), *cells)
    return table


def studies(
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
) -> None:
    """List the storage's studies: state, trials by state against the budget, best values."""
    from mtlsearch.search import default_storage_url
    from mtlsearch.search._storage import open_storage
    from mtlsearch.search._study import RECIPE_ATTR, count_finished, objectives_of, settings_of

    url = storage or default_storage_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"--storage {url}: no such SQLite file")
    store = open_storage(url, heartbeat=False)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    out = make_console()
    if not summaries:
        out.print(f"no studies in {url}")
        return
    table = Table(title=f"studies in {url}")
    for col in ("study", "state", "budget", "complete", "failed", "pruned", "running", "waiting", "best"):
        table.add_column(col, justify="left" if col in ("study", "state", "best") else "right")
    for summary in sorted(summaries, key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        failed = sum(t.state == TrialState.FAIL and "fail_reason" in t.user_attrs for t in trials)
        if RECIPE_ATTR in study.user_attrs:
            budget = settings_of(study).n_trials
            objs = objectives_of(study)
        else:
            budget, objs = None, ()
        done = count_finished(study)
        if count[TrialState.RUNNING]:
            state = "running"
        elif budget is not None and done >= budget:
            state = "finished"
        elif count[TrialState.WAITING]:
            state = "stopped (tickets waiting)"
        else:
            state = "not mtlsearch" if budget is None else "stopped"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = []
        for i, o in enumerate(objs):
            if complete and not o.is_cost:
                pick = max if o.direction == "maximize" else min
                best.append(f"{o.name} {pick(t.values[i] for t in complete):.4f}")
        table.add_row(
            summary.study_name,
            state,
            f"{done}/{budget}" if budget is not None else "-",
            str(count[TrialState.COMPLETE]),
            str(failed),
            str(count[TrialState.PRUNED]),
            str(count[TrialState.RUNNING]),
            str(count[TrialState.WAITING]),
            ", ".join(best) or "-",
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("worker")(worker)
    app.command("front")(front)
    app.command("trial")(trial)
    app.command("studies")(studies)
