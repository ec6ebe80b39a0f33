"""Building blocks: batched MLPs (all experts of a level in one matmul per layer), the input
encoder, and the gate functions.

Experts of a level share their widths, so their weights are stacked into ``(E, in, out)``
tensors and a layer is one ``baddbmm`` over the experts instead of a Python loop over
expert modules. Towers of tasks that share a shape are batched the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlsearch.arch._config import CategoricalFeature, InputSpec, LevelConfig

ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class BatchedMLP(nn.Module):
    """``n`` independent MLPs of the same widths, computed together.

    ``forward`` takes ``(B, in)`` (every MLP reads the same input: one GEMM over all of them)
    or ``(n, B, in)`` (each its own input: one ``baddbmm``) and returns ``(n, B, out)``.
    With ``last_activation=False`` the last layer is linear (a tower's output layer).

    ``norm="batch"`` puts batch normalisation between each hidden layer's linear map and
    its activation (Linear -> BatchNorm -> activation -> dropout, the layout of
    torch-rechub's and DeepCTR's MLPs), with statistics per MLP and unit. It is computed on
    the ``(B, n * out)`` view of a layer, so all ``n`` MLPs normalise in one fused call.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        widths: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.n = n
        self.widths = tuple(widths)
        self.act = ACTIVATION_FNS[activation]
        self.dropout = dropout
        self.last_activation = last_activation
        dims = [in_dim, *self.widths]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n, dims[i], dims[i + 1])) for i in range(len(self.widths))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(n, 1, dims[i + 1])) for i in range(len(self.widths))
        )
        # Batch-norm affine parameters and running statistics, flattened to (n * out,) per
        # normalised layer (every layer but a linear output layer).
        n_norm = (len(self.widths) if last_activation else len(self.widths) - 1) if norm == "batch" else 0
        self.norm_weights = nn.ParameterList(nn.Parameter(torch.ones(n * dims[i + 1])) for i in range(n_norm))
        self.norm_biases = nn.ParameterList(nn.Parameter(torch.zeros(n * dims[i + 1])) for i in range(n_norm))
        for i in range(n_norm):
            self.register_buffer(f"running_mean_{i}", torch.zeros(n * dims[i + 1]))
            self.register_buffer(f"running_var_{i}", torch.ones(n * dims[i + 1]))
        self.reset_parameters()

    def _batch_norm(self, x: Tensor, i: int) -> Tensor:
        """Normalise ``(B, n * out)`` with layer ``i``'s statistics."""
        return row_safe_batch_norm(
            x,
            getattr(self, f"running_mean_{i}"),
            getattr(self, f"running_var_{i}"),
            self.norm_weights[i],
            self.norm_biases[i],
            self.training,
        )

    def reset_parameters(self) -> None:
        # Same distribution as nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor | Sequence[Tensor], groups: Sequence[int] | None = None) -> Tensor:
        """Run the ``n`` MLPs; returns ``(n, B, out)`` (possibly a transposed view).

        ``x`` is ``(B, in)`` read by every MLP, ``(n, B, in)`` one input per MLP, or a list
        of ``(B, in)`` inputs with ``groups`` saying how many consecutive MLPs read each
        (a level's experts grouped by the task or shared input they read). In the shared
        and the grouped form the first layer is one GEMM per input, written side by side
        into one ``(B, n * out)`` tensor, so the inputs are never stacked or gathered per
        expert.
        """
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            normed = i < len(self.norm_weights)
            n, _, d_out = w.shape
            if i == 0 and (groups is not None or (isinstance(x, Tensor) and x.dim() == 2)):
                wide = self._wide_layer(x, groups, w, b)  # (B, n * out)
                if normed:
                    wide = self._batch_norm(wide, i)
                h = wide.view(wide.shape[0], n, d_out).transpose(0, 1)
            else:
                h = torch.baddbmm(b, x, w)  # type: ignore[arg-type]
                if normed:
                    batch = h.shape[1]
                    wide = self._batch_norm(h.transpose(0, 1).reshape(batch, n * d_out), i)
                    h = wide.view(batch, n, d_out).transpose(0, 1)
            if i < last or self.last_activation:
                h = self.act(h)
                if self.dropout > 0:
                    h = nn.functional.dropout(h, self.dropout, self.training)
            x = h
        return x  # type: ignore[return-value]

    @staticmethod
    def _wide_layer(
        x: Tensor | Sequence[Tensor], groups: Sequence[int] | None, w: Tensor, b: Tensor
    ) -> Tensor:
        n, d_in, d_out = w.shape
        if groups is None:  # one input read by all n MLPs: one (B, in) x (in, n*out) GEMM
            return torch.addmm(b.reshape(1, n * d_out), x, w.permute(1, 0, 2).reshape(d_in, n * d_out))  # type: ignore[arg-type]
        parts, start = [], 0
        for xs, count in zip(x, groups, strict=True):
            if count:
                ws, bs = w[start : start + count], b[start : start + count]
                flat = ws.permute(1, 0, 2).reshape(d_in, count * d_out)
                parts.append(torch.addmm(bs.reshape(1, count * d_out), xs, flat))
            start += count
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def row_safe_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` that normalises a one-row training batch with the running
    statistics instead of raising (a last batch of one row is a data-size accident, and
    one row has no variance to normalise by)."""
    return nn.functional.batch_norm(
        x, running_mean, running_var, weight, bias, training and x.shape[0] > 1, momentum, eps
    )


class RowSafeBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` (for a gate's logits) through :func:`row_safe_batch_norm`."""

    def forward(self, x: Tensor) -> Tensor:
        return row_safe_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )


