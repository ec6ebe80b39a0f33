"""The exported serving program on raw rows: right numbers, validated codes, no pickle.

A model is trained on a small CSV table with a numeric column that has gaps, a large-valued
numeric column, a string categorical and an integer-valued categorical; its serving folder
is scored in a process that imports only torch and numpy (the csv module reads the rows,
the shipped ``encode.py`` encodes them) and compared with ``mtlsearch predict``.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _train_support import REPO, binary_data

from mtlsearch._errors import UserError
from mtlsearch.arch import preset
from mtlsearch.data import load_dataset
from mtlsearch.tracking._export import export_serving
from mtlsearch.tracking._serving import (
    ServingModel,
    check_program_archive,
    save_serving,
    serving_inputs,
    serving_schema,
)
from mtlsearch.train import (
    ColumnSelector,
    ExperimentConfig,
    TrainConfig,
    fit,
    load_checkpoint,
    save_checkpoint,
)

CITIES = ["paris", "lyon", "nice", "lille", "brest", "metz"]
SPEC = """\
name: shop
files: {path: table.csv}
split: {valid: 0.2, test: 0.1, seed: 0}
features:
  numeric: [age, salary]
  categorical: [city, zip]
tasks:
  - {name: click, label: click, kind: binary}
  - {name: spend, label: spend, kind: regression}
  - {name: segment, label: segment, kind: multiclass}
