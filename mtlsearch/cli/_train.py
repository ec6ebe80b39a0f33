"""``mtlsearch train``, ``predict`` and ``baselines``: the training layer on the command line."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch._yaml import option_value, read_yaml_file, require_mapping

logger = logging.getLogger(__name__)

_DATA_HELP = "Dataset spec YAML (or a built-in name)."
_DATASET_HELP = "Built-in dataset: synthetic, census-income, ali-ccp, aliexpress."
_OPTION_HELP = "Option of a built-in dataset, KEY=VALUE (repeatable), e.g. group=2 or n=5000."


def _console() -> Console:
    """Rich's console; piped or captured output gets a wide line instead of rich's default
    80 columns, so tables are not squeezed into ellipses in logs and files."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


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
) -> Any:
    from mtlsearch.data import load_dataset

    if (data is None) == (dataset is None):
        raise UserError("give exactly one of --data SPEC and --dataset NAME")
    source = data if data is not None else dataset
    return load_dataset(source, data_dir=data_dir, seed=seed, **_parse_options(options))


def _metrics_table(title: str, valid: dict, test: dict) -> Table:
    table = Table(title=title)
    for col in ("task", "metric", "valid", "test"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, metrics in valid.items():
        for i, (m, v) in enumerate(metrics.items()):
            table.add_row(task if i == 0 else "", m, f"{v:.4f}", f"{test[task][m]:.4f}")
    return table


def _utilisation_table(utilisation: dict[str, dict[str, float]]) -> Table:
    table = Table(title="expert utilisation (mean gate weight, validation split)")
    table.add_column("gate")
    table.add_column("experts")
    for gate, weights in utilisation.items():
        table.add_row(gate, "  ".join(f"{e} {w:.2f}" for e, w in weights.items()))
    return table


def train(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment YAML: model + training."),
    data: str | None = typer.Option(None, "--data", help=_DATA_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=_DATASET_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where built-in data files are."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP),
    data_seed: int | None = typer.Option(None, "--data-seed", help="Seed of random splits."),
    out: Path | None = typer.Option(
        None, "--out", help="Checkpoint directory [default: runs/<config>-<time>]."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train one experiment config, print the per-task table, write a checkpoint directory."""
    from mtlsearch.train import ExperimentConfig, TrainConfig, TrainingDiverged, fit, save_checkpoint

    # Fail on a bad training section before the data load, which can take a while.
    raw = _read_yaml_mapping(config, "experiment config")
    try:
        TrainConfig.from_dict(raw.get("training"))
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    out = out or Path("runs") / f"{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite or choose another --out")
    ds = _load_data(data, dataset, data_dir, option, data_seed)
    experiment = ExperimentConfig.load(config, inputs=ds.input_spec(), tasks=ds.tasks)
    try:
        result = fit(experiment, ds, progress=not quiet)
    except TrainingDiverged as exc:
        # Bad settings, not a bug: one line, exit 2, and nothing written (the checkpoint
        # is saved only after a finished fit).
        raise UserError(f"{config}: {exc}; {_divergence_hint(experiment.training)}") from None
    console = _console()
    title = (
        f"{experiment.model.name} on {ds.name}: best epoch {result.best_epoch + 1} of "
        f"{len(result.history)}, {result.n_params:,} parameters, {result.seconds:.1f} s"
    )
    console.print(_metrics_table(title, result.valid, result.test))
    if result.utilisation:
        console.print(_utilisation_table(result.utilisation))
    path = save_checkpoint(result, ds, out, overwrite=overwrite)
    console.print(f"checkpoint: {path}")


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


def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory (from train)."),
    input_file: Path = typer.Option(..., "--input", "-i", help="Raw rows, CSV or Parquet."),
    output: Path = typer.Option(..., "--output", help="Predictions, .csv or .parquet."),
) -> None:
    """Score raw rows through a checkpoint's saved preprocessing."""
    from mtlsearch.data import read_table
    from mtlsearch.train import load_checkpoint
    from mtlsearch.train import predict as predict_rows

    if output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"{output}: unknown output format; use .csv or .parquet")
    checkpoint = load_checkpoint(model)
    frame = read_table(input_file)
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
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where built-in data files are."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP),
    data_seed: int | None = typer.Option(None, "--data-seed", help="Seed of random splits."),
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
    seeds: str | None = typer.Option(None, "--seeds", help="Training seeds, e.g. 0,1,2."),
    out: Path | None = typer.Option(None, "--out", help="Write the report as JSON."),
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
    size_args = _read_yaml_mapping(sizes, "sizes file") if sizes is not None else {}
    size_args = {k: tuple(v) if isinstance(v, list) else v for k, v in size_args.items()}
    ds = _load_data(data, dataset, data_dir, option, data_seed)
    try:
        report: BaselineReport = run_baselines(
            ds,
            train_cfg,
            presets=[p.strip() for p in presets.split(",") if p.strip()],
            sizes=size_args,
            seeds=_int_list(seeds, "--seeds") if seeds else None,
            progress=not quiet,
            on_run=lambda r: logger.info(
                "%s (seed %d): %s", r.model, r.seed, {t: m for t, m in r.test.items()}
            ),
        )
    except TrainingDiverged as exc:
        prefix = f"{training}: " if training is not None else ""
        raise UserError(f"{prefix}{exc}; {_divergence_hint(train_cfg)}") from None
    console = _console()
    console.print(_baseline_table(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        report.save(out)
        console.print(f"report: {out}")


def _read_yaml_mapping(path: Path, what: str = "YAML file") -> dict[str, Any]:
    """A user's YAML file whose top level is a mapping (size-capped, alias-free)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    _, data = read_yaml_file(path, what)
    return require_mapping(data, str(path), what)


def _baseline_table(report: Any) -> Table:
    from mtlsearch.train import PRIMARY_METRICS, SINGLE_TASK

    seeds = report.seeds
    table = Table(
        title=f"{report.dataset}: test metrics, gain over single-task "
        f"({report.training.epochs} epochs, seeds {seeds})"
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
        row.append("reference" if model == SINGLE_TASK else report.verdict(model))
        row.append(f"{runs[0].n_params:,}")
        row.append(f"{sum(r.epoch_seconds for r in runs) / len(runs):.2f}")
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("predict")(predict)
    app.command("baselines")(baselines)
