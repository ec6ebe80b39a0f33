"""Serving a model whose categorical ids are hashed (``hash_buckets``), issue 12.

The shipped ``encode.py`` hashes raw values itself, in pure Python (SipHash-2-4 plus pandas'
mixing step): it must give exactly the codes training gave
(:func:`mtlsearch.data._hashing.stable_hash`), so that raw rows scored by the exported program
in a process with only torch and numpy equal ``mtlsearch predict`` on the same rows, unseen
ids included. An unknown hash name in ``vocab.json`` is refused rather than guessed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _train_support import REPO

from mtlsearch.arch import preset
from mtlsearch.data import load_dataset
from mtlsearch.data._hashing import HASH_KEY, HASH_NAME, bucket_codes, stable_hash
from mtlsearch.data._preprocess import MISSING, HashedEncoder, category_keys
from mtlsearch.tracking import _encode
from mtlsearch.tracking._export import export_serving
from mtlsearch.tracking._onnx import TOLERANCE
from mtlsearch.train import ExperimentConfig, TrainConfig, fit, load_checkpoint, save_checkpoint

USER_BUCKETS, ITEM_BUCKETS = 64, 16
SPEC = f"""\
name: ids
files: {{path: table.csv}}
split: {{valid: 0.2, test: 0.1, seed: 0}}
features:
  numeric: [x]
  categorical: [user, item, city]
  hash_buckets: {{user: {USER_BUCKETS}, item: {ITEM_BUCKETS}}}
tasks:
  - {{name: click, label: click, kind: binary}}
  - {{name: spend, label: spend, kind: regression}}
"""


# ---- the hash itself ---------------------------------------------------------------------
def _strings(n: int, seed: int) -> list[str]:
    """``n`` strings: ASCII, 2-, 3- and 4-byte UTF-8 characters, every length 0..40 (all
    SipHash tail lengths), plus fixed edge cases (empty, exact 8-byte blocks, long)."""
    rng = random.Random(seed)
    ranges = [(32, 127), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0xFFFE), (0x10000, 0x10FFFF)]
    out = ["", "a", "12345678", "1234567", "123456789", "<missing>", "3", "-0", "é", "日本語", "😀" * 9]
    out += ["x" * 10_000, "ü" * 4097]
    while len(out) < n:
        lo, hi = ranges[rng.randrange(len(ranges))]
        out.append("".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randrange(0, 41))))
    return out


def test_pure_python_siphash_equals_stable_hash():
    strings = _strings(260, seed=0)
    assert len(set(strings)) > 250
    want = stable_hash(np.array(strings, dtype=object))
    got = [_encode.pandas_siphash(s, HASH_KEY) for s in strings]
    mismatched = [(s[:20], int(w), g) for s, w, g in zip(strings, want, got, strict=True) if int(w) != g]
    assert not mismatched
    # SipHash-2-4 itself: the reference test vectors (key 00..0f, message 00..len-1)
    key = bytes(range(16))
    assert _encode.siphash24(b"", key) == 0x726FDB47DD0E0E31
    assert _encode.siphash24(bytes(range(15)), key) == 0xA129CA6149BE45E5
    assert _encode.siphash24(bytes(range(63)), key) == 0x958A324CEB064572
    # the serving registry knows the hash training records
    assert HASH_NAME in _encode.HASHES


# ---- an exported model with hashed columns -------------------------------------------------
def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 300, n)
    item = rng.integers(0, 40, n)
    x = rng.normal(0, 1, n).round(3)
    score = x + (user % 3 == 0) - (item % 4 == 1)
    frame = pd.DataFrame(
        {
            "x": x,
            "user": [f"u{u}" for u in user],  # text ids
            "item": item * 7 + 100,  # integer ids
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "click": (score + rng.normal(0, 0.5, n) > 0).astype(int),
            "spend": (100 + 20 * score + rng.normal(0, 5, n)).round(2),
        }
    )
    frame.loc[rng.random(n) < 0.05, "user"] = None  # missing: code 0
    return frame


#: Raw rows to score: seen and unseen text ids (non-ASCII too), a missing user, integer ids
#: written as floats, an unseen integer id, an unseen city.
ROWS_CSV = """\
x,user,item,city
0.5,u3,100,paris
-1.25,u17,107.0,lyon
2,,163,nice
0,u_never_seen,999999,atlantis
1.5,ünïcødé-用户,121,paris
-0.75,u299,100.0,
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint folder, serving folder, rows CSV): a 1-epoch MMoE exported as pt2 and ONNX."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("hashed")
    _table(1200, 0).to_csv(folder / "table.csv", index=False)
    (folder / "ids.yaml").write_text(SPEC)
    data = load_dataset(folder / "ids.yaml", seed=0)
    assert isinstance(data.preprocessor.categorical[0], HashedEncoder)
    assert data.categorical_features[:2] == (("user", USER_BUCKETS + 1), ("item", ITEM_BUCKETS + 1))
    model = preset("mmoe", data.input_spec(embed_dim=4), data.tasks, expert_hidden=(16,), tower=(8,))
    config = ExperimentConfig(model=model, training=TrainConfig(epochs=1, batch_size=128, lr=3e-3))
    checkpoint = save_checkpoint(fit(config, data, progress=False), data, folder / "checkpoint")
    written = export_serving(load_checkpoint(checkpoint), folder / "serving", formats=("pt2", "onnx"))
    assert 0 <= written.parity["onnx"] <= TOLERANCE  # the export-time parity check ran and passed
    (folder / "rows.csv").write_text(ROWS_CSV, encoding="utf-8")
    return checkpoint, folder / "serving", folder / "rows.csv"