class InputEncoder(nn.Module):
    """Dense columns concatenated with categorical embeddings.

    Features with the same embedding size share one table (row offsets keep their codes
    apart), so the lookup is one gather per embedding size rather than one per feature.

    With ``spec.task_embedding_dim = d > 0`` (STEM, Su et al. AAAI 2024) the encoder also
    holds one table per task, ``task_tables`` ``(T, sum of cardinalities, d)`` (every
    feature of a task in one table, one gather for all tasks), and :meth:`routed` gives
    the first level's inputs.
    """

    def __init__(self, spec: InputSpec, n_tasks: int = 1) -> None:
        super().__init__()
        self.n_numeric = spec.n_numeric
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(spec.categorical):
            groups.setdefault(c.embed_dim, []).append(i)
        self.tables = nn.ModuleList()
        self._group_cols: list[list[int]] = []
        for g, (dim, cols) in enumerate(sorted(groups.items())):
            feats: list[CategoricalFeature] = [spec.categorical[i] for i in cols]
            offsets = torch.tensor([0] + [f.cardinality for f in feats[:-1]]).cumsum(0)
            self.register_buffer(f"offsets_{g}", offsets, persistent=False)
            self.register_buffer(f"cols_{g}", torch.tensor(cols), persistent=False)
            table = nn.Embedding(sum(f.cardinality for f in feats), dim)
            if spec.embed_init_std != 1.0:  # rescale the N(0, 1) draw: no extra RNG use
                with torch.no_grad():
                    table.weight.mul_(spec.embed_init_std)
            self.tables.append(table)
            self._group_cols.append(cols)
        self.dim = spec.dim
        self.n_tasks = n_tasks
        self.task_dim = spec.task_embedding_dim
        if self.task_dim:  # created after the shared tables: an old config draws the same numbers
            cards = [c.cardinality for c in spec.categorical]
            self.register_buffer("task_offsets", torch.tensor([0, *cards[:-1]]).cumsum(0), persistent=False)
            tables = torch.randn(n_tasks, sum(cards), self.task_dim)  # nn.Embedding's N(0, 1)
            self.task_tables = nn.Parameter(tables * spec.embed_init_std)
            width = len(cards) * self.task_dim
            # row s: where source s (task s; the last row: the shared experts) lets gradients
            # through, over the (T * width) task embeddings side by side
            through = torch.zeros(n_tasks + 1, n_tasks * width)
            for k in range(n_tasks):
                through[k, k * width : (k + 1) * width] = 1.0
            self.register_buffer("task_through", through.unsqueeze(1), persistent=False)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] if self.n_numeric else []
        for g, table in enumerate(self.tables):
            cols = getattr(self, f"cols_{g}")
            codes = categorical.index_select(1, cols) + getattr(self, f"offsets_{g}")
            # index_select rather than table(codes): the same rows, but its backward is an
            # index_add (about 3x faster on CPU than embedding_dense_backward's sort).
            parts.append(table.weight.index_select(0, codes.flatten()).view(codes.shape[0], -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def routed(self, numeric: Tensor, categorical: Tensor) -> list[Tensor]:
        """The first level's inputs with STEM's task-specific embeddings: one ``(B,
        routed_dim)`` tensor per source, tasks ``0..T-1`` then the shared experts.

        Source ``k`` is ``[shared encoding, E_0, ..., E_{T-1}]`` with ``E_j`` task ``j``'s
        embeddings of the row's features; every ``E_j`` enters with its value, but only
        ``E_k`` passes gradients (the others are ``E_j.detach()``: STEM's "all forward,
        task-specific backward"); the shared source passes none of them. Written as
        ``d + m_s * (e - d)`` with ``d = e.detach()`` and a 0/1 mask ``m_s``: the value is
        exactly ``e``'s, one batched expression for every source.
        """
        shared = self(numeric, categorical)  # (B, dim)
        batch = categorical.shape[0]
        codes = (categorical + self.task_offsets).flatten()  # (B * F,)
        per_task = self.task_tables.index_select(1, codes)  # (T, B * F, d)
        e = per_task.view(self.n_tasks, batch, -1).transpose(0, 1).reshape(batch, -1)  # (B, T * F * d)
        d = e.detach()
        sources = d.unsqueeze(0) + self.task_through * (e - d).unsqueeze(0)  # (T + 1, B, T * F * d)
        base = shared.unsqueeze(0).expand(self.n_tasks + 1, *shared.shape)
        return list(torch.cat([base, sources], dim=2).unbind(0))


# ---- HoME's expert normalisation (Wang et al. 2024) -----------------------------------------
# A level's experts' outputs (E, B, D) normalised per expert before the gates mix them. Dispatch
# is a table: a new kind is one entry of EXPERT_NORMS.


class ExpertBatchNorm(nn.Module):
    """Batch normalisation of ``(n, B, D)`` expert outputs, statistics per expert and unit
    (computed on the ``(B, n * D)`` view: all experts in one call; a one-row training batch
    uses the running statistics, as :func:`row_safe_batch_norm`)."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n * dim))
        self.bias = nn.Parameter(torch.zeros(n * dim))
        self.register_buffer("running_mean", torch.zeros(n * dim))
        self.register_buffer("running_var", torch.ones(n * dim))

    def forward(self, h: Tensor) -> Tensor:
        n, batch, dim = h.shape
        wide = h.transpose(0, 1).reshape(batch, n * dim)
        out = row_safe_batch_norm(
            wide, self.running_mean, self.running_var, self.weight, self.bias, self.training
        )
        return out.view(batch, n, dim).transpose(0, 1)


class ExpertLayerNorm(nn.Module):
    """Layer normalisation of ``(n, B, D)`` expert outputs: each expert's output of a row
    over its ``D`` units, ``(h - mean) / sqrt(var + 1e-5) * weight + bias`` (biased
    variance), with a scale and shift per expert and unit ``(n, 1, D)``."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, h: Tensor) -> Tensor:
        return nn.functional.layer_norm(h, h.shape[-1:]) * self.weight + self.bias


def _no_expert_norm(n: int, dim: int) -> nn.Module:
    return nn.Identity()


#: ``LevelConfig.expert_norm`` -> a builder ``(n_experts, out_dim) -> module`` mapping the
#: experts' outputs ``(E, B, D)`` to the same shape.
EXPERT_NORMS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": _no_expert_norm,
    "batch": ExpertBatchNorm,
    "layer": ExpertLayerNorm,
}


# ---- gates ------------------------------------------------------------------------------
# A gate reads a routing input (B, in) and gives mixing weights over the experts it selects,
# (B, n_sel), summing to 1 over the selection, plus an auxiliary loss (0-d, already weighted)
# or None. Dispatch is a table, so a new gate kind is one entry of GATES.

GateOutput = tuple[Tensor, Tensor | None]


def _softmax_gate(logits: Tensor, n_experts: int, cfg: LevelConfig, training: bool) -> GateOutput:
    return torch.softmax(logits, dim=-1), None


def _topk_weights(logits: Tensor, top_k: int) -> Tensor:
    values, idx = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, idx, torch.softmax(values, dim=-1))


