"""Raw rows -> the input array of ``model.pt2``: the categorical half of the preprocessing.

This file is copied as ``serving/encode.py`` into every export and runs there on its own:
pure Python (standard library) and numpy, no mtlsearch, no pandas. It reads ``vocab.json``
(beside it) and maps each row's raw values to one float64 row of the serving program's input::

    import sys, torch
    sys.path.insert(0, "best/serving")
    from encode import Encoder

    encoder = Encoder.load()                 # reads vocab.json beside encode.py
    x = encoder.encode(rows)                 # rows: mappings column -> raw value (str, number, None)
    program = torch.export.load("best/serving/model.pt2").module()
    predictions = program(torch.from_numpy(x))   # (len(rows), n_outputs) float64

Contract (the same as ``mtlsearch predict`` on a CSV file read with pandas' defaults):

* numeric columns -> float64, unchanged: the program standardises them itself. Missing
  (``None``, NaN, an empty string or one of pandas' missing-value markers such as ``NA``)
  -> NaN, which the program imputes and flags. Text that is no number, and infinities, are
  a ``ValueError`` naming the column, the row and the value.
* categorical columns -> codes: ``1..K`` the training vocabulary (``vocab.json``), ``0``
  the out-of-vocabulary code (unseen values, rare ones); missing is a category of its own
  (``<missing>``). Numbers meet their text form: ``3``, ``3.0`` and ``"3"`` are one
  category, ``True``/``"True"`` is ``1``. Features that came as codes in training (no
  vocabulary) pass through as numbers.
* hashed categorical columns (``hash_buckets: N`` in the dataset spec; in ``vocab.json``
  ``{"hash_buckets": N, "hash": NAME}`` instead of a vocabulary) -> ``1 + h(key) mod N``,
  ``0`` for a missing value, where ``key`` is the category key above (with no vocabulary
  to consult, text that reads as a finite number takes the number's key: ``"3.0"`` is
  ``"3"``) and ``h`` is the hash ``NAME`` (:data:`HASHES`; an unknown name is refused).
  The one hash today is SipHash-2-4 of the key's UTF-8 bytes with the 16-byte key
  ``"0123456789123456"``, then pandas' 64-bit mixing step: pandas' ``hash_array(...,
  encoding="utf8", hash_key=..., categorize=True)``, what training used
  (``mtlsearch.data._hashing``). Pure Python; each distinct value is hashed once per
  :class:`Encoder` (up to a million remembered).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: ``vocab.json`` format: 1 without hashed columns, 2 with (an encoder of format 1 only
#: would read a hashed column's raw ids as codes).
FORMAT = 1
HASHED_FORMAT = 2
FORMATS = (FORMAT, HASHED_FORMAT)
VOCAB_FILE = "vocab.json"
MISSING_KEY = "<missing>"

#: Strings pandas reads as missing by default (``pandas._libs.parsers.STR_NA_VALUES``).
NA_STRINGS = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)
_BOOL_KEYS = {"true": "1", "false": "0"}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value in NA_STRINGS
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value)


def number_key(value: float) -> str:
    """A number's category key: integral values without a decimal point (``3.0`` -> ``"3"``)."""
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value)).removesuffix(".0")


def category_key(value: Any, known: Mapping[str, int]) -> str:
    """The vocabulary key of one raw value (``known``: the vocabulary, for text that could
    be read either as text or as a number)."""
    if _is_missing(value):
        return MISSING_KEY
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return number_key(float(value))
    text = str(value)
    if text in known:
        return text
    try:
        number = float(text)
    except ValueError:
        return _BOOL_KEYS.get(text.lower(), text)
    return number_key(number) if math.isfinite(number) and "_" not in text else text


def parse_number(value: Any, column: str, row: int) -> float:
    """A numeric cell as float64; missing -> NaN. Errors name the column, row and value."""
    if _is_missing(value):
        if isinstance(value, float) and math.isinf(value):
            raise ValueError(f"numeric column {column!r}: infinite value (row {row})")
        return math.nan
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    text = str(value).strip()
    try:
        if "_" in text:
            raise ValueError(text)
        number = float(text)
    except ValueError:
        raise ValueError(f"numeric column {column!r}: {value!r} is not a number (row {row})") from None
    if math.isinf(number):
        raise ValueError(f"numeric column {column!r}: infinite value {value!r} (row {row})")
    return number


