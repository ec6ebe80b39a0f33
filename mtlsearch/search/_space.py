"""Declarative search spaces: a YAML file of ranges and choices over the builder's knobs.

A space maps an Optuna trial to a validated :class:`ExperimentConfig` and does nothing else:
the same trial parameters always give the same config (``suggest`` is a pure function of the
trial's parameters, which is also how ``export`` rebuilds a trial's network).

Value grammar, for any leaf: a literal (a constant), or a one-key mapping
``{int: [lo, hi]}`` (optional ``step``, ``log``), ``{float: [lo, hi]}`` (optional ``log``),
``{choice: [a, b, ...]}`` (choices may be lists, e.g. widths).

Task balancing (``training.loss_weighting``) is a leaf like any other (``fixed``, or
``{choice: [fixed, uncertainty]}``: Optuna parameter ``training.loss_weighting``), or a
mapping with a ``method`` leaf and one block of leaves per method, holding that method's
options (declared by the method class in ``LOSS_WEIGHTINGS``) and, for the methods that read
them, per-task ``weights``/``gamma``::

    loss_weighting:
      method: {choice: [fixed, dwa, cagrad]}     # parameter training.loss_weighting.method
      dwa: {temperature: {float: [1.0, 4.0]}}    # training.loss_weighting.dwa.temperature
      cagrad: {c: {float: [0.1, 0.9]}}

Per-task mappings of leaves (``training.pos_weight: {task: leaf}``, ``class_weights``, when
the trainer has those fields) are named ``training.pos_weight.<task>``.

Encodings: ``conditional`` samples a level's parameters only if the level exists (TPE handles
that well), and a method's options only in trials that draw that method; ``fixed`` samples
every level up to the maximum and every listed method's options in every trial and uses
those the trial needs, so each trial has the same parameters. NSGA-II needs ``fixed``: it
samples parameters outside the intersection of all trials' spaces at random, which would cut
conditional parameters out of its crossover.

Forced values: a trial's parameters are what trained, so a value another one forces is not
sampled under ``conditional``: a level's ``select`` when its ``fusion`` is ``adatt`` (all),
its ``gate_sharing`` when the trial has task-specific embeddings or the level's ``select``
is ``own+shared`` on several tasks (per task: one gate cannot mix each task's own experts),
and ``task_embedding_dim`` on data without categorical features (under either encoding: no
trial on that data has it). ``fixed`` samples the first two anyway and uses the forced value.
Nor, under ``conditional``, is a level's gate setting that its gate kind does not read
(``gate_input`` and ``gate_sharing`` under ``gate_kind: none``, ``top_k`` unless a top-k
kind, ...: ``GATE_KIND_FIELDS``). A level without shared experts draws an integer range of
task-specific experts from 1 where 0 would leave a gate with no expert (``fixed``: from the
whole range, training 1 for 0).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args

from mtlsearch._errors import UserError, as_float
from mtlsearch._yaml import brief, dump_yaml, load_yaml, option_value, read_yaml_file
from mtlsearch.arch import (
    ACTIVATIONS,
    PRESETS,
    ArchConfig,
    ConfigError,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
    preset,
)
from mtlsearch.arch._chained import FACTOR_LOSSES
from mtlsearch.arch._config import (
    GATE_KIND_FIELDS,
    LEVEL_NUMBERS,
    TOP_K_BOUNDED_GATES,
    ExpertNorm,
    Fusion,
    GateInput,
    GateKind,
    GateSelect,
    GateSharing,
    Norm,
)

# ---- parameters ---------------------------------------------------------------------------


class Param:
    """One leaf of the space."""

    def suggest(self, trial: Any, name: str) -> Any:
        raise NotImplementedError

    def draw(self, rng: random.Random) -> Any:
        """A random value in the trial's encoding (for the feasibility probe)."""
        raise NotImplementedError

    def values(self) -> list[Any]:
        """Every value this leaf can take (ranges: their ends), for static checks."""
        raise NotImplementedError

    def default(self) -> Any:
        """The value used for the named reference architectures' training settings."""
        raise NotImplementedError


@dataclass(frozen=True)
class Const(Param):
    value: Any

    def suggest(self, trial: Any, name: str) -> Any:
        return self.value

    def draw(self, rng: random.Random) -> Any:
        return self.value

    def values(self) -> list[Any]:
        return [self.value]

    def default(self) -> Any:
        return self.value


@dataclass(frozen=True)
class IntRange(Param):
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def draw(self, rng: random.Random) -> int:
        return rng.randrange(self.low, self.high + 1, self.step)

    def values(self) -> list[Any]:
        return [self.low, self.high]

    def default(self) -> int:
        return self.low


@dataclass(frozen=True)
class FloatRange(Param):
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def draw(self, rng: random.Random) -> float:
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def values(self) -> list[Any]:
        return [self.low, self.high]

    def default(self) -> float:
        return math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2


def _is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


@dataclass(frozen=True)
class Choice(Param):
    options: tuple[Any, ...]

    @property
    def _encoded(self) -> bool:
        return not all(_is_primitive(v) for v in self.options)

    def _encode(self, v: Any) -> Any:
        return json.dumps(v) if self._encoded else v

    def suggest(self, trial: Any, name: str) -> Any:
        choices = [self._encode(v) for v in self.options]
        value = trial.suggest_categorical(name, choices)
        return json.loads(value) if self._encoded else value

    def draw(self, rng: random.Random) -> Any:
        return self._encode(rng.choice(self.options))

    def values(self) -> list[Any]:
        return list(self.options)

    def default(self) -> Any:
        return self.options[0]


def _plain_value(v: Any) -> bool:
    """A value Optuna can store and JSON can encode: YAML scalars (no dates) and lists of them."""
    if isinstance(v, list | tuple):
        return all(_plain_value(x) for x in v)
    if isinstance(v, Mapping):
        return all(isinstance(k, str) and _plain_value(x) for k, x in v.items())
    return v is None or (isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v)))


def _bound(v: Any, path: str, integer: bool) -> int | float:
    """A range bound: an integer for ``int`` ranges, any finite number for ``float`` ones
    (numeric strings such as ``'1e-4'`` included, as everywhere user numbers are read)."""
    if integer:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{path}: expected an integer, got {brief(v)}")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float | str) or (isinstance(v, str) and len(v) > 40):
        raise UserError(f"{path}: expected a number, got {brief(v)}")
    return as_float(v, path)


