"""``mtlsearch data``: inspect datasets (a spec file or a built-in name) before searching, and
generate synthetic tables of any size (``data generate``)."""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtlsearch._errors import UserError
from mtlsearch._yaml import option_value
from mtlsearch.cli._common import check_spec_path, console, max_rows_option, with_max_rows
from mtlsearch.data import BUILTIN_DATASETS, DatasetSpec, describe, load_dataset
from mtlsearch.data._describe import SPLITS, DatasetDescription, TaskSplitSummary, streamed_refusal

data_app = typer.Typer(
    help="Inspect datasets (built-in ones and dataset spec files); generate synthetic tables.",
    no_args_is_help=True,
)


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
        if spec not in BUILTIN_DATASETS and Path(spec).is_file():
            # a streamed spec is refused from the spec itself: loading would fit its
            # preprocessing in a pass over the data first (minutes on a large table)
            parsed_spec = DatasetSpec.load(spec)
            if parsed_spec.stream:
                raise streamed_refusal(parsed_spec.name)
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


@data_app.command("generate")
def generate_cmd(
    rows: int = typer.Option(..., "--rows", help="Rows to write (any number: drawn in bounded chunks)."),
    out: Path = typer.Option(..., "--out", help="Folder for the shards, spec.yaml and generate.json."),
    shard_rows: int = typer.Option(1_000_000, "--shard-rows", help="Rows per Parquet shard."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same bytes."),
    ids: list[str] = typer.Option(
        [],
        "--ids",
        help="Categorical id column NAME:CARDINALITY (repeatable, or comma-separated), e.g. user_id:1e6.",
    ),
    zipf: float = typer.Option(1.1, "--zipf", help="Zipf exponent of the id frequencies (0: uniform)."),
    conversion: bool = typer.Option(
        False, "--conversion", help="Add click/conversion labels (conversion only on clicks); tasks ctr, cvr."
    ),
    numeric: int = typer.Option(10, "--numeric", help="Numeric columns x0..x{d-1} (MMoE's d)."),
    correlation: float = typer.Option(0.5, "--correlation", help="Cosine of the two task weight vectors."),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier output (a non-empty --out must hold its generate.json)."
    ),
    cache: bool = typer.Option(
        False, "--cache", help="Write 'cache: true' in spec.yaml (encoded splits kept in the user cache)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write the MMoE synthetic data (paper's equations) as Parquet shards with Zipf id columns
    whose fixed random embeddings move the labels, plus a dataset spec (OUT/spec.yaml) that
    `mtlsearch train --data OUT/spec.yaml` reads. Written to a temporary folder, renamed at the end."""
    from mtlsearch.data._generate import GeneratorConfig, IdColumn, generate

    columns = tuple(IdColumn.parse(t) for item in ids for t in item.split(",") if t.strip())
    cfg = GeneratorConfig(
        rows=rows, numeric=numeric, correlation=correlation, seed=seed, ids=columns, zipf=zipf,
        conversion=conversion, cache=cache,
    )  # fmt: skip
    cfg.validate()
    if quiet:
        shards = generate(cfg, out, shard_rows=shard_rows, force=force)
    else:
        with Progress(
            TextColumn("generate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("rows", total=rows)
            shards = generate(
                cfg, out, shard_rows=shard_rows, force=force, on_rows=lambda n: bar.update(task, completed=n)
            )
    typer.echo(f"{rows:,} rows in {len(shards)} shard(s): {out}; spec: {out / 'spec.yaml'}")


@data_app.command("scan")
def scan_cmd(
    spec: Path = typer.Argument(..., help="A dataset spec (YAML)."),
    split: str = typer.Option("train", "--split", help="Which file to scan: train, valid or test."),
    save: Path | None = typer.Option(None, "--save", help="Write the fitted preprocessor (JSON) here."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", help="Rows per record batch."),
) -> None:
    """Fit the spec's preprocessing in one streaming pass (record batches; never the whole
    table in memory) and print the rows, features and label statistics."""
    from mtlsearch.data.stream import fit_streaming

    if split not in ("train", "valid", "test"):
        raise UserError(f"--split {split!r}: expected train, valid or test")
    if batch_rows < 1:
        raise UserError(f"--batch-rows {batch_rows}: expected at least 1")
    check_spec_path(str(spec), "data scan")
    result = fit_streaming(spec, split=split, batch_rows=batch_rows)
    pre = result.preprocessor
    out = console()
    out.print(f"{result.rows:,} rows in {len(result.files)} file(s)")
    feats = Table(title="features")
    for col in ("feature", "encoding", "size / mean ± std"):
        feats.add_column(col)
    for n in pre.numeric:
        feats.add_row(
            n.column, "numeric" + (" (+missing flag)" if n.indicator else ""), f"{n.mean:.4g} ± {n.std:.4g}"
        )
    for e in pre.categorical:
        kind = "hashed" if getattr(e, "kind", "vocab") == "hash" else "vocabulary"
        feats.add_row(e.column, kind, f"{e.cardinality:,} codes")
    out.print(feats)
    tasks = Table(title="tasks (labels within each task's sample space)")
    for col in ("task", "kind", "rows", "label"):
        tasks.add_column(col)
    for t in pre.tasks:
        st = result.tasks[t.task.name]
        if t.task.kind == "binary":
            label = f"pos {_pct(st.positives / st.rows if st.rows else None)}"
        elif t.task.kind == "regression":
            label = f"{st.moments.mean:.4g} ± {st.moments.std:.4g}"
        else:
            label = f"{len(t.classes or ())} classes"
        tasks.add_row(t.task.name, t.task.kind, f"{st.rows:,}", label)
    out.print(tasks)
    if save is not None:
        pre.save(save)
        out.print(f"preprocessor: {save}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