SERVE = textwrap.dedent(
    """
    import csv, json, sys
    sys.path.append(sys.argv[1])  # torch's site-packages only: no .pth files, no mtlsearch
    serving, rows_csv, out = sys.argv[2:5]
    sys.path.insert(0, serving)
    import numpy as np
    import torch
    from encode import Encoder

    torch.set_num_threads(1)
    with open(rows_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    x = Encoder.load().encode(rows)
    program = torch.export.load(serving + "/model.pt2").module()
    with torch.no_grad():
        y = program(torch.from_numpy(x))
    np.save(out, y.numpy())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mtlsearch", "pandas"))
    if loaded:
        raise SystemExit(f"imported {loaded}")
    print(json.dumps({"x": x.tolist()}))
    """
)


def test_hashed_raw_rows_score_like_predict_in_a_process_with_only_torch_and_numpy(exported, tmp_path):
    checkpoint, serving, rows = exported
    vocab = json.loads((serving / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["format"] == _encode.HASHED_FORMAT
    user, item, city = vocab["categorical"]
    assert user == {"column": "user", "cardinality": 65, "hash_buckets": 64, "hash": HASH_NAME}
    assert item == {"column": "item", "cardinality": 17, "hash_buckets": 16, "hash": HASH_NAME}
    assert "paris" in city["vocab"] and "hash_buckets" not in city
    schema = json.loads((serving / "schema.json").read_text())
    assert schema["input_columns"][1]["hash_buckets"] == USER_BUCKETS

    (tmp_path / "serve.py").write_text(SERVE)
    site = str(Path(torch.__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "serve.py"), site, str(serving), str(rows),
         str(tmp_path / "y.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    x = np.array(json.loads(proc.stdout.strip().splitlines()[-1])["x"])

    # the codes are training's: category keys hashed by mtlsearch.data._hashing
    raw = pd.read_csv(rows)
    want_user = bucket_codes(category_keys(raw["user"]), USER_BUCKETS, MISSING)
    want_item = bucket_codes(category_keys(raw["item"]), ITEM_BUCKETS, MISSING)
    np.testing.assert_array_equal(x[:, 1], want_user)
    np.testing.assert_array_equal(x[:, 2], want_item)
    assert x[2, 1] == 0 and (x[[0, 1, 3, 4, 5], 1] >= 1).all()  # missing user -> 0; unseen ids hash
    assert x[1, 2] == 1 + int(stable_hash(np.array(["107"], dtype=object))[0]) % ITEM_BUCKETS  # "107.0"
    assert x[0, 2] == x[5, 2]  # 100 and "100.0" are one id
    assert x[3, 3] == 0  # atlantis: out of the city vocabulary

    served = np.load(tmp_path / "y.npy")
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "predict", "--model", str(checkpoint), "--input", str(rows),
         "--output", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = pd.read_csv(out)[["click", "spend"]].to_numpy()
    assert served.shape == (6, 2)
    assert np.abs(served - expected).max() <= 1e-5

    # the ONNX model reads the same encoded rows and agrees
    import onnxruntime

    session = onnxruntime.InferenceSession(str(serving / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"x": x})[0]
    assert np.abs(onnx_out - served).max() <= TOLERANCE * max(1.0, float(np.abs(served).max()))


def test_an_unknown_hash_name_is_refused(exported, tmp_path):
    _, serving, _ = exported
    doc = json.loads((serving / "vocab.json").read_text(encoding="utf-8"))
    doc["categorical"][0]["hash"] = "md5-utf8"
    (tmp_path / "vocab.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"column 'user' is hashed with 'md5-utf8', which this encode.py"):
        _encode.Encoder.load(tmp_path)
    del doc["categorical"][0]["hash"]  # no name at all: refused too, not guessed
    with pytest.raises(ValueError, match=r"column 'user' is hashed with None"):
        _encode.Encoder(doc)
    with pytest.raises(ValueError, match=r"which this encode\.py does not know"):
        _encode.vocab_document(["x"], [("user", 65, None)], {"user": (64, "md5-utf8")})
    # without hashed columns the document keeps format 1, which older encoders read
    assert _encode.vocab_document(["x"], [("c", 3, ["a", "b"])])["format"] == _encode.FORMAT


def test_the_shipped_encoder_hashes_values_as_predict_keys_them(exported):
    """Spellings of one id meet in one bucket, as ``category_keys`` makes them one key (text
    as ``predict`` reads it from a CSV file, Python values as rows sent as dicts)."""
    _, serving, _ = exported
    encoder = _encode.Encoder.load(serving)
    j = encoder.categorical.index("item")

    def code(key: str) -> int:
        return 1 + int(stable_hash(np.array([key], dtype=object))[0]) % ITEM_BUCKETS

    for value, key in [(3, "3"), (3.0, "3"), ("3", "3"), ("3.0", "3"), (True, "1"), ("abc", "abc"),
                       (2.5, "2.5"), ("é", "é")]:  # fmt: skip
        assert encoder.code(j, value) == code(key), value
        read = pd.read_csv(io.StringIO(f"c\n{value}\n"))["c"] if isinstance(value, str) else None
        col = read if read is not None else pd.Series([value], dtype=object)
        assert category_keys(col).iloc[0] == key, value
    for missing in [None, "", "NA", float("nan")]:
        assert encoder.code(j, missing) == 0
    rows = list(csv.DictReader(io.StringIO(ROWS_CSV)))
    assert encoder.encode(rows).shape == (6, 4)