def _parse_param(raw: Any, where: str) -> Param:
    """One leaf: a constant, or ``{int|float|choice: ...}``; every malformed form is one
    line naming the key, here rather than at the first trial (where it would be a traceback)."""
    if not isinstance(raw, Mapping):
        if not _plain_value(raw):
            raise UserError(f"{where}: expected a number, a string, true/false or a list, got {brief(raw)}")
        return Const(tuple(raw) if isinstance(raw, list) else raw)
    kinds = [k for k in ("int", "float", "choice") if k in raw]
    if len(kinds) != 1:
        raise UserError(
            f"{where}: expected one of 'int', 'float', 'choice' (or a constant), got {brief(dict(raw))}"
        )
    kind = kinds[0]
    extra = set(raw) - {kind, "log", "step"}
    if extra:
        raise UserError(f"{where}.{sorted(map(str, extra))[0]}: unknown key")
    spec = raw[kind]
    if kind == "choice":
        if not isinstance(spec, list) or not spec:
            raise UserError(f"{where}.choice: needs a non-empty list of values, got {brief(spec)}")
        for key in ("log", "step"):
            if key in raw:
                raise UserError(f"{where}.{key}: only int and float ranges take '{key}'")
        for i, v in enumerate(spec):
            if not _plain_value(v):
                raise UserError(f"{where}.choice[{i}]: expected a number, a string, true/false or a list")
        return Choice(tuple(tuple(v) if isinstance(v, list) else v for v in spec))
    if not (isinstance(spec, list) and len(spec) == 2):
        raise UserError(f"{where}.{kind}: needs [low, high], got {brief(spec)}")
    low, high = (_bound(v, f"{where}.{kind}[{i}]", kind == "int") for i, v in enumerate(spec))
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}.log: expected true or false, got {brief(log)}")
    if low > high:
        raise UserError(f"{where}.{kind}: empty range [{low}, {high}]")
    if log and low <= 0:
        raise UserError(f"{where}.{kind}: a log range needs low > 0, got {low}")
    if kind == "float":
        if "step" in raw:
            raise UserError(f"{where}.step: a float range takes no step (use a choice of values)")
        return FloatRange(float(low), float(high), log)
    step = raw.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise UserError(f"{where}.step: expected an integer >= 1, got {brief(step)}")
    if log and step != 1:
        raise UserError(f"{where}.step: a log range takes no step")
    return IntRange(int(low), int(high), step, log)


def _listed(value: Any) -> Any:
    """A leaf's value as the trainer's config reads it (tuples from constants as lists)."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class TaskMap(Param):
    """A per-task mapping of leaves, ``{task: leaf}`` (e.g. ``pos_weight: {income: {float:
    [1, 20]}}``); each task's leaf is the Optuna parameter ``<name>.<task>``. Task names are
    checked against the dataset's tasks when a trial's config is built."""

    items: tuple[tuple[str, Param], ...]

    def suggest(self, trial: Any, name: str) -> dict[str, Any]:
        return {task: _listed(p.suggest(trial, f"{name}.{task}")) for task, p in self.items}

    def leaves(self, name: str) -> dict[str, Param]:
        return {f"{name}.{task}": p for task, p in self.items}

    def values(self) -> list[Any]:
        """One single-task mapping per value a task's leaf can take (each checked alone)."""
        return [{task: _listed(v)} for task, p in self.items for v in p.values()]

    def default(self) -> dict[str, Any]:
        return {task: _listed(p.default()) for task, p in self.items}


def _parse_task_map(raw: Any, where: str) -> TaskMap:
    if raw is None:  # `pos_weight:` left empty
        return TaskMap(())
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping of task names to values or ranges, got {brief(raw)}")
    items = []
    for task, leaf in raw.items():
        if not isinstance(task, str) or not task:
            raise UserError(f"{where}: task names must be strings, got {brief(task)}")
        items.append((task, _parse_param(leaf, f"{where}.{task}")))
    return TaskMap(tuple(items))


#: The LossWeightingConfig fields holding per-task values, searchable in a method's block.
_PER_TASK_WEIGHTING_FIELDS = ("weights", "gamma")


@dataclass(frozen=True)
class LossWeightingSpace(Param):
    """``training.loss_weighting`` as ``{method: leaf, <method>: {option: leaf, ...}, ...}``.

    Parameters: ``<name>.method`` for the method and ``<name>.<method>.<option>`` for its
    options (``<name>.<method>.weights.<task>`` for per-task weights). ``suggest`` returns
    the mapping :meth:`LossWeightingConfig.from_dict` reads: ``{"method": m, **options}``.
    """

    method: Param
    blocks: tuple[tuple[str, tuple[tuple[str, Param], ...]], ...]

    def suggest(self, trial: Any, name: str, encoding: str = "conditional") -> dict[str, Any]:
        method = self.method.suggest(trial, f"{name}.method")
        out: dict[str, Any] = {"method": method}
        for m, block in self.blocks:
            if m != method and encoding != "fixed":
                continue  # fixed: every trial samples every block, only the drawn one is used
            values = {key: p.suggest(trial, f"{name}.{m}.{key}") for key, p in block}
            if m == method:
                out.update({k: _listed(v) for k, v in values.items()})
        return out

    def leaves(self, name: str) -> dict[str, Param]:
        out: dict[str, Param] = {f"{name}.method": self.method}
        for m, block in self.blocks:
            for key, p in block:
                path = f"{name}.{m}.{key}"
                out.update(p.leaves(path) if isinstance(p, TaskMap) else {path: p})
        return out

    def values(self) -> list[Any]:
        return [self._config(m, {}) for m in self.method.values()]

    def default(self) -> dict[str, Any]:
        method = self.method.default()
        return self._config(method, {k: p.default() for k, p in dict(self.blocks).get(method, ())})

    @staticmethod
    def _config(method: Any, values: Mapping[str, Any]) -> dict[str, Any]:
        return {"method": method, **{k: _listed(v) for k, v in values.items()}}

    def check(self, src: str, path: str) -> None:
        """Every method the space can draw is registered and builds with every end of its
        options' ranges (an optional extra it needs, too); raises one-line UserErrors."""
        from mtlsearch.train import LOSS_WEIGHTINGS, LossWeightingConfig

        methods = self.method.values()
        for m in methods:
            if not isinstance(m, str) or m not in LOSS_WEIGHTINGS:
                raise UserError(
                    f"{src}: {path}.method: unknown method {brief(m)}; "
                    f"expected one of {sorted(LOSS_WEIGHTINGS)}"
                )
        blocks = dict(self.blocks)
        for m, block in self.blocks:
            if m not in methods:
                raise UserError(
                    f"{src}: {path}.{m}: options for method {m!r}, which {path}.method never takes "
                    f"(its values are {brief(methods)})"
                )
            cls = LOSS_WEIGHTINGS[m]
            for key, p in block:
                where = f"{path}.{m}.{key}"
                if key in _PER_TASK_WEIGHTING_FIELDS:
                    if key not in cls.accepts:
                        raise UserError(f"{src}: {where}: not used by method {m!r}")
                    continue  # values checked with the whole config below
                spec = cls.options.get(key)
                if spec is None:
                    known = sorted(cls.options) + sorted(set(cls.accepts) & set(_PER_TASK_WEIGHTING_FIELDS))
                    raise UserError(
                        f"{src}: {where}: not an option of method {m!r}"
                        + (f"; its options are {known}" if known else " (it has none)")
                    )
                for v in p.values():
                    spec.check(v, f"{src}: {where}")
        for m in methods:
            block = blocks.get(m, ())
            trials = [{}] + [{key: v} for key, p in block for v in p.values()]
            for values in trials:
                try:
                    LossWeightingConfig.from_dict(self._config(m, values))
                except (UserError, ValueError, TypeError) as exc:
                    msg = str(exc)
                    if msg.startswith(f"{path}.") and not msg.startswith(f"{path}.method"):
                        msg = f"{path}.{m}.{msg[len(path) + 1 :]}"  # the block's path
                    raise UserError(_clip(f"{src}: {msg}")) from None


