"""``mtlsearch data``: inspect datasets (a spec file or a built-in name) before searching."""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch._yaml import option_value
from mtlsearch.cli._common import check_spec_path, console, max_rows_option, with_max_rows
from mtlsearch.data import BUILTIN_DATASETS, describe, load_dataset
from mtlsearch.data._describe import SPLITS, DatasetDescription, TaskSplitSummary

data_app = typer.Typer(help="Inspect datasets: built-in ones and dataset spec files.", no_args_is_help=True)


def parse_options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are read as YAML scalars (``group=2`` is the int 2,
    ``frac=1e-3`` the float), text that is not YAML stays text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = option_value(value, f"--option {key.strip()}")
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _label_stat(s: TaskSplitSummary, kind: str) -> str:
    if s.rows == 0:
        return "-"
    if kind == "binary":
        return f"pos {_pct(s.positive_rate)}"
    if kind == "regression":
        return f"{s.mean:.4g} ± {s.std:.4g}"
    return f"{s.n_classes} classes, top {_pct(s.majority_share)}"


def render(summary: DatasetDescription, console: Console) -> None:
    console.print(f"[bold]{summary.name}[/bold]")
    rows = Table(title="rows per split")
    for s in SPLITS:
        rows.add_column(s, justify="right")
    rows.add_row(*(f"{summary.rows[s]:,}" for s in SPLITS))
    console.print(rows)

    feats = Table(title=f"features ({len(summary.features)})")
    for col, just in (
        ("feature", "left"),
        ("type", "left"),
        ("cardinality", "right"),
        ("OOV in test", "right"),
    ):
        feats.add_column(col, justify=just)  # type: ignore[arg-type]
    for f in summary.features:
        feats.add_row(f.name, f.kind, f"{f.cardinality:,}", _pct(f.oov_test))
    console.print(feats)

    tasks = Table(title="tasks (labels within each task's sample space)")
    for col in ("task", "kind", "split", "rows", "masked", "label"):
        tasks.add_column(col, justify="left" if col in ("task", "kind", "split") else "right")
    for name, per_split in summary.tasks.items():
        kind = summary.task_kinds[name]
        for i, s in enumerate(SPLITS):
            st = per_split[s]
            first = i == 0
            tasks.add_row(
                name if first else "",
                kind if first else "",
                s,
                f"{st.rows:,}",
                _pct(st.masked),
                _label_stat(st, kind),
                end_section=i == len(SPLITS) - 1,
            )
    console.print(tasks)

    if summary.correlation:
        names = list(summary.tasks)
        undefined = any(math.isnan(v) for v in summary.correlation.values())
        corr = Table(
            title="label correlation",
            caption="Pearson, training rows in both sample spaces"
            + ("; n/a: a label is constant there" if undefined else ""),
        )
        corr.add_column("")
        for n in names:
            corr.add_column(n, justify="right")
        for a in names:
            cells = []
            for b in names:
                v = 1.0 if a == b else summary.correlation.get((a, b), summary.correlation.get((b, a)))
                cells.append("" if v is None else "n/a" if math.isnan(v) else f"{v:+.4f}")
            corr.add_row(a, *cells)
        console.print(corr)


@data_app.command("describe")
def describe_cmd(
    spec: str | None = typer.Argument(
        None, help="A dataset spec (YAML), or a built-in name (see 'data list')."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="A built-in dataset: census-income, synthetic, ali-ccp, aliexpress."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Folder with dataset files (default: $MTLSEARCH_DATA, else download).",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for random splits / generated data."),
    options: list[str] = typer.Option(
        [], "--option", "-o", "--set", help="Built-in dataset option, KEY=VALUE (repeatable), e.g. group=2."
    ),
    max_rows: str | None = max_rows_option(),
) -> None:
    """Rows per split, features (type, cardinality), each task's label rate or mean/std and
    masked fraction, and the pairwise correlation of the task labels."""
    if (spec is None) == (dataset is None):
        raise UserError("data describe: give a spec file or --dataset NAME (exactly one)")
    if dataset is not None and dataset not in BUILTIN_DATASETS:
        close = difflib.get_close_matches(dataset, list(BUILTIN_DATASETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"--dataset {dataset!r}: unknown; {hint}built-in: {', '.join(BUILTIN_DATASETS)}")
    source = dataset if dataset is not None else spec
    assert source is not None
    parsed = with_max_rows(parse_options(options), max_rows)
    if spec is not None:
        check_spec_path(spec, "data describe")
    ds = load_dataset(source, data_dir=data_dir, seed=seed, **parsed)
    render(describe(ds), console())


@data_app.command("list")
def list_cmd() -> None:
    """The built-in datasets and their options."""
    for name, d in BUILTIN_DATASETS.items():
        opts = ", ".join(f"{k}={v!r}" for k, v in d.options.items() if k != "data_dir")
        typer.echo(f"{name:14s} {d.summary}\n{'':14s} options: {opts}")
    typer.echo(
        "every dataset (spec files too): max_rows=N trains on a seeded subsample of N training rows "
        "(--max-rows N); validation and test keep every row"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