# ---- hashing (SipHash-2-4, https://www.aumasson.jp/siphash/siphash.pdf; pandas' hash_array) ----
_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(data: bytes, key: bytes) -> int:
    """SipHash-2-4 of ``data`` with the 16-byte ``key`` (k0, k1: its two halves read
    little-endian), as a 64-bit unsigned int. Aumasson & Bernstein, "SipHash: a fast
    short-input PRF" (2012); the reference implementation's test vectors hold."""
    if len(key) != 16:
        raise ValueError(f"siphash24: the key must be 16 bytes, not {len(key)}")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(2)
        v0 ^= m
    m = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= m
    rounds(2)
    v0 ^= m
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def mix64(x: int) -> int:
    """pandas' mixing step after the SipHash of an object array (``_hash_ndarray``: a
    SplitMix64-style finaliser), modulo 2**64."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def pandas_siphash(text: str, key: str = "0123456789123456") -> int:
    """``pandas.util.hash_array(np.array([text], dtype=object), encoding="utf8",
    hash_key=key)[0]``, in pure Python: SipHash-2-4 of ``text``'s UTF-8 bytes, then
    :func:`mix64`."""
    return mix64(siphash24(text.encode("utf-8"), key.encode("utf-8")))


#: Hash names a ``vocab.json`` may give a hashed column (``mtlsearch.data._hashing.HASH_NAME``
#: is one of them) -> the function of a category key (str) -> uint64 (int).
HASHES: dict[str, Callable[[str], int]] = {
    "siphash24-utf8-k0123456789123456": pandas_siphash,
}


class HashedColumn:
    """A hashed column's codes: ``1 + hash(key) mod buckets``, 0 for a missing value;
    each distinct key is hashed once."""

    def __init__(self, column: str, buckets: int, hash_name: str) -> None:
        if hash_name not in HASHES:
            raise ValueError(
                f"{VOCAB_FILE}: column {column!r} is hashed with {hash_name!r}, which this encode.py "
                f"does not know (it knows {sorted(HASHES)})"
            )
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"{VOCAB_FILE}: column {column!r}: bad hash_buckets {buckets!r}")
        self.column = column
        self.buckets = buckets
        self.hash_name = hash_name
        self._hash = HASHES[hash_name]
        self._cache: dict[str, int] = {}

    def code(self, key: str) -> int:
        if key == MISSING_KEY:
            return 0
        code = self._cache.get(key)
        if code is None:
            if len(self._cache) >= 1_000_000:  # bounded: a stream of distinct ids
                self._cache.clear()
            code = self._cache[key] = 1 + self._hash(key) % self.buckets
        return code


class Encoder:
    """Maps raw rows to the serving program's input: numeric columns (raw, NaN = missing),
    then categorical codes, in ``columns`` order, as one float64 array."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if doc.get("format") not in FORMATS:
            raise ValueError(
                f"{VOCAB_FILE}: unknown format {doc.get('format')!r} (expected one of {FORMATS})"
            )
        self.numeric: list[str] = [str(c) for c in doc["numeric"]]
        self.categorical: list[str] = [str(c["column"]) for c in doc["categorical"]]
        self.cardinality: list[int] = [int(c["cardinality"]) for c in doc["categorical"]]
        # hashed columns: 1 + hash(key) mod buckets (0 missing)
        self.hashed: list[HashedColumn | None] = [
            None
            if "hash_buckets" not in c
            else HashedColumn(str(c["column"]), c["hash_buckets"], c.get("hash"))
            for c in doc["categorical"]
        ]
        for h, k in zip(self.hashed, self.cardinality, strict=True):
            if h is not None and k != h.buckets + 1:
                raise ValueError(
                    f"{VOCAB_FILE}: column {h.column!r}: cardinality {k} != hash_buckets {h.buckets} + 1"
                )
        # code i + 1 for vocab[i]; None: the feature came as integer codes (or is hashed)
        self.codes: list[dict[str, int] | None] = [
            None if c.get("vocab") is None else {str(k): i + 1 for i, k in enumerate(c["vocab"])}
            for c in doc["categorical"]
        ]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Encoder:
        """Read ``vocab.json`` (default: the one beside this file)."""
        path = Path(path) if path is not None else Path(__file__).with_name(VOCAB_FILE)
        if path.is_dir():
            path = path / VOCAB_FILE
        return cls(json.loads(path.read_text(encoding="utf-8")))

    @property
    def columns(self) -> list[str]:
        """The raw columns a row needs, in the order of the program's input columns."""
        return [*self.numeric, *self.categorical]

    def code(self, j: int, value: Any, row: int = 1) -> float:
        """The code of ``value`` in categorical feature ``j`` (0: out of vocabulary, or
        missing in a hashed column)."""
        hashed = self.hashed[j]
        if hashed is not None:
            return float(hashed.code(category_key(value, {})))
        codes = self.codes[j]
        if codes is None:  # given as codes: the program checks the range
            return parse_number(value, self.categorical[j], row)
        return float(codes.get(category_key(value, codes), 0))

    def encode_row(self, row: Mapping[str, Any], index: int = 1) -> list[float]:
        """One row (``index`` counts from 1, for messages) as a list of floats."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row {index}: missing column(s) {missing[:5]}")
        values = [parse_number(row[c], c, index) for c in self.numeric]
        values += [self.code(j, row[c], index) for j, c in enumerate(self.categorical)]
        return values

    def encode(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """``rows`` -> float64 array ``(n_rows, len(columns))``, the program's input."""
        out = [self.encode_row(r, i) for i, r in enumerate(rows, start=1)]
        return np.asarray(out, dtype=np.float64).reshape(len(out), len(self.columns))


def vocab_document(
    numeric: Sequence[str],
    categorical: Sequence[tuple[str, int, Sequence[str] | None]],
    hashed: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """The ``vocab.json`` content: numeric column names, and per categorical column its
    cardinality and vocabulary (code ``i + 1`` for ``vocab[i]``, 0 out of vocabulary;
    ``None`` when the feature came as codes). ``hashed``: ``{column: (buckets, hash name)}``
    of the hashed columns, recorded as ``{"hash_buckets": N, "hash": NAME}`` in place of a
    vocabulary (the document is then of format :data:`HASHED_FORMAT`). Raises
    ``ValueError`` for a hash name :data:`HASHES` does not know."""
    hashed = dict(hashed or {})
    entries: list[dict[str, Any]] = []
    for c, k, v in categorical:
        if c in hashed:
            buckets, name = hashed[c]
            HashedColumn(c, buckets, name)  # validates the name and the bucket count
            entries.append({"column": c, "cardinality": k, "hash_buckets": buckets, "hash": name})
        else:
            entries.append({"column": c, "cardinality": k, "vocab": None if v is None else list(v)})
    return {
        "format": HASHED_FORMAT if hashed else FORMAT,
        "numeric": list(numeric),
        "categorical": entries,
        "oov_code": 0,
        "missing": MISSING_KEY,
    }
