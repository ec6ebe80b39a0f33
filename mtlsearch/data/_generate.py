"""A data generator at any size: the MMoE synthetic data as Parquet shards, plus id columns.

The numeric part is the MMoE paper's generator (Ma et al., KDD 2018, section 3.2; the
equations and the fixed draws ``w``, ``alpha``, ``beta`` of :mod:`mtlsearch.data._synthetic`):
``y_k = l_k + sum_i sin(alpha_i l_k + beta_i) + eps_k``. Here the linear part ``l_k`` also
holds the effect of each categorical id column ``c``:

    l_k = w_k^T x + id_scale * sum_c <e_c(v_c), a_ck>

where ``v_c`` is the row's id, drawn from a bounded Zipf law (``P(rank r) ~ r^-zipf`` over
``1..cardinality``, ranks mapped to id values by a fixed seeded bijection, so the most
frequent id is not id 0), ``e_c(v)`` is the id's fixed random embedding (``embed_dim``
values ~ N(0, 1), computed from a counter-based hash of (seed, column, id, j): no table,
so any cardinality costs no memory), and ``a_ck`` ~ N(0, I/embed_dim) are per-task
projections whose two tasks correlate at ``correlation`` like ``w_1``, ``w_2``.

With ``conversion``, a click/conversion pair is added (the PLE paper's sample-space
setting): ``click ~ Bernoulli(sigmoid(y1 + click_bias))`` and
``conversion ~ click * Bernoulli(sigmoid(y2 + conversion_bias))``: a conversion only
happens after a click, and the spec masks the conversion task to clicked rows.

Rows are drawn in fixed chunks of :data:`CHUNK_ROWS`, chunk ``j`` from its own generator
seeded with ``(seed, j)``: memory is bounded whatever the row count, and the rows do not
depend on the shard size. The same seed (and pyarrow version) gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlsearch._errors import UserError
from mtlsearch._fs import make_temp_dir, replace_dir
from mtlsearch._yaml import dump_yaml
from mtlsearch.data._synthetic import synthetic_labels, synthetic_params

log = logging.getLogger(__name__)

#: Rows drawn per generator call (and per Parquet row group, shard ends aside).
CHUNK_ROWS = 65_536
#: The largest id cardinality: the Zipf sampler keeps one float64 CDF of this length (160 MB).
MAX_CARDINALITY = 20_000_000
SPEC_NAME = "spec.yaml"
META_NAME = "generate.json"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class IdColumn:
    """A categorical id column: its name and number of distinct values (ids 0..cardinality-1)."""

    name: str
    cardinality: int

    @classmethod
    def parse(cls, text: str) -> IdColumn:
        """``name:cardinality`` (``user_id:100000``; ``1e6`` and ``1_000_000`` are read too)."""
        name, sep, card = text.partition(":")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise UserError(f"--ids {text!r}: expected name:cardinality, e.g. user_id:100000")
        try:
            value = float(card.replace("_", "")) if card.strip() else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value == int(value)):
            raise UserError(f"--ids {text!r}: cardinality {card!r} is not a whole number")
        return cls(name, int(value))


@dataclass(frozen=True)
class GeneratorConfig:
    """What :func:`generate` draws; see the module docstring for the equations."""

    rows: int
    numeric: int = 10  # d, the number of x columns
    correlation: float = 0.5
    n_sines: int = 10
    scale: float = 1.0
    noise_std: float = 0.1
    seed: int = 0
    ids: tuple[IdColumn, ...] = ()
    zipf: float = 1.1
    id_scale: float = 0.5
    embed_dim: int = 4
    conversion: bool = False
    click_bias: float = -1.5
    conversion_bias: float = -1.0
    split: tuple[float, float] = field(default=(0.1, 0.1))  # valid, test fractions in the spec
    cache: bool = False  # the spec's `cache: true`: encoded splits kept in the user cache

    def validate(self) -> None:
        """One-line :class:`UserError` naming the bad option."""
        checks = [
            (self.rows >= 1, f"--rows {self.rows}: expected at least 1 row"),
            (self.numeric >= 2, f"--numeric {self.numeric}: the MMoE generator needs at least 2"),
            (-1.0 <= self.correlation <= 1.0, f"--correlation {self.correlation}: expected [-1, 1]"),
            (self.zipf >= 0 and math.isfinite(self.zipf), f"--zipf {self.zipf}: expected a number >= 0"),
            (self.embed_dim >= 1, f"embed_dim {self.embed_dim}: expected >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        taken = {*self.column_names(ids=False)}
        for c in self.ids:
            if not _NAME.match(c.name):
                raise UserError(f"--ids {c.name!r}: not a plain column name")
            if c.name in taken:
                raise UserError(f"--ids {c.name}: the column name is already used")
            if not 1 <= c.cardinality <= MAX_CARDINALITY:
                raise UserError(
                    f"--ids {c.name}:{c.cardinality}: cardinality must be in [1, {MAX_CARDINALITY:,}]"
                )
            taken.add(c.name)

    def column_names(self, ids: bool = True) -> list[str]:
        out = [f"x{i}" for i in range(self.numeric)]
        if ids:
            out += [c.name for c in self.ids]
        out += ["y1", "y2"]
        if self.conversion:
            out += ["click", "conversion"]
        return out

    def schema(self) -> pa.Schema:
        types: dict[str, pa.DataType] = {f"x{i}": pa.float32() for i in range(self.numeric)}
        types.update({c.name: pa.int64() for c in self.ids})
        types.update({"y1": pa.float32(), "y2": pa.float32()})
        if self.conversion:
            types.update({"click": pa.int8(), "conversion": pa.int8()})
        return pa.schema([(n, types[n]) for n in self.column_names()])


# ---- counter-based randomness for id embeddings ------------------------------------------
def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014) on uint64 arrays: a stable bit mixer."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def id_embeddings(ids: np.ndarray, key: int, dim: int) -> np.ndarray:
    """The fixed N(0, 1) embeddings (len(ids), dim) float64 of ``ids`` under ``key``: a
    function of (key, id, j) only, so every chunk, process and machine sees the same vector
    for an id (Box-Muller on two SplitMix64 draws)."""
    base = _splitmix64(np.full(1, key, dtype=np.uint64))[0]
    counters = ids.astype(np.uint64)[:, None] * np.uint64(2 * dim) + np.arange(2 * dim, dtype=np.uint64)
    h = _splitmix64(counters ^ base)
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    u1, u2 = u[:, :dim], u[:, dim:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@dataclass(frozen=True)
class _IdParams:
    cdf: np.ndarray  # (cardinality,) the bounded Zipf CDF over ranks 1..C
    mult: int  # rank -> id bijection: id = (r * mult + offset) mod C
    offset: int
    key: int  # embedding hash key
    proj: np.ndarray  # (embed_dim, 2) task projections a_c1, a_c2


class _Draws:
    """The fixed draws of one config: the MMoE weights and, per id column, its sampler."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.w, self.alpha, self.beta = synthetic_params(
            rng, cfg.numeric, cfg.correlation, cfg.n_sines, cfg.scale
        )
        p = cfg.correlation
        self.ids: list[_IdParams] = []
        for c in cfg.ids:
            weights = np.arange(1, c.cardinality + 1, dtype=np.float64) ** -cfg.zipf
            cdf = np.cumsum(weights)
            cdf /= cdf[-1]
            mult = int(rng.integers(1, max(c.cardinality, 2)))
            while math.gcd(mult, c.cardinality) != 1:
                mult += 1
            offset = int(rng.integers(0, c.cardinality))
            key = int(rng.integers(0, 2**63))
            a1, a2 = rng.standard_normal((2, cfg.embed_dim)) / math.sqrt(cfg.embed_dim)
            proj = np.stack([a1, p * a1 + math.sqrt(1.0 - p * p) * a2], axis=1)
            self.ids.append(_IdParams(cdf, mult % max(c.cardinality, 1), offset, key, proj))

    def chunk(self, cfg: GeneratorConfig, index: int, n: int) -> pa.Table:
        """Chunk ``index`` (n rows), from its own generator seeded with (seed, index)."""
        rng = np.random.default_rng([cfg.seed, index])
        x = rng.standard_normal((n, cfg.numeric))
        linear = x @ self.w.T
        columns: dict[str, np.ndarray] = {f"x{i}": x[:, i].astype(np.float32) for i in range(cfg.numeric)}
        for c, prm in zip(cfg.ids, self.ids, strict=True):
            rank = np.searchsorted(prm.cdf, rng.random(n), side="right")  # 0-based rank
            rank = np.minimum(rank, c.cardinality - 1)
            ids = (rank * prm.mult + prm.offset) % c.cardinality
            linear += cfg.id_scale * (id_embeddings(ids, prm.key, cfg.embed_dim) @ prm.proj)
            columns[c.name] = ids.astype(np.int64)
        y = synthetic_labels(linear, self.alpha, self.beta) + cfg.noise_std * rng.standard_normal((n, 2))
        columns["y1"], columns["y2"] = y[:, 0].astype(np.float32), y[:, 1].astype(np.float32)
        if cfg.conversion:
            u = rng.random((n, 2))
            click = u[:, 0] < _sigmoid(y[:, 0] + cfg.click_bias)
            conv = click & (u[:, 1] < _sigmoid(y[:, 1] + cfg.conversion_bias))
            columns["click"], columns["conversion"] = click.astype(np.int8), conv.astype(np.int8)
        return pa.Table.from_pydict(columns, schema=cfg.schema())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def generate_chunks(cfg: GeneratorConfig) -> Iterator[pa.Table]:
    """The table as consecutive chunks of :data:`CHUNK_ROWS` rows (the last may be shorter)."""
    cfg.validate()
    draws = _Draws(cfg)
    for index, start in enumerate(range(0, cfg.rows, CHUNK_ROWS)):
        yield draws.chunk(cfg, index, min(CHUNK_ROWS, cfg.rows - start))


