"""``mtlsearch arch``: inspect architectures (presets, config files)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch.arch import PRESETS, ArchConfig, build_model, count_parameters

arch_app = typer.Typer(help="Inspect architecture configs and presets.", no_args_is_help=True)


@arch_app.command("show")
def show(config: Path = typer.Argument(..., help="Architecture YAML (a 'model:' section or bare).")) -> None:
    """Validate an architecture file and print its levels, experts and parameter count."""
    if not config.is_file():
        raise UserError(f"{config}: no such file")
    cfg = ArchConfig.load(config)  # size-capped, alias-free read; errors name the file
    model = build_model(cfg, seed=0)
    table = Table(title=f"{cfg.name}: {count_parameters(model):,} parameters")
    for col in ("level", "shared", "specific", "widths", "select", "shared gate", "gate"):
        table.add_column(col)
    for i, lv in enumerate(cfg.levels):
        table.add_row(
            str(i),
            str(lv.n_shared),
            ",".join(map(str, lv.n_specific)),
            ",".join(map(str, lv.expert_hidden)),
            lv.select,
            str(lv.shared_gate),
            f"{lv.gate_kind}/{lv.gate_sharing}/{lv.gate_input}",
        )
    Console().print(table)


@arch_app.command("presets")
def presets() -> None:
    """List the named architectures (each a config of the one builder)."""
    for name, fn in PRESETS.items():
        typer.echo(f"{name:14s} {(fn.__doc__ or '').strip().splitlines()[0]}")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
