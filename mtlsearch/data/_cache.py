"""An encoded cache: a spec's encoded splits saved once, read by later loads on the machine.

With ``cache: true`` in a dataset spec, :func:`load_cached` keys the encoded dataset by a
sha256 of the spec (as data), the split seed, every data file's resolved path, size and
modification time (ns), and the encoder versions (preprocessor format, hash function). The
first load encodes as usual and saves the splits as ``.npy`` files plus JSON (schema,
fitted preprocessor, meta) under ``<cache>/encoded/<key>/`` (``$MTLSEARCH_CACHE``, else
``~/.cache/mtlsearch``: never beside the input data, which may be read-only); later loads
(trials 2..N of a search, other workers on the machine) read those files instead of
re-reading and re-encoding the tables. A changed file (size or mtime), spec or seed is a
new key; old entries are left for the user to delete (``rm -r <cache>/encoded``).

Concurrency: each writer fills its own temporary folder (:func:`mtlsearch._fs.make_temp_dir`)
and renames it to the key's name in one step; a writer that finds the name taken by the
time it renames (another process won the race) deletes its own copy, which holds the same
encoded rows. So a reader sees a whole entry or none, and two processes filling at once end
with one valid entry. A cache folder that cannot be written is logged and skipped (the
dataset is still returned); an entry that cannot be read is logged and re-encoded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlsearch._fs import make_temp_dir
from mtlsearch.arch import TaskSpec
from mtlsearch.data._download import cache_dir
from mtlsearch.data._hashing import HASH_NAME
from mtlsearch.data._io import data_files
from mtlsearch.data._preprocess import FORMAT_VERSION, Preprocessor
from mtlsearch.data._spec import DatasetSpec
from mtlsearch.data._tensors import MTLDataset, TensorSplit

log = logging.getLogger(__name__)

#: Bump when the saved layout or the encoding changes: old entries are then never read.
CACHE_VERSION = 1
SPLITS = ("train", "valid", "test")
_SCHEMA = "dataset.json"


def encoded_root() -> Path:
    """``<cache>/encoded``: where the entries live."""
    return cache_dir() / "encoded"


def _spec_files(spec: DatasetSpec) -> list[Path]:
    f = spec.files
    out: list[Path] = []
    for path in (f.path, f.train, f.valid, f.test):
        if path is not None:
            out.extend(data_files(path, f.format))
    return out


def cache_key(spec: DatasetSpec, seed: int) -> str:
    """The entry's name: sha256 (32 hex digits) of the spec, the split seed, each data
    file's (resolved path, size, mtime in ns) and the encoder versions."""
    files = []
    for p in _spec_files(spec):
        st = p.stat()
        files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    doc = {
        "cache": CACHE_VERSION,
        "preprocessor": FORMAT_VERSION,
        "hash": HASH_NAME,
        "spec": spec.to_dict(),
        "seed": spec.split.seed if spec.split.seed is not None else seed,
        "files": files,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---- saving and reading an entry ---------------------------------------------------------
def _save_split(split: TensorSplit, folder: Path) -> dict[str, Any]:
    folder.mkdir()
    np.save(folder / "numeric.npy", split.numeric.cpu().numpy())
    np.save(folder / "categorical.npy", split.categorical.cpu().numpy())
    for kind in ("labels", "masks", "weights"):
        for i, (_, t) in enumerate(getattr(split, kind).items()):
            np.save(folder / f"{kind}-{i}.npy", t.cpu().numpy())
    return {kind: list(getattr(split, kind)) for kind in ("labels", "masks", "weights")}


def save_encoded(ds: MTLDataset, folder: Path) -> None:
    """Write ``ds`` into the empty folder ``folder`` (npy per tensor, JSON for the rest)."""
    names = {s: _save_split(getattr(ds, s), folder / s) for s in SPLITS}
    doc = {
        "cache": CACHE_VERSION,
        "name": ds.name,
        "tasks": [[t.name, t.kind, t.n_classes] for t in ds.tasks],
        "numeric_features": list(ds.numeric_features),
        "categorical_features": [list(c) for c in ds.categorical_features],
        "preprocessor": ds.preprocessor.to_dict() if ds.preprocessor is not None else None,
        "meta": ds.meta,
        "label_scaling": {k: list(v) for k, v in ds.label_scaling.items()},
        "splits": names,
    }
    (folder / _SCHEMA).write_text(json.dumps(doc))


def _load_split(folder: Path, names: dict[str, list[str]]) -> TensorSplit:
    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(folder / name, allow_pickle=False))

    return TensorSplit(
        numeric=load("numeric.npy"),
        categorical=load("categorical.npy"),
        **{kind: {t: load(f"{kind}-{i}.npy") for i, t in enumerate(names[kind])} for kind in names},
    )