def _topk_gate(logits: Tensor, n_experts: int, cfg: LevelConfig, training: bool) -> GateOutput:
    return _topk_weights(logits, cfg.top_k), None


def _mean_gate(x: Tensor, n_experts: int, cfg: LevelConfig, training: bool) -> GateOutput:
    return x.new_full((x.shape[0], n_experts), 1.0 / n_experts), None


# ---- DSelect-k (Hazimeh et al., NeurIPS 2021) ----


def smooth_step(z: Tensor, gamma: float) -> Tensor:
    """The cubic smooth step of DSelect-k (Hazimeh et al. 2021; from Hazimeh et al. 2020):
    0 for ``z <= -gamma/2``, 1 for ``z >= gamma/2``, ``-2 z^3 / gamma^3 + 3 z / (2 gamma) + 1/2``
    in between. Exactly 0 or 1 outside the band, continuously differentiable everywhere."""
    poly = -2.0 / gamma**3 * z**3 + 1.5 / gamma * z + 0.5
    return torch.where(z <= -gamma / 2, 0.0, torch.where(z >= gamma / 2, 1.0, poly))


def dselect_code_bits(n_experts: int) -> int:
    """``m = ceil(log2 n)``: the binary digits a single-expert selector uses (0 for one expert)."""
    return math.ceil(math.log2(n_experts)) if n_experts > 1 else 0


