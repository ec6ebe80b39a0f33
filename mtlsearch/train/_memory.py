"""Memory needed to train a config, estimated before anything is allocated.

A config whose widths cannot fit (expert widths ``[200000, 200000]``, a ten-million-row
embedding) used to die deep inside torch with an allocator error, or the OS killed the
worker without a word. :func:`check_memory` runs at the start of :func:`~mtlsearch.train.fit`,
before the model is built, and turns that into a one-line :class:`MemoryLimitExceeded`
(a :class:`UserError`: the ``train`` command exits 2; in a search the trial fails with the
message as its reason and the study goes on).

The limit is, in order: ``fit(..., max_memory=...)``, the environment variable
``MTLSEARCH_MAX_MEMORY`` (bytes, or a size such as ``8GiB``, ``512MiB``, ``1.5GB``), or
90 % of the memory available now (:func:`available_memory`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mtlsearch._errors import UserError
from mtlsearch.arch import ArchConfig, build_model
from mtlsearch.train._config import ExperimentConfig
from mtlsearch.train._evaluate import EVAL_BATCH
from mtlsearch.train._weighting import LOSS_WEIGHTINGS

logger = logging.getLogger(__name__)

#: runs whose estimate reaches this many bytes log their memory at INFO, smaller ones at DEBUG
LOUD_BYTES = 1 << 30

#: Environment variable holding the memory limit of one training (bytes or "8GiB").
MAX_MEMORY_ENV = "MTLSEARCH_MAX_MEMORY"

#: Share of the available memory used as the limit when none is given: the rest is left
#: for what the estimate leaves out (the interpreter, allocator slack, other processes).
DEFAULT_SHARE = 0.9

#: State tensors an optimizer keeps per parameter (Adam and AdamW: the first and second
#: moment, ``exp_avg`` and ``exp_avg_sq``). Every name in ``OPTIMIZERS`` must be here.
OPTIMIZER_STATES: dict[str, int] = {"adam": 2, "adamw": 2}

#: Factor on the activations a training batch keeps for backward: autograd keeps them until
#: the backward pass reaches them, and the backward pass adds the gradient it is computing
#: and the contiguous copies it makes. Measured on the CPU (peak RSS growth of one training
#: step, PLE, widths 128-2048, batches 2048-16384, relu/gelu/silu/tanh, with and without
#: dropout and batch norm): 0.93 to 1.18 times the kept sum; 1.25 keeps the estimate above.
BACKWARD_FACTOR = 1.25

_GIB = 1024**3
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


class MemoryLimitExceeded(UserError):
    """A config needs more memory than the limit; the one-line message gives the estimate
    in GiB, the limit and where it came from, and the largest single tensor with the config
    field that makes it large."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training run of a config needs, by part (see :func:`estimate_memory`).

    ``largest_tensor`` names the biggest single tensor, its shape, dtype and size, and the
    config field that sets its size, e.g. ``"level 0 experts layer 1 weight (6 x 200000 x
    200000 float32, 894.07 GiB; model.levels[0].expert_hidden)"``.
    """

    n_parameters: int
    parameter_bytes: int
    buffer_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    best_weights_bytes: int
    activation_bytes: int
    data_bytes: int
    largest_tensor: str
    largest_tensor_bytes: int
    jacobian_bytes: int = 0
    embedding_bytes: int = 0  # the embedding tables' share of ``parameter_bytes``
    largest_table: str = ""  # the biggest embedding table, described as ``largest_tensor``

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.buffer_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.best_weights_bytes
            + self.activation_bytes
            + self.data_bytes
            + self.jacobian_bytes
        )

    def summary(self) -> str:
        """One line: the total in GiB and its parts."""
        parts = [
            ("parameters", self.parameter_bytes),
            ("gradients", self.gradient_bytes),
            ("optimizer state", self.optimizer_bytes),
            ("best-epoch copy", self.best_weights_bytes),
            ("activations", self.activation_bytes),
        ]
        if self.jacobian_bytes:
            parts.append(("task Jacobian", self.jacobian_bytes))
        if self.buffer_bytes:
            parts.append(("buffers", self.buffer_bytes))
        if self.data_bytes:
            parts.append(("data copy", self.data_bytes))
        body = ", ".join(f"{name} {human_size(n)}" for name, n in parts)
        total = (
            f"{gib(self.total_bytes)} GiB" if self.total_bytes >= _GIB / 100 else human_size(self.total_bytes)
        )
        return f"about {total} ({body})"


def gib(n: int | float) -> str:
    """``n`` bytes in GiB with two decimals."""
    return f"{n / _GIB:.2f}"


def human_size(n: int | float) -> str:
    """``n`` bytes in the largest of GiB, MiB, KiB that keeps the number >= 1: ``"3.50 MiB"``."""
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str | int, what: str = MAX_MEMORY_ENV) -> int:
    """A memory size in bytes from ``text``: an integer number of bytes, or a number with a
    unit, ``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024) or ``KB``/``MB``/``GB``/``TB``
    (powers of 1000), case-insensitive: ``"8GiB"``, ``"1.5 GB"``, ``"500000000"``.

    Raises :class:`UserError` naming ``what`` for anything else, or a size below one byte.
    """
    if isinstance(text, bool):
        raise UserError(f"{what}: expected a size such as 8GiB or a number of bytes, got {text!r}")
    if isinstance(text, int):
        value = float(text)
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise UserError(
                f"{what}: expected a size such as 8GiB, 512MiB, 1.5GB or a number of bytes, got {text!r}"
            )
        value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise UserError(f"{what}: must be at least 1 byte, got {text!r}")
    return int(value)


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                fields = line.split()
                return int(fields[1]) * (1024 if fields[2:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available(root: Path) -> int | None:
    """What this process's memory cgroup still allows (limit minus usage, reclaimable page
    cache not counted as used), or ``None`` without a limit. A container's limit is often
    far below the host's MemAvailable, and crossing it gets the worker killed."""
    unlimited = 1 << 60  # cgroup v1 writes "no limit" as a huge page-aligned number
    v2_limit = _read_int(root / "memory.max")
    if v2_limit is not None and v2_limit < unlimited:
        used = _read_int(root / "memory.current") or 0
        used -= _stat_value(root / "memory.stat", "inactive_file")
        return max(v2_limit - max(used, 0), 0)
    v1 = root / "memory"
    v1_limit = _read_int(v1 / "memory.limit_in_bytes")
    if v1_limit is not None and v1_limit < unlimited:
        used = _read_int(v1 / "memory.usage_in_bytes") or 0
        used -= _stat_value(v1 / "memory.stat", "total_inactive_file")
        return max(v1_limit - max(used, 0), 0)
    return None