def _parse_loss_weighting(raw: Any, where: str) -> Param:
    """``training.loss_weighting``: a leaf (the old form, kept: its parameter is
    ``training.loss_weighting``), or ``{method: leaf, <method>: {option: leaf}}``."""
    leaf_form = any(k in raw for k in ("int", "float", "choice")) if isinstance(raw, Mapping) else True
    if leaf_form and not (isinstance(raw, Mapping) and "method" in raw):
        return _parse_param(raw, where)
    if "method" not in raw:
        raise UserError(
            f"{where}.method: missing; write method: NAME or method: {{choice: [NAME, ...]}}, and each "
            "method's options in a block named after it"
        )
    from mtlsearch.train import LOSS_WEIGHTINGS

    method = _parse_param(raw["method"], f"{where}.method")
    blocks = []
    for m, block in raw.items():
        if m == "method":
            continue
        if not isinstance(m, str) or m not in LOSS_WEIGHTINGS:
            owners = sorted(n for n, cls in LOSS_WEIGHTINGS.items() if m in cls.options)
            hint = (
                f"; write a method's options in a block named after it, e.g. {owners[0]}: {{{m}: ...}}"
                if owners
                else f"; expected 'method' or a block of options named after a method "
                f"{sorted(LOSS_WEIGHTINGS)}"
            )
            raise UserError(f"{where}.{m}: unknown key{hint}")
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise UserError(f"{where}.{m}: expected a mapping of method {m!r}'s options, got {brief(block)}")
        leaves = []
        for key, leaf in block.items():
            path = f"{where}.{m}.{key}"
            if key in _PER_TASK_WEIGHTING_FIELDS:
                leaves.append((str(key), _parse_task_map(leaf, path)))
            else:
                leaves.append((str(key), _parse_param(leaf, path)))
        blocks.append((m, tuple(leaves)))
    return LossWeightingSpace(method, tuple(blocks))


# ---- entire-space chained tasks (ESMM / ESCM²) ------------------------------------------------
_CHAINED_KEYS = {"task", "product_of", "enabled", "loss", "ips_weight"}


@dataclass(frozen=True)
class ChainSpace:
    """``chained:``: whether a data task is made the product of others (ESMM), and the last
    factor's own loss (``none``: ESMM; ``direct``: masked to its sample space; ``ips``:
    ESCM²'s regulariser, weighted by ``ips_weight``)::

        chained:
          task: ctcvr                      # a task of the data ...
          product_of: [ctr, cvr]           # ... made ctr x cvr (when enabled)
          enabled: {choice: [false, true]} # parameter chained.enabled
          loss: {choice: [none, direct, ips]}            # chained.loss
          ips_weight: {float: [0.01, 1.0], log: true}    # chained.ips_weight (loss ips only)

    Disabled, the task keeps its own tower (the MTReclib setting), so every trial predicts
    the same tasks. Only for data with these tasks (the AliExpress and Ali-CCP built-ins:
    ctr, cvr, ctcvr); a trial on other data is a one-line UserError.
    """

    task: str
    product_of: tuple[str, ...]
    enabled: Param
    loss: Param
    ips_weight: Param | None

    def leaves(self) -> dict[str, Param]:
        out = {"chained.enabled": self.enabled, "chained.loss": self.loss}
        if self.ips_weight is not None:
            out["chained.ips_weight"] = self.ips_weight
        return out

    def apply(self, trial: Any, tasks: tuple[TaskSpec, ...], encoding: str) -> tuple[TaskSpec, ...]:
        """``tasks`` (the data's) with the chain the trial draws."""
        names = [t.name for t in tasks]
        fields_ = [("chained.task", self.task)]
        fields_ += [(f"chained.product_of[{i}]", f) for i, f in enumerate(self.product_of)]
        for where, name in fields_:
            if name not in names:
                raise UserError(f"{where}: the data has no task {name!r}; its tasks are {names}")
            kind = tasks[names.index(name)].kind
            if kind != "binary":  # a product of probabilities: the same for every draw
                raise UserError(
                    f"{where}: the data's task {name!r} is {kind}; a chained task and its factors "
                    "must be binary"
                )
        enabled = self.enabled.suggest(trial, "chained.enabled")
        sample = enabled or encoding == "fixed"
        loss = self.loss.suggest(trial, "chained.loss") if sample else "direct"
        weight = None
        if self.ips_weight is not None and (loss == "ips" or encoding == "fixed"):
            weight = as_float(self.ips_weight.suggest(trial, "chained.ips_weight"), "chained.ips_weight")
        if not enabled:
            return tasks
        last = self.product_of[-1]
        out = []
        for t in tasks:
            if t.name == self.task:
                t = replace(t, product_of=self.product_of)
            elif t.name == last:
                t = replace(t, loss=loss, ips_weight=weight if loss == "ips" else None)
            out.append(t)
        return tuple(out)

    def check(self, src: str) -> None:
        for v in self.enabled.values():
            if not isinstance(v, bool):
                raise UserError(f"{src}: chained.enabled: needs true/false, got {brief(v)}")
        for v in self.loss.values():
            if v not in FACTOR_LOSSES:
                raise UserError(
                    f"{src}: chained.loss: unknown choice {brief(v)}; known {list(FACTOR_LOSSES)}"
                )
        for v in self.ips_weight.values() if self.ips_weight is not None else ():
            if isinstance(v, bool) or not isinstance(v, int | float | str) or as_float(v, f"{src}: x") < 0:
                raise UserError(f"{src}: chained.ips_weight: needs numbers >= 0, got {brief(v)}")


