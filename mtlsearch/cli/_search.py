"""``mtlsearch search``, ``worker`` and ``front``: run and inspect architecture searches."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import optuna
import typer
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtlsearch._errors import StorageUnavailable, UserError

logger = logging.getLogger("mtlsearch")
console = Console(stderr=True)


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
    """Terminal progress of a study: done/total, failures, front size, best per task, HV."""

    def __init__(self, progress: Progress, task_id: Any, ctx: Any) -> None:
        self.progress = progress
        self.task_id = task_id
        self.ctx = ctx
        self._lock = threading.Lock()
        self.refresh(ctx.study)

    def on_study(self, study, context) -> None:
        pass

    def on_trial_start(self, trial, config) -> None:
        pass

    def on_epoch(self, trial, report) -> None:
        pass

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial, result: Any) -> None:
        self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        from mtlsearch.search import count_finished, hypervolume, pareto_front

        with self._lock:
            trials = study.get_trials(deepcopy=False)
            objectives = self.ctx.objectives
            done = count_finished(study)
            failed = sum(t.state == TrialState.FAIL and "fail_reason" in t.user_attrs for t in trials)
            pruned = sum(t.state == TrialState.PRUNED for t in trials)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            front = pareto_front(study, objectives) if complete else []
            best = []
            for i, o in enumerate(objectives):
                if complete and not o.is_cost:
                    pick = max if o.direction == "maximize" else min
                    best.append(f"{o.name} {pick(t.values[i] for t in complete):.4f}")
            hv = hypervolume(complete, objectives) if complete else 0.0
            self.progress.update(
                self.task_id,
                completed=done,
                total=self.ctx.settings.n_trials,
                status=(
                    f"failed {failed} · pruned {pruned} · front {len(front)} · "
                    f"best {', '.join(best) or '-'} · HV {hv:.4g}"
                ),
            )


def quiet_libraries() -> None:
    """Per-epoch and per-trial log lines would drown the progress display; -v brings them back."""
    if logging.getLogger().level > logging.DEBUG:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("mtlsearch.train").setLevel(logging.WARNING)


def _run(ctx: Any, n_jobs: int, timeout: float | None, quiet: bool) -> None:
    """Run ``n_jobs`` workers in this process until the budget is used up.

    With several workers (threads) an interrupt lands in the main thread, which is only
    waiting: it stops the loops, releases every trial this process runs (so that they are
    retried at once) and re-raises; the CLI then exits without waiting for the trainers.
    """
    if n_jobs > 1:  # split the cores between in-process workers
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))
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
        + (f"; and {len(parts) - 5} other kinds" if len(parts) > 5 else "")
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
        None, "--data-dir", help="Folder holding the built-in dataset's files."
    ),
    n_trials: int = typer.Option(
        8, "--n-trials", help="Trials in the study's budget (resume raises or keeps it)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop this process after S seconds."),
    study_name: str | None = typer.Option(
        None, "--study", help="Study name (default: from space and dataset); resumes if it exists."
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage URL (default sqlite:///mtlsearch.db)."
    ),
    sampler: str = typer.Option("tpe", "--sampler", help="nsga2 | tpe | random."),
    seed: int = typer.Option(0, "--seed", help="Seeds the sampler and every trial's training."),
    objectives: list[str] | None = typer.Option(
        None, "--objectives", help="TASK[:METRIC], params, latency (default: every task's primary metric)."
    ),
    max_params: int | None = typer.Option(None, "--max-params", help="Constraint: parameter count <= N."),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Workers in this process (threads)."),
    prune: bool = typer.Option(
        False, "--prune/--no-prune", help="Stop trials dominated at the same epoch by finished ones."
    ),
    prune_margin: float = typer.Option(0.01, "--prune-margin", help="Relative margin for dominance pruning."),
    no_references: bool = typer.Option(
        False, "--no-references", help="Do not enqueue the named architectures first."
    ),
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

    if (dataset is None) == (data is None):
        if dataset is None and data is None:
            raise UserError("give --dataset NAME or --data SPEC")
        raise UserError("give either --dataset or --data, not both")
    if n_jobs < 1:
        raise UserError(f"--n-jobs: must be >= 1, got {n_jobs}")
    if not space.is_file():
        raise UserError(f"--space {space}: no such file")
    parsed = SearchSpace.read(space)  # size cap, no aliases, every value checked
    if data is not None and not data.is_file():
        raise UserError(f"--data {data}: no such file")
    source = dataset or str(data.resolve())  # type: ignore[union-attr]
    name = study_name or f"{space.stem}-{Path(source).stem}"
    settings = SearchSettings(
        space_text=parsed.text,
        space_source=parsed.source,
        dataset=source,
        dataset_options=_parse_options(data_option),
        data_dir=str(data_dir.resolve()) if data_dir else None,
        objectives=tuple(objectives or ()),
        sampler=sampler,
        seed=seed,
        n_trials=n_trials,
        enqueue_references=not no_references,
        pruning={"margin": prune_margin} if prune else None,
        max_params=max_params,
    )
    quiet_libraries()
    storage_url = storage or default_storage_url()
    ctx = create_or_resume(name, storage_url, settings)
    _attach_tracking(ctx, tracking_uri, not no_mlflow, storage_url)
    console.print(f"study [bold]{name}[/] in {storage_url} · objectives {[o.name for o in ctx.objectives]}")
    _run(ctx, n_jobs, timeout, quiet)
    _finish(ctx)


def worker(
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str = typer.Option(..., "--storage", help="The study's storage URL (e.g. postgresql://...)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Sampler seed of this worker (default: distinct per worker)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after S seconds."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Join a running study from another process or machine and run its trials."""
    from mtlsearch.search import join

    quiet_libraries()
    ctx = join(study_name, storage, seed=seed)
    _attach_tracking(ctx, tracking_uri, not no_mlflow, storage)
    _run(ctx, 1, timeout, quiet)
    _finish(ctx, print_front=False)


def front(
    study_name: str = typer.Option(..., "--study"),
    storage: str | None = typer.Option(None, "--storage", help="Default sqlite:///mtlsearch.db."),
) -> None:
    """Print the study's current Pareto front with each task's gain over single-task."""
    from mtlsearch.search import default_storage_url, load_study, objectives_of

    study = load_study(study_name, storage or default_storage_url())
    _print_front(study, objectives_of(study))


def _print_front(study: optuna.Study, objectives: Any) -> None:
    from mtlsearch.search import front_table

    rows = front_table(study, objectives)
    out = Console()
    if not rows:
        out.print(f"study {study.study_name}: no completed trial yet")
        return
    table = Table(title=f"Pareto front of {study.study_name} ({len(rows)} trials)")
    table.add_column("trial", justify="right")
    table.add_column("model")
    for o in objectives:
        table.add_column(f"{o.name} ({'max' if o.direction == 'maximize' else 'min'})", justify="right")
    task_objs = [o for o in objectives if not o.is_cost]
    for o in task_objs:
        table.add_column(f"gain {o.name}", justify="right")
    table.add_column("vs single-task")
    for r in rows:
        gains = [r.gains[o.name] for o in task_objs]
        verdict = "beats on all tasks" if r.beats_single else ("seesaw" if r.seesaw else "")
        table.add_row(
            str(r.trial),
            r.name,
            *[f"{r.values[o.name]:.5g}" for o in objectives],
            *["-" if g is None else f"{g:+.4f}" for g in gains],
            verdict,
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("worker")(worker)
    app.command("front")(front)