def available_memory(
    *, meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes of memory this process may still allocate, or ``None`` when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can hand out without swapping,
    page cache included), else ``os.sysconf`` free pages; the smaller of that and what the
    memory cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) still allows.
    """
    host = _meminfo_available(meminfo)
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            host = None
    group = _cgroup_available(cgroup)
    known = [v for v in (host, group) if v is not None]
    return min(known) if known else None


def memory_limit(
    max_memory: int | str | None = None, device: torch.device | None = None
) -> tuple[int | None, str]:
    """The limit for one training and where it comes from (for the message).

    ``max_memory`` (bytes or a size string, see :func:`parse_size`) wins, then
    ``$MTLSEARCH_MAX_MEMORY``, then ``DEFAULT_SHARE`` of the free memory of ``device``:
    :func:`available_memory` on the CPU, ``torch.cuda.mem_get_info`` on a CUDA device.
    ``(None, ...)`` when nothing is known (another accelerator): no check.
    """
    if max_memory is not None:
        return parse_size(max_memory, "max_memory"), "max_memory"
    env = os.environ.get(MAX_MEMORY_ENV)
    if env is not None and env.strip():
        return parse_size(env), f"{MAX_MEMORY_ENV}={env.strip()}"
    device = device or torch.device("cpu")
    if device.type == "cpu":
        free = available_memory()
        where = "available memory"
    elif device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        where = f"free memory of {device}"
    else:
        return None, f"unknown for device {device}"
    if free is None:
        return None, "available memory unknown"
    return int(free * DEFAULT_SHARE), f"{DEFAULT_SHARE:.0%} of the {gib(free)} GiB {where}"


# ---- naming tensors ----------------------------------------------------------------------
def _shape(dims: tuple[int, ...] | torch.Size) -> str:
    return " x ".join(str(d) for d in dims)


def _embedding_groups(arch: ArchConfig) -> list[list[int]]:
    """Feature indices per embedding table, in the encoder's table order (see InputEncoder)."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(arch.inputs.categorical):
        groups.setdefault(c.embed_dim, []).append(i)
    return [cols for _, cols in sorted(groups.items())]