def _parse_chained(raw: Any, where: str) -> ChainSpace | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping with task, product_of, enabled, loss, ips_weight")
    _unknown(raw, _CHAINED_KEYS, f"{where}.")
    task, factors = raw.get("task"), raw.get("product_of")
    if not isinstance(task, str) or not task:
        raise UserError(f"{where}.task: expected a task name, got {brief(task)}")
    if not (isinstance(factors, list) and len(factors) >= 2):
        raise UserError(f"{where}.product_of: expected a list of at least 2 task names, got {brief(factors)}")
    for i, f in enumerate(factors):
        if not (isinstance(f, str) and f):
            raise UserError(f"{where}.product_of[{i}]: expected a task name, got {brief(f)}")
        if f == task:
            raise UserError(f"{where}.product_of[{i}]: {f!r} is the chained task itself (chained.task)")
        if f in factors[:i]:
            raise UserError(f"{where}.product_of[{i}]: {f!r} is listed twice; the factors must be distinct")
    return ChainSpace(
        task=task,
        product_of=tuple(factors),
        enabled=_parse_param(raw.get("enabled", True), f"{where}.enabled"),
        loss=_parse_param(raw.get("loss", "none"), f"{where}.loss"),
        ips_weight=_parse_param(raw["ips_weight"], f"{where}.ips_weight") if "ips_weight" in raw else None,
    )


# ---- the space ------------------------------------------------------------------------------

#: Most levels a space may ask for: a static check and every trial walk every level, and
#: networks in the PLE family have one to a few; more than this is a typo.
MAX_LEVELS = 32

_LEVEL_KEYS = {
    "n_shared",
    "n_specific",
    "per_task",
    "expert_hidden",
    "activation",
    "dropout",
    "select",
    "shared_gate",
    "gate_input",
    "gate_kind",
    "top_k",
    "gate_sharing",
    "norm",
    "fusion",
    "expert_norm",
    *LEVEL_NUMBERS,  # the gates' real-valued settings: balance_weight, smooth_step_gamma, entropy_weight
}
_TOWER_KEYS = {"hidden", "activation", "dropout", "norm"}
_TOWER_DEFAULTS: dict[str, Any] = {"hidden": (32,), "activation": "relu", "dropout": 0.0, "norm": "none"}
_TRAINING_KEYS = {
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "epochs",
    "patience",
    "monitor",
    "loss_weighting",
    "seed",
}
#: TrainConfig fields holding one value per task (a space gives a leaf per task); searchable
#: when the trainer has them.
_TASK_MAP_KEYS = ("pos_weight", "class_weights")


def _training_keys() -> set[str]:
    """The ``training:`` keys a space may set: the fixed ones, and the per-task fields the
    installed TrainConfig has."""
    from dataclasses import fields

    from mtlsearch.train import TrainConfig

    return _TRAINING_KEYS | ({f.name for f in fields(TrainConfig)} & set(_TASK_MAP_KEYS))


def _parse_training(key: str, raw: Any, where: str) -> Param:
    if key == "loss_weighting":
        return _parse_loss_weighting(raw, where)
    if key in _TASK_MAP_KEYS:
        return _parse_task_map(raw, where)
    return _parse_param(raw, where)


_TOP_KEYS = {
    "name",
    "description",
    "levels",
    "level",
    "tower",
    "embedding_dim",
    "embed_init_std",
    "task_embedding_dim",
    "training",
    "reference",
    "encoding",
    "chained",
}
_REFERENCE_KEYS = {"presets", "sizes", "training"}

# Which builder vocabulary each key's choices must come from.
_VOCAB: dict[str, tuple[Any, ...]] = {
    "select": get_args(GateSelect),
    "gate_input": get_args(GateInput),
    "gate_kind": get_args(GateKind),
    "gate_sharing": get_args(GateSharing),
    "norm": get_args(Norm),
    "fusion": get_args(Fusion),
    "expert_norm": get_args(ExpertNorm),
    "activation": ACTIVATIONS,
    "shared_gate": (True, False, "auto"),
    "per_task": (True, False),
}

