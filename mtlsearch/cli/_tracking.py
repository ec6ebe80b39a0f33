"""``mtlsearch report`` and ``export``: a study as an HTML report, a picked model as files."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtlsearch.cli._common import check_device_flag, device_option

logger = logging.getLogger(__name__)

_STORAGE_HELP = "The study's Optuna storage URL (default sqlite:///mtlsearch.db)."


def report(
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
    out: Path = typer.Option(..., "--out", help="The HTML file to write."),
) -> None:
    """Write a self-contained HTML report: Pareto plots, the front with gains over
    single-task, hypervolume over trials, parameter importances, expert utilisation."""
    from mtlsearch.search import default_storage_url, load_study
    from mtlsearch.tracking import write_report

    study = load_study(study_name, storage or default_storage_url())
    path = write_report(study, out)
    Console(stderr=True).print(f"report: {path}")


def export(
    study_name: str = typer.Option(..., "--study", help="Name of a study made by `mtlsearch search`."),
    storage: str | None = typer.Option(None, "--storage", help=_STORAGE_HELP),
    pick: str = typer.Option(
        ...,
        "--pick",
        help="trial:N | knee | weights:w1,w2,... | constraint:best=METRIC,METRIC>=V,... "
        "(e.g. constraint:best=income:auc,marital:auc>=0.93).",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write (config, checkpoint, serving model)."),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="Where the trial's model was logged (default: the URI the study recorded).",
    ),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train the config again when MLflow has no model for the trial."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    device: str | None = device_option(),
    format_: str = typer.Option(
        "pt2",
        "--format",
        help="Serving program: pt2 (torch.export), onnx (needs the package's onnx extra; "
        "checked against eager PyTorch with ONNX Runtime) or both.",
    ),
) -> None:
    """Pick one trial of a study and export its config, checkpoint and serving model."""
    from mtlsearch.search import default_storage_url, load_study, objectives_of, parse_pick, pick_trial
    from mtlsearch.tracking import export_pick
    from mtlsearch.tracking._export import parse_format

    rule = parse_pick(pick)  # a bad rule or format fails before the storage is opened
    formats = parse_format(format_)
    device = check_device_flag(device) if device is not None else None  # where --retrain trains
    study = load_study(study_name, storage or default_storage_url())
    objectives = objectives_of(study)
    chosen = pick_trial(study, rule, objectives)
    result = export_pick(
        study, chosen, out, tracking_uri=tracking_uri, retrain=retrain, overwrite=overwrite, formats=formats,
        device=device,
    )  # fmt: skip
    t = chosen.trial
    table = Table(
        title=f"{study_name}: trial {t.number} ({t.user_attrs.get('preset', 'searched')}) by {rule.text}"
    )
    table.add_column("objective")
    table.add_column("value", justify="right")
    for o, v in zip(objectives, t.values, strict=True):
        table.add_row(o.name, f"{v:.6g}")
    console = Console()
    console = console if console.is_terminal else Console(width=160)  # no squeezed tables in logs
    console.print(table)
    console.print(f"pick:       {chosen.explain()}", markup=False, highlight=False)
    console.print(f"config:     {result.config}")
    console.print(
        f"checkpoint: {result.checkpoint or '-'}"
        + (f" ({result.checkpoint_source})" if result.checkpoint else "")
    )
    console.print(f"serving:    {result.serving or '-'}")
    if result.onnx and result.serving != result.onnx:
        console.print(f"onnx:       {result.onnx}")
    if "onnx" in result.parity:
        console.print(f"ONNX Runtime vs eager: max abs difference {result.parity['onnx']:.3g}")
    for note in result.notes:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("export")(export)
