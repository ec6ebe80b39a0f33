"""The architecture config: an immutable, validated description of a whole MTL network.

A config is data. It names the input encoder, the tasks, the extraction levels and the
towers; :func:`mtlsearch.arch.build_model` turns it into a module. Every member of the
MTL family (single-task, shared-bottom, OMoE, MMoE, multi-level MMoE, CGC, PLE) and the
wirings in between are values of this one type, which is what lets a search walk them.

Validation happens in ``__post_init__`` so an invalid config cannot exist; every error is
a :class:`ConfigError` naming the field path (``levels[1].n_specific[0]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from mtlsearch._errors import UserError, as_float
from mtlsearch._yaml import dump_yaml, load_yaml, read_yaml_file
from mtlsearch.arch._chained import FACTOR_LOSSES, ChainError, check_chains

TaskKind = Literal["binary", "regression", "multiclass"]
GateSelect = Literal["own+shared", "shared", "all"]
GateInput = Literal["level", "raw"]
GateKind = Literal["softmax", "topk", "none", "dselect_k", "noisy_top_k"]
GateSharing = Literal["per_task", "single"]
Norm = Literal["none", "batch"]
#: How a level's task outputs are formed: the gate's mixture (MMoE/PLE), or AdaTT's fusion
#: unit (the gate's mixture of every expert plus a linear combination of the task's own).
Fusion = Literal["gate", "adatt"]
#: Normalisation of each expert's output before the gates mix them (HoME).
ExpertNorm = Literal["none", "batch", "layer"]

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "identity")

#: Gate kinds that keep ``top_k`` of the experts a gate sees: ``top_k`` may not exceed the
#: smallest selection (a DSelect-k gate's ``top_k`` selectors may pick the same expert, so
#: it has no such bound).
TOP_K_BOUNDED_GATES = frozenset({"topk", "noisy_top_k"})
#: Gate kinds that read ``top_k``.
TOP_K_GATES = TOP_K_BOUNDED_GATES | {"dselect_k"}
#: Gate kinds with gates: every kind but ``none`` (the plain mean of the selected experts,
#: which reads no input and is the same for every task).
LEARNED_GATES = frozenset(k for k in get_args(GateKind) if k != "none")
#: The level fields only some gate kinds read, and those kinds (a search samples such a field
#: only for a gate that reads it; elsewhere it is inert).
GATE_KIND_FIELDS: dict[str, frozenset[str]] = {
    "gate_input": LEARNED_GATES,
    "gate_sharing": LEARNED_GATES,
    "top_k": frozenset(TOP_K_GATES),
    "balance_weight": frozenset({"noisy_top_k"}),
    "smooth_step_gamma": frozenset({"dselect_k"}),
    "entropy_weight": frozenset({"dselect_k"}),
}


def _number_at_least(low: float, strict: bool) -> Callable[[Any, str], float]:
    def check(value: Any, path: str) -> float:
        number = as_float(value, path, ConfigError)
        ok = number > low if strict else number >= low
        _check(ok, path, f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        return number

    return check


#: The gates' real-valued level fields and their checks: each reads a number (a numeric
#: string such as ``'1e-2'`` from YAML included) and returns it as a float, or raises a
#: ConfigError naming the field path.
LEVEL_NUMBERS: dict[str, Callable[[Any, str], float]] = {
    "balance_weight": _number_at_least(0.0, strict=False),
    "smooth_step_gamma": _number_at_least(0.0, strict=True),
    "entropy_weight": _number_at_least(0.0, strict=False),
}


class ConfigError(UserError, ValueError):
    """An invalid config; the message starts with the offending field's path."""


