"""Built-in datasets: Census-Income (KDD), Ali-CCP, AliExpress and the MMoE synthetic data.

The file-based ones are dataset specs built in code, so they go through exactly the same
reading, checking, splitting and preprocessing as a user's YAML spec.

Files are looked for in ``data_dir`` (the CLI's ``--data-dir``), then ``$MTLSEARCH_DATA``;
in each, directly or in the dataset's usual sub-folder (``census-income-kdd/``, ...).
Census-Income is otherwise downloaded from UCI into the user cache and checked against the
published sha256. Ali-CCP and AliExpress come from Tianchi behind a login, so they must be
present already.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from mtlsearch._errors import UserError
from mtlsearch.data._download import cache_dir, fetch_verified
from mtlsearch.data._io import first_line
from mtlsearch.data._sample import MAX_ROWS, check_max_rows, sample_train
from mtlsearch.data._spec import DatasetSpec, FeatureSpec, FileSpec, MaskSpec, SplitSpec, TaskDef
from mtlsearch.data._synthetic import make_synthetic
from mtlsearch.data._tables import load_from_spec
from mtlsearch.data._tensors import MTLDataset

log = logging.getLogger(__name__)


#: The environment variable naming the folder of dataset files, and its accepted alias (the
#: name the test suite and benchmarks used first).
DATA_ENV, DATA_ENV_ALIAS = "MTLSEARCH_DATA", "MTLSEARCH_SHARED_DATA"


def data_dirs(data_dir: str | Path | None) -> list[Path]:
    """Where to look for dataset files, in order: ``data_dir``, then ``$MTLSEARCH_DATA``
    (or its alias ``$MTLSEARCH_SHARED_DATA`` when it is unset)."""
    out = [Path(data_dir).expanduser()] if data_dir else []
    env = os.environ.get(DATA_ENV) or os.environ.get(DATA_ENV_ALIAS)
    if env:
        out.append(Path(env).expanduser())
    return out


def find_files(
    layouts: Sequence[Sequence[str]], data_dir: str | Path | None, subdirs: Sequence[str]
) -> list[Path] | None:
    """The first folder (a data dir or one of its ``subdirs``) holding every file of a layout."""
    for root in data_dirs(data_dir):
        for folder in (root, *(root / s for s in subdirs)):
            for names in layouts:
                paths = [folder / n for n in names]
                if all(p.is_file() for p in paths):
                    return paths
    return None


def _not_found(dataset: str, layouts: Sequence[Sequence[str]], data_dir: str | Path | None) -> UserError:
    where = (
        ", ".join(str(d) for d in data_dirs(data_dir)) or "nowhere (give --data-dir or set MTLSEARCH_DATA)"
    )
    return UserError(f"{dataset}: files {', '.join(layouts[0])} not found; looked in {where}")


# ---- Census-Income (KDD) -----------------------------------------------------------------
CENSUS_COLUMNS = (
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
)  # UCI's order; the short names are keras-mmoe's (the reference MMoE reimplementation)
# The names file's 7 continuous attributes; the other integer columns are nominal codes.
CENSUS_NUMERIC = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "num_emp",
    "weeks_worked",
)
# Group 2's "education at least college": an associate degree or higher. With this set the
# labels' Pearson correlation with "never married" is -0.239, the paper's 0.2373 in absolute
# value; counting "Some college but no degree" too gives -0.286.
CENSUS_COLLEGE = (
    "Associates degree-academic program",
    "Associates degree-occup /vocational",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)
CENSUS_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"


@dataclass(frozen=True)
class _Published:
    name: str
    sha256: str
    rows: int


CENSUS_FILES = {
    "train": _Published(
        "census-income.data.gz",
        "5af0244397fa52b5ac93ef5fd8293426b6bc04a30adb6c15f5e527e4dcbef33a",
        199_523,
    ),
    "test": _Published(
        "census-income.test.gz",
        "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
        99_762,
    ),
}

_MARITAL = TaskDef("marital", "marital_stat", "binary", positive=("Never married",))
CENSUS_TASK_GROUPS: dict[int, tuple[TaskDef, ...]] = {
    # MMoE paper section 6.1, group 1: income > 50K (main) + never married (auxiliary)
    1: (
        TaskDef("income", "income_50k", "binary", positive=("50000+.",), negative=("- 50000.",)),
        _MARITAL,
    ),
    # group 2: education at least college (main) + never married
    2: (TaskDef("education", "education", "binary", positive=CENSUS_COLLEGE), _MARITAL),
}


def census_files(
    data_dir: str | Path | None = None, *, download: bool = True, base_url: str | None = None
) -> tuple[Path, Path]:
    """The (train, test) files: found locally, else downloaded into the cache and verified.

    ``base_url`` (or ``$MTLSEARCH_CENSUS_URL``) replaces the UCI folder URL, for mirrors.
    """
    layout = [CENSUS_FILES["train"].name, CENSUS_FILES["test"].name]
    found = find_files([layout], data_dir, ["census-income-kdd", "census-income"])
    if found:
        return found[0], found[1]
    if not download:
        raise _not_found("census-income", [layout], data_dir)
    looked = ", ".join(str(d) for d in data_dirs(data_dir)) or "no data folder"
    log.info("census-income: files not in %s; using the download cache", looked)
    base = base_url or os.environ.get("MTLSEARCH_CENSUS_URL") or CENSUS_URL
    base = base if base.endswith("/") else base + "/"
    folder = cache_dir() / "census-income-kdd"
    paths = [fetch_verified(base + f.name, folder / f.name, f.sha256) for f in CENSUS_FILES.values()]
    return paths[0], paths[1]


def census_spec(
    train: str | Path,
    test: str | Path,
    *,
    group: int = 1,
    seed: int = 0,
    min_frequency: int = 5,
    weighted: bool = False,
) -> DatasetSpec:
    """The papers' protocol as a spec: train on the train file, split the test file 1:1
    (seeded, stratified) into validation and test. Education and marital status are never
    inputs (as in the MMoE paper), nor is the survey weight ``instance_weight`` (column 24).

    ``weighted``: use ``instance_weight`` as every task's row weight (the loss becomes the
    weighted mean and metrics are also reported weighted). Off by default: the papers train
    and report unweighted.
    """
    if group not in CENSUS_TASK_GROUPS:
        raise UserError(f"census-income: group must be one of {sorted(CENSUS_TASK_GROUPS)}, got {group!r}")
    if not isinstance(weighted, bool):
        raise UserError(f"census-income: weighted must be true or false, got {weighted!r}")
    tasks = CENSUS_TASK_GROUPS[group]
    if weighted:
        tasks = tuple(replace(t, weight="instance_weight") for t in tasks)
    not_inputs = {"instance_weight", "education", "marital_stat", *(t.label for t in tasks)}
    return DatasetSpec(
        name=f"census-income(group={group})",
        files=FileSpec(
            train=str(train),
            test=str(test),
            header=False,
            columns=CENSUS_COLUMNS,
            skipinitialspace=True,
            na_values=("?",),
        ),
        tasks=tasks,
        features=FeatureSpec(
            numeric=CENSUS_NUMERIC,
            categorical=tuple(c for c in CENSUS_COLUMNS if c not in not_inputs and c not in CENSUS_NUMERIC),
            exclude=tuple(sorted(not_inputs - {t.label for t in tasks})),
            min_frequency=min_frequency,
        ),
        split=SplitSpec(valid=0.5, test=0.0, valid_from="test", seed=seed, stratify=True),
    )


def load_census_income(
    data_dir: str | Path | None = None,
    *,
    group: int = 1,
    seed: int = 0,
    min_frequency: int = 5,
    download: bool = True,
    base_url: str | None = None,
    weighted: bool = False,
) -> MTLDataset:
    """UCI Census-Income (KDD) with the MMoE paper's task groups (1: income + never married;
    2: education + never married); 199,523 train rows, test file halved into valid/test.
    ``weighted=True`` (``--option weighted=true``) makes the survey weight every task's row
    weight (see :func:`census_spec`); the default is unweighted, as in the papers."""
    train, test = census_files(data_dir, download=download, base_url=base_url)
    spec = census_spec(train, test, group=group, seed=seed, min_frequency=min_frequency, weighted=weighted)
    ds = load_from_spec(spec)
    counts = {"train": len(ds.train), "test": len(ds.valid) + len(ds.test)}
    for (key, path), n in zip({"train": train, "test": test}.items(), counts.values(), strict=True):
        if n != CENSUS_FILES[key].rows:
            raise UserError(f"{path}: has {n:,} rows, the UCI file has {CENSUS_FILES[key].rows:,}")
    return ds


# ---- Ali-CCP and AliExpress --------------------------------------------------------------
def _header(path: Path) -> list[str]:
    """Column names of a CSV without reading its rows (the full Tianchi files are large)."""
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # EmptyDataError is a ValueError
        raise UserError(f"{path}: cannot read the header ({first_line(exc)})") from None


ALI_CCP_LAYOUTS = (
    ("ali_ccp_train.csv", "ali_ccp_val.csv", "ali_ccp_test.csv"),
    ("ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"),
)
_CLICK_CONVERSION = (
    "ctr: click over impressions; cvr: conversion over clicks (masked to click = 1); "
    "ctcvr: conversion over impressions"
)


def _click_conversion_tasks(conversion: str) -> tuple[TaskDef, ...]:
    """ctr (click, all impressions), cvr (conversion, in the clicked sample space: the PLE
    paper's setting) and ctcvr (conversion over all impressions, unclicked rows 0: the
    ESMM paper's CTCVR and what the MTReclib tables call the conversion task)."""
    return (
        TaskDef("ctr", "click", "binary"),
        TaskDef("cvr", conversion, "binary", mask=(MaskSpec("click", values=(1,)),)),
        TaskDef("ctcvr", conversion, "binary"),
    )


def _entire_space(ds: MTLDataset) -> MTLDataset:
    """``ds`` with the ctcvr labels zeroed where click = 0 (a conversion without a click is
    not a click-through conversion); the shipped files have none, so this is a guard."""
    splits = {}
    for name in ("train", "valid", "test"):
        part = getattr(ds, name)
        ctcvr = part.labels["ctcvr"] * part.labels["ctr"]
        changed = int((ctcvr != part.labels["ctcvr"]).sum())
        if changed:
            log.warning(
                "%s: %d %s row(s) convert without a click; ctcvr counts them as 0", ds.name, changed, name
            )
        splits[name] = replace(part, labels={**part.labels, "ctcvr": ctcvr})
    return replace(ds, **splits)


def load_ali_ccp(data_dir: str | Path | None = None, *, min_frequency: int = 1) -> MTLDataset:
    """Ali-CCP (ESMM paper) as torch-rechub preprocesses it: train/val/test CSVs with label-
    encoded categorical fields and dense ``D*`` features. Tasks: ctr (click), cvr
    (purchase, in the sample space click = 1, the PLE paper's setting) and ctcvr (purchase
    over all impressions, 0 where click = 0: the ESMM paper's CTCVR)."""
    found = find_files(ALI_CCP_LAYOUTS, data_dir, ["ali-ccp", "ali-ccp-sample", "ali_ccp"])
    if not found:
        raise _not_found("ali-ccp", ALI_CCP_LAYOUTS, data_dir)
    cols = [c for c in _header(found[0]) if c not in ("click", "purchase")]
    spec = DatasetSpec(
        name="ali-ccp",
        files=FileSpec(train=str(found[0]), valid=str(found[1]), test=str(found[2])),
        tasks=_click_conversion_tasks("purchase"),
        features=FeatureSpec(
            numeric=tuple(c for c in cols if c.startswith("D")),
            categorical=tuple(c for c in cols if not c.startswith("D")),
            min_frequency=min_frequency,
        ),
    )
    return _entire_space(load_from_spec(spec))


ALIEXPRESS_LAYOUTS = (
    ("aliexpress_train.csv", "aliexpress_test.csv"),
    ("train.csv", "test.csv"),
    ("aliexpress_train_sample.csv", "aliexpress_test_sample.csv"),
)


def load_aliexpress(
    data_dir: str | Path | None = None, *, seed: int = 0, min_frequency: int = 1
) -> MTLDataset:
    """AliExpress (Tianchi 74690, the MTReclib layout): ``categorical_*``, ``numerical_*``,
    click and conversion. Tasks: ctr, cvr (masked to click = 1) and ctcvr (conversion over
    all impressions, the MTReclib tables' conversion AUC). There is no validation file, so
    the test file is split 1:1 (seeded, stratified) as for Census-Income."""
    found = find_files(ALIEXPRESS_LAYOUTS, data_dir, ["aliexpress", "aliexpress-sample"])
    if not found:
        raise _not_found("aliexpress", ALIEXPRESS_LAYOUTS, data_dir)
    cols = _header(found[0])
    spec = DatasetSpec(
        name="aliexpress",
        files=FileSpec(train=str(found[0]), test=str(found[1])),
        tasks=_click_conversion_tasks("conversion"),
        features=FeatureSpec(
            numeric=tuple(c for c in cols if c.startswith("numerical_")),
            categorical=tuple(c for c in cols if c.startswith("categorical_")),
            exclude=("search_id",) if "search_id" in cols else (),
            min_frequency=min_frequency,
        ),
        split=SplitSpec(valid=0.5, test=0.0, valid_from="test", seed=seed),
    )
    return _entire_space(load_from_spec(spec))


# ---- synthetic ---------------------------------------------------------------------------
def load_synthetic(
    *,
    n: int = 20_000,
    d: int = 100,
    correlation: float = 0.5,
    n_sines: int = 10,
    noise_std: float = 0.1,
    scale: float = 1.0,
    seed: int = 0,
) -> MTLDataset:
    """The MMoE paper's generator: two regression tasks whose linear parts correlate at
    ``correlation``; split 80/10/10."""
    try:
        return make_synthetic(
            n=n,
            d=d,
            correlation=correlation,
            n_sines=n_sines,
            scale=scale,
            noise_std=noise_std,
            seed=seed,
        )
    except ValueError as exc:
        raise UserError(f"synthetic: {exc}") from None


# ---- the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltinDataset:
    """A registry entry: adding a dataset is one ``BuiltinDataset(name, loader, summary)``.

    The entry is callable like its loader, so ``BUILTIN_DATASETS[name](data_dir=...)`` works
    as a plain name -> loader mapping; :func:`load_dataset` adds option checking on top.
    """

    name: str
    loader: Callable[..., MTLDataset]
    summary: str

    def __call__(self, **options: Any) -> MTLDataset:
        return self.loader(**options)

    @property
    def options(self) -> dict[str, Any]:
        """The loader's keyword options and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.loader).parameters.values()
            if p.default is not inspect.Parameter.empty
        }


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset("census-income", load_census_income, "UCI Census-Income (KDD), MMoE task groups 1/2"),
        BuiltinDataset("synthetic", load_synthetic, "MMoE synthetic: 2 regression tasks, set correlation"),
        BuiltinDataset("ali-ccp", load_ali_ccp, f"Ali-CCP (Tianchi 408); {_CLICK_CONVERSION}"),
        BuiltinDataset("aliexpress", load_aliexpress, f"AliExpress (Tianchi 74690); {_CLICK_CONVERSION}"),
    )
}


def load_builtin(
    name: str, *, data_dir: str | Path | None = None, seed: int = 0, **options: Any
) -> MTLDataset:
    """Load a built-in dataset by name; an unknown name or option is a one-line error.

    ``seed`` reaches loaders that split or generate at random (ali-ccp ships its splits).
    """
    if name not in BUILTIN_DATASETS:
        close = difflib.get_close_matches(name, list(BUILTIN_DATASETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown dataset {name!r}; {hint}built-in datasets are {sorted(BUILTIN_DATASETS)}")
    ds = BUILTIN_DATASETS[name]
    allowed = [k for k in ds.options if k != "data_dir"]
    for key in options:
        if key not in allowed:
            raise UserError(f"{name}: unknown option {key!r}; expected one of {sorted(allowed)}")
    if "seed" in allowed:
        options["seed"] = 0 if seed is None else seed
    if "data_dir" in ds.options:
        options["data_dir"] = data_dir
    try:
        return ds.loader(**options)
    except TypeError as exc:  # e.g. a string where a number is needed
        raise UserError(f"{name}: bad option value ({first_line(exc)})") from None


def load_dataset(
    source: str | Path,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    max_rows: int | None = None,
    **options: Any,
) -> MTLDataset:
    """One entry point for every layer above: a built-in name or a dataset spec file.

    ``seed`` drives random splits (unless a spec fixes ``split.seed``) and generated data,
    so repeated seeded runs see different, reproducible splits. ``None`` (a CLI option
    left unset) means 0, never an unseeded split.

    ``max_rows`` (every dataset, for quick searches): train on a seeded subsample of at most
    that many training rows, stratified by the binary tasks and drawn with ``seed``;
    validation and test keep all their rows (:func:`mtlsearch.data._sample.sample_train`).
    Not an integer >= 1, or too few rows left for a task: a one-line ``UserError``.
    """
    seed = 0 if seed is None else seed
    max_rows = check_max_rows(max_rows)
    ds = _load_source(source, data_dir, seed, options)
    return ds if max_rows is None else sample_train(ds, max_rows, seed)


def _load_source(source: str | Path, data_dir: str | Path | None, seed: int, options: dict) -> MTLDataset:
    if isinstance(source, str) and source in BUILTIN_DATASETS:
        return load_builtin(source, data_dir=data_dir, seed=seed, **options)
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if options:
            raise UserError(
                f"{path}: options {sorted(options)} are only for built-in datasets (every dataset "
                f"takes {MAX_ROWS})"
            )
        return load_from_spec(path, seed=seed)
    close = difflib.get_close_matches(str(source), list(BUILTIN_DATASETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"{source}: no such spec file, and not a built-in dataset; {hint}"
        f"built-in datasets are {sorted(BUILTIN_DATASETS)}"
    )


__all__ = [
    "BUILTIN_DATASETS",
    "CENSUS_COLUMNS",
    "CENSUS_FILES",
    "BuiltinDataset",
    "census_files",
    "census_spec",
    "load_ali_ccp",
    "load_aliexpress",
    "load_builtin",
    "load_census_income",
    "load_dataset",
    "load_synthetic",
]
