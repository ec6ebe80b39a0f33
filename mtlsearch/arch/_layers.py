"""Building blocks: batched MLPs (all experts of a level in one matmul per layer), the input
encoder, and the gate functions.

Experts of a level share their widths, so their weights are stacked into ``(E, in, out)``
tensors and a layer is one ``baddbmm`` over the experts instead of a Python loop over
expert modules. Towers of tasks that share a shape are batched the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mtlsearch.arch._config import CategoricalFeature, InputSpec

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
    """

    def __init__(self, spec: InputSpec) -> None:
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

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] if self.n_numeric else []
        for g, table in enumerate(self.tables):
            cols = getattr(self, f"cols_{g}")
            codes = categorical.index_select(1, cols) + getattr(self, f"offsets_{g}")
            # index_select rather than table(codes): the same rows, but its backward is an
            # index_add (about 3x faster on CPU than embedding_dense_backward's sort).
            parts.append(table.weight.index_select(0, codes.flatten()).view(codes.shape[0], -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


# ---- gates -------------------------------------------------------------------------------
# A gate function maps logits over the selected experts (B, n_sel) to mixing weights that
# sum to 1 over the selection. Dispatch is a table, so a new gate kind is one entry.


def _softmax_gate(logits: Tensor, top_k: int) -> Tensor:
    return torch.softmax(logits, dim=-1)


def _topk_gate(logits: Tensor, top_k: int) -> Tensor:
    values, idx = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, idx, torch.softmax(values, dim=-1))


GATE_FNS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "softmax": _softmax_gate,
    "topk": _topk_gate,
}
