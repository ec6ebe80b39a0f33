"""Every ``mtlsearch`` command in README.md's ```bash blocks works as written (docs cannot drift).

The commands run in README order in one folder (holding links to ``examples/`` and
``search_spaces/``), after ``make demo``'s command from the Makefile, so a later command
must follow from the earlier ones (the demo's study is ``quick-synthetic``). Sizes are cut
by :data:`SUBSTITUTIONS`; commands that need a server or a long load are only parsed
(:data:`PARSE_ONLY`: every option name and value type is checked, nothing runs).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mtlsearch.cli import app, join_multi_values

ROOT = Path(__file__).resolve().parents[1]

#: (pattern, replacement, why): applied in order to each command line before it runs.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"-o n=20000|--option n=20000", "-o n=1500 -o d=20", "small synthetic data"),
    (r"--option n=2000 --option d=20", "-o n=1500 -o d=20", "small synthetic data"),
    (r"-o n=2000 -o d=20", "-o n=1500 -o d=20", "small synthetic data"),
    (
        r"--config best/config.yaml --dataset synthetic --data-seed 0",
        "--config best/config.yaml --dataset synthetic -o n=1500 -o d=20 --data-seed 0",
        "retrain on the data the (shrunk) demo searched",
    ),
    (r"--epochs 5", "--epochs 1", "one epoch per baseline"),
    (r"--seeds 0,1,2", "--seeds 0", "one seed"),
    (r"--n-trials \d+", "--n-trials 2", "two trials per search"),
    (r"\.\./shared/data", "{data}", "the shared data folder ($MTLSEARCH_DATA)"),
]
#: Extra options per command, appended after the substitutions (why in the comment).
APPEND = {
    "search": ["--no-mlflow", "--quiet", "--set", "training.epochs=1", "-o", "n=1500", "-o", "d=20"],
    "worker": ["--no-mlflow", "--quiet"],
}
#: Commands only parsed: a server they need (PostgreSQL, an MLflow server), a dataset
#: whose load alone takes longer than this test may (Census-Income: 300,000 rows), or a
#: second export of the same trial in both formats (tests/test_export_onnx.py runs those).
PARSE_ONLY = (r"postgresql", r"census-income", r"--study census-ple", r"--format both")


def readme_commands() -> list[str]:
    """The ``mtlsearch`` command lines of README.md's bash blocks, continuations joined and
    trailing comments removed, in order."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("mtlsearch "):
                commands.append(" ".join(line.split()))
    return commands


def demo_command() -> str:
    """``make demo``'s search, as the Makefile runs it (and the README quotes it)."""
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if "mtlsearch search" in x)
    return "mtlsearch " + line.split("mtlsearch ", 1)[1].strip()


def prepared(command: str, data: Path) -> list[str]:
    for pattern, replacement, _ in SUBSTITUTIONS:
        command = re.sub(pattern, replacement.format(data=data), command)
    args = shlex.split(command)[1:]
    return args + APPEND.get(args[0], [])


def parse_only(args: list[str]) -> None:
    """Parse a command line as the CLI would, without running it (usage errors raise)."""
    cmd = typer.main.get_command(app)
    args = join_multi_values(args)
    ctx = cmd.make_context("mtlsearch", list(args))
    while getattr(cmd, "commands", None):
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)


def test_the_readme_quotes_the_demo_command():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert demo_command().replace("mtlsearch ", "`mtlsearch ", 1) + "`" in readme


def test_every_readme_command_runs_or_parses(tmp_path, shared_data_dir):
    for name in ("examples", "search_spaces"):
        (tmp_path / name).symlink_to(ROOT / name)
    rows = "x0,x1\n"  # predict's rows.csv: replaced by the trained model's own inputs below
    (tmp_path / "rows.csv").write_text(rows)
    (tmp_path / "my_spec.yaml").write_text(
        "name: mine\nfiles: {path: mine.csv}\nsplit: {valid: 0.2, test: 0.2, seed: 0}\n"
        "tasks: [{name: t, label: y, kind: binary}]\n"
    )
    (tmp_path / "mine.csv").write_text("a,y\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(100)))
    env = {**os.environ, "MTLSEARCH_DATA": str(shared_data_dir), "COLUMNS": "200"}
    env["MTLSEARCH_CACHE"] = str(tmp_path / "cache")  # `cache: true` specs: not the user's cache
    failures = []
    for command in [demo_command(), *readme_commands()]:
        args = prepared(command, shared_data_dir)
        if any(re.search(p, command) for p in PARSE_ONLY):
            try:
                parse_only(args)
            except Exception as exc:
                failures.append(f"{command}\n  does not parse: {exc}")
            continue
        if args[0] == "predict":
            _inputs_of(tmp_path / "runs" / "ple", tmp_path / "rows.csv")
        proc = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            failures.append(f"{command}\n  ran as {shlex.join(args)}\n  exit {proc.returncode}: "
                            f"{proc.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    assert not failures, "README commands that fail:\n" + "\n".join(failures)


def _inputs_of(model: Path, rows: Path) -> None:
    """Rows with the columns the trained model reads (the synthetic data's x0..x19)."""
    import json

    prep = json.loads((model / "preprocessing.json").read_text())
    names = prep["state"]["numeric"]
    rows.write_text(",".join(names) + "\n" + "\n".join(",".join(["0.5"] * len(names)) for _ in range(3)))


@pytest.mark.parametrize("command", ["mtlsearch search --objectives income:auc marital:auc params"])
def test_parse_only_accepts_space_separated_objectives(command):
    args = [*shlex.split(command)[1:], "--space", "s.yaml", "--dataset", "synthetic"]
    parse_only(args)