_PART = {
    "weights": "weight",
    "biases": "bias",
    "norm_weights": "batch-norm weight",
    "norm_biases": "batch-norm bias",
}


def _describe_parameter(name: str, model: nn.Module, arch: ArchConfig) -> tuple[str, str]:
    """A readable name for a parameter of an MTLNetwork and the config field behind its size."""
    if m := re.fullmatch(r"encoder\.tables\.(\d+)\.weight", name):
        cols = _embedding_groups(arch)[int(m.group(1))]
        feats = [arch.inputs.categorical[i] for i in cols]
        index = max(cols, key=lambda i: arch.inputs.categorical[i].cardinality)  # the one to shrink
        shown = ", ".join(f.name for f in feats[:3]) + (
            f" and {len(feats) - 3} more" if len(feats) > 3 else ""
        )
        return f"embedding table of {shown}", f"model.inputs.categorical[{index}].cardinality"
    if name == "encoder.task_tables":
        return "task-specific embedding tables (STEM)", "model.inputs.task_embedding_dim"
    if m := re.fullmatch(r"levels\.(\d+)\.native_weights", name):
        return f"level {m.group(1)} AdaTT native-expert weights", f"model.levels[{m.group(1)}].fusion"
    if m := re.fullmatch(r"levels\.(\d+)\.expert_norm\.(\w+)", name):
        level = m.group(1)
        return f"level {level} expert-norm {m.group(2)}", f"model.levels[{level}].expert_norm"
    if m := re.fullmatch(r"levels\.(\d+)\.experts\.(\w+)\.(\d+)", name):
        level, part, layer = int(m.group(1)), m.group(2), int(m.group(3))
        return (
            f"level {level} experts layer {layer} {_PART.get(part, part)}",
            f"model.levels[{level}].expert_hidden",
        )
    if m := re.fullmatch(r"levels\.(\d+)\.(gates|gate_norms)\.(\d+)\.(\w+)", name):
        level, kind, g, part = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        gate = model.levels[level].gate_specs[g].name  # type: ignore[index, union-attr]
        what = "gate" if kind == "gates" else "gate batch-norm"
        return f"level {level} {what} {gate!r} {part}", f"model.levels[{level}]"
    if m := re.fullmatch(r"towers\.mlps\.(\d+)\.(\w+)\.(\d+)", name):
        members = model.towers.groups[int(m.group(1))]  # type: ignore[index, union-attr]
        tasks = ", ".join(arch.tower_tasks[k].name for k in members)
        part, layer = m.group(2), int(m.group(3))
        return f"tower of {tasks} layer {layer} {_PART.get(part, part)}", f"model.towers[{members[0]}].hidden"
    return name, "model"


# ---- activations -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Activation:
    """One layer's output for a batch: ``lead`` x rows x ``width`` values; ``kept`` tensors
    of that size stay alive for the backward pass (the linear output, the activation's
    output, the batch-norm output, the dropout output)."""

    label: str
    field: str
    lead: int
    width: int
    kept: int

    @property
    def per_row(self) -> int:
        return self.lead * self.width


#: Activations whose backward needs their input (kept besides their output, which the next
#: layer keeps as its input); relu, tanh and sigmoid differentiate from their output.
_SAVES_INPUT = frozenset({"gelu", "silu"})


def _kept(activation: str, norm: str, dropout: float) -> int:
    # dropout: its output and its mask (a float tensor of the same size on the CPU)
    return 1 + (activation in _SAVES_INPUT) + (norm == "batch") + 2 * (dropout > 0)


