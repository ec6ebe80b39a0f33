"""The one parameterized MTL network and its pure builder.

Expert order within a level: task 0's specific experts, task 1's, ..., then the shared
experts. Routing sources within a level: index ``k < T`` is task k's input, ``T`` the shared
input. At level 0 every source is the encoded raw input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlsearch.arch._chained import add_products, product_order
from mtlsearch.arch._config import ArchConfig, LevelConfig, TowerConfig
from mtlsearch.arch._layers import EXPERT_NORMS, GATES, BatchedMLP, InputEncoder, RowSafeBatchNorm


@dataclass(frozen=True)
class _GateSpec:
    name: str  # "task:<name>", "tasks" (one gate for all) or "shared"
    selection: tuple[int, ...]
    source: int | None  # routing source index, or None for the raw network input
    owner: int = 0  # whose output it makes: task k, or T for the shared gate (STEM, raw input)


class ExtractionLevel(nn.Module):
    """Experts of one level (batched) plus its task gates and optional shared gate.

    Options of the level beyond the gates: ``expert_norm`` normalises the experts' outputs
    before any gate mixes them (HoME); ``fusion='adatt'`` adds to every task's (and the
    shared gate's) mixture the linear combination of its native experts (AdaTT's fusion
    unit). ``stem=True`` (the network has STEM's task-specific embeddings) stops the
    gradient of every expert owned by another task in a task's mixture, and of every
    task-owned expert in the shared gate's, so that a task's loss reaches only its own
    experts and embeddings and the shared ones.
    """

    def __init__(
        self,
        cfg: LevelConfig,
        task_names: tuple[str, ...],
        in_dim: int,
        raw_dim: int,
        first: bool,
        stem: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.first = first
        n_tasks = len(task_names)
        self.task_names = task_names
        # Experts grouped by the input they read: each task's specific ones, then the shared.
        self._input_groups = (*cfg.n_specific, cfg.n_shared)
        self.expert_names = [
            f"{task_names[k]}/{i}" for k, n in enumerate(cfg.n_specific) for i in range(n)
        ] + [f"shared/{i}" for i in range(cfg.n_shared)]
        self.experts = BatchedMLP(
            cfg.n_experts, in_dim, cfg.expert_hidden, cfg.activation, cfg.dropout, norm=cfg.norm
        )
        raw = cfg.gate_input == "raw"
        specs: list[_GateSpec] = []
        if cfg.gate_sharing == "single":
            specs.append(_GateSpec("tasks", cfg.task_selection(0), None if raw else 0, 0))
        else:
            specs += [
                _GateSpec(f"task:{task_names[k]}", cfg.task_selection(k), None if raw else k, k)
                for k in range(n_tasks)
            ]
        if cfg.shared_gate:
            specs.append(_GateSpec("shared", tuple(range(cfg.n_experts)), None if raw else n_tasks, n_tasks))
        self.gate_specs = tuple(specs)
        for i, spec in enumerate(specs):
            self.register_buffer(f"sel_{i}", torch.tensor(spec.selection), persistent=False)
        gate_in = raw_dim if raw else in_dim
        self._gate = GATES[cfg.gate_kind]
        self.gates = nn.ModuleList(self._gate.build(gate_in, len(s.selection), cfg) for s in specs)
        # Batch norm on a gate's logits (torch-rechub's gates are Linear -> BatchNorm -> softmax).
        norm_gates = cfg.norm == "batch" and self._gate.batch_norm
        self.gate_norms = nn.ModuleList(
            RowSafeBatchNorm(len(s.selection)) if norm_gates else nn.Identity() for s in specs
        )
        # The gates' auxiliary loss of the last training-mode forward (None: no gate has one).
        self.aux_loss: Tensor | None = None
        # HoME: the experts' outputs normalised before the gates (none: an nn.Identity).
        self.expert_norm = EXPERT_NORMS[cfg.expert_norm](cfg.n_experts, cfg.out_dim)
        self.stem = stem
        if stem:
            # (G, 1, E): 1 where gate g's mixture passes the expert's gradient (the gate's own
            # task's experts and the shared ones; the shared gate: the shared ones only)
            through = torch.zeros(len(specs), 1, cfg.n_experts)
            for i, spec in enumerate(specs):
                own = cfg.native_experts(spec.owner) if spec.owner < n_tasks else ()
                for e in (*own, *cfg.native_experts(None)):
                    through[i, 0, e] = 1.0
            self.register_buffer("stem_through", through, persistent=False)
        self.adatt = cfg.fusion == "adatt"
        if self.adatt:  # parameters drawn last: nothing before them changes
            self._build_native_weights(n_tasks)

    def _build_native_weights(self, n_tasks: int) -> None:
        """AdaTT's residual: per module (each task, then the shared gate's if any) the
        linear combination of its native experts, as a ``(M, E)`` matrix of weights
        ``native_fixed + (native_weights @ native_place)``: weight 1 (fixed) for a module
        with one native expert, learned ``native_weights`` initialised ``U(-1/sqrt(m),
        1/sqrt(m))`` for one with ``m > 1`` (the AdaTT code's ``self_exp_weights``)."""
        cfg = self.cfg
        owners: list[int | None] = [*range(n_tasks), *([None] if cfg.shared_gate else [])]
        fixed = torch.zeros(len(owners), cfg.n_experts)
        learned: list[tuple[int, int, int]] = []  # (module, expert, native count)
        for m, owner in enumerate(owners):
            native = cfg.native_experts(owner)
            if len(native) == 1:
                fixed[m, native[0]] = 1.0
            learned += [(m, e, len(native)) for e in native if len(native) > 1]
        self.register_buffer("native_fixed", fixed, persistent=False)
        self._n_native_modules = len(owners)
        if learned:
            place = torch.zeros(len(learned), len(owners) * cfg.n_experts)
            for i, (m, e, _) in enumerate(learned):
                place[i, m * cfg.n_experts + e] = 1.0
            self.register_buffer("native_place", place, persistent=False)
            weights = torch.empty(len(learned))
            with torch.no_grad():
                for i, (_, _, count) in enumerate(learned):
                    bound = count**-0.5
                    weights[i : i + 1].uniform_(-bound, bound)
            self.native_weights = nn.Parameter(weights)

    def native_matrix(self) -> Tensor:
        """AdaTT's residual weights ``(M, E)``: row k task k's (then the shared gate's), zero
        outside the module's native experts."""
        if not hasattr(self, "native_weights"):
            return self.native_fixed
        mix = (self.native_weights @ self.native_place).view(self._n_native_modules, self.cfg.n_experts)
        return self.native_fixed + mix

    def _expert_outputs(self, inputs: list[Tensor]) -> Tensor:
        if self.first:
            return self.experts(inputs[0])  # every expert reads the raw input: one GEMM
        # Experts are ordered by the input they read (task 0's, ..., shared): one GEMM per input.
        return self.experts(inputs, self._input_groups[: len(inputs)])

    def _weights(
        self, i: int, spec: _GateSpec, inputs: list[Tensor], raw: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Dense mixing weights (B, E), zero outside the gate's selection, and the gate's
        auxiliary loss (or None)."""
        sel = getattr(self, f"sel_{i}")
        if spec.source is None:  # the raw input; with STEM one per source, the gate's owner's
            x = raw if isinstance(raw, Tensor) else raw[spec.owner]
        else:
            x = inputs[0 if self.first else spec.source]
        logits = self.gate_norms[i](self.gates[i](x))
        w, aux = self._gate.weights(logits, len(spec.selection), self.cfg, self.training)
        # zeros of w's dtype: under autocast the gate's softmax is float32 while x may be bf16
        return w.new_zeros(x.shape[0], self.cfg.n_experts).index_copy(1, sel, w), aux

    def forward(
        self, inputs: list[Tensor], raw: Tensor | list[Tensor]
    ) -> tuple[list[Tensor], Tensor | None, dict[str, Tensor]]:
        """``inputs``: one tensor per source (T tasks, then shared if any); ``raw``: encoded
        input (with STEM: one per source, as :meth:`InputEncoder.routed` gives).

        Returns the per-task fused outputs, the shared fused output (or None) and the dense
        gate weights by gate name. The gates' summed auxiliary loss (training mode only) is
        left in ``aux_loss``.
        """
        experts = self.expert_norm(self._expert_outputs(inputs))  # (E, B, D)
        per_gate = [self._weights(i, s, inputs, raw) for i, s in enumerate(self.gate_specs)]
        weights = torch.stack([w for w, _ in per_gate])  # (G, B, E)
        auxes = [a for _, a in per_gate if a is not None]
        aux = torch.stack(auxes).sum() if auxes else None
        if aux is not None or self.aux_loss is not None:  # no write when there is nothing to keep
            self.aux_loss = aux
        if self.stem:  # other tasks' experts enter with their value and without gradient
            through = weights * self.stem_through
            fused = torch.einsum("gbe,ebd->gbd", through, experts) + torch.einsum(
                "gbe,ebd->gbd", weights - through, experts.detach()
            )
        else:
            fused = torch.einsum("gbe,ebd->gbd", weights, experts)
        by_name = {s.name: fused[i] for i, s in enumerate(self.gate_specs)}
        tasks = (
            [by_name["tasks"]] * len(self.task_names)
            if "tasks" in by_name
            else [by_name[f"task:{n}"] for n in self.task_names]
        )
        shared = by_name.get("shared")
        if self.adatt:  # AdaTT: plus each module's linear combination of its native experts
            residual = torch.einsum("me,ebd->mbd", self.native_matrix(), experts)
            tasks = [t + residual[k] for k, t in enumerate(tasks)]
            if shared is not None:
                shared = shared + residual[len(tasks)]
        gates = {s.name: weights[i] for i, s in enumerate(self.gate_specs)}
        return tasks, shared, gates


class Towers(nn.Module):
    """Per-task towers; tasks whose towers have the same shape are computed as one batch."""

    def __init__(self, towers: tuple[TowerConfig, ...], out_dims: list[int], in_dim: int) -> None:
        super().__init__()
        groups: dict[tuple, list[int]] = {}
        for k, (tw, out) in enumerate(zip(towers, out_dims, strict=True)):
            groups.setdefault((tw.hidden, tw.activation, tw.dropout, tw.norm, out), []).append(k)
        self.groups = [members for members in groups.values()]
        self.mlps = nn.ModuleList(
            BatchedMLP(len(members), in_dim, (*hidden, out), act, drop, last_activation=False, norm=norm)
            for (hidden, act, drop, norm, out), members in groups.items()
        )

    def forward(self, task_inputs: list[Tensor]) -> list[Tensor]:
        outs: list[Tensor | None] = [None] * len(task_inputs)
        for members, mlp in zip(self.groups, self.mlps, strict=True):
            y = mlp(torch.stack([task_inputs[k] for k in members]))
            for j, k in enumerate(members):
                outs[k] = y[j]
        return outs  # type: ignore[return-value]


class MTLNetwork(nn.Module):
    """A multi-task network described by an :class:`ArchConfig`.

    ``forward(numeric, categorical)`` returns ``{task: output}``: logits of shape ``(B,)``
    for binary tasks, predictions ``(B,)`` for regression, logits ``(B, C)`` for
    multiclass. ``forward_with_gates`` also returns every gate's dense weights over its
    level's experts, keyed ``"level<l>/<gate>"``.

    A product task (``TaskSpec.product_of``, ESMM) has no experts, gate or tower: its output
    is the logit of the product of its factors' probabilities, computed after the towers
    (:mod:`mtlsearch.arch._chained`). ``task_names`` are the tasks with towers (the routed
    ones), ``output_names`` every task, in the config's order.
    """

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.config = config
        self.task_names = tuple(t.name for t in config.tower_tasks)
        self.output_names = config.task_names
        self._products = product_order(config.tasks)  # (product, factors), factors first
        n_routed = len(config.levels[0].n_specific)  # the tasks the levels route for
        self.encoder = InputEncoder(config.inputs, n_routed)
        # STEM: the first level reads one input per source (task-specific embeddings)
        self.stem = config.inputs.task_embedding_dim > 0
        raw_dim = config.inputs.routed_dim(n_routed)
        levels = []
        in_dim = raw_dim
        for i, lv in enumerate(config.levels):
            first = i == 0 and not self.stem
            levels.append(ExtractionLevel(lv, self.task_names, in_dim, raw_dim, first=first, stem=self.stem))
            in_dim = lv.out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = Towers(config.towers, [t.out_dim for t in config.tower_tasks], in_dim)
        self._squeeze = [t.kind != "multiclass" for t in config.tower_tasks]

    def expert_names(self, level: int) -> list[str]:
        return list(self.levels[level].expert_names)

    def forward_with_gates(
        self, numeric: Tensor, categorical: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        raw: Tensor | list[Tensor]
        if self.stem:
            raw = self.encoder.routed(numeric, categorical)
            inputs = list(raw)
        else:
            raw = self.encoder(numeric, categorical)
            inputs = [raw]
        gates: dict[str, Tensor] = {}
        for li, level in enumerate(self.levels):
            tasks, shared, level_gates = level(inputs, raw)
            gates.update({f"level{li}/{name}": w for name, w in level_gates.items()})
            inputs = tasks if shared is None else [*tasks, shared]
        outs = self.towers(inputs[: len(self.task_names)])
        result = {
            name: (y.squeeze(-1) if squeeze else y)
            for name, y, squeeze in zip(self.task_names, outs, self._squeeze, strict=True)
        }
        if self._products:
            result = add_products(result, self._products)
            result = {name: result[name] for name in self.output_names}
        return result, gates

    def forward(self, numeric: Tensor, categorical: Tensor) -> dict[str, Tensor]:
        return self.forward_with_gates(numeric, categorical)[0]

    def expert_outputs(self, numeric: Tensor, categorical: Tensor) -> list[Tensor]:
        """Every level's experts' outputs ``(E, B, D)`` (after their activation, before
        ``expert_norm``), one forward pass; for HoME's expert-collapse diagnostics (a unit
        that is 0 on every row is a dead ReLU unit)."""
        kept: list[Tensor] = []
        hooks = [lv.experts.register_forward_hook(lambda m, i, out: kept.append(out)) for lv in self.levels]
        try:
            self.forward_with_gates(numeric, categorical)
        finally:
            for h in hooks:
                h.remove()
        return kept

    def auxiliary_loss(self) -> Tensor | None:
        """The gates' auxiliary loss of the last forward, already weighted (0-d), to add
        to the training loss: noisy top-k's load-balancing loss (``balance_weight``) and
        DSelect-k's entropy regulariser (``entropy_weight``), summed over every gate.

        None when no gate has one (softmax, top-k and mean gates, a zero weight) and after
        an eval-mode forward (the gates add no noise and compute no loss there).
        """
        auxes = [lv.aux_loss for lv in self.levels if lv.aux_loss is not None]
        if not auxes:
            return None
        return auxes[0] if len(auxes) == 1 else torch.stack(auxes).sum()


def build_model(config: ArchConfig, seed: int | None = None) -> MTLNetwork:
    """Build the network a config describes.

    Pure: with ``seed`` the initial weights depend only on (config, seed), and the global
    RNG state is left as it was.
    """
    if seed is None:
        return MTLNetwork(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MTLNetwork(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
