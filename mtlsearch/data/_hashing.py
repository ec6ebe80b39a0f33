"""A stable hash of category keys, for ids whose vocabulary is too big to count or to embed.

``hash_buckets: N`` on a categorical feature (dataset spec) replaces its vocabulary with
``N`` hash buckets: a value's code is ``1 + h(key) mod N`` (code 0 is the missing value),
where ``key`` is the value's category key (:func:`mtlsearch.data._preprocess.category_keys`:
3, 3.0 and "3" are one key) and ``h`` is SipHash-2-4 with a fixed 128-bit key over the key's
UTF-8 bytes (pandas' ``hash_array``, the hash behind ``hash_pandas_object``). Python's own
``hash()`` of a string is salted per process (``PYTHONHASHSEED``) and must never decide a
code: a model trained in one process would see other codes when served in another.

The hash is vectorised (pandas hashes each distinct key once, then maps the rows back: no
Python loop per row). :data:`HASH_NAME` is saved with a fitted preprocessor, so a change of
hash would be detected rather than silently scrambling the codes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: SipHash's 16-byte key (pandas' default); fixed: the codes of a saved model depend on it.
HASH_KEY = "0123456789123456"
#: Names the function in a saved preprocessor.
HASH_NAME = "siphash24-utf8-k0123456789123456"
#: The most buckets a column may have (codes must fit an embedding table).
MAX_BUCKETS = 2**31 - 2


def stable_hash(keys: pd.Series | np.ndarray) -> np.ndarray:
    """uint64 hashes (len(keys),) of string keys: the same in every process and machine,
    whatever ``PYTHONHASHSEED``. ``keys`` must hold strings (category keys), no missing."""
    values = keys.to_numpy(dtype=object) if isinstance(keys, pd.Series) else np.asarray(keys, dtype=object)
    return pd.util.hash_array(values, encoding="utf8", hash_key=HASH_KEY, categorize=True)


def bucket_codes(keys: pd.Series, buckets: int, missing: str) -> np.ndarray:
    """int64 codes (len(keys),): ``1 + stable_hash(key) mod buckets``, and 0 where the key is
    ``missing`` (the missing-value marker)."""
    is_missing = (keys == missing).to_numpy(dtype=bool, na_value=True)
    codes = np.zeros(len(keys), dtype=np.int64)
    if (~is_missing).any():
        h = stable_hash(keys[~is_missing])
        codes[~is_missing] = (h % np.uint64(buckets)).astype(np.int64) + 1
    return codes


__all__ = ["HASH_KEY", "HASH_NAME", "MAX_BUCKETS", "bucket_codes", "stable_hash"]