_LEVEL_DEFAULTS: dict[str, Any] = {
    "n_shared": 2,
    "n_specific": 1,
    "per_task": False,
    "expert_hidden": (64,),
    "activation": "relu",
    "dropout": 0.0,
    "select": "own+shared",
    "shared_gate": "auto",
    "gate_input": "level",
    "gate_kind": "softmax",
    "top_k": 2,
    "gate_sharing": "per_task",
    "norm": "none",
    "fusion": "gate",
    "expert_norm": "none",
    **{f.name: f.default for f in fields(LevelConfig) if f.name in LEVEL_NUMBERS},
}


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, statically checked search space. Build with :meth:`load` or :meth:`from_dict`."""

    name: str
    levels: Param
    level: Mapping[str, Param]
    tower: Mapping[str, Param]
    embedding_dim: Param
    embed_init_std: Param | None  # None: the input spec's own (nn.Embedding's N(0, 1) by default)
    task_embedding_dim: Param | None  # None: the input spec's own (0: no STEM embeddings)
    training: Mapping[str, Param]
    encoding: str
    reference_presets: tuple[str, ...]
    reference_sizes: Mapping[str, Any]
    reference_training: Mapping[str, Any]
    source: str = "<space>"
    text: str = ""
    chained: ChainSpace | None = None  # ESMM / ESCM² choices (see ChainSpace)

    # ---- construction ----
    @classmethod
    def read(cls, path: str | Path) -> SearchSpace:
        """Read, parse and check a space file (at most 1 MiB, no YAML aliases; see
        :mod:`mtlsearch._yaml`). The file's text is kept in ``.text``: a study stores it, so
        a resumed or joined search rebuilds the same space without the file."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: search space file not found")
        text, data = read_yaml_file(path, "search space file")
        return cls.from_dict(data, source=str(path), text=text)

    #: Same as :meth:`read`.
    load = read

    @classmethod
    def from_yaml(cls, text: str, source: str = "<space>") -> SearchSpace:
        """Parse a space from its text (a stored study's copy, or a test's), with the same
        limits as :meth:`read`."""
        return cls.from_dict(load_yaml(text, source, what="search space file"), source=source, text=text)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>", text: str = "") -> SearchSpace:
        if not isinstance(data, Mapping):
            got = "nothing (the file is empty)" if data is None else brief(data)
            raise UserError(f"{source}: a search space must be a mapping of keys to values, got {got}")

        def where(key: str) -> str:
            return f"{source}: {key}"

        _unknown(data, _TOP_KEYS, where(""))
        for section, keys in (("level", _LEVEL_KEYS), ("tower", _TOWER_KEYS), ("training", _training_keys())):
            if section in data and not isinstance(data[section], Mapping):
                raise UserError(f"{where(section)}: expected a mapping")
            _unknown(data.get(section, {}), keys, where(f"{section}."))
        level = {
            k: _parse_param(data.get("level", {}).get(k, v), where(f"level.{k}"))
            for k, v in _LEVEL_DEFAULTS.items()
        }
        tower = {
            k: _parse_param(data.get("tower", {}).get(k, v), where(f"tower.{k}"))
            for k, v in _TOWER_DEFAULTS.items()
        }
        training = {
            k: _parse_training(k, v, where(f"training.{k}")) for k, v in data.get("training", {}).items()
        }
        ref = data.get("reference", {}) or {}
        if not isinstance(ref, Mapping):
            raise UserError(f"{where('reference')}: expected a mapping")
        _unknown(ref, _REFERENCE_KEYS, where("reference."))
        presets = ref.get("presets", ["single_task", "shared_bottom", "mmoe", "cgc", "ple"])
        if not isinstance(presets, list):
            raise UserError(
                f"{where('reference.presets')}: expected a list of preset names, got {brief(presets)}"
            )
        for p in presets:
            if not isinstance(p, str) or p not in PRESETS:
                raise UserError(
                    f"{where('reference.presets')}: unknown preset {brief(p)}; known: {sorted(PRESETS)}"
                )
        for key in ("sizes", "training"):
            if not isinstance(ref.get(key) or {}, Mapping):
                raise UserError(f"{where(f'reference.{key}')}: expected a mapping, got {brief(ref[key])}")
        encoding = data.get("encoding", "auto")
        if encoding not in ("auto", "fixed", "conditional"):
            raise UserError(
                f"{where('encoding')}: expected auto, fixed or conditional, got {brief(encoding)}"
            )
        name = data.get("name", Path(source).stem)
        if isinstance(name, bool) or not isinstance(name, str | int | float):
            raise UserError(f"{where('name')}: expected a string, got {brief(name)}")
        space = cls(
            name=str(name),
            levels=_parse_param(data.get("levels", 1), where("levels")),
            level=level,
            tower=tower,
            embedding_dim=_parse_param(data.get("embedding_dim", 8), where("embedding_dim")),
            embed_init_std=(
                _parse_param(data["embed_init_std"], where("embed_init_std"))
                if "embed_init_std" in data
                else None
            ),
            task_embedding_dim=(
                _parse_param(data["task_embedding_dim"], where("task_embedding_dim"))
                if "task_embedding_dim" in data
                else None
            ),
            training=training,
            encoding=encoding,
            reference_presets=tuple(presets),
            reference_sizes=dict(ref.get("sizes", {}) or {}),
            reference_training=dict(ref.get("training", {}) or {}),
            source=source,
            text=text,
            chained=_parse_chained(data.get("chained"), where("chained")),
        )
        space._check_static()
        return space

    def _check_static(self) -> None:
        """Every value a trial could draw, checked now: a bad space fails before the storage
        is touched, not as a traceback in the first trial that samples the bad end."""
        src = self.source
        if self.chained is not None:
            self.chained.check(src)
        for key, param in self.level.items():
            for v in param.values():
                if key in _VOCAB and v not in _VOCAB[key]:
                    raise UserError(
                        f"{src}: level.{key}: unknown choice {brief(v)}; "
                        f"the builder knows {list(_VOCAB[key])}"
                    )
        for key in ("activation", "norm"):
            for v in self.tower[key].values():
                if v not in _VOCAB[key]:
                    raise UserError(
                        f"{src}: tower.{key}: unknown choice {brief(v)}; known {list(_VOCAB[key])}"
                    )
        for v in self.embed_init_std.values() if self.embed_init_std else ():
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float | str)
                or as_float(v, f"{src}: embed_init_std") <= 0
            ):
                raise UserError(f"{src}: embed_init_std: needs numbers > 0, got {brief(v)}")
        for v in self.task_embedding_dim.values() if self.task_embedding_dim else ():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"{src}: task_embedding_dim: needs integers >= 0, got {brief(v)}")
        for v in self.levels.values():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_LEVELS:
                raise UserError(f"{src}: levels: needs integers from 1 to {MAX_LEVELS}, got {brief(v)}")
        for key, check in LEVEL_NUMBERS.items():
            for v in self.level[key].values():
                if isinstance(v, bool) or not isinstance(v, int | float | str):
                    raise UserError(f"{src}: level.{key}: needs numbers, got {brief(v)}")
                check(v, f"{src}: level.{key}")
        for key in ("n_shared", "n_specific", "top_k"):
            for v in self.level[key].values():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise UserError(f"{src}: level.{key}: needs integers >= 0, got {brief(v)}")
        for v in self.embedding_dim.values():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{src}: embedding_dim: needs integers >= 1, got {brief(v)}")
        for key, param in (
            ("level.expert_hidden", self.level["expert_hidden"]),
            ("tower.hidden", self.tower["hidden"]),
        ):
            for v in param.values():
                if not isinstance(v, tuple | list):
                    raise UserError(
                        f"{src}: {key}: needs lists of layer widths such as [64, 32], got {brief(v)}"
                    )
        from mtlsearch.train import TrainConfig

        for key, param in self.training.items():
            if isinstance(param, LossWeightingSpace):
                param.check(src, f"training.{key}")
                continue
            for v in param.values():
                try:
                    TrainConfig.from_dict({key: list(v) if isinstance(v, tuple) else v})
                except (UserError, ValueError, TypeError) as exc:
                    raise UserError(_clip(f"{src}: {exc}")) from None
        try:
            TrainConfig.from_dict(dict(self.reference_training))
        except (UserError, ValueError, TypeError) as exc:
            raise UserError(_clip(f"{src}: reference.{exc}")) from None

    # ---- mapping a trial to a config ----
    @property
    def max_levels(self) -> int:
        return max(self.levels.values())

    def resolved_encoding(self, sampler: str) -> str:
        if self.encoding != "auto":
            return self.encoding
        return "fixed" if sampler == "nsga2" else "conditional"

    def suggest(
        self,
        trial: Any,
        inputs: Any,
        tasks: Sequence[TaskSpec],
        encoding: str = "conditional",
    ) -> Any:
        """Map a trial to an :class:`ExperimentConfig` (raises ConfigError if it cannot build).

        ``inputs`` is an ``MTLDataset`` (anything with ``input_spec(embed_dim)``) or an
        :class:`InputSpec` used as is.
        """
        from mtlsearch.train import ExperimentConfig, TrainConfig

        tasks = tuple(tasks)
        if self.chained is not None:  # ESMM: a product task has no experts, gate or tower
            tasks = self.chained.apply(trial, tasks, encoding)
        routed = tuple(t for t in tasks if not t.product_of)
        ted = None
        if self.task_embedding_dim is not None:
            # Sampled first, and only for data with categorical features (no task tables without
            # them: a drawn size would be recorded but train as 0). Every trial on the same data
            # has the same parameters, so this holds for the fixed encoding too.
            has_tables = bool((inputs if isinstance(inputs, InputSpec) else inputs.input_spec(1)).categorical)
            ted = self.task_embedding_dim.suggest(trial, "task_embedding_dim") if has_tables else 0
        stem = bool(ted) and len(routed) > 1  # STEM's gates are per task: gate_sharing is forced
        n_levels = self.levels.suggest(trial, "levels")
        built = self.max_levels if encoding == "fixed" else n_levels
        raw_levels = [self._suggest_level(trial, i, routed, encoding, stem) for i in range(built)][:n_levels]
        levels = []
        for i, lv in enumerate(raw_levels):
            above = raw_levels[i + 1] if i + 1 < n_levels else None
            levels.append(self._finish_level(lv, above, routed))
        tower = TowerConfig(
            hidden=tuple(self.tower["hidden"].suggest(trial, "tower.hidden")),
            activation=self.tower["activation"].suggest(trial, "tower.activation"),
            dropout=self.tower["dropout"].suggest(trial, "tower.dropout"),
            norm=self.tower["norm"].suggest(trial, "tower.norm"),
        )
        embed = self.embedding_dim.suggest(trial, "embedding_dim")
        spec = inputs if isinstance(inputs, InputSpec) else inputs.input_spec(embed)
        if self.embed_init_std is not None:
            spec = replace(spec, embed_init_std=float(self.embed_init_std.suggest(trial, "embed_init_std")))
        if ted is not None:
            spec = replace(spec, task_embedding_dim=ted)
        arch = ArchConfig(
            inputs=spec,
            tasks=tasks,
            levels=tuple(levels),
            towers=(tower,) * len(routed),
            name=f"{self.name}-trial",
        )
        training = {
            k: p.suggest(trial, f"training.{k}", encoding)
            if isinstance(p, LossWeightingSpace)
            else _listed(p.suggest(trial, f"training.{k}"))
            for k, p in self.training.items()
        }
        return ExperimentConfig(model=arch, training=TrainConfig.from_dict(training))

    def _suggest_level(
        self,
        trial: Any,
        i: int,
        tasks: tuple[TaskSpec, ...],
        encoding: str = "conditional",
        stem: bool = False,
    ) -> dict[str, Any]:
        """Level ``i``'s values. A value another one forces is not sampled under the
        conditional encoding, so a trial's parameters are what trained: ``select`` when the
        level's ``fusion`` is ``adatt`` (AdaTT mixes every expert: ``all``), ``gate_sharing``
        when ``stem`` (task-specific embeddings: per-task gates) or when ``select`` is
        ``own+shared`` with several tasks (a single gate for all tasks cannot mix each task's
        own experts: per-task gates). The fixed encoding samples them in every trial (NSGA-II
        needs the same parameters in each) and uses the forced value, as it does for the
        levels a trial leaves out. Likewise a gate's settings (``gate_input``,
        ``gate_sharing``, ``top_k``, ``balance_weight``, ``smooth_step_gamma``,
        ``entropy_weight``: :data:`~mtlsearch.arch._config.GATE_KIND_FIELDS`) are sampled
        only for a gate kind that reads them, when the space's ``gate_kind`` can be one that
        does not. A level without shared experts draws its task-specific counts so that every
        gate sees an expert (:meth:`_n_specific`)."""
        p = f"l{i}."
        conditional = encoding != "fixed"
        multi_task = len(tasks) > 1
        skip = {"n_specific", "per_task"}
        late_select = conditional and "adatt" in self.level["fusion"].values()
        if late_select:
            skip.add("select")  # drawn after fusion, below (order kept for spaces without adatt)
        kinds = set(self.level["gate_kind"].values())
        gated = [  # drawn after gate_kind, only for a gate that reads them
            k for k, readers in GATE_KIND_FIELDS.items()
            if conditional and not isinstance(self.level[k], Const) and not kinds <= readers
        ]  # fmt: skip
        skip.update(gated)
        # select own+shared on several tasks forces per-task gates, so gate_sharing is drawn
        # after select: late when select is late (at its old place when select comes first)
        sharing_follows_select = (
            multi_task
            and not isinstance(self.level["gate_sharing"], Const)
            and "own+shared" in self.level["select"].values()
        )
        late_sharing = conditional and (
            stem or "gate_sharing" in gated or (sharing_follows_select and late_select)
        )
        if late_sharing:
            skip.add("gate_sharing")

        def sharing_forced() -> bool:
            return stem or (sharing_follows_select and lv["select"] == "own+shared")

        lv: dict[str, Any] = {}
        for k in _LEVEL_DEFAULTS:
            if k in skip:
                continue
            if k == "gate_sharing" and conditional and sharing_forced():
                lv[k] = "per_task"  # not sampled: select (drawn above) forces it
                continue
            lv[k] = self.level[k].suggest(trial, p + k)
        for k in gated:
            if k == "gate_sharing":
                continue  # after select, below
            read = lv["gate_kind"] in GATE_KIND_FIELDS[k]
            lv[k] = self.level[k].suggest(trial, p + k) if read else _LEVEL_DEFAULTS[k]
        if late_select:
            lv["select"] = (
                "all" if lv["fusion"] == "adatt" else self.level["select"].suggest(trial, p + "select")
            )
        if lv["fusion"] == "adatt":  # the fixed encoding's drawn select: AdaTT mixes every expert
            lv["select"] = "all"
        if late_sharing:
            read = "gate_sharing" not in gated or lv["gate_kind"] in GATE_KIND_FIELDS["gate_sharing"]
            if sharing_forced() or not read:
                lv["gate_sharing"] = "per_task" if read else _LEVEL_DEFAULTS["gate_sharing"]
            else:
                lv["gate_sharing"] = self.level["gate_sharing"].suggest(trial, p + "gate_sharing")
        elif sharing_forced():  # the fixed encoding: sampled above, the forced value trains
            lv["gate_sharing"] = "per_task"
        per_task = self.level["per_task"].suggest(trial, p + "per_task")
        # Without shared experts a gate sees only task-specific ones: under own+shared each
        # task's own, under all (AdaTT too) every task's
        alone = lv["n_shared"] == 0 and lv["select"] in ("own+shared", "all")
        if per_task:
            counts: list[int] = []
            for k, t in enumerate(tasks):
                last = k == len(tasks) - 1
                need = alone and (lv["select"] == "own+shared" or (last and not any(counts)))
                counts.append(self._n_specific(trial, f"{p}n_specific.{t.name}", need, conditional))
            lv["n_specific"] = tuple(counts)
        else:
            lv["n_specific"] = (self._n_specific(trial, p + "n_specific", alone, conditional),) * len(tasks)
        lv["expert_hidden"] = tuple(lv["expert_hidden"])
        return lv

    def _n_specific(self, trial: Any, name: str, at_least_one: bool, conditional: bool) -> int:
        """A task-specific expert count; ``at_least_one`` when a gate would otherwise see no
        expert (a level without shared experts). Then an integer range that starts at 0 is
        drawn from its first value >= 1 under the conditional encoding (the trial's parameter
        is what trained); the fixed encoding draws the whole range (NSGA-II needs the same
        distribution in every trial) and trains the smallest count >= 1 the space has in
        place of a 0. A choice or constant that gives 0 is left to the config's check."""
        param = self.level["n_specific"]
        first = None
        if at_least_one and isinstance(param, IntRange) and param.low < 1:
            first = param.low + param.step * math.ceil((1 - param.low) / param.step)
            first = first if first <= param.high else None
        if first is not None and conditional:
            return IntRange(first, param.high, param.step, param.log).suggest(trial, name)
        value = param.suggest(trial, name)
        return first if first is not None and value < 1 else value

    @staticmethod
    def _finish_level(
        lv: dict[str, Any], above: dict[str, Any] | None, tasks: tuple[TaskSpec, ...]
    ) -> LevelConfig:
        """Deterministic repairs: ``shared_gate: auto`` means every level but the top (PLE's
        rule), and the top level never has one; ``top_k`` is capped at the smallest selection a
        gate sees; ``fusion: adatt`` selects every expert (``select: all``, what AdaTT's unit
        mixes). (With ``task_embedding_dim > 0`` :meth:`_suggest_level` also makes every gate per
        task: a single gate would carry every task's gradient into one task's embeddings.)"""
        lv = dict(lv)
        for key, check in LEVEL_NUMBERS.items():  # a constant may be a numeric string ('1e-2')
            lv[key] = check(lv[key], f"level.{key}")
        if lv["fusion"] == "adatt":  # AdaTT's fusion unit mixes every expert of the level
            lv["select"] = "all"
        if lv["shared_gate"] == "auto":
            lv["shared_gate"] = above is not None
        elif above is None:
            lv["shared_gate"] = False
        cfg = LevelConfig(**lv)
        if cfg.gate_kind in TOP_K_BOUNDED_GATES:
            sizes = [len(cfg.task_selection(k)) for k in range(len(tasks))]
            if cfg.shared_gate:
                sizes.append(cfg.n_experts)
            smallest = min(sizes)
            if smallest >= 1 and cfg.top_k > smallest:
                cfg = LevelConfig(**{**lv, "top_k": smallest})
        return cfg

    # ---- checks and references ----
    def check_feasible(
        self, inputs: Any, tasks: Sequence[TaskSpec], encoding: str, draws: int = 200, seed: int = 0
    ) -> float:
        """Fraction of random draws that build; a space where none does is a UserError, and
        so is one whose training fields name a task the data lacks (``pos_weight``)."""
        from optuna.trial import FixedTrial

        rng = random.Random(seed)
        names = self._param_leaves(tuple(tasks))
        ok, first_error = 0, None
        for _ in range(draws):
            params = {name: param.draw(rng) for name, param in names.items()}
            try:
                self.suggest(FixedTrial(params), inputs, tasks, encoding="fixed")
                ok += 1
            except ConfigError as exc:
                first_error = first_error or str(exc)
            except UserError as exc:  # a training field naming a task the data lacks: every draw
                raise UserError(_clip(f"{self.source}: {exc}")) from None
        if ok == 0:
            raise UserError(
                f"{self.source}: no combination in this space builds a network "
                f"(in {draws} random draws), e.g. {first_error}"
            )
        return ok / draws

    def _param_leaves(self, tasks: tuple[TaskSpec, ...]) -> dict[str, Param]:
        leaves: dict[str, Param] = {"levels": self.levels}
        for i in range(self.max_levels):
            for k, param in self.level.items():
                if k == "n_specific":
                    leaves[f"l{i}.n_specific"] = param
                    leaves.update({f"l{i}.n_specific.{t.name}": param for t in tasks})
                else:
                    leaves[f"l{i}.{k}"] = param
        leaves.update({f"tower.{k}": v for k, v in self.tower.items()})
        leaves["embedding_dim"] = self.embedding_dim
        if self.chained is not None:
            leaves.update(self.chained.leaves())
        if self.embed_init_std is not None:
            leaves["embed_init_std"] = self.embed_init_std
        if self.task_embedding_dim is not None:
            leaves["task_embedding_dim"] = self.task_embedding_dim
        for k, v in self.training.items():
            name = f"training.{k}"
            leaves.update(v.leaves(name) if isinstance(v, LossWeightingSpace | TaskMap) else {name: v})
        return leaves

    def reference_configs(self, inputs: Any, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
        """The named architectures (enqueued as the first trials), with the space's training
        defaults overridden by ``reference.training``."""
        from mtlsearch.train import ExperimentConfig, TrainConfig

        training = {k: p.default() for k, p in self.training.items()}
        training.update(self.reference_training)
        embed = self.reference_sizes.get("embedding_dim", self.embedding_dim.default())
        spec = inputs if isinstance(inputs, InputSpec) else inputs.input_spec(embed)
        sizes = {k: v for k, v in self.reference_sizes.items() if k != "embedding_dim"}
        sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}
        train_cfg = TrainConfig.from_dict(training)
        try:
            return {
                name: ExperimentConfig(model=preset(name, spec, tuple(tasks), **sizes), training=train_cfg)
                for name in self.reference_presets
            }
        except (ConfigError, TypeError) as exc:
            raise UserError(f"{self.source}: reference.sizes: {exc}") from None