def dselect_selectors(z: Tensor, n_experts: int, gamma: float) -> Tensor:
    """Each single-expert selector's weights over the experts.

    ``z``: code logits ``(B, k, m)``, ``m = ceil(log2 n)``; returns ``(B, k, n)``. Code ``c``
    (binary digits ``c_1..c_m``, most significant first) gets ``prod_j S(z_j)^c_j
    (1 - S(z_j))^(1 - c_j)`` (the paper's ``r(z)``), so the ``2^m`` code weights sum to 1.
    When ``n`` is not a power of 2 the unused codes ``c >= n`` are masked out of the
    expert list and their weight is moved to code ``c - 2^(m-1)`` (the same code without
    its leading digit, always a valid expert): each selector's weights over the ``n``
    experts then sum to exactly 1 at every step, and a selector with binary outputs still
    picks exactly one expert. (The reference code instead drops the unused codes and adds a
    ``1 / sum`` penalty, so its weights sum to less than 1 until training moves the mass.)
    """
    m = z.shape[-1]
    s = smooth_step(z, gamma)
    # the 2^m code weights, built one digit at a time (index = the code, leading digit first)
    per_code = s.new_ones((*s.shape[:-1], 1))
    for j in range(m):
        digit = s[..., j : j + 1]
        per_code = torch.stack([per_code * (1.0 - digit), per_code * digit], dim=-1).flatten(-2)
    if n_experts == 2**m:
        return per_code
    unused = 2**m - n_experts
    valid = per_code[..., :n_experts]
    folded = per_code[..., n_experts:]  # codes n..2^m-1 -> experts n-2^(m-1) .. 2^(m-1)-1
    start = n_experts - 2 ** (m - 1)
    middle = valid[..., start : start + unused] + folded
    return torch.cat([valid[..., :start], middle, valid[..., start + unused :]], dim=-1)