# ---- the spec and the files --------------------------------------------------------------
def spec_dict(cfg: GeneratorConfig) -> dict[str, Any]:
    """The dataset spec that reads the shards (``files.path: .``, the spec's own folder):
    tasks ``y1``/``y2`` (regression), and with ``conversion`` also ``ctr`` and ``cvr``
    (binary; ``cvr`` masked to clicked rows); ``cache: true`` with ``cfg.cache``."""
    tasks: list[dict[str, Any]] = [
        {"name": "y1", "label": "y1", "kind": "regression"},
        {"name": "y2", "label": "y2", "kind": "regression"},
    ]
    if cfg.conversion:
        tasks = [
            {"name": "ctr", "label": "click", "kind": "binary"},
            {"name": "cvr", "label": "conversion", "kind": "binary", "where": {"click": 1}},
        ]
    features: dict[str, Any] = {
        "numeric": [f"x{i}" for i in range(cfg.numeric)],
        "categorical": [c.name for c in cfg.ids],
    }
    if cfg.conversion:
        features["exclude"] = ["y1", "y2"]
    spec: dict[str, Any] = {
        "name": f"generated-{cfg.rows}",
        "files": {"path": ".", "format": "parquet"},
        "split": {"valid": cfg.split[0], "test": cfg.split[1], "seed": cfg.seed},
        "features": features,
        "tasks": tasks,
    }
    if cfg.cache:
        spec["cache"] = True
    return spec


