"""``mtlsearch train``, ``predict`` and ``baselines``: the training layer on the command line."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch._yaml import option_value, read_yaml_file, require_mapping
from mtlsearch.cli._common import (
    check_spec_path,
    count,
    device_option,
    max_rows_option,
    precision_option,
    set_threads,
    threads_option,
    training_on,
    with_max_rows,
)
from mtlsearch.cli._common import console as wide_console
from mtlsearch.cli._ddp import launch as launch_ranks
from mtlsearch.cli._ddp import nproc_option, rank_errors, rank_threads, start_rank

logger = logging.getLogger(__name__)

_DATA_HELP = "Dataset spec YAML (or a built-in name)."
_DATASET_HELP = "Built-in dataset: synthetic, census-income, ali-ccp, aliexpress."
_OPTION_HELP = "Option of a built-in dataset, KEY=VALUE (repeatable), e.g. group=2 or n=5000."
_DATA_DIR_HELP = "Folder holding the built-in dataset's files (default: $MTLSEARCH_DATA, else download)."
_DATA_SEED_HELP = "Seed of random splits and generated data (default: the dataset's own, 0)."
_SEP_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _console() -> Console:
    """Rich's console; piped or captured output gets a wide line instead of rich's default
    80 columns, so tables are not squeezed into ellipses in logs and files."""
    return wide_console()


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for opt in options or []:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {opt!r}: expected KEY=VALUE")
        parsed[key.strip()] = option_value(value, f"--option {key.strip()}")
    return parsed


def _load_data(
    data: str | None,
    dataset: str | None,
    data_dir: Path | None,
    options: list[str] | None,
    seed: int | None,
    max_rows: str | None = None,
) -> Any:
    from mtlsearch.data import load_dataset

    if (data is None) == (dataset is None):
        raise UserError("give exactly one of --data SPEC and --dataset NAME")
    parsed = with_max_rows(_parse_options(options), max_rows)
    if data is not None:
        check_spec_path(data)
    source = data if data is not None else dataset
    return load_dataset(source, data_dir=data_dir, seed=seed, **parsed)


def _metrics_table(title: str, valid: dict, test: dict) -> Table:
    table = Table(title=title)
    for col in ("task", "metric", "valid", "test"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, metrics in valid.items():
        for i, (m, v) in enumerate(metrics.items()):
            table.add_row(task if i == 0 else "", m, f"{v:.4f}", f"{test[task][m]:.4f}")
    return table


def _utilisation_table(utilisation: dict[str, dict[str, float]]) -> Table:
    table = Table(
        title="expert utilisation (mean gate weight, validation split; dead_units: share of an "
        "expert's output units that are 0 on every row)"
    )
    table.add_column("gate")
    table.add_column("experts")
    for gate, weights in utilisation.items():
        table.add_row(gate, "  ".join(f"{e} {w:.2f}" for e, w in weights.items()))
    return table


def train(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment YAML: model + training."),
    data: str | None = typer.Option(None, "--data", help=_DATA_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=_DATASET_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP),
    data_seed: int | None = typer.Option(None, "--data-seed", help=_DATA_SEED_HELP),
    max_rows: str | None = max_rows_option(),
    out: Path | None = typer.Option(
        None, "--out", help="Checkpoint directory (default: runs/<config>-<time>).", show_default=False
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    threads: int | None = threads_option(),
    device: str | None = device_option(),
    precision: str | None = precision_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    nproc: int | None = nproc_option(),
    max_memory: str | None = typer.Option(
        None,
        "--max-memory",
        help="Refuse a config whose estimated training memory exceeds this (8GiB, 512MiB, bytes); "
        "default: $MTLSEARCH_MAX_MEMORY, else 90% of the available memory.",
        show_default=False,
    ),
) -> None:
    """Train one experiment config, print the per-task table, write a checkpoint directory
    (its metrics.json records the thread count, the --max-rows subsample if any and, for a
    --data spec, how to read its rows). Under torchrun (or ``--nproc N``) each process is one
    DDP rank and rank 0 alone prints and writes."""
    args = dict(locals())
    from mtlsearch.train import distributed

    if distributed.launched():  # one rank: bad input goes to the launcher, which prints it once
        start_rank()
        with rank_errors():
            _train(**args)
        return
    _train(**args)


def _train(
    config: Path,
    data: str | None,
    dataset: str | None,
    data_dir: Path | None,
    option: list[str] | None,
    data_seed: int | None,
    max_rows: str | None,
    out: Path | None,
    overwrite: bool,
    threads: int | None,
    device: str | None,
    precision: str | None,
    quiet: bool,
    nproc: int | None,
    max_memory: str | None,
) -> None:
    """:func:`train`'s body (the typer command wraps it for the ranks of a DDP group)."""
    from mtlsearch.train import (
        ExperimentConfig,
        TrainConfig,
        TrainingDiverged,
        fit,
        resolve_device,
        save_checkpoint,
    )
    from mtlsearch.train._memory import parse_size

    if max_memory is not None:  # a bad size is one line naming the flag, before any reading
        parse_size(max_memory, "--max-memory")
    # Fail on a bad training section before the data load, which can take a while.
    raw = _read_yaml_mapping(config, "experiment config")
    try:
        given_training = TrainConfig.from_dict(raw.get("training"))
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    training_on(given_training, device, precision, str(config))  # the device is present, the flags valid
    out = out or Path("runs") / f"{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite or choose another --out")
    from mtlsearch.train import distributed

    if (nproc or 1) > 1 or distributed.launched():  # DDP: decided before any rank starts
        try:
            distributed.check_weighting(given_training.loss_weighting.method)
        except UserError as exc:
            raise UserError(f"{config}: {exc}") from None
    if (nproc or 1) > 1 and not distributed.launched():
        _check_before_launch(config, raw, max_memory)
        raise typer.Exit(launch_ranks(nproc, threads))
    n_threads = set_threads(rank_threads(threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    ds = _load_data(data, dataset, data_dir, option, data_seed, max_rows)
    experiment = ExperimentConfig.load(config, inputs=ds.input_spec(), tasks=ds.tasks)
    experiment = replace(
        experiment, training=training_on(experiment.training, device, precision, str(config))
    )
    group = distributed.fit_group(resolve_device(experiment.training.device, "--device"))
    distributed.install_rank_logging(group.ctx if group is not None else None)
    try:
        result = fit(experiment, ds, progress=not quiet, max_memory=max_memory)
    except TrainingDiverged as exc:
        # Bad settings, not a bug: one line, exit 2, and nothing written (the checkpoint
        # is saved only after a finished fit).
        raise UserError(f"{config}: {exc}; {_divergence_hint(experiment.training)}") from None
    if group is not None and not group.is_main:  # rank 0 alone prints and writes
        distributed.shutdown()
        return
    console = _console()
    title = (
        f"{experiment.model.name} on {ds.name}: best epoch {result.best_epoch + 1} of "
        f"{len(result.history)}, {result.n_params:,} parameters, {result.seconds:.1f} s "
        f"on {result.device}, {result.precision}"
    )
    console.print(_metrics_table(title, result.valid, result.test))
    if result.utilisation:
        console.print(_utilisation_table(result.utilisation))
    path = save_checkpoint(result, ds, out, overwrite=overwrite)
    extra: dict[str, Any] = {"threads": n_threads}
    if group is not None:
        extra["processes"] = group.ctx.world_size
    if "max_rows" in ds.meta:  # trained on a subsample: say so beside the metrics
        extra["max_rows"] = {"max_rows": ds.meta["max_rows"], "train_rows": ds.meta["train_rows"]}
    if data is not None:
        extra["input"] = _reading_options(ds)
    _annotate_metrics(path, extra)
    console.print(f"checkpoint: {path}")
    if group is not None:
        distributed.shutdown()


def _check_before_launch(config: Path, raw: dict[str, Any], max_memory: str | None) -> None:
    """What the ``--nproc`` launcher can check before it starts any rank, without loading the
    data: the ``--max-memory`` size, and the whole experiment config when its model section
    names its own ``inputs`` and ``tasks`` (else they come from the dataset, and the ranks
    check the config against it: their UserError still reaches the user as one line)."""
    from mtlsearch.train import ExperimentConfig
    from mtlsearch.train._memory import parse_size

    if max_memory is not None:
        parse_size(max_memory, "--max-memory")
    model = raw.get("model")
    inputs = model.get("inputs") if isinstance(model, dict) else None
    own = isinstance(inputs, dict) and not inputs.keys() <= {"embed_init_std", "task_embedding_dim"}
    if own and "tasks" in model:  # type: ignore[operator]
        ExperimentConfig.load(config)


#: How ``predict`` reads rows: the keys of a spec's ``files`` section it reuses.
_READING_KEYS = ("sep", "na_values", "skipinitialspace")


def _reading_options(ds: Any) -> dict[str, Any]:
    """The spec's row-reading options (separator, missing markers) for ``predict``."""
    files = (ds.meta.get("spec") or {}).get("files") or {}
    return {k: files[k] for k in _READING_KEYS if files.get(k) is not None}


def _annotate_metrics(path: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` keys to the checkpoint's metrics.json, replaced atomically (the
    checkpoint is complete and loadable before and after)."""
    target = path / "metrics.json"
    metrics = {**json.loads(target.read_text()), **extra}
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(metrics, f, indent=2, allow_nan=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _divergence_hint(training: Any) -> str:
    """What to change when training blows up: the learning rate first, by far the usual cause."""
    return f"try a lower training.lr (now {training.lr:g})"


def _write_table(frame: Any, path: Path) -> None:
    """CSV or Parquet by suffix, written to a temporary file and renamed (never half-written)."""
    writers = {
        ".csv": lambda f, p: f.to_csv(p, index=False),
        ".parquet": lambda f, p: f.to_parquet(p, index=False),
        ".pq": lambda f, p: f.to_parquet(p, index=False),
    }
    suffix = path.suffix.lower()
    if suffix not in writers:
        raise UserError(f"{path}: unknown output format; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writers[suffix](frame, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _separator(text: str) -> str:
    sep = _SEP_NAMES.get(text.strip().lower(), text)
    if not sep:
        raise UserError("--sep: expected a separator such as , or tab")
    return sep


def predict_reading(input_file: Path, saved: dict[str, Any], sep: str | None) -> dict[str, Any]:
    """How ``predict`` reads ``input_file`` (a header row is expected): the separator is
    ``--sep`` if given, else a tab for a ``.tsv`` file, else the one of the spec the model
    was trained from (saved in metrics.json), else a comma; missing markers and
    ``skipinitialspace`` come from that spec too."""
    options = {k: v for k, v in saved.items() if k in _READING_KEYS}
    if sep is not None:
        options["sep"] = _separator(sep)
    elif input_file.suffix.lower() == ".tsv":
        options["sep"] = "\t"
    if isinstance(options.get("na_values"), list):
        options["na_values"] = tuple(options["na_values"])
    return options


def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory (from train)."),
    input_file: Path = typer.Option(
        ..., "--input", "-i", help="Raw rows with a header row: CSV, TSV (.tsv) or Parquet."
    ),
    output: Path = typer.Option(..., "--output", help="Predictions, .csv or .parquet."),
    sep: str | None = typer.Option(
        None,
        "--sep",
        help="Field separator of --input (',', ';', tab, ...); default: tab for .tsv, else the "
        "separator of the spec the model was trained from, else a comma.",
    ),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="Read --input (a file, a folder of shards or a glob) in record batches and write "
        "the predictions batch by batch, never holding all rows.",
    ),
) -> None:
    """Score raw rows through a checkpoint's saved preprocessing."""
    from mtlsearch.data import read_table
    from mtlsearch.data._spec import FileSpec
    from mtlsearch.train import load_checkpoint
    from mtlsearch.train import predict as predict_rows

    if output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"{output}: unknown output format; use .csv or .parquet")
    checkpoint = load_checkpoint(model)
    saved = checkpoint.metrics.get("input") if isinstance(checkpoint.metrics.get("input"), dict) else {}
    options = predict_reading(input_file, saved, sep)
    if stream:
        from mtlsearch.train._stream_predict import predict_stream

        predict_stream(checkpoint, input_file, output, FileSpec(path=str(input_file), **options))
        return
    frame = read_table(input_file, FileSpec(path=str(input_file), **options))
    predictions = predict_rows(checkpoint, frame, source=str(input_file))
    _write_table(predictions, output)
    logger.info("wrote %d predictions to %s", len(predictions), output)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected integers separated by commas, got {text!r}") from None


def baselines(
    data: str | None = typer.Option(None, "--data", help=_DATA_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=_DATASET_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP),
    data_seed: int | None = typer.Option(None, "--data-seed", help=_DATA_SEED_HELP),
    max_rows: str | None = max_rows_option(),
    training: Path | None = typer.Option(
        None, "--training", help="YAML with the training section (a 'training:' key or bare)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    presets: str = typer.Option(
        "shared_bottom,mmoe,cgc,ple", "--presets", help="Comma-separated presets to compare."
    ),
    sizes: Path | None = typer.Option(
        None, "--sizes", help="YAML of preset sizes (expert_hidden, tower, n_experts, ...)."
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Training seeds, e.g. 0,1,2 (default: training.seed)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the report as JSON."),
    threads: int | None = threads_option(),
    device: str | None = device_option(),
    precision: str | None = precision_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train single-task models and MTL presets with the same budget; report gains and seesaw."""
    from mtlsearch.train import BaselineReport, TrainConfig, TrainingDiverged, run_baselines

    train_raw: dict[str, Any] = {}
    if training is not None:
        train_raw = _read_yaml_mapping(training, "training file")
        train_raw = train_raw.get("training", train_raw)
    if epochs is not None:
        train_raw = {**train_raw, "epochs": epochs}
    try:
        train_cfg = TrainConfig.from_dict(train_raw)
    except UserError as exc:
        raise UserError(f"{training or '--epochs'}: {exc}") from None
    train_cfg = training_on(train_cfg, device, precision, str(training or ""))
    size_args = _read_yaml_mapping(sizes, "sizes file") if sizes is not None else {}
    size_args = {k: tuple(v) if isinstance(v, list) else v for k, v in size_args.items()}
    n_threads = set_threads(threads)
    ds = _load_data(data, dataset, data_dir, option, data_seed, max_rows)
    preset_list = [p.strip() for p in presets.split(",") if p.strip()]
    seed_list = _int_list(seeds, "--seeds") if seeds else [train_cfg.seed]
    announce = _Announcer(ds, preset_list, seed_list, n_threads)
    try:
        report: BaselineReport = run_baselines(
            ds,
            train_cfg,
            presets=preset_list,
            sizes=size_args,
            seeds=seed_list,
            progress=not quiet,
            on_run=announce.done,
        )
    except TrainingDiverged as exc:
        prefix = f"{training}: " if training is not None else ""
        raise UserError(f"{prefix}{exc}; {_divergence_hint(train_cfg)}") from None
    console = _console()
    console.print(_baseline_table(report))
    from mtlsearch.train._verdict import RULE

    console.print(RULE, style="dim")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        report.save(out)
        console.print(f"report: {out}")


class _Announcer:
    """Says which model and seed ``baselines`` trains next, and what each run gave.

    ``run_baselines`` trains, for each seed in turn, the single-task models (one per task)
    and then each preset in the given order; the announcer walks that same order."""

    def __init__(self, ds: Any, presets: list[str], seeds: list[int], threads: int) -> None:
        from mtlsearch.train import SINGLE_TASK

        models = [SINGLE_TASK, *(p for p in presets if p != SINGLE_TASK)]
        self.order = [(m, s) for s in seeds for m in models]
        self.tasks = [t.name for t in ds.tasks]
        self.single = SINGLE_TASK
        self.threads = threads
        self.index = 0
        self._start()

    def _start(self) -> None:
        if self.index >= len(self.order):
            return
        model, seed = self.order[self.index]
        what = model
        if model == self.single:
            what = f"{model} ({len(self.tasks)} models: {', '.join(self.tasks)})"
        logger.info(
            "training %s, seed %d (run %d of %d, %s)",
            what, seed, self.index + 1, len(self.order), count(self.threads, "thread"),
        )  # fmt: skip

    def done(self, run: Any) -> None:
        logger.info("%s (seed %d) test: %s", run.model, run.seed, {t: m for t, m in run.test.items()})
        self.index += 1
        self._start()


def _read_yaml_mapping(path: Path, what: str = "YAML file") -> dict[str, Any]:
    """A user's YAML file whose top level is a mapping (size-capped, alias-free)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    _, data = read_yaml_file(path, what)
    return require_mapping(data, str(path), what)


def _baseline_table(report: Any) -> Table:
    from mtlsearch.train import PRIMARY_METRICS, SINGLE_TASK
    from mtlsearch.train._verdict import label as verdict_label

    seeds = report.seeds
    table = Table(
        title=f"{report.dataset}: test metrics, gain over single-task "
        f"({count(report.training.epochs, 'epoch')}, seeds {seeds})"
    )
    table.add_column("model")
    for t in report.tasks:
        table.add_column(f"{t.name} {PRIMARY_METRICS[t.kind][0]}", justify="right")
        table.add_column("gain", justify="right")
    for col in ("verdict", "params", "s/epoch"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for model in report.models:
        row = [model]
        for t in report.tasks:
            mean, std = report.metric(model, t.name)
            row.append(f"{mean:.4f}" + (f" ± {std:.4f}" if len(seeds) > 1 else ""))
            if model == SINGLE_TASK:
                row.append("")
            else:
                gain = report.gain(model, t.name)
                row.append(f"[{'green' if gain > 0 else 'red'}]{gain:+.4f}[/]")
        runs = report.runs_of(model)
        row.append("reference" if model == SINGLE_TASK else verdict_label(report.verdict(model)))
        row.append(f"{runs[0].n_params:,}")
        row.append(f"{sum(r.epoch_seconds for r in runs) / len(runs):.2f}")
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("predict")(predict)
    app.command("baselines")(baselines)
