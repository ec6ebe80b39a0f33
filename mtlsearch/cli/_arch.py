"""``mtlsearch arch``: inspect architectures (presets, config files)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch.arch import PRESETS, ArchConfig, build_model, count_parameters
from mtlsearch.arch._config import TOP_K_GATES
from mtlsearch.cli._common import console
from mtlsearch.search._describe import _describe_chained

arch_app = typer.Typer(help="Inspect architecture configs and presets.", no_args_is_help=True)


@arch_app.command("show")
def show(
    config: Path = typer.Argument(..., help="Architecture YAML (a 'model:' section or bare)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Fill model.inputs and model.tasks from this built-in dataset."
    ),
    data: str | None = typer.Option(None, "--data", help="... or from this dataset spec YAML."),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Option of the built-in dataset, KEY=VALUE (repeatable)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the dataset's files."),
) -> None:
    """Validate an architecture file and print its levels, experts and parameter count, and
    its chained tasks (ESMM products such as ``ctcvr=ctr*cvr``, a factor's loss ``cvr:ips0.1``).

    A file without ``inputs``/``tasks`` (like examples/*.yaml, which `train` fills from the
    data) needs --dataset or --data; without them the default is the synthetic data's."""
    if not config.is_file():
        raise UserError(f"{config}: no such file")
    cfg = ArchConfig.load(config) if _has_tasks(config) else _filled(config, dataset, data, option, data_dir)
    model = build_model(cfg, seed=0)
    stem = cfg.inputs.task_embedding_dim
    title = f"{cfg.name}: {count_parameters(model):,} parameters"
    table = Table(title=title + (f" (task-specific embeddings: {stem} per feature and task)" if stem else ""))
    columns = ("level", "shared", "specific", "widths", "experts", "select", "shared gate", "gate", "fusion")
    for col in columns:
        table.add_column(col)
    for i, lv in enumerate(cfg.levels):
        kind = f"{lv.gate_kind}(k={lv.top_k})" if lv.gate_kind in TOP_K_GATES else lv.gate_kind
        experts = lv.activation + (f", {lv.expert_norm} norm" if lv.expert_norm != "none" else "")
        table.add_row(
            str(i),
            str(lv.n_shared),
            ",".join(map(str, lv.n_specific)),
            ",".join(map(str, lv.expert_hidden)),
            experts,
            lv.select,
            str(lv.shared_gate),
            f"{kind}/{lv.gate_sharing}/{lv.gate_input}",
            lv.fusion,
        )
    console().print(table)
    chained = _describe_chained([dataclasses.asdict(t) for t in cfg.tasks])
    if chained:  # ESMM products and the factors' loss modes, as `search front` writes them
        console().print(f"chained tasks: {chained}", soft_wrap=True)


def _has_tasks(config: Path) -> bool:
    from mtlsearch._yaml import read_yaml_file

    _, raw = read_yaml_file(config, "architecture file")
    model = raw.get("model", raw) if isinstance(raw, dict) else raw
    return not isinstance(model, dict) or ("tasks" in model and "inputs" in model)  # else: fill inputs


def _filled(
    config: Path, dataset: str | None, data: str | None, option: list[str] | None, data_dir: Path | None
) -> ArchConfig:
    """The file's architecture with inputs and tasks taken from a dataset (the synthetic
    data's, small, when none is named)."""
    from mtlsearch._yaml import read_yaml_file
    from mtlsearch.cli._train import _load_data
    from mtlsearch.train import ExperimentConfig

    if dataset is None and data is None:
        dataset, option = "synthetic", [*(option or []), "n=1000"]
    ds = _load_data(data, dataset, data_dir, option, None)
    _, raw = read_yaml_file(config, "architecture file")
    model = raw.get("model", raw)
    try:
        return ExperimentConfig.from_dict({"model": model}, inputs=ds.input_spec(), tasks=ds.tasks).model
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None


@arch_app.command("presets")
def presets() -> None:
    """List the named architectures (each a config of the one builder)."""
    for name, fn in PRESETS.items():
        typer.echo(f"{name:14s} {(fn.__doc__ or '').strip().splitlines()[0]}")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