def _activations(arch: ArchConfig) -> list[_Activation]:
    """Every layer output a batch passes through, in forward order."""
    acts = [_Activation("input encoding", "model.inputs", 1, arch.inputs.dim, 1)]
    if arch.inputs.categorical:  # the embedding gathers, before the concatenation
        gathered = sum(c.embed_dim for c in arch.inputs.categorical)
        acts.append(_Activation("embedding lookups", "model.inputs.categorical", 1, gathered, 1))
    n_routed = len(arch.levels[0].n_specific)  # the tasks the levels route for
    stem = arch.inputs.task_embedding_dim > 0
    if stem:
        # STEM: every task's gathered embeddings, their masked per-source copy (tasks + shared;
        # the difference and the product), and each source's concatenated input
        field = "model.inputs.task_embedding_dim"
        task_width = n_routed * len(arch.inputs.categorical) * arch.inputs.task_embedding_dim
        acts.append(_Activation("task-specific embedding lookups", field, 1, task_width, 2))
        acts.append(_Activation("task-specific embedding sources", field, n_routed + 1, task_width, 2))
        routed = arch.inputs.routed_dim(n_routed)
        acts.append(_Activation("per-source inputs (STEM)", field, n_routed + 1, routed, 1))
    for li, lv in enumerate(arch.levels):
        field = f"model.levels[{li}].expert_hidden"
        for i, w in enumerate(lv.expert_hidden):
            kept = _kept(lv.activation, lv.norm, lv.dropout)
            acts.append(_Activation(f"level {li} experts layer {i} output", field, lv.n_experts, w, kept))
        n_gates = (1 if lv.gate_sharing == "single" else len(arch.tower_tasks)) + lv.shared_gate
        gate_kept = 1 if lv.gate_kind == "none" else 3 + (lv.norm == "batch")  # logits, softmax, dense
        acts.append(
            _Activation(f"level {li} gate weights", f"model.levels[{li}]", n_gates, lv.n_experts, gate_kept)
        )
        if lv.expert_norm != "none":  # HoME: the normalised outputs (+ the layer norm's affine step)
            norm_kept = 1 + (lv.expert_norm == "layer")
            acts.append(
                _Activation(
                    f"level {li} expert norm",
                    f"model.levels[{li}].expert_norm",
                    lv.n_experts,
                    lv.out_dim,
                    norm_kept,
                )
            )
        # the mixture (an einsum over experts) works on a contiguous, batch-major copy of the
        # experts' outputs and keeps it for backward
        acts.append(_Activation(f"level {li} experts output copy", field, lv.n_experts, lv.out_dim, 1))
        acts.append(_Activation(f"level {li} gated mixtures", field, n_gates, lv.out_dim, 1))
        if stem:  # the masked weights (two) and the second mixture over the detached experts
            acts.append(
                _Activation(f"level {li} STEM masked weights", "model.inputs", n_gates, lv.n_experts, 2)
            )
            acts.append(_Activation(f"level {li} STEM detached mixtures", field, n_gates, lv.out_dim, 1))
        if lv.fusion == "adatt":  # the native experts' residual per module, and the sums
            modules = n_routed + lv.shared_gate
            acts.append(
                _Activation(
                    f"level {li} AdaTT native residual", f"model.levels[{li}].fusion", modules, lv.out_dim, 2
                )
            )
    for k, (task, tw) in enumerate(zip(arch.tower_tasks, arch.towers, strict=True)):  # no product
        for i, w in enumerate(tw.hidden):
            kept = _kept(tw.activation, tw.norm, tw.dropout)
            acts.append(
                _Activation(f"tower of {task.name} layer {i} output", f"model.towers[{k}].hidden", 1, w, kept)
            )
        acts.append(_Activation(f"tower of {task.name} output", f"model.tasks[{k}]", 1, task.out_dim, 1))
    return acts


