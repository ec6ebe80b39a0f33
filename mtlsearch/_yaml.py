"""The one way mtlsearch reads user YAML: bounded, alias-free, YAML 1.2 numbers.

Every space, experiment, architecture, dataset spec and ``-o key=value`` option goes
through :func:`load_yaml` (or :func:`read_yaml_file` for files), so the rules hold
everywhere at once:

- Size: a file is read up to :data:`MAX_BYTES` (1 MiB) plus one byte and refused if
  larger; a search space or a config is a page of text, never megabytes.
- No anchors or aliases. PyYAML loads an alias as a shared reference, cheaply, but
  printing or serialising the tree expands it (a 1 KB "billion laughs" file becomes
  gigabytes in an error message or ``json.dumps``). They are refused while composing,
  before anything is expanded, with the line of the first one.
- Nodes and depth are counted while composing: past :data:`MAX_NODES` nodes or
  :data:`MAX_DEPTH` levels of nesting the load stops, so a huge flow list or
  ``[[[[...]]]]`` fails fast instead of filling memory or the Python stack.
- Numbers: PyYAML implements YAML 1.1, where ``1e-4`` (no dot) and ``1.0e5`` (no exponent
  sign) are strings. YAML 1.2 reads them as floats, and so does this loader, so a learning
  rate or a range bound written the natural way is a number in every file.
- Errors: every problem is one :class:`UserError` line naming the source and, where YAML
  knows it, the line and column.
"""

from __future__ import annotations

import datetime
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from mtlsearch._errors import UserError

#: Largest YAML file the tool reads (bytes): spaces, experiments, specs, configs.
MAX_BYTES = 1 << 20
#: Most nodes (scalars, lists, mappings) one document may hold.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings one document may have.
MAX_DEPTH = 64

# YAML 1.2 (core schema) floats that YAML 1.1 reads as strings: an exponent without a dot
# or without a sign. Plain integers and dotted floats keep PyYAML's own resolvers, which
# are tried first.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and counts nodes and depth while composing.

    Checks sit in ``compose_node``, the one place every node passes through before it is
    built, so a refused document costs no more than the events read up to that point.
    """

    def __init__(self, text: str, source: str, max_nodes: int) -> None:
        super().__init__(text)
        self._source = source
        self._max_nodes = max_nodes
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            name = event.anchor if len(event.anchor) <= 20 else event.anchor[:20] + "..."
            raise UserError(
                f"{self._source}: line {mark.line + 1}, column {mark.column + 1}: YAML anchors and "
                f"aliases ({sign}{name}) are not supported; write the value out"
            )
        self._nodes += 1
        if self._nodes > self._max_nodes:
            raise UserError(
                f"{self._source}: line {event.start_mark.line + 1}: more than {self._max_nodes:,} "
                "YAML values; refusing a file this large"
            )
        if self._depth >= MAX_DEPTH:
            raise UserError(
                f"{self._source}: line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep"
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # A key written twice in one mapping: PyYAML keeps the last silently, so a config
        # would train something other than what its first line says.
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    mark = key_node.start_mark
                    raise UserError(
                        f"{self._source}: line {mark.line + 1}, column {mark.column + 1}: key "
                        f"{brief(key, 40)} appears twice in one mapping"
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # Scalars that resolve to a type but do not convert (``2024-13-45`` as a date,
        # an integer of 5,000 digits, ``!!float abc``) raise ValueError inside PyYAML;
        # give them the node's mark like any other YAML error.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            problem = str(exc).split(";")[0].splitlines()[0] if str(exc) else type(exc).__name__
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {brief(getattr(node, 'value', ''), 40)}: {problem}", node.start_mark
            ) from None


_GuardedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for user values in error messages
    (a value can be a list of 100,000 items; the message stays one readable line)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxtuple, short.maxset = 3, 6, 6, 6, 6
    short.maxstring = short.maxother = short.maxlong = limit
    text = short.repr(value)
    return text if len(text) <= limit + 10 else text[: limit + 7] + "..."


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n:,} bytes"


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def _syntax_error(exc: yaml.YAMLError, text: str, source: str) -> UserError:
    """One line from PyYAML's multi-line message: the problem and where it is."""
    if isinstance(exc, yaml.reader.ReaderError):
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return UserError(
            f"{source}: not valid YAML at line {line}, column {column}: character "
            f"U+{ord(char):04X} is not allowed"
        )
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and str(problem).startswith("but "):  # "expected a single document ..., but found ..."
        problem = f"{context}, {problem}"
    problem = " ".join(str(problem).split())
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return UserError(f"{source}: not valid YAML{where}: {problem[:200]}")


