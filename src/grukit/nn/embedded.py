"""A recurrent layer fed by an embedding: ``layer(tokens, embedding=E)`` equals ``layer(E[tokens])``.

The first layer's input projection is the same linear map at every position, so it needs to run
once per *distinct* token, not once per position:

* forward: ``u, inverse = unique(tokens)``; ``P = E[u] @ W_ih^T + b`` (U rows); ``gx = P[inverse]``;
* backward: ``D[i] = sum of grad gx over the positions of token u[i]``; ``grad W_ih = D^T E[u]``,
  ``grad E[u] = D W_ih`` (the other rows of grad E are zero, as nn.Embedding's dense gradient),
  ``grad b = sum of D``.

The fused kernels go one step further: they take P and the index as a :class:`TableRows` and read
each step's row through the index, so ``gx = P[inverse]`` (7.7 MB per IMDB batch) is never
written; their backward returns D itself.

A batch of the tutorial's IMDB model (32 reviews, about 5,000 positions) holds about 1,400 distinct
tokens, so the three GEMMs of the projection shrink 3.6x and the embedding's lookup and backward
(a dense (positions, 128) gradient) disappear. Measured there: projection forward and backward
9-10 ms against 18-22 ms for ``nn.Embedding`` then ``linear``. The numbers differ from the
materialised path by round-off only (the sums over a token's positions are formed first).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, DataError, ShapeError
from . import bfloat16
from .first_order import first_order_backward


class TableRows(NamedTuple):
    """gx (T, N, G) given as ``table[index]``: table (U, G), one row per distinct token, and
    index (T, N) int64 into it. The fused kernels read it as is (kernels.function)."""

    table: torch.Tensor
    index: torch.Tensor


class EmbeddedTokens:
    """Token ids (T, N) time-major and the embedding matrix (V, F): the input of a layer's first
    layer, never materialised as (T, N, F) on the training path. ``shape``, ``dtype`` and ``device``
    are those of the embedded sequence."""

    def __init__(self, tokens: torch.Tensor, weight: torch.Tensor) -> None:
        self.tokens, self.weight = tokens, weight
        self._distinct: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.tokens.shape, self.weight.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def materialize(self) -> torch.Tensor:
        return nn.functional.embedding(self.tokens, self.weight)

    def distinct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, inverse): the distinct token ids, sorted, and each position's index into them
        (flattened in the tokens' (T, N) order). Computed once, shared by both directions."""
        if self._distinct is None:
            u, inverse = torch.unique(self.tokens, sorted=True, return_inverse=True)
            self._distinct = (u, inverse.reshape(-1))
        return self._distinct

    def project(self, weight_ih: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """gx (T, N, G) = E[tokens] @ weight_ih^T + bias, through the distinct tokens."""
        u, inverse = self.distinct()
        table = self._table(u, weight_ih, bias)
        return _GatherRows.apply(table, inverse).view(*self.tokens.shape, weight_ih.shape[0])

    def project_distinct(self, weight_ih: torch.Tensor, bias: torch.Tensor | None) -> TableRows:
        """The same gx as :meth:`project`, as the per-token table and the tokens' index into it."""
        u, inverse = self.distinct()
        return TableRows(self._table(u, weight_ih, bias), inverse.view(self.tokens.shape))

    def _table(self, u: torch.Tensor, weight_ih: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bfloat16.enabled():   # the distinct rows gathered, then the bfloat16 mode's projection
            return bfloat16.linear(self.weight.index_select(0, u), weight_ih, bias)
        return _DistinctTokenProjection.apply(u, self.weight, weight_ih, bias)


class _DistinctTokenProjection(torch.autograd.Function):
    """P = E[u] @ W_ih^T + b, one row per distinct token."""

    @staticmethod
    def forward(ctx, u, weight, weight_ih, bias):
        rows = weight.index_select(0, u)
        ctx.save_for_backward(u, rows, weight_ih)
        ctx.vocabulary, ctx.has_bias = weight.shape[0], bias is not None
        return torch.addmm(bias, rows, weight_ih.t()) if bias is not None else rows @ weight_ih.t()

    @staticmethod
    @first_order_backward("grukit's embedded first layer (embedding=)", "pass the embedded sequence "
                          "(torch.nn.Embedding's output) to a layer built with kernel='reference' instead")
    @bfloat16.without_autocast
    def backward(ctx, per_token):
        u, rows, weight_ih = ctx.saved_tensors
        grad_weight = grad_weight_ih = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = kept_empty((ctx.vocabulary, rows.shape[1]), per_token).zero_()
            grad_weight.index_copy_(0, u, per_token @ weight_ih)
        if ctx.needs_input_grad[2]:
            grad_weight_ih = per_token.t() @ rows
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = per_token.sum(0)
        return None, grad_weight, grad_weight_ih, grad_bias


class _GatherRows(torch.autograd.Function):
    """table[index] for the paths that need gx itself; backward sums each position's gradient
    into its row, in position order."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return torch.index_select(table, 0, index, out=kept_empty((index.shape[0], table.shape[1]), table))

    @staticmethod
    @first_order_backward("grukit's embedded first layer (embedding=)", "pass the embedded sequence "
                          "(torch.nn.Embedding's output) to a layer built with kernel='reference' instead")
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        return row_sums(index, grad, ctx.rows), None


def row_sums(index: torch.Tensor, grad: torch.Tensor, rows: int) -> torch.Tensor:
    """The gradient of a table read as ``table[index]``: (rows, G) zeros, then grad[p] (P, G) added
    to row index[p] in order of p. Shared by the gather here and the fused kernels' table input."""
    out = torch.zeros((rows, grad.shape[1]), dtype=grad.dtype, device=grad.device)
    _add_rows(index, grad.contiguous(), out)
    return out


def kept_empty(shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """torch.empty(shape) like ``like``; on the CPU one of the kernels' kept arrays
    (kernels.function.kept_empty), so that the next batch does not touch fresh pages for it (gx
    and the embedding's gradient are 7.7 and 5 MB for the tutorial IMDB model)."""
    if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64):
        try:
            from .kernels.function import kept_empty as kept_array
        except ImportError:  # numba missing: torch's allocator
            pass
        else:
            return kept_array(shape, like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def time_major_rows(x: torch.Tensor) -> torch.Tensor:
    """x (T, N, I) as (T*N, I) rows. A batch-first layer's input arrives as a transposed view, and
    reshape would copy it into a fresh tensor on every training step, touching new pages whenever
    glibc had handed the last one back (profiled: 2.1 ms of a 25 ms S2 GRU step); the copy goes into a
    kept array instead. The fused kernels' backward reads x's rows this way for grad weight_ih where
    oneDNN's microkernel cannot read x in place (torch's matmul, float64: projection_grads.weight_gradient):
    its fresh copy had cost S2's training steps (Zen 4, one process, alternating, page faults at about
    2.6 us each) 368 -> 63 faults a step for the GRU, 585 -> 143 for the LSTM, 343 -> 20 for SimpleRNN,
    1.01-1.02x in time."""
    if x.is_contiguous():
        return x.view(-1, x.shape[-1])
    rows = kept_empty(tuple(x.shape), x)
    rows.copy_(x)
    return rows.view(-1, x.shape[-1])


def _add_rows(index: torch.Tensor, source: torch.Tensor, out: torch.Tensor) -> None:
    """out[index[p]] += source[p] in order of p: the compiled loop on the CPU (1.2x faster than
    index_add_ on an IMDB batch, see kernels/rows.py), index_add_ elsewhere or without the kernels."""
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64):
        try:
            from .kernels.rows import add_rows
        except ImportError:  # numba missing: the slower torch op gives the same sums
            pass
        else:
            add_rows(index.numpy(), source.numpy(), out.numpy())
            return
    out.index_add_(0, index, source)


def check_tokens(name: str, tokens, weight, input_size: int, batch_first: bool) -> tuple[torch.Tensor, bool]:
    """Validated (T, N) time-major int64 token ids and whether the input was batched."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ShapeError(f"{name}: embedding= must be a 2-D float tensor (vocabulary, features), such as "
                         f"nn.Embedding(...).weight; got {_describe(weight)}")
    if weight.shape[1] != input_size:
        raise ShapeError(f"{name}: the embedding has {weight.shape[1]} features per token, but the layer was "
                         f"built with input_size={input_size}; build it with input_size={weight.shape[1]}")
    if not isinstance(tokens, torch.Tensor):
        raise ShapeError(f"{name}: with embedding=, input must be a tensor of token ids, got "
                         f"{type(tokens).__name__}; convert with torch.as_tensor(ids, dtype=torch.long)")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise DataError(f"{name}: with embedding=, input must hold integer token ids, got {tokens.dtype}; "
                        "convert with .long(), or drop embedding= to pass vectors")
    layout = "(N, L)" if batch_first else "(L, N)"
    if tokens.dim() not in (1, 2) or 0 in tokens.shape:
        raise ShapeError(f"{name}: with embedding=, input must be 2-D {layout} token ids or unbatched 1-D "
                         f"(L,), with at least one step, got shape {tuple(tokens.shape)}")
    if tokens.device != weight.device:
        raise ConfigError(f"{name}: token ids on {tokens.device} and embedding on {weight.device}; move both "
                          "to one device")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= weight.shape[0]:
        raise DataError(f"{name}: token ids must lie in [0, {weight.shape[0] - 1}] (the embedding's rows), got "
                        f"ids from {low} to {high}; map unknown words to an out-of-vocabulary id")
    batched = tokens.dim() == 2
    tokens = tokens.long()
    if not batched:
        tokens = tokens.unsqueeze(1)
    elif batch_first:
        tokens = tokens.t()
    return tokens, batched


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
