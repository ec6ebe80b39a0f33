"""Raw rows -> the input array of ``model.pt2``: the categorical half of the preprocessing.

This file is copied as ``serving/encode.py`` into every export and runs there on its own:
pure Python and numpy, no mtlsearch, no pandas. It reads ``vocab.json`` (beside it) and
maps each row's raw values to one float64 row of the serving program's input::

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
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
VOCAB_FILE = "vocab.json"

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
        return "<missing>"
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


class Encoder:
    """Maps raw rows to the serving program's input: numeric columns (raw, NaN = missing),
    then categorical codes, in ``columns`` order, as one float64 array."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError(f"{VOCAB_FILE}: unknown format {doc.get('format')!r} (expected {FORMAT})")
        self.numeric: list[str] = [str(c) for c in doc["numeric"]]
        self.categorical: list[str] = [str(c["column"]) for c in doc["categorical"]]
        self.cardinality: list[int] = [int(c["cardinality"]) for c in doc["categorical"]]
        # code i + 1 for vocab[i]; None: the feature came as integer codes
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
        """The code of ``value`` in categorical feature ``j`` (0: out of vocabulary)."""
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
    numeric: Sequence[str], categorical: Sequence[tuple[str, int, Sequence[str] | None]]
) -> dict[str, Any]:
    """The ``vocab.json`` content: numeric column names, and per categorical column its
    cardinality and vocabulary (code ``i + 1`` for ``vocab[i]``, 0 out of vocabulary;
    ``None`` when the feature came as codes)."""
    return {
        "format": FORMAT,
        "numeric": list(numeric),
        "categorical": [
            {"column": c, "cardinality": k, "vocab": None if v is None else list(v)}
            for c, k, v in categorical
        ],
        "oov_code": 0,
        "missing": "<missing>",
    }