def _check(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _check_choice(value: Any, choices: Sequence[Any], path: str) -> None:
    _check(value in choices, path, f"unknown value {value!r}; expected one of {list(choices)}")


def _check_widths(widths: Sequence[int], path: str, allow_empty: bool = False) -> None:
    _check(allow_empty or len(widths) > 0, path, "needs at least one width")
    for i, w in enumerate(widths):
        _check(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1,
            f"{path}[{i}]",
            f"width must be an integer >= 1, got {w!r}",
        )


def _check_dropout(p: float, path: str) -> None:
    _check(isinstance(p, int | float) and 0.0 <= p < 1.0, path, f"must be in [0, 1), got {p!r}")


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical input: ``cardinality`` codes (OOV bucket included) embedded in ``embed_dim``."""

    name: str
    cardinality: int
    embed_dim: int = 8

    def validate(self, path: str) -> None:
        _check(bool(self.name), f"{path}.name", "must be a non-empty string")
        _check(self.cardinality >= 1, f"{path}.cardinality", f"must be >= 1, got {self.cardinality}")
        _check(self.embed_dim >= 1, f"{path}.embed_dim", f"must be >= 1, got {self.embed_dim}")


@dataclass(frozen=True)
class InputSpec:
    """The input encoder: ``n_numeric`` dense columns concatenated with the embeddings.

    ``embed_init_std`` scales the embedding tables' initial N(0, 1) draw (PyTorch's
    ``nn.Embedding`` default at 1.0). Recommendation libraries start embeddings small
    (torch-rechub N(0, 1e-4), DeepCTR 1e-4); the scale changes how fast a model fits,
    so it is part of the architecture and searchable.

    ``task_embedding_dim > 0`` adds STEM's task-specific embeddings (Su et al., AAAI 2024,
    "STEM: Unleashing the Power of Embeddings for Multi-task Recommendation"): besides the
    shared tables, every task gets its own table per categorical feature, of that width.
    Task ``k``'s path reads the shared encoding and *every* task's embeddings, the other
    tasks' with stopped gradients (the paper's "all forward, task-specific backward"), so
    task ``j``'s loss never reaches task ``k``'s table; the shared experts read them all
    with stopped gradients. 0 (the default) is the plain shared encoder.
    """

    n_numeric: int = 0
    categorical: tuple[CategoricalFeature, ...] = ()
    embed_init_std: float = 1.0
    task_embedding_dim: int = 0

    @property
    def dim(self) -> int:
        """Width of the shared encoding: numeric columns plus the shared embeddings."""
        return self.n_numeric + sum(c.embed_dim for c in self.categorical)

    def routed_dim(self, n_tasks: int) -> int:
        """Width of what the first level reads: :attr:`dim` plus, with STEM's task-specific
        embeddings (``task_embedding_dim > 0``), every task's ``task_embedding_dim`` per
        categorical feature (``n_tasks * n_categorical * task_embedding_dim``)."""
        return self.dim + n_tasks * len(self.categorical) * self.task_embedding_dim

    def validate(self, path: str) -> None:
        _check(self.n_numeric >= 0, f"{path}.n_numeric", f"must be >= 0, got {self.n_numeric}")
        for i, c in enumerate(self.categorical):
            c.validate(f"{path}.categorical[{i}]")
        _check(
            isinstance(self.embed_init_std, int | float) and self.embed_init_std > 0,
            f"{path}.embed_init_std",
            f"must be a number > 0, got {self.embed_init_std!r}",
        )
        _check(self.dim >= 1, path, "the network has no input (no numeric and no categorical)")
        ted = self.task_embedding_dim
        _check(
            isinstance(ted, int) and not isinstance(ted, bool) and ted >= 0,
            f"{path}.task_embedding_dim",
            f"must be an integer >= 0, got {ted!r}",
        )
        _check(
            ted == 0 or len(self.categorical) > 0,
            f"{path}.task_embedding_dim",
            f"task-specific embeddings ({ted}) need categorical features; this input has none",
        )


@dataclass(frozen=True)
class TaskSpec:
    """One task of the network.

    Entire-space chained tasks (ESMM / ESCM², :mod:`mtlsearch.arch._chained`):
    ``product_of`` makes a binary task the product of other binary tasks' probabilities
    (``ctcvr = ctr x cvr``; no tower of its own). ``loss`` is a factor's own loss:
    ``direct`` (its loss on its sample space, the default), ``none`` (ESMM: trained only
    through the product) or ``ips`` (ESCM²'s counterfactual regulariser, weighted by
    ``ips_weight``, default 1, with propensities clipped below at ``ips_clip``, default
    0.01). These keys are left out of ``to_dict`` at their defaults.
    """

    name: str
    kind: TaskKind
    n_classes: int | None = None
    product_of: tuple[str, ...] = ()
    loss: str = "direct"
    ips_weight: float | None = None
    ips_clip: float | None = None

    @property
    def out_dim(self) -> int:
        return self.n_classes if self.kind == "multiclass" else 1  # type: ignore[return-value]

    def validate(self, path: str) -> None:
        _check(bool(self.name), f"{path}.name", "must be a non-empty string")
        _check_choice(self.kind, get_args(TaskKind), f"{path}.kind")
        if self.kind == "multiclass":
            _check(
                isinstance(self.n_classes, int) and self.n_classes >= 2,
                f"{path}.n_classes",
                f"a multiclass task needs n_classes >= 2, got {self.n_classes!r}",
            )
        else:
            _check(self.n_classes is None, f"{path}.n_classes", "only for multiclass tasks")
        _check(
            isinstance(self.product_of, tuple) and all(isinstance(f, str) and f for f in self.product_of),
            f"{path}.product_of",
            f"expected a list of task names, got {self.product_of!r}",
        )
        if self.product_of:
            _check(len(self.product_of) >= 2, f"{path}.product_of", "a product needs at least 2 factor tasks")
            _check(
                self.kind == "binary",
                f"{path}.kind",
                f"a product task (product_of) is a probability, so binary; got {self.kind!r}",
            )
        _check_choice(self.loss, FACTOR_LOSSES, f"{path}.loss")
        for key, check in TASK_NUMBERS.items():
            value = getattr(self, key)
            if value is None:
                continue
            _check(self.loss == "ips", f"{path}.{key}", f"only with loss: ips (the loss is {self.loss!r})")
            _check(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{path}.{key}",
                f"expected a number, got {value!r}",
            )
            check(value, f"{path}.{key}")


def _fraction_above_zero(value: Any, path: str) -> float:
    number = as_float(value, path, ConfigError)
    _check(0.0 < number <= 1.0, path, f"must be in (0, 1], got {value!r}")
    return number


#: TaskSpec's real-valued fields (ESCM²'s regulariser) and their checks.
TASK_NUMBERS: dict[str, Callable[[Any, str], float]] = {
    "ips_weight": _number_at_least(0.0, strict=False),
    "ips_clip": _fraction_above_zero,
}
#: TaskSpec fields written by ``to_dict`` only when they differ from their defaults, so an
#: old config's file is unchanged.
_TASK_OPTIONAL = {"product_of": (), "loss": "direct", "ips_weight": None, "ips_clip": None}


@dataclass(frozen=True)
class LevelConfig:
    """One extraction level (a CGC block when it is the only one).

    ``n_specific`` holds one count per task (0 allowed). ``select`` says which expert groups
    a task gate mixes: its own and the shared (PLE/CGC), the shared only (MMoE), or every
    expert of the level (full fusion). ``shared_gate`` mixes all experts for the next
    level's shared experts. ``gate_input`` is what a gate reads: the level's input for its
    task (PLE's progressive routing) or the raw network input. ``gate_sharing='single'``
    uses one gate for every task (OMoE). ``gate_kind='none'`` averages the selected experts
    with no parameters (shared-bottom and single-task use it with one expert).
    ``norm='batch'`` batch-normalises every expert hidden layer and the logits of every
    softmax or top-k gate before their activation (torch-rechub's and DeepCTR's PLE/MMoE
    layout); DSelect-k and noisy top-k logits are never normalised (a batch norm would hold
    DSelect-k's logits inside the smooth step's band, and rescale noisy top-k's noise).

    Gate kinds (``mtlsearch.arch._layers.GATES``):

    * ``softmax``: ``softmax(W x)`` over the selected experts (MMoE/PLE).
    * ``topk``: the ``top_k`` largest logits, softmax over them, zero elsewhere.
    * ``none``: the plain mean of the selected experts, no parameters.
    * ``dselect_k`` (Hazimeh et al., NeurIPS 2021): ``top_k`` single-expert selectors, each
      a binary code of ``ceil(log2 n)`` smooth-step outputs (width ``smooth_step_gamma``),
      mixed by a softmax over the selectors: the weights sum to 1, and once every code
      logit lies outside ``[-gamma/2, gamma/2]`` at most ``top_k`` of them are non-zero.
      ``entropy_weight`` > 0 adds the paper's entropy regulariser (training only).
    * ``noisy_top_k`` (Shazeer et al., ICLR 2017): ``topk`` over logits with learned
      Gaussian noise in training (none in eval), plus the load-balancing loss
      ``balance_weight * (CV(importance)^2 + CV(load)^2)`` per gate.

    ``fusion='adatt'`` (Li et al., KDD 2023, "AdaTT: Adaptive Task-to-Task Fusion Network
    for Multitask Learning in Recommendations") makes every task's output a fusion unit:
    ``out_k = sum_j g_kj(x) E_j(x) + sum_{i native to k} v_ki E_i(x)``: the gate's mixture
    over every expert of the level (so it needs ``select='all'``) plus the linear
    combination of task ``k``'s own experts with learned weights ``v_k`` (fixed at 1 when the
    task has one expert, none when it has none, as in the paper's code). A shared gate gets
    the same residual over the shared experts. ``'gate'`` (the default) is the gate's mixture.

    ``expert_norm`` (HoME, Wang et al. 2024, "HoME: Hierarchy of Multi-Gate Experts for
    Multi-Task Learning at Kuaishou") normalises each expert's output, after its
    activation, before the gates mix it: ``'batch'`` per expert and unit over the batch
    (running statistics in eval), ``'layer'`` per expert and row over its units; both with a
    learned scale and shift per expert and unit. It puts every expert's output on one scale,
    so a gate does not favour an expert for its magnitude (HoME's expert collapse); with
    ``activation='silu'`` (Swish) it is HoME's expert. ``'none'`` is the plain output.
    """

    n_shared: int
    n_specific: tuple[int, ...]
    expert_hidden: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.0
    select: GateSelect = "own+shared"
    shared_gate: bool = False
    gate_input: GateInput = "level"
    gate_kind: GateKind = "softmax"
    top_k: int = 2
    gate_sharing: GateSharing = "per_task"
    norm: Norm = "none"
    balance_weight: float = 0.01
    smooth_step_gamma: float = 1.0
    entropy_weight: float = 0.0
    fusion: Fusion = "gate"
    expert_norm: ExpertNorm = "none"

    @property
    def out_dim(self) -> int:
        return self.expert_hidden[-1]

    def native_experts(self, task: int | None) -> tuple[int, ...]:
        """Indices of task ``task``'s own experts (``None``: the shared experts): the ones
        AdaTT's residual combines."""
        start = sum(self.n_specific[:task]) if task is not None else sum(self.n_specific)
        count = self.n_specific[task] if task is not None else self.n_shared
        return tuple(range(start, start + count))

    @property
    def n_experts(self) -> int:
        return self.n_shared + sum(self.n_specific)

    def task_selection(self, task: int) -> tuple[int, ...]:
        """Indices (into this level's expert list) a task gate may select.

        Experts are ordered task 0's specific, task 1's specific, ..., then the shared ones.
        """
        offsets = [0]
        for n in self.n_specific:
            offsets.append(offsets[-1] + n)
        shared = tuple(range(offsets[-1], offsets[-1] + self.n_shared))
        if self.select == "shared":
            return shared
        if self.select == "all":
            return tuple(range(self.n_experts))
        own = tuple(range(offsets[task], offsets[task + 1]))
        return own + shared

    def validate(self, path: str, n_tasks: int) -> None:
        _check(self.n_shared >= 0, f"{path}.n_shared", f"must be >= 0, got {self.n_shared}")
        _check(
            len(self.n_specific) == n_tasks,
            f"{path}.n_specific",
            f"needs one count per task ({n_tasks}), got {len(self.n_specific)}",
        )
        for k, n in enumerate(self.n_specific):
            _check(n >= 0, f"{path}.n_specific[{k}]", f"must be >= 0, got {n}")
        _check_widths(self.expert_hidden, f"{path}.expert_hidden")
        _check_choice(self.activation, ACTIVATIONS, f"{path}.activation")
        _check_dropout(self.dropout, f"{path}.dropout")
        _check_choice(self.select, get_args(GateSelect), f"{path}.select")
        _check_choice(self.gate_input, get_args(GateInput), f"{path}.gate_input")
        _check_choice(self.gate_kind, get_args(GateKind), f"{path}.gate_kind")
        _check_choice(self.gate_sharing, get_args(GateSharing), f"{path}.gate_sharing")
        _check_choice(self.norm, get_args(Norm), f"{path}.norm")
        _check_choice(self.fusion, get_args(Fusion), f"{path}.fusion")
        _check_choice(self.expert_norm, get_args(ExpertNorm), f"{path}.expert_norm")
        _check(
            self.fusion != "adatt" or self.select == "all",
            f"{path}.select",
            f"AdaTT fusion (fusion='adatt') mixes every expert of the level; needs select='all', "
            f"got {self.select!r}",
        )
        _check(self.n_experts >= 1, path, "the level has no expert (n_shared and n_specific all 0)")
        if self.gate_sharing == "single":
            _check(
                self.select != "own+shared" or n_tasks == 1,
                f"{path}.gate_sharing",
                "a single gate for all tasks cannot select 'own+shared' experts; use 'shared' or 'all'",
            )
        for k in range(n_tasks):
            _check(
                len(self.task_selection(k)) > 0,
                f"{path}.n_specific[{k}]" if self.select == "own+shared" else f"{path}.n_shared",
                f"the gate of task {k} sees no expert (select={self.select!r})",
            )
        for key, check in LEVEL_NUMBERS.items():
            value = getattr(self, key)
            _check(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{path}.{key}",
                f"expected a number, got {value!r}",
            )
            check(value, f"{path}.{key}")
        if self.gate_kind in TOP_K_GATES:
            _check(
                isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 1,
                f"{path}.top_k",
                f"must be an integer >= 1, got {self.top_k!r}",
            )
        if self.gate_kind in TOP_K_BOUNDED_GATES:
            smallest = min(len(self.task_selection(k)) for k in range(n_tasks))
            if self.shared_gate:
                smallest = min(smallest, self.n_experts)
            _check(
                self.top_k <= smallest,
                f"{path}.top_k",
                f"top_k={self.top_k} exceeds the {smallest} expert(s) some gate sees",
            )


@dataclass(frozen=True)
class TowerConfig:
    """A task tower: hidden layers then a linear output (``norm='batch'`` normalises the
    hidden layers, not the output)."""

    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    dropout: float = 0.0
    norm: Norm = "none"

    def validate(self, path: str) -> None:
        _check_widths(self.hidden, f"{path}.hidden", allow_empty=True)
        _check_choice(self.activation, ACTIVATIONS, f"{path}.activation")
        _check_dropout(self.dropout, f"{path}.dropout")
        _check_choice(self.norm, get_args(Norm), f"{path}.norm")


@dataclass(frozen=True)
class ArchConfig:
    """A whole MTL network. ``towers`` holds one tower per task, in task order."""

    inputs: InputSpec
    tasks: tuple[TaskSpec, ...]
    levels: tuple[LevelConfig, ...]
    towers: tuple[TowerConfig, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        self.inputs.validate("inputs")
        _check(len(self.tasks) >= 1, "tasks", "needs at least one task")
        for i, t in enumerate(self.tasks):
            t.validate(f"tasks[{i}]")
        names = [t.name for t in self.tasks]
        _check(len(set(names)) == len(names), "tasks", f"task names must be unique, got {names}")
        try:
            check_chains(self.tasks)
        except ChainError as exc:
            raise ConfigError(str(exc)) from None
        n_routed = len(self.tower_tasks)  # product tasks have no experts, gate or tower
        _check(len(self.levels) >= 1, "levels", "needs at least one extraction level")
        for i, lv in enumerate(self.levels):
            lv.validate(f"levels[{i}]", n_routed)
            _check(
                self.inputs.task_embedding_dim == 0
                or lv.gate_sharing == "per_task"
                or len(lv.n_specific) == 1,
                f"levels[{i}].gate_sharing",
                "a single gate for all tasks would carry every task's gradient into one task's "
                "embeddings; task-specific embeddings (inputs.task_embedding_dim > 0) need 'per_task' gates",
            )
        top = len(self.levels) - 1
        _check(
            not self.levels[top].shared_gate,
            f"levels[{top}].shared_gate",
            "the top level has no shared gate (nothing reads its output)",
        )
        for i in range(1, len(self.levels)):
            lv = self.levels[i]
            reads_shared = lv.n_shared > 0 or (lv.shared_gate and lv.gate_input == "level")
            _check(
                not reads_shared or self.levels[i - 1].shared_gate,
                f"levels[{i - 1}].shared_gate",
                f"level {i} has shared experts or a shared gate, so level {i - 1} needs a shared gate "
                "to feed them",
            )
        _check(
            len(self.towers) == n_routed,
            "towers",
            f"needs one tower per task ({n_routed}"
            + (", product tasks have none" if n_routed < len(self.tasks) else "")
            + f"), got {len(self.towers)}",
        )
        for i, tw in enumerate(self.towers):
            tw.validate(f"towers[{i}]")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def tower_tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks with experts, gates and a tower: all but the product tasks
        (``product_of``), in task order. ``levels[*].n_specific`` and ``towers`` count these."""
        return tuple(t for t in self.tasks if not t.product_of)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        """Build from plain data (as read from YAML/JSON); unknown keys are errors.

        Conveniences for hand-written files: ``n_specific`` may be one int for every task,
        and ``towers`` may be a single mapping used for every task.
        """
        data = _expect_mapping(data, "model")
        _reject_unknown(data, cls, "model")
        _check("tasks" in data, "model.tasks", "missing field")
        _check("levels" in data, "model.levels", "missing field")
        tasks = tuple(
            _build(TaskSpec, t, f"tasks[{i}]") for i, t in enumerate(_expect_list(data["tasks"], "tasks"))
        )
        inputs_raw = _expect_mapping(data.get("inputs", {}), "inputs")
        _reject_unknown(inputs_raw, InputSpec, "inputs")
        inputs = InputSpec(
            n_numeric=int(inputs_raw.get("n_numeric", 0)),
            categorical=tuple(
                _build(CategoricalFeature, c, f"inputs.categorical[{i}]")
                for i, c in enumerate(_expect_list(inputs_raw.get("categorical", []), "inputs.categorical"))
            ),
            embed_init_std=as_float(
                inputs_raw.get("embed_init_std", 1.0), "inputs.embed_init_std", ConfigError
            ),
            task_embedding_dim=inputs_raw.get("task_embedding_dim", 0),
        )
        routed = [t for t in tasks if not t.product_of]  # product tasks have no experts or tower
        levels = []
        for i, lv in enumerate(_expect_list(data["levels"], "levels")):
            lv = dict(_expect_mapping(lv, f"levels[{i}]"))
            if isinstance(lv.get("n_specific"), int):
                lv["n_specific"] = [lv["n_specific"]] * len(routed)
            levels.append(_build(LevelConfig, lv, f"levels[{i}]"))
        towers_raw = data.get("towers", {})
        if isinstance(towers_raw, Mapping):
            towers_raw = [towers_raw] * len(routed)
        towers = tuple(
            _build(TowerConfig, t, f"towers[{i}]") for i, t in enumerate(_expect_list(towers_raw, "towers"))
        )
        return cls(
            inputs=inputs,
            tasks=tasks,
            levels=tuple(levels),
            towers=towers,
            name=str(data.get("name", "custom")),
        )

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text: str, source: str = "<architecture>") -> ArchConfig:
        """Parse with the tool's YAML rules (:mod:`mtlsearch._yaml`); a YAML error names
        ``source``, a field error its path (``model.levels[0].n_shared``)."""
        return cls.from_dict(load_yaml(text, source, what="architecture file"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        """Read an architecture file (bare, or under a ``model:`` key); errors name the file."""
        _, data = read_yaml_file(path, "architecture file")
        if isinstance(data, Mapping) and "model" in data:
            data = data["model"]
        try:
            return cls.from_dict(data)
        except UserError as exc:
            raise type(exc)(f"{path}: {exc}") from None


# ---- helpers for (de)serialisation -------------------------------------------------------
def _to_plain(obj: Any) -> Any:
    if isinstance(obj, TaskSpec):  # chained-task keys only when set
        return {
            f.name: _to_plain(getattr(obj, f.name))
            for f in fields(obj)
            if f.name not in _TASK_OPTIONAL or getattr(obj, f.name) != _TASK_OPTIONAL[f.name]
        }
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def _expect_mapping(value: Any, path: str) -> Mapping[str, Any]:
    _check(isinstance(value, Mapping), path, f"expected a mapping, got {type(value).__name__}")
    return value


def _expect_list(value: Any, path: str) -> list[Any]:
    _check(isinstance(value, list | tuple), path, f"expected a list, got {type(value).__name__}")
    return list(value)


def _reject_unknown(data: Mapping[str, Any], cls: type, path: str) -> None:
    known = {f.name for f in fields(cls)}
    for key in data:
        _check(key in known, f"{path}.{key}", f"unknown key; expected one of {sorted(known)}")


_TUPLE_FIELDS = {"n_specific", "expert_hidden", "hidden", "product_of"}


def _build(cls: type, data: Any, path: str) -> Any:
    data = _expect_mapping(data, path)
    _reject_unknown(data, cls, path)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in _TUPLE_FIELDS:
            value = tuple(_expect_list(value, f"{path}.{f.name}"))
        elif cls is LevelConfig and f.name in LEVEL_NUMBERS:
            value = LEVEL_NUMBERS[f.name](value, f"{path}.{f.name}")
        elif cls is TaskSpec and f.name in TASK_NUMBERS and value is not None:
            value = TASK_NUMBERS[f.name](value, f"{path}.{f.name}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        raise ConfigError(f"{path}.{missing[0] if missing else ''}: missing field ({exc})") from None


__all__ = [
    "ACTIVATIONS",
    "GATE_KIND_FIELDS",
    "LEARNED_GATES",
    "LEVEL_NUMBERS",
    "TOP_K_BOUNDED_GATES",
    "TOP_K_GATES",
    "ArchConfig",
    "CategoricalFeature",
    "ConfigError",
    "ExpertNorm",
    "Fusion",
    "InputSpec",
    "LevelConfig",
    "TaskSpec",
    "TowerConfig",
]