# ---- command-line overrides -------------------------------------------------------------------
def _override_keys(path: Sequence[str]) -> set[str] | None:
    """The keys allowed below ``path`` (a prefix of an override), or None for any key."""
    sections = {
        "level": _LEVEL_KEYS,
        "tower": _TOWER_KEYS,
        "training": _TRAINING_KEYS,
        "chained": _CHAINED_KEYS,
    }
    if not path:
        return _TOP_KEYS
    head, rest = path[0], list(path[1:])
    if head in sections and not rest:
        return _training_keys() if head == "training" else sections[head]
    if head == "training":
        return _training_override_keys(rest)
    if head == "reference":
        if not rest:
            return _REFERENCE_KEYS
        if rest == ["training"]:
            return _TRAINING_KEYS
        if rest == ["sizes"]:
            return None  # preset keyword arguments: checked when the presets are built
    return set()


def _training_override_keys(rest: Sequence[str]) -> set[str] | None:
    """Keys below ``training.<rest>``: a loss weighting's method and option blocks, a
    method's options, and task names in per-task mappings (None: any key)."""
    from mtlsearch.train import LOSS_WEIGHTINGS

    if rest[0] in _TASK_MAP_KEYS and len(rest) == 1:
        return None
    if rest[0] != "loss_weighting":
        return set()
    if len(rest) == 1:
        return {"method"} | set(LOSS_WEIGHTINGS)
    cls = LOSS_WEIGHTINGS.get(rest[1])
    if cls is None:
        return set()
    if len(rest) == 2:
        return set(cls.options) | (set(cls.accepts) & set(_PER_TASK_WEIGHTING_FIELDS))
    if len(rest) == 3 and rest[2] in _PER_TASK_WEIGHTING_FIELDS:
        return None
    return set()


