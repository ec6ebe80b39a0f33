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
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        widths: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same distribution as nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if x.dim() == 2:  # shared input: one (B, in) x (in, n*out) GEMM
                n, d_in, d_out = w.shape
                flat = w.permute(1, 0, 2).reshape(d_in, n * d_out)
                x = (x @ flat).view(x.shape[0], n, d_out).transpose(0, 1) + b
            else:
                x = torch.baddbmm(b, x, w)
            if i < last or self.last_activation:
                x = self.act(x)
                if self.dropout > 0:
                    x = nn.functional.dropout(x, self.dropout, self.training)
        return x


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
            self.tables.append(nn.Embedding(sum(f.cardinality for f in feats), dim))
            self._group_cols.append(cols)
        self.dim = spec.dim

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] if self.n_numeric else []
        for g, table in enumerate(self.tables):
            cols = getattr(self, f"cols_{g}")
            codes = categorical.index_select(1, cols) + getattr(self, f"offsets_{g}")
            parts.append(table(codes).flatten(1))
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