def _check_codes(codes: torch.Tensor, columns: tuple[tuple[str, int], ...], path: Path) -> None:
    """``ValueError`` unless ``codes`` (rows x columns, integer) has one column per
    categorical feature and every code of a column is in ``[0, cardinality)``: a damaged
    entry of the right size would otherwise fail in the embedding lookup at training."""
    if codes.ndim != 2 or codes.shape[1] != len(columns):
        raise ValueError(f"{path}: shape {tuple(codes.shape)}, expected (rows, {len(columns)})")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"{path}: dtype {codes.dtype}, expected integer codes")
    if codes.shape[0] == 0 or not columns:
        return
    low, high = codes.amin(dim=0).tolist(), codes.amax(dim=0).tolist()
    for (name, card), lo, hi in zip(columns, low, high, strict=True):
        if lo < 0 or hi >= card:
            raise ValueError(f"{path}: codes of {name!r} span [{lo}, {hi}], outside [0, {card})")


def load_encoded(folder: Path) -> MTLDataset:
    """Read an entry written by :func:`save_encoded`. ``ValueError``/``OSError``/``KeyError``
    for a damaged one (the caller re-encodes), including categorical codes outside
    ``[0, cardinality)`` of their column."""
    doc = json.loads((folder / _SCHEMA).read_text())
    if doc.get("cache") != CACHE_VERSION:
        raise ValueError(f"cache version {doc.get('cache')!r}")
    splits = {s: _load_split(folder / s, doc["splits"][s]) for s in SPLITS}
    categorical = tuple((str(n), int(c)) for n, c in doc["categorical_features"])
    for s, split in splits.items():
        _check_codes(split.categorical, categorical, folder / s / "categorical.npy")
    return MTLDataset(
        name=doc["name"],
        tasks=tuple(TaskSpec(n, k, c) for n, k, c in doc["tasks"]),
        numeric_features=tuple(doc["numeric_features"]),
        categorical_features=categorical,
        preprocessor=Preprocessor.from_dict(doc["preprocessor"]) if doc["preprocessor"] else None,
        meta=doc["meta"],
        label_scaling={k: (float(m), float(s)) for k, (m, s) in doc["label_scaling"].items()},
        **splits,
    )


def publish(tmp: Path, final: Path) -> bool:
    """Rename the finished ``tmp`` to ``final`` in one step; if ``final`` already exists
    (another writer won), delete ``tmp`` instead. Returns whether this writer's copy won."""
    try:
        os.rename(tmp, final)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


# ---- the entry point ---------------------------------------------------------------------
def load_cached(spec: DatasetSpec, seed: int, encode) -> MTLDataset:
    """The dataset of ``spec`` from its cache entry, else ``encode(spec, seed)`` (the
    in-memory loader) saved as a new entry. See the module docstring."""
    root = encoded_root()
    key = cache_key(spec, seed)
    final = root / key
    if final.is_dir():
        try:
            ds = load_encoded(final)
            log.info("%s: encoded splits read from the cache %s", spec.name, final)
            return replace(ds, meta={**ds.meta, "cache": str(final)})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: the cache entry %s cannot be read (%s); encoding again", spec.name, final, exc)
            shutil.rmtree(final, ignore_errors=True)
    ds = encode(spec, seed)
    try:
        tmp = make_temp_dir(final)
    except OSError as exc:
        log.warning(
            "%s: cannot write the encoded cache in %s (%s); continuing without it", spec.name, root, exc
        )
        return ds
    try:
        save_encoded(ds, tmp)
        won = publish(tmp, final)
        log.info("%s: encoded splits %s the cache %s", spec.name, "saved in" if won else "already in", final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning(
            "%s: cannot write the encoded cache %s (%s); continuing without it", spec.name, final, exc
        )
        return ds
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(ds, meta={**ds.meta, "cache": str(final)})


__all__ = [
    "CACHE_VERSION",
    "cache_key",
    "encoded_root",
    "load_cached",
    "load_encoded",
    "publish",
    "save_encoded",
]