"""


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 80, n).round(1)
    salary = rng.normal(52000, 15000, n).round(2)
    city = rng.choice(CITIES, n)
    zipc = rng.choice([10001, 10002, 20500, 31000], n)
    score = (age - 45) / 15 + (salary - 52000) / 15000 + (city == "paris") - (zipc == 20500)
    frame = pd.DataFrame(
        {
            "age": age,
            "salary": salary,
            "city": city,
            "zip": zipc,
            "click": (score + rng.normal(0, 0.5, n) > 0).astype(int),
            "spend": (200 + 80 * score + rng.normal(0, 10, n)).round(2),
            "segment": np.where(score > 0.7, "hi", np.where(score < -0.7, "lo", "mid")),
        }
    )
    frame.loc[rng.random(n) < 0.15, "age"] = np.nan  # gaps: a missing-value indicator
    frame.loc[rng.random(n) < 0.05, "city"] = None  # missing is a category of its own
    return frame


#: Raw rows to score, written as a user would: gaps, an unseen city, an unseen zip, a zip
#: written as a float, a number with many digits.
ROWS_CSV = """\
age,salary,city,zip
33.5,48000.25,paris,10001
,61234.75,lyon,20500
71,39999.99,,31000
25.25,123456.78,atlantis,99999
,52000,nice,10002.0
58.0,28000.5,metz,20500
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint folder, serving folder, rows CSV): a 1-epoch PLE on the small table."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("raw")
    _table(1500, 0).to_csv(folder / "table.csv", index=False)
    (folder / "shop.yaml").write_text(SPEC)
    data = load_dataset(folder / "shop.yaml", seed=0)
    assert data.preprocessor is not None and "age:missing" in data.numeric_features
    # one embedding size for both categoricals: they share one table (the case where an
    # unchecked code reads another feature's rows)
    model = preset("ple", data.input_spec(embed_dim=4), data.tasks, expert_hidden=(16,), tower=(8,))
    config = ExperimentConfig(model=model, training=TrainConfig(epochs=1, batch_size=128, lr=3e-3))
    result = fit(config, data, progress=False)
    checkpoint = save_checkpoint(result, data, folder / "checkpoint")
    export_serving(load_checkpoint(checkpoint), folder / "serving")
    (folder / "rows.csv").write_text(ROWS_CSV)
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

    with open(rows_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    x = Encoder.load().encode(rows)
    program = torch.export.load(serving + "/model.pt2").module()
    with torch.no_grad():
        y = program(torch.from_numpy(x))
    np.save(out, y.numpy())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mtlsearch", "pandas"))
    if loaded:
        raise SystemExit(f"imported {loaded}")
    print(json.dumps({"dtype": str(y.dtype), "x": x.tolist()}))
    """
)


def _predict_cli(checkpoint: Path, rows: Path, out: Path) -> pd.DataFrame:
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "predict", "--model", str(checkpoint), "--input", str(rows),
         "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_csv(out)


def test_raw_rows_score_like_predict_in_a_process_with_only_torch_and_numpy(exported, tmp_path):
    checkpoint, serving, rows = exported
    (tmp_path / "serve.py").write_text(SERVE)
    site = str(Path(torch.__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "serve.py"), site, str(serving), str(rows),
         str(tmp_path / "y.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["dtype"] == "torch.float64"
    x = np.array(report["x"])
    # the encoder by hand: raw numbers with NaN gaps; codes from vocab.json, 0 unseen
    vocab = json.loads((serving / "vocab.json").read_text())
    cities = vocab["categorical"][0]["vocab"]
    zips = vocab["categorical"][1]["vocab"]
    assert np.isnan(x[1, 0]) and np.isnan(x[4, 0]) and x[3, 1] == 123456.78
    assert x[0, 2] == cities.index("paris") + 1 and x[2, 2] == cities.index("<missing>") + 1
    assert x[3, 2] == 0 and x[3, 3] == 0  # atlantis, 99999: out of vocabulary
    assert x[4, 3] == zips.index("10002") + 1  # "10002.0" is the category 10002

    served = np.load(tmp_path / "y.npy")
    expected = _predict_cli(checkpoint, rows, tmp_path / "pred.csv")
    schema = json.loads((serving / "schema.json").read_text())
    assert schema["inputs"] == ["age", "salary", "city", "zip"] and schema["dtype"] == "float64"
    columns = []
    for col in schema["output_columns"]:
        columns.append(f"{col['task']}_prob_{col['class']}" if "class" in col else col["name"])
    assert columns == ["click", "spend", "segment_prob_hi", "segment_prob_lo", "segment_prob_mid"]
    assert np.abs(served - expected[columns].to_numpy()).max() <= 1e-5
    # regression in the label's units (the labels lie around 200), not standardised ones
    assert 50 < np.median(served[:, 1]) < 400


def test_an_invalid_code_reads_the_oov_row_not_another_features_row(exported):
    checkpoint, serving, _ = exported
    ckpt = load_checkpoint(checkpoint)
    program = torch.export.load(str(serving / "model.pt2")).module()
    card_city = dict(ckpt.preprocessor.categorical_cardinalities)["city"]
    x = torch.tensor([[40.0, 50000.0, 2.0, 1.0]], dtype=torch.float64).repeat(6, 1)
    x[:, 2] = torch.tensor([0.0, card_city, card_city + 1, -1.0, 1.5, float("nan")])
    with torch.no_grad():
        out = program(x)
    # every invalid code reads the OOV row: the same answer as code 0, up to one float32 ulp of
    # the network's output (the CPU GEMM rounds a row by its position in the batch: rows 1, 3, 5
    # differed from 0, 2, 4 by 9e-9 relative); another feature's row would differ by far more
    for i in range(1, 6):
        torch.testing.assert_close(out[i], out[0], rtol=1e-7, atol=0)
    # the unchecked lookup of code == cardinality reads the next feature's (zip) row 0:
    # a normal-looking, different answer -- what the program must not give
    numeric, _ = ckpt.preprocessor.transform(pd.DataFrame({"age": [40.0], "salary": [50000.0]}).assign(
        city="x", zip=1))  # fmt: skip
    with torch.no_grad():
        unchecked = ckpt.model(numeric, torch.tensor([[card_city, 1]]))["click"].sigmoid()
        oov = ckpt.model(numeric, torch.tensor([[0, 1]]))["click"].sigmoid()
    assert out[0, 0].item() == pytest.approx(oov.item(), abs=1e-6)
    assert abs(unchecked.item() - oov.item()) > 1e-6


def test_codes_given_in_the_data_raise_naming_the_feature_when_out_of_range(tmp_path):
    """Data that came with codes has no OOV code: the program refuses, like predict."""
    torch.set_num_threads(1)
    data = binary_data(n=600, d=4)
    config = ExperimentConfig(
        model=preset("mmoe", data.input_spec(), data.tasks, expert_hidden=(8,), tower=(4,)),
        training=TrainConfig(epochs=1, batch_size=128),
    )
    result = fit(config, data, progress=False)
    inputs = serving_inputs(ColumnSelector(list(data.numeric_features), [("c0", 5)]))
    model = ServingModel(result.model, inputs)
    x = torch.cat([data.test.numeric[:3].double(), data.test.categorical[:3].double()], dim=1)
    path = save_serving(model, x, serving_schema(result.model, inputs=inputs), tmp_path / "s")
    program = torch.export.load(str(path)).module()
    torch.testing.assert_close(program(x).float(), model(x).float())
    x[1, -1] = 5.0
    with pytest.raises(RuntimeError, match="categorical input 'c0': codes must be integers in"):
        program(x)
    assert not (tmp_path / "s" / "vocab.json").read_text().count('"vocab": [')  # codes, no vocabulary


def test_an_infinite_numeric_value_raises_naming_the_column(exported):
    _, serving, _ = exported
    program = torch.export.load(str(serving / "model.pt2")).module()
    x = torch.tensor([[40.0, float("inf"), 1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="numeric input 'salary': infinite value"):
        program(x)


def test_standardised_regression_labels_come_out_in_their_units(exported):
    """The checkpoint's label_scaling {task: (mean, std)} is undone inside the program."""
    checkpoint, _, _ = exported
    ckpt = load_checkpoint(checkpoint)
    assert set(ckpt.label_scaling) == {"spend"}  # the trainer standardised the regression labels
    mean, std = ckpt.label_scaling["spend"]
    inputs = serving_inputs(ckpt.preprocessor, ckpt.label_scaling)
    assert inputs.label_scaling == (("spend", mean, std),)
    x = torch.tensor([[40.0, 50000.0, 1.0, 1.0], [float("nan"), 70000.0, 0.0, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        plain = ServingModel(ckpt.model, replace(inputs, label_scaling=())).eval()(x)
        served = ServingModel(ckpt.model, inputs).eval()(x)
    torch.testing.assert_close(served[:, 1], plain[:, 1] * std + mean)
    torch.testing.assert_close(served[:, [0, 2, 3, 4]], plain[:, [0, 2, 3, 4]])
    # the model-inputs program (MLflow's) takes the same map as a keyword
    numeric, categorical = ckpt.preprocessor.transform(pd.DataFrame({"age": [40.0], "salary": [5e4],
        "city": ["paris"], "zip": [10001]}))  # fmt: skip
    z = torch.cat([numeric, categorical.float()], dim=1)
    with torch.no_grad():
        flavour = ServingModel(ckpt.model, label_scaling=ckpt.label_scaling).eval()(z)
        raw = ckpt.model(numeric, categorical)["spend"]
    assert flavour[0, 1].item() == pytest.approx(raw.item() * std + mean, rel=1e-6)


# ---- no pickle in the archive ------------------------------------------------------------
def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy the zip ``src`` to ``dst`` with ``change(name, bytes) -> bytes | None`` applied
    (None drops the entry); ``change`` may return extra entries via its ``extra`` list."""
    extra: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = change(info.filename.split("/", 1)[1], zin.read(info.filename), extra)
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in extra:
            zout.writestr(f"{root}/{name}", data)


def test_an_export_holds_no_pickled_entry(exported):
    _, serving, _ = exported
    check_program_archive(serving / "model.pt2")  # passes
    with zipfile.ZipFile(serving / "model.pt2") as z:
        names = [n.split("/", 1)[1] for n in z.namelist()]
        weights = json.loads(z.read(next(n for n in z.namelist() if n.endswith("_weights_config.json"))))
    assert all(meta["use_pickle"] is False for meta in weights["config"].values())
    assert "data/sample_inputs/model.pt" in names  # present, and empty (checked above)


def test_a_pickled_weight_is_detected(exported, tmp_path):
    _, serving, _ = exported
    pickled = io.BytesIO()
    torch.save(torch.zeros(3), pickled)

    def pickle_first_weight(name, data, extra):
        if name.endswith("_weights_config.json"):
            doc = json.loads(data)
            fqn = next(iter(doc["config"]))
            doc["config"][fqn]["use_pickle"] = True
            return json.dumps(doc).encode()
        return data

    bad = tmp_path / "bad.pt2"
    _rewrite(serving / "model.pt2", bad, pickle_first_weight)
    with pytest.raises(UserError, match=r"is stored as a pickle \(data/weights/model_weights_config.json\)"):
        check_program_archive(bad)

    def add_opaque_constant(name, data, extra):
        if name == "models/model.json":
            extra.append(("data/constants/opaque_obj_0", pickled.getvalue()))
        return data

    _rewrite(serving / "model.pt2", tmp_path / "opaque.pt2", add_opaque_constant)
    with pytest.raises(UserError, match="entry 'data/constants/opaque_obj_0' may be unpickled on load"):
        check_program_archive(tmp_path / "opaque.pt2")

    def with_sample_inputs(name, data, extra):
        return pickled.getvalue() if name.startswith("data/sample_inputs/") else data

    _rewrite(serving / "model.pt2", tmp_path / "sample.pt2", with_sample_inputs)
    with pytest.raises(UserError, match=r"entry 'data/sample_inputs/model\.pt' may be unpickled"):
        check_program_archive(tmp_path / "sample.pt2")


def test_an_export_that_torch_writes_pickled_fails_in_one_line(exported, tmp_path, monkeypatch):
    """torch pickles tensor-subclass weights: such an archive is refused, nothing is left."""
    import torch.export.pt2_archive._package as package

    checkpoint, _, _ = exported
    monkeypatch.setattr(package, "_should_use_pickle", lambda t: True)
    with pytest.raises(UserError) as err:
        export_serving(load_checkpoint(checkpoint), tmp_path / "serving")
    assert "is stored as a pickle" in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "serving").iterdir())


def test_the_shipped_encoder_reads_values_as_predict_does(exported):
    """Number/text/bool spellings and pandas' missing markers, one by one."""
    _, serving, _ = exported
    sys.path.insert(0, str(serving))
    try:
        import encode
    finally:
        sys.path.remove(str(serving))
    sys.modules.pop("encode", None)
    known = {"3": 1, "3.5": 2, "1": 3, "abc": 4, "<missing>": 5}
    for value, key in [
        (3, "3"), (3.0, "3"), ("3", "3"), ("3.0", "3"), ("3.50", "3.5"), (True, "1"), ("True", "1"),
        ("abc", "abc"), ("", "<missing>"), ("NA", "<missing>"), (None, "<missing>"),
        (float("nan"), "<missing>"), ("zzz", "zzz"),
    ]:  # fmt: skip
        assert encode.category_key(value, known) == key, value
    with pytest.raises(ValueError, match=r"numeric column 'age': 'old' is not a number \(row 2\)"):
        encode.parse_number("old", "age", 2)
    assert np.isnan(encode.parse_number("", "age", 1)) and encode.parse_number(" 4.5 ", "age", 1) == 4.5
    rows = list(csv.DictReader(io.StringIO(ROWS_CSV)))
    with pytest.raises(ValueError, match=r"row 1: missing column\(s\) \['zip'\]"):
        encode.Encoder.load(serving).encode([{k: v for k, v in rows[0].items() if k != "zip"}])