def _drop_unused_blocks(data: dict[str, Any], keys: Sequence[str]) -> None:
    """After ``--set training.loss_weighting.method=...``, the space's option blocks of the
    methods the new value leaves out are dropped (narrowing a space's methods is one
    override), except blocks an override sets itself."""
    method_key = "training.loss_weighting.method"
    lw = (data.get("training") or {}).get("loss_weighting")
    if method_key not in keys or not isinstance(lw, dict):
        return
    try:
        methods = _parse_param(lw.get("method"), method_key).values()
    except UserError:
        return  # from_dict reports it
    for block in [k for k in lw if k != "method" and k not in methods]:
        if not any(k.startswith(f"training.loss_weighting.{block}") for k in keys):
            del lw[block]


def apply_overrides(text: str, overrides: Sequence[str], source: str = "<space>") -> str:
    """The space's text with ``--set PATH=VALUE`` overrides applied, as the YAML a study stores.

    ``PATH`` is a dotted key of the space (``training.epochs``, ``levels``,
    ``level.n_shared``, ``tower.hidden``, ``reference.training.lr``); ``VALUE`` is read by
    :func:`mtlsearch._yaml.option_value`, so it may be a constant (``2``, ``1e-3``, ``[16]``)
    or a range (``{int: [1, 3]}``). The result keeps a comment line per override and is
    parsed and checked like any space. Raises :class:`UserError` (one line naming the
    override) for a malformed pair or a path the space grammar does not have.
    ``training.loss_weighting.method=...`` narrows a space's balancing methods: the option
    blocks of the methods it leaves out go with them.
    """
    if not overrides:
        return text
    data = load_yaml(text, source, what="search space file")
    if not isinstance(data, Mapping):
        return text  # from_dict reports it
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected PATH=VALUE, e.g. training.epochs=2")
        parts = key.split(".")
        node: dict[str, Any] = data
        for i, part in enumerate(parts):
            allowed = _override_keys(parts[:i])
            if allowed == set():
                leaf = ".".join(parts[:i])
                raise UserError(f"--set {key}: {leaf} takes a value, not keys; write --set {leaf}=VALUE")
            if allowed is not None and part not in allowed:
                where = ".".join(parts[:i]) or "the space"
                raise UserError(
                    f"--set {key}: unknown key {part!r} in {where}; expected one of {sorted(allowed)}"
                )
            if i == len(parts) - 1:
                node[part] = option_value(raw, f"--set {key}")
                break
            child = node.get(part)
            if child is None:
                child = {}
            elif parts[: i + 1] == ["training", "loss_weighting"] and not (
                isinstance(child, Mapping) and "method" in child
            ):
                child = {"method": child}  # the leaf form, as the method of the block form
            elif not isinstance(child, Mapping):
                raise UserError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node[part] = child = dict(child)
            node = child
    _drop_unused_blocks(data, [item.partition("=")[0].strip() for item in overrides])
    header = "".join(f"# --set {item}\n" for item in overrides)
    return header + dump_yaml(data)


def _clip(message: str, limit: int = 300) -> str:
    """A message from a lower layer, cut to ``limit`` characters (it may quote a user's
    value whole, and a value can be a list of 100,000 numbers)."""
    return message if len(message) <= limit else message[:limit] + "..."


def _unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise UserError(f"{where}{key}: unknown key; expected one of {sorted(known)}")
