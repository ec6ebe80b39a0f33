"""Hostile and malformed YAML: one line naming the file (and line or key), exit 2, nothing
written, bounded time and memory; and YAML 1.2 numbers (``1e-4`` is a float) everywhere.

The end-to-end cases run the real CLI in a subprocess; their timeouts are far above any
plausible run and only stop a hang (a "billion laughs" file that is expanded would not
finish). Speed itself is never asserted.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from mtlsearch._errors import UserError, as_float
from mtlsearch._yaml import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    dump_yaml,
    load_yaml,
    option_value,
    read_yaml_file,
    require_mapping,
)
from mtlsearch.arch import ArchConfig, InputSpec, TaskSpec
from mtlsearch.data import DatasetSpec
from mtlsearch.search import SearchSpace
from mtlsearch.train import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "search_spaces" / "quick.yaml").read_text()
TASKS = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
INPUTS = InputSpec(n_numeric=5)

# Ten levels of nine-fold aliases: 9**9 strings (about 10**9) if anything expands them.
BOMB_ANCHORS = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def _quick(old: str, new: str) -> str:
    assert old in QUICK, old
    return QUICK.replace(old, new)


def _one_line(exc: pytest.ExceptionInfo[UserError], *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, message
    return message


# ---- the loader ------------------------------------------------------------------------------


def test_yaml_12_numbers_are_floats_and_the_rest_is_unchanged():
    data = load_yaml(
        "a: 1e-4\nb: 1E5\nc: -2e-3\nd: 1.0e5\ne: +3e2\nf: .5e1\n"
        "g: 12\nh: 1.5e-3\ni: .inf\nj: -.inf\nk: .nan\nl: '1e-4'\nm: 1_000\nn: e5\no: 1e\n",
        "n.yaml",
    )
    assert data["a"] == 1e-4 and data["b"] == 1e5 and data["c"] == -2e-3
    assert data["d"] == 1e5 and data["e"] == 300.0 and data["f"] == 5.0
    assert all(isinstance(data[k], float) for k in "abcdefh")
    assert data["g"] == 12 and isinstance(data["g"], int) and data["m"] == 1000
    assert data["h"] == 1.5e-3
    assert data["i"] == math.inf and data["j"] == -math.inf and math.isnan(data["k"])
    assert data["l"] == "1e-4" and data["n"] == "e5" and data["o"] == "1e"  # quoted / not numbers
    assert as_float("1e-4", "x") == 1e-4  # numeric strings (from Python callers) still accepted


def test_the_float_rule_does_not_leak_into_pyyaml():
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (BOMB_ANCHORS + "name: *a9\n", ["line 1, column 5", "anchors and aliases (&a0)"]),
        ("a: 1\nb: *nowhere\n", ["line 2, column 4", "(*nowhere)"]),
        ("a: &x 1\n", ["line 1, column 4", "(&x)"]),
        ("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), ["line 1", f"nested more than {MAX_DEPTH}"]),
        ("a: 1\n---\nb: 2\n", ["line 2, column 1", "expected a single document"]),
        ("a: 2024-13-45\n", ["line 1, column 4", "month must be in 1..12"]),
        ("a: " + "9" * 5000 + "\n", ["line 1, column 4", "cannot read"]),
        ("a: !!python/object/apply:os.system [ls]\n", ["line 1, column 4", "python/object/apply"]),
        ("a: x\x00y\n", ["line 1, column 5", "U+0000 is not allowed"]),
        ("? [1, 2]\n: 3\n", ["found unhashable key"]),
    ],
)
def test_hostile_documents_are_one_line_with_the_place(text, needles):
    with pytest.raises(UserError) as exc:
        load_yaml(text, "in.yaml")
    message = _one_line(exc, *needles)
    assert message.startswith("in.yaml: ")


def test_a_document_over_the_node_cap_is_refused_while_composing():
    text = "[" + ",".join(["0"] * MAX_NODES) + "]"  # the list node plus MAX_NODES items
    with pytest.raises(UserError) as exc:
        load_yaml(text, "big.yaml")
    _one_line(exc, "big.yaml: line 1: more than 100,000 YAML values")
    assert len(load_yaml("[" + ",".join(["0"] * 999) + "]", "ok.yaml")) == 999


def test_dump_yaml_writes_shared_objects_out_and_reads_back():
    shared = [16, 8]
    data = {"expert_hidden": shared, "tower": shared, "nested": {"again": shared}}
    assert "&id001" in yaml.safe_dump(data)  # PyYAML's own dumper writes an anchor here
    text = dump_yaml(data)
    assert "&" not in text and "*" not in text
    assert load_yaml(text, "dumped.yaml") == data


def test_option_values_are_yaml_scalars_or_the_text_itself():
    assert option_value("2", "-o n") == 2
    assert option_value("1e-4", "-o lr") == 1e-4
    assert option_value("", "-o x") == ""
    assert option_value("a: b: c", "-o x") == "a: b: c"  # not YAML: kept as text
    assert option_value("*x", "-o x") == "*x"  # an alias: kept as text, never resolved


def test_require_mapping_names_what_it_got():
    assert require_mapping({"a": 1}, "f.yaml") == {"a": 1}
    with pytest.raises(UserError, match=r"^f\.yaml: an experiment config must be a mapping .* got a list$"):
        require_mapping([1], "f.yaml", "experiment config")
    with pytest.raises(UserError, match=r"got nothing \(the file is empty\)$"):
        require_mapping(None, "f.yaml")


# ---- files: size, encoding, syntax -------------------------------------------------------------


def test_a_file_over_the_cap_is_refused_with_its_size(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"name: x\n" + b"#" * MAX_BYTES)
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: {MAX_BYTES + 8:,} bytes; a search space file may be at most 1 MiB")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_only_the_cap_is_read_from_an_endless_file():
    with pytest.raises(UserError) as exc:
        read_yaml_file("/dev/zero", "dataset spec")
    _one_line(exc, f"/dev/zero: more than {MAX_BYTES:,} bytes; a dataset spec may be at most 1 MiB")


def test_non_utf8_bytes_name_the_byte_and_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(_quick("name: quick", "name: caf\xe9").encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: not UTF-8 text (byte 0xe9 at offset {offset})")


def test_a_tab_keeps_pyyamls_line_and_column(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("name: t\nlevel:\n\tn_shared: 2\n")
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: not valid YAML at line 3, column 1: found character '\\t' that cannot start")


@pytest.mark.parametrize(
    "text",
    [
        "def main():\n    return {1: [2,\n",  # Python, not YAML
        "name: [unclosed\n",
        "key: value: other\n",
        '{"a": 1,,}\n',
    ],
)
def test_text_that_is_not_yaml_is_one_line(tmp_path, text):
    path = tmp_path / "notyaml.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: not valid YAML at line ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a sentence\n", "", "# only a comment\n"])
def test_a_space_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: a search space must be a mapping of keys to values, got ")


# ---- aliases in every kind of file ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (BOMB_ANCHORS + "name: *a9\n", 1),  # the bomb as the space's name
        (QUICK + "x: &x [lol, lol]\n", QUICK.count("\n") + 1),  # an anchor after a valid space
        (_quick("expert_hidden: {choice: [[16], [32]]}", "expert_hidden: {choice: [&w [16], *w]}"), 7),
        (_quick("levels: {int: [1, 2]}", "levels: &p {int: [1, 2], extra: *p}"), 3),  # malformed param
    ],
)
def test_alias_bombs_in_a_space_are_refused_before_expanding(tmp_path, text, line):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        SearchSpace.read(path)
    _one_line(exc, f"{path}: line {line}, column ", "anchors and aliases")


def test_every_user_yaml_reader_refuses_aliases(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("model: &m\n  levels: []\ntraining: *m\n")
    for load in (ExperimentConfig.load, ArchConfig.load, DatasetSpec.load, SearchSpace.read):
        with pytest.raises(UserError) as exc:
            load(path)
        _one_line(exc, f"{path}: line 1, column 8: YAML anchors and aliases (&m)")
    with pytest.raises(UserError, match=r"^<experiment>: line 1"):
        ExperimentConfig.from_yaml(path.read_text())
    with pytest.raises(UserError, match=r"^s\.yaml: line 1"):
        SearchSpace.from_yaml(path.read_text(), source="s.yaml")


def test_configs_the_tool_writes_read_back(tmp_path):
    space = SearchSpace.read(ROOT / "search_spaces" / "quick.yaml")
    config = space.reference_configs(INPUTS, TASKS)["ple"]
    config.save(tmp_path / "ple.yaml")
    assert ExperimentConfig.load(tmp_path / "ple.yaml") == config
    config.model.save(tmp_path / "arch.yaml")
    assert ArchConfig.load(tmp_path / "arch.yaml") == config.model


# ---- space values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("levels: {int: [1, 2]}", "levels: {int: [a, 2]}", "levels.int[0]: expected an integer, got 'a'"),
        (
            "n_shared: {int: [1, 2]}",
            "n_shared: {int: ['1', 2]}",
            "level.n_shared.int[0]: expected an integer",
        ),
        (
            "n_shared: {int: [1, 2]}",
            "n_shared: {int: [1, 2.5]}",
            "level.n_shared.int[1]: expected an integer",
        ),
        (
            "n_shared: {int: [1, 2]}",
            "n_shared: {int: [1, 2], step: 0}",
            "level.n_shared.step: expected an int",
        ),
        ("n_shared: {int: [1, 2]}", "n_shared: {int: [1, 2], step: -2}", "level.n_shared.step: expected"),
        (
            "n_shared: {int: [1, 2]}",
            "n_shared: {int: [1, 4], step: 2, log: true}",
            "level.n_shared.step: a log range takes no step",
        ),
        ("levels: {int: [1, 2]}", "levels: {int: [1, 2, 3]}", "levels.int: needs [low, high], got [1, 2, 3]"),
        ("levels: {int: [1, 2]}", "levels: {int: 2}", "levels.int: needs [low, high], got 2"),
        ("levels: {int: [1, 2]}", "levels: {int: [1, 100]}", "levels: needs integers from 1 to 32"),
        ("[[16], [32]]}", "[]}", "level.expert_hidden.choice: needs a non-empty list of values, got []"),
        ("[[16], [32]]}", "16}", "level.expert_hidden.choice: needs a non-empty list of values, got 16"),
        ("[[16], [32]]}", "[2024-01-01]}", "level.expert_hidden.choice[0]: expected a number"),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [0, 0.02], log: true}",
            "training.lr.float: a log range needs low > 0, got 0.0",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [-1e-3, 1], log: true}",
            "training.lr.float: a log range needs low > 0, got -0.001",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [small, 1]}",
            "training.lr.float[0]: expected a number, got 'small'",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [0.1, .inf]}",
            "training.lr.float[1]: expected a finite number, got inf",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [0.1, 1], log: maybe}",
            "training.lr.log: expected true or false, got 'maybe'",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [0.1, 1], step: 0.1}",
            "training.lr.step: a float range takes no step",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [2e-2, 2e-3]}",
            "training.lr.float: empty range [0.02, 0.002]",
        ),
        (
            "lr: {float: [0.002, 0.02], log: true}",
            "lr: {float: [0.1, 1], 3: 4}",
            "training.lr.3: unknown key",
        ),
        ("embedding_dim: 4", "embedding_dim: four", "embedding_dim: needs integers >= 1, got 'four'"),
        ("hidden: {choice: [[8], [16]]}", "hidden: 8", "tower.hidden: needs lists of layer widths"),
        ("name: quick", "name: [a, b]", "name: expected a string, got ['a', 'b']"),
        (
            "presets: [single_task, shared_bottom, mmoe, cgc, ple]",
            "presets: ple",
            "reference.presets: expected",
        ),
        ("training: {lr: 0.005}", "training: {lr: -5}", "reference.training.lr: must be > 0"),
        ("training: {lr: 0.005}", "training: [1]", "reference.training: expected a mapping, got [1]"),
    ],
)
def test_malformed_space_values_name_the_file_and_key(old, new, message):
    with pytest.raises(UserError) as exc:
        SearchSpace.from_yaml(_quick(old, new), source="space.yaml")
    _one_line(exc, f"space.yaml: {message}")


def test_a_1e4_log_range_is_accepted_and_sampled_within_its_bounds():
    # PyYAML alone reads these bounds as strings, which made the range "empty" ("1e-4" > "1e-2").
    text = (
        "levels: 1\nlevel: {n_shared: 1, n_specific: 1}\ntraining: {lr: {float: [1e-4, 1e-2], log: true}}\n"
    )
    space = SearchSpace.from_yaml(text, "s.yaml")
    lr = space.training["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(30):
        trial = study.ask()
        drawn.append(space.suggest(trial, INPUTS, TASKS).training.lr)
        study.tell(trial, 0.0)
    assert all(1e-4 <= v <= 1e-2 for v in drawn)
    assert min(drawn) < 1e-3 < max(drawn)  # log-uniform: both decades are visited


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_still_read(path):
    space = SearchSpace.read(path)
    assert space.text == path.read_text() and space.source == str(path)


# ---- end to end: the CLI in a subprocess --------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, far above any plausible run; not a speed assertion
    )


def _search(space: Path, cwd: Path) -> subprocess.CompletedProcess:
    storage = f"sqlite:///{cwd / 'study.db'}"
    return _cli(
        "search", "--space", str(space), "--dataset", "synthetic", "-o", "n=500", "--n-trials", "1",
        "--no-mlflow", "--storage", storage, cwd=cwd,
    )  # fmt: skip


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bomb", BOMB_ANCHORS + "name: *a9\n", "line 1, column 5: YAML anchors and aliases"),
        (
            "big",
            "name: x\n" + "#" * (2 * MAX_BYTES),
            "2,097,160 bytes; a search space file may be at most 1 MiB",
        ),
        ("tab", "name: t\nlevel:\n\tn_shared: 2\n", "not valid YAML at line 3, column 1"),
        (
            "strbound",
            _quick("levels: {int: [1, 2]}", "levels: {int: [a, 2]}"),
            "levels.int[0]: expected an int",
        ),
        ("step0", _quick("n_shared: {int: [1, 2]}", "n_shared: {int: [1, 2], step: 0}"), "n_shared.step"),
    ],
)
def test_search_with_a_bad_space_is_one_line_exit_2_and_writes_nothing(tmp_path, name, text, needle):
    space = tmp_path / f"{name}.yaml"
    space.write_text(text)
    proc = _search(space, tmp_path)
    _assert_one_line_exit_2(proc, str(space), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == [space.name]  # no study.db, no mlflow.db


def test_search_with_a_non_utf8_space_is_one_line(tmp_path):
    space = tmp_path / "latin1.yaml"
    space.write_bytes(b"name: caf\xe9\n")
    proc = _search(space, tmp_path)
    _assert_one_line_exit_2(proc, str(space), "not UTF-8 text (byte 0xe9 at offset 9)")
    assert not (tmp_path / "study.db").exists()


def _experiment(tmp_path: Path, lr: str) -> Path:
    text = (ROOT / "examples" / "ple_synthetic.yaml").read_text()
    text = text.replace("lr: 3.0e-3", f"lr: {lr}").replace("epochs: 8", "epochs: 2")
    assert f"lr: {lr}" in text
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_train_that_diverges_is_one_line_exit_2_and_writes_no_checkpoint(tmp_path):
    config = _experiment(tmp_path, "1e6")  # a YAML 1.2 float: read as 1000000.0
    out = tmp_path / "run"
    data = ["--dataset", "synthetic", "-o", "n=2000"]
    proc = _cli("train", "--config", str(config), *data, "--out", str(out), "--quiet", cwd=tmp_path)
    _assert_one_line_exit_2(proc, str(config), "training diverged", "lower training.lr (now 1e+06)")
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"model: {levels: []}\ntraining: {lr: caf\xe9}\n", "not UTF-8 text (byte 0xe9 at offset 38)"),
        (b"model: &m {levels: []}\ntraining: *m\n", "line 1, column 8: YAML anchors and aliases (&m)"),
        (b"- model\n- training\n", "an experiment config must be a mapping of keys to values, got a list"),
    ],
)
def test_train_with_a_bad_config_file_is_one_line_exit_2(tmp_path, content, needle):
    config = tmp_path / "exp.yaml"
    config.write_bytes(content)
    out = tmp_path / "run"
    proc = _cli("train", "--config", str(config), "--dataset", "synthetic", "--out", str(out), cwd=tmp_path)
    _assert_one_line_exit_2(proc, str(config), needle)
    assert not out.exists()