class DSelectKLogits(nn.Linear):
    """The per-example DSelect-k gate's parameters: one linear map giving ``k * m`` code
    logits then ``k`` selector logits (the reference's two dense layers, side by side).
    Initialised as the reference code: the code part ``U(-gamma/100, gamma/100)`` (every
    smooth step starts near 1/2, so every expert starts with some weight), the selector part
    ``U(-0.05, 0.05)``."""

    def __init__(self, in_dim: int, n_experts: int, cfg: LevelConfig) -> None:
        self.k, self.m = cfg.top_k, dselect_code_bits(n_experts)
        self.gamma = cfg.smooth_step_gamma
        super().__init__(in_dim, self.k * (self.m + 1))

    def reset_parameters(self) -> None:
        codes = self.k * self.m
        with torch.no_grad():
            for part, bound in ((slice(0, codes), self.gamma / 100), (slice(codes, None), 0.05)):
                nn.init.uniform_(self.weight[part], -bound, bound)
                nn.init.uniform_(self.bias[part], -bound, bound)


def dselect_weights(logits: Tensor, n_experts: int, k: int, gamma: float) -> tuple[Tensor, Tensor]:
    """DSelect-k's mixing weights ``(B, n)`` and its selectors' weights ``(B, k, n)``.

    ``logits`` ``(B, k * m + k)``: the code logits ``z`` (``(B, k, m)`` row-major), then the
    selector logits ``w``; ``weights = sum_i softmax(w)_i * selector_i``."""
    m = dselect_code_bits(n_experts)
    z = logits[:, : k * m].reshape(logits.shape[0], k, m)
    alpha = torch.softmax(logits[:, k * m :], dim=-1)  # (B, k)
    selectors = dselect_selectors(z, n_experts, gamma)
    return torch.einsum("bk,bkn->bn", alpha, selectors), selectors


#: Added inside the log of DSelect-k's entropy regulariser (the reference code's EPSILON).
ENTROPY_EPSILON = 1e-6


def _dselect_gate(logits: Tensor, n_experts: int, cfg: LevelConfig, training: bool) -> GateOutput:
    weights, selectors = dselect_weights(logits, n_experts, cfg.top_k, cfg.smooth_step_gamma)
    if not training or cfg.entropy_weight == 0:
        return weights, None
    # The entropy regulariser of the paper's reference code: each selector's entropy, summed
    # over the selectors and averaged over the rows (the reference sums over the rows too;
    # the mean keeps the weight independent of the batch size).
    entropy = -(selectors * torch.log(selectors + ENTROPY_EPSILON)).sum((1, 2)).mean()
    return weights, cfg.entropy_weight * entropy


# ---- noisy top-k with load balancing (Shazeer et al., ICLR 2017) ----

#: Added to the noise scale ``softplus(x W_noise)`` so that it never reaches 0 (a division
#: by it in the load's normal CDF); tensor2tensor's ``noisy_top_k_gating`` uses the same.
NOISE_EPSILON = 1e-2
#: Keeps ``CV^2 = var / mean^2`` finite when every importance or load is 0.
CV_EPSILON = 1e-10