def estimate_memory(
    config: ExperimentConfig,
    *,
    train_rows: int | None = None,
    eval_rows: int = EVAL_BATCH,
    data_bytes: int = 0,
) -> MemoryEstimate:
    """Estimate the peak memory (bytes) :func:`~mtlsearch.train.fit` needs for ``config``,
    without allocating any of it (a few milliseconds whatever the widths).

    Parts, with ``P`` the parameter bytes, ``B`` the training batch (``training.batch_size``,
    at most ``train_rows`` when given) and ``f`` the bytes per float (4 for float32):

    - parameters ``P``: the model is built under ``torch.device("meta")`` (shapes, no
      storage), so the count is exactly the real model's, whatever the architecture;
      buffers (batch-norm statistics, gate index tables) are counted apart;
    - gradients ``P`` (one per parameter, same dtype);
    - optimizer state ``OPTIMIZER_STATES[optimizer] * P`` (Adam/AdamW: ``exp_avg`` and
      ``exp_avg_sq``, so ``2 P``) plus a float32 ``step`` per parameter tensor;
    - best-epoch copy ``P`` + buffers: ``fit`` keeps the weights of the best epoch so far;
    - activations, the larger of training and evaluation. Training:
      ``BACKWARD_FACTOR (1.25) x B x f x sum(width x kept)`` over every layer output a batch
      passes through: the input encoding and embedding lookups; per level, each expert
      hidden layer (width times the level's expert count), the gate weights (gates times
      experts; logits, softmax and the dense weights), the experts' output copy the
      mixture einsum makes, and the gated mixtures; each tower layer and output; with the
      builder's options also STEM's task-embedding gathers and per-source inputs and its
      masked second mixture, HoME's normalised expert outputs and AdaTT's native residuals. ``kept``
      is the number of tensors of that size autograd keeps: 1 (the layer's output), +1
      for gelu/silu (they differentiate from their input), +1 with batch norm, +2 with
      dropout (output and float mask). Evaluation (no gradients, ``eval_rows`` rows per
      forward pass): the widest step's input plus twice its output;
    - ``data_bytes``: the copy of the data ``fit`` makes on another device (0 on the CPU,
      where the data is in memory already and not counted), and what a streamed split holds
      at once (its shuffle buffer and a record batch, never the whole table);
    - task Jacobian, gradient-level methods only (:mod:`mtlsearch.train._gradient`):
      ``jacobian_copies (2) x n_tasks x P``, the per-task gradients of every parameter,
      held twice at a step's peak. The vectorised backward's per-task activation gradients
      are left out.

    Assumptions: parameters of one float dtype; the per-task losses, the loss-weighting
    parameters (one per task at most), allocator slack and the interpreter are left out,
    hence a default limit below the free memory. Against the peak RSS growth of real
    training steps the activation term came out 1.05x to 1.35x (see ``BACKWARD_FACTOR``).

    Raises nothing for a large config (that is :func:`check_memory`'s job).
    """
    arch, tc = config.model, config.training
    with torch.device("meta"):
        model = build_model(arch, seed=0)  # meta tensors: shapes only, nothing allocated
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_parameters = sum(p.numel() for _, p in params)
    parameter_bytes = sum(p.numel() * p.element_size() for _, p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    itemsize = params[0][1].element_size() if params else torch.get_default_dtype().itemsize
    optimizer_bytes = OPTIMIZER_STATES[tc.optimizer] * parameter_bytes + 4 * len(params)
    method = LOSS_WEIGHTINGS[tc.loss_weighting.method]
    jacobian_bytes = getattr(method, "jacobian_copies", 0) * len(arch.tasks) * parameter_bytes

    acts = _activations(arch)
    rows = tc.batch_size if train_rows is None else max(min(tc.batch_size, train_rows), 1)
    train_bytes = int(BACKWARD_FACTOR * rows * itemsize * sum(a.per_row * a.kept for a in acts))
    widths = [a.per_row for a in acts]
    eval_peak = max((widths[i - 1] if i else 0) + 2 * w for i, w in enumerate(widths))
    eval_bytes = eval_rows * itemsize * eval_peak
    activation_bytes = max(train_bytes, eval_bytes)

    # The largest single tensor: a parameter, or a layer output for a training batch or an
    # evaluation chunk.
    candidates: list[tuple[int, str]] = []
    for name, p in params:
        label, field = _describe_parameter(name, model, arch)
        size = p.numel() * p.element_size()
        dtype = str(p.dtype).removeprefix("torch.")
        candidates.append((size, f"{label} ({_shape(p.shape)} {dtype}, {human_size(size)}; {field})"))
    for a in acts:
        for n, why in ((rows, "training.batch_size"), (eval_rows, "evaluation rows")):
            size = a.per_row * n * itemsize
            dims = (a.lead, n, a.width) if a.lead > 1 else (n, a.width)
            candidates.append((size, f"{a.label} ({_shape(dims)}, {human_size(size)}; {a.field}, {why})"))
    largest_bytes, largest = max(candidates, key=lambda c: c[0])
    tables = [
        (p.numel() * p.element_size(), text)
        for (name, p), (_, text) in zip(params, candidates, strict=False)
        if name.startswith(("encoder.tables.", "encoder.task_tables"))
    ]
    return MemoryEstimate(
        n_parameters=n_parameters,
        parameter_bytes=parameter_bytes,
        buffer_bytes=buffer_bytes,
        gradient_bytes=parameter_bytes,
        optimizer_bytes=optimizer_bytes,
        best_weights_bytes=parameter_bytes + buffer_bytes,
        activation_bytes=activation_bytes,
        data_bytes=data_bytes,
        largest_tensor=largest,
        largest_tensor_bytes=largest_bytes,
        jacobian_bytes=jacobian_bytes,
        embedding_bytes=sum(n for n, _ in tables),
        largest_table=max(tables, key=lambda t: t[0])[1] if tables else "",
    )


def check_memory(
    config: ExperimentConfig,
    *,
    max_memory: int | str | None = None,
    device: torch.device | None = None,
    train_rows: int | None = None,
    eval_rows: int = EVAL_BATCH,
    data_bytes: int = 0,
) -> MemoryEstimate:
    """Estimate ``config``'s memory and raise :class:`MemoryLimitExceeded` if it exceeds the
    limit (see :func:`memory_limit`); returns the estimate otherwise, after logging at INFO
    the embedding tables' and the optimizer's share (the whole estimate at DEBUG)."""
    estimate = estimate_memory(config, train_rows=train_rows, eval_rows=eval_rows, data_bytes=data_bytes)
    limit, source = memory_limit(max_memory, device)
    logger.debug(
        "memory estimate for %r: %s; largest tensor %s; limit %s (%s)",
        config.model.name,
        estimate.summary(),
        estimate.largest_tensor,
        "none" if limit is None else human_size(limit),
        source,
    )
    if limit is not None and estimate.total_bytes > limit:
        hint = (
            ""
            if source == "max_memory" or source.startswith(MAX_MEMORY_ENV)
            else f"; set {MAX_MEMORY_ENV} to change it"
        )
        raise MemoryLimitExceeded(
            f"model {config.model.name!r} needs {estimate.summary()} to train, more than the limit "
            f"of {human_size(limit)} ({source}{hint}); largest tensor: {estimate.largest_tensor}"
            + (
                f"; biggest embedding table: {estimate.largest_table}"
                # named when the tables matter (1 % of the total or more) and are not named already
                if estimate.largest_table
                and estimate.largest_table != estimate.largest_tensor
                and estimate.embedding_bytes * 100 >= estimate.total_bytes
                else ""
            )
        )
    # INFO (shown by the CLI) once a run is big enough for its memory to matter; below
    # LOUD_BYTES it is a DEBUG line (-v), so small runs' output stays one table.
    logger.log(
        logging.INFO if estimate.total_bytes >= LOUD_BYTES else logging.DEBUG,
        "memory for %r: embedding tables %s%s, optimizer state %s, data held %s; total %s, limit %s",
        config.model.name,
        human_size(estimate.embedding_bytes),
        f" (biggest: {estimate.largest_table})" if estimate.largest_table else "",
        human_size(estimate.optimizer_bytes),
        human_size(estimate.data_bytes),
        human_size(estimate.total_bytes),
        "none" if limit is None else human_size(limit),
    )
    return estimate


__all__ = [
    "BACKWARD_FACTOR",
    "DEFAULT_SHARE",
    "MAX_MEMORY_ENV",
    "OPTIMIZER_STATES",
    "MemoryEstimate",
    "MemoryLimitExceeded",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "memory_limit",
    "parse_size",
]