def generate(
    cfg: GeneratorConfig,
    out: str | Path,
    *,
    shard_rows: int = 1_000_000,
    force: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``cfg.rows`` rows as ``part-NNNNN.parquet`` shards of at most ``shard_rows`` rows
    into ``out``, with ``spec.yaml`` (see :func:`spec_dict`) and ``generate.json`` (the
    config) beside them; returns the shard paths.

    The folder is written under a temporary name beside ``out`` and renamed into place at the
    end (:mod:`mtlsearch._fs`): an interrupted run leaves no half-written ``out``. An
    existing non-empty ``out`` is refused unless ``force`` and it holds an earlier run's
    ``generate.json`` (then replaced whole); ``out`` may not be the current folder or one of its
    ancestors. Memory:
    one chunk (:data:`CHUNK_ROWS` rows) plus each id column's Zipf CDF (8 bytes x
    cardinality). ``on_rows(n)`` is called after each chunk with the rows written so far.
    Errors: :class:`UserError` for a bad option or ``out``.
    """
    cfg.validate()
    if shard_rows < 1:
        raise UserError(f"--shard-rows {shard_rows}: expected at least 1")
    out = Path(out)
    _check_out(out, force)
    try:
        tmp = make_temp_dir(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    try:
        shards = _write_shards(cfg, tmp, shard_rows, on_rows)
        (tmp / SPEC_NAME).write_text(dump_yaml(spec_dict(cfg)))
        meta = {**asdict(cfg), "shard_rows": shard_rows, "shards": [p.name for p in shards]}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d rows in %d shard(s) to %s", cfg.rows, len(shards), out)
    return [out / p.name for p in shards]


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that cannot be replaced (one-line :class:`UserError`): the current
    folder or one of its ancestors (the rename would fail, and ``--force`` would delete the
    user's working tree), a file, or a non-empty folder unless ``force`` and the folder holds
    an earlier run's ``generate.json`` (``--force`` never deletes a folder of other files)."""
    try:
        target = out.resolve()
        cwd = Path.cwd().resolve()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot resolve the path ({exc.strerror or exc})") from None
    if cwd == target or target in cwd.parents:
        where = "the current folder" if cwd == target else "an ancestor of the current folder"
        raise UserError(f"--out {out}: is {where}; give a new or generated folder, e.g. --out gen")
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"--out {out}: the folder is not empty (use --force to replace an earlier output)")
    if not (out / META_NAME).is_file():
        raise UserError(
            f"--out {out}: --force refused: the folder is not empty and holds no {META_NAME} "
            "(not an earlier 'data generate' output), so it is not replaced"
        )


def _write_shards(
    cfg: GeneratorConfig, folder: Path, shard_rows: int, on_rows: Callable[[int], None] | None
) -> list[Path]:
    shards: list[Path] = []
    writer: pq.ParquetWriter | None = None
    in_shard = done = 0
    try:
        for chunk in generate_chunks(cfg):
            start = 0
            while start < chunk.num_rows:
                if writer is None or in_shard == shard_rows:
                    if writer is not None:
                        writer.close()
                    shards.append(folder / f"part-{len(shards):05d}.parquet")
                    writer = pq.ParquetWriter(shards[-1], cfg.schema())
                    in_shard = 0
                take = min(chunk.num_rows - start, shard_rows - in_shard)
                writer.write_table(chunk.slice(start, take))
                start += take
                in_shard += take
            done += chunk.num_rows
            if on_rows is not None:
                on_rows(done)
    finally:
        if writer is not None:
            writer.close()
    return shards


__all__ = [
    "CHUNK_ROWS",
    "MAX_CARDINALITY",
    "GeneratorConfig",
    "IdColumn",
    "generate",
    "generate_chunks",
    "id_embeddings",
    "spec_dict",
]