def load_yaml(
    text: str | bytes,
    source: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
    what: str = "YAML file",
) -> Any:
    """Parse one YAML document under the rules in the module docstring.

    ``source`` starts every error message (a path, or a flag such as ``--option n``);
    ``what`` names the kind of file in the size message. Bytes must be UTF-8.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise UserError(f"{source}: {size:,} bytes; {_a(what)} may be at most {_size(max_bytes)}")
    if isinstance(text, bytes):
        text = _decode(text, source)
    loader = None
    try:
        loader = _GuardedLoader(text, source, max_nodes)
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, source) from None
    except RecursionError:  # a guard against PyYAML recursing below MAX_DEPTH somewhere
        raise UserError(f"{source}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(
    path: str | Path, what: str = "YAML file", *, max_bytes: int = MAX_BYTES
) -> tuple[str, Any]:
    """Read and parse a user's YAML file: ``(text, data)``.

    At most ``max_bytes + 1`` bytes are read, so a huge file (or ``/dev/zero``) costs
    nothing; the size in the message is the file's own when the system knows it.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            size = _file_size(fh)
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not {_a(what)}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        shown = f"{size:,} bytes" if size > max_bytes else f"more than {max_bytes:,} bytes"
        raise UserError(f"{path}: {shown}; {_a(what)} may be at most {_size(max_bytes)}")
    text = _decode(raw, str(path))
    return text, load_yaml(text, str(path), max_bytes=max_bytes, what=what)


def _file_size(fh: Any) -> int:
    import os

    try:
        return os.fstat(fh.fileno()).st_size
    except OSError:
        return 0


def require_mapping(data: Any, source: str, what: str = "YAML file") -> dict[str, Any]:
    """``data`` if it is a mapping, else one line saying what the top level is instead."""
    if isinstance(data, dict):
        return data
    got = "nothing (the file is empty)" if data is None else f"a {_kind(data)}"
    raise UserError(f"{source}: {_a(what)} must be a mapping of keys to values, got {got}")


def _kind(data: Any) -> str:
    if isinstance(data, list):
        return "list"
    if isinstance(data, str):
        return "string"
    if isinstance(data, bool):
        return "boolean"
    if isinstance(data, int | float):
        return "number"
    if isinstance(data, datetime.date):
        return "date"
    return type(data).__name__


def option_value(text: str, source: str) -> Any:
    """A ``KEY=VALUE`` command-line value read as a YAML scalar (``2`` -> 2, ``1e-4`` -> 0.0001),
    or the text itself when it is not valid YAML (``a: b``) or holds an alias (``*x``)."""
    if not text.strip():
        return ""
    try:
        return load_yaml(text, source, max_bytes=64 * 1024, max_nodes=1_000, what="option value")
    except UserError:
        if len(text) > 64 * 1024:
            raise
        return text


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper that writes shared objects out again instead of as anchors, so the files
    the tool writes are ones it reads back."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    """YAML text of plain data, keys in insertion order, without anchors or aliases."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "brief",
    "dump_yaml",
    "load_yaml",
    "option_value",
    "read_yaml_file",
    "require_mapping",
]