class NoisyTopKLogits(nn.Linear):
    """The noisy top-k gate's parameters ``[W_g | W_noise]``: one linear map giving the
    ``n`` clean logits then the ``n`` raw noise scales. Zero-initialised, as in the paper's
    appendix A (no signal, only noise at the start, so every expert starts with the same
    load)."""

    def __init__(self, in_dim: int, n_experts: int, cfg: LevelConfig) -> None:
        super().__init__(in_dim, 2 * n_experts)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation ``var(x) / (mean(x)^2 + 1e-10)`` of a 1-d tensor
    (population variance; 0 for one element)."""
    return x.var(unbiased=False) / (x.mean() ** 2 + CV_EPSILON)


def load_balancing_loss(
    clean: Tensor, noisy: Tensor, noise_std: Tensor, weights: Tensor, top_k: int
) -> Tensor:
    """``CV(Importance)^2 + CV(Load)^2`` (Shazeer et al. 2017, sec. 4 and appendix A), unweighted.

    ``clean`` ``(B, n)`` the logits ``x W_g``, ``noisy`` ``H(x)`` the same plus noise,
    ``noise_std`` the noise scale, ``weights`` the gate's output ``G(x)``.
    Importance is ``sum_x G(x)``; Load is ``sum_x P(x, i)``, with ``P(x, i) = Phi((clean_i -
    kth_excluding(H(x), k, i)) / noise_std_i)`` the probability that expert ``i`` stays in
    the top ``k`` under a new draw of its own noise, the others' held: the threshold is the
    ``k+1``-th largest of ``H(x)`` for an expert now in the top ``k``, else the ``k``-th.
    With ``k = n`` every expert is always kept, so Load is constant and adds 0.
    """
    loss = cv_squared(weights.sum(0))
    n = clean.shape[-1]
    if top_k < n:
        top = noisy.topk(top_k + 1, dim=-1).values
        threshold_in, threshold_out = top[:, top_k : top_k + 1], top[:, top_k - 1 : top_k]
        is_in = noisy > threshold_in
        threshold = torch.where(is_in, threshold_in, threshold_out)
        prob = torch.special.ndtr((clean - threshold) / noise_std)  # the standard normal CDF
        loss = loss + cv_squared(prob.sum(0))
    return loss


def _noisy_top_k_gate(logits: Tensor, n_experts: int, cfg: LevelConfig, training: bool) -> GateOutput:
    clean = logits[:, :n_experts]
    if not training:  # no noise and no loss at evaluation: the clean logits' top-k
        return _topk_weights(clean, cfg.top_k), None
    noise_std = nn.functional.softplus(logits[:, n_experts:]) + NOISE_EPSILON
    noisy = clean + torch.randn_like(clean) * noise_std  # the global RNG (the trainer seeds it)
    weights = _topk_weights(noisy, cfg.top_k)
    if cfg.balance_weight == 0:
        return weights, None
    return weights, cfg.balance_weight * load_balancing_loss(clean, noisy, noise_std, weights, cfg.top_k)


@dataclass(frozen=True)
class GateKindSpec:
    """How one ``gate_kind`` is built and applied.

    ``build(in_dim, n_experts, cfg)`` makes the module that maps the routing input to the
    gate's logits; ``weights(logits, n_experts, cfg, training)`` turns them into mixing
    weights ``(B, n_experts)`` and an auxiliary loss (or None); ``batch_norm``: whether
    ``norm='batch'`` normalises the logits (``n_experts`` wide) first.
    """

    build: Callable[[int, int, LevelConfig], nn.Module]
    weights: Callable[[Tensor, int, LevelConfig, bool], GateOutput]
    batch_norm: bool = False


def _linear(in_dim: int, n_experts: int, cfg: LevelConfig) -> nn.Module:
    return nn.Linear(in_dim, n_experts)


def _no_parameters(in_dim: int, n_experts: int, cfg: LevelConfig) -> nn.Module:
    return nn.Identity()


GATES: dict[str, GateKindSpec] = {
    "softmax": GateKindSpec(_linear, _softmax_gate, batch_norm=True),
    "topk": GateKindSpec(_linear, _topk_gate, batch_norm=True),
    "none": GateKindSpec(_no_parameters, _mean_gate),
    "dselect_k": GateKindSpec(DSelectKLogits, _dselect_gate),
    "noisy_top_k": GateKindSpec(NoisyTopKLogits, _noisy_top_k_gate),
}
