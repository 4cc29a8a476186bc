"""grukit's bfloat16 mode: what a float32 layer computes under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

In this mode the large products take bfloat16 operands and accumulate in float32:

* the input projection ``x @ W_ih^T`` (and the embedded-token projection), in the forward pass
  and both of its gradients (grad x = grad @ W_ih, grad W_ih = grad^T @ x);
* the recurrent weight gradient, grad W_hh = sum over steps of grad_gates^T @ h.

Everything else stays float32: the per-step recurrent product h @ W_hh^T and its gradient,
where rounding errors would compound over the steps, the gate arithmetic, the state, biases and
their gradients, and the layer's outputs (float32, not bfloat16: torch's autocast lets an op
choose, and a float32 output costs the next autocast op one cast). The parameters stay float32
(master weights), and a bfloat16 copy of each operand is made per call (round to nearest, ties to
even: torch's own conversion). The projection keeps its bfloat16 input copy for backward, half the
memory of the float32 one.

The products run through MKL's ``cblas_gemm_bf16bf16f32`` (kernels/bf16.py), which uses the CPU's
AVX-512 BF16 or AMX units where it has them and converts to float32 itself where it has not.
torch's own bfloat16 matmul is not used: it returns bfloat16 (torch 2.13 has no float32
``out_dtype`` for mm on the CPU), and on a CPU without BF16 units it ran 50-100x slower than float32.

Inside a layer's forward, torch's autocast is switched off (:func:`autocast_scope`), so the layer's
own torch ops run in its float32 (or float64) as without autocast, and the mode is a thread-local flag
(:func:`enabled`) that the projection, the fused kernels' backward and the reference loop read when
they record. A float64 layer never enters the mode from autocast (torch's autocast leaves float64
alone too).

``with grukit.nn.bfloat16.mode():`` turns the mode on without autocast: for grukit's recurrent
layers only, while torch's own layers around them (Linear, Embedding) stay float32, whose bfloat16
matmul is slow on CPUs without BF16 units (``fit(precision="mixed_bfloat16")`` trains this way). It
applies to layers of any dtype, which lets the tests run the reference loop in float64 in the mode as
an oracle of the fused kernels.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np
import torch

from ..errors import ConfigError
from .kernels import bf16 as _bf16_gemm

_STATE = threading.local()


def enabled() -> bool:
    """Whether the bfloat16 mode is on in this thread (:func:`mode`, or a layer's forward under autocast)."""
    return getattr(_STATE, "on", False)


@contextlib.contextmanager
def mode(on: bool = True):
    """The bfloat16 mode on (or off) in this thread for grukit's recurrent layers of any dtype,
    with or without autocast."""
    previous = enabled()
    _STATE.on = on
    try:
        yield
    finally:
        _STATE.on = previous


def autocast_scope(weight: torch.Tensor):
    """None when CPU autocast is off (the layer runs as it would without it); else a context for
    a layer's forward: autocast off inside, and the bfloat16 mode on when autocast asks for bfloat16
    and the layer's parameters (``weight``, one of them) are float32 on the CPU. Other autocast dtypes
    (float16) leave the layer in its own dtype, unless :func:`mode` is on."""
    if not torch.is_autocast_enabled("cpu"):
        return None
    on = enabled() or (torch.get_autocast_dtype("cpu") == torch.bfloat16 and weight.dtype == torch.float32
                       and weight.device.type == "cpu")
    scope = contextlib.ExitStack()
    scope.enter_context(torch.autocast("cpu", enabled=False))
    scope.enter_context(mode(on))
    return scope


def without_autocast(backward):
    """A custom Function's backward run with CPU autocast off: a backward called inside an autocast
    block would otherwise run its torch matmuls in bfloat16 or float16 (torch runs a backward under
    the autocast state of the thread that calls it)."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        if not torch.is_autocast_enabled("cpu"):
            return backward(ctx, *grads)
        with torch.autocast("cpu", enabled=False):
            return backward(ctx, *grads)
    return run


def rounded(t: torch.Tensor) -> torch.Tensor:
    """t as bfloat16 (a no-op on bfloat16), in t's own layout: a transposed view stays one."""
    return t if t.dtype == torch.bfloat16 else t.to(torch.bfloat16)


def _bits(t: torch.Tensor) -> np.ndarray:
    """A numpy uint16 view of a bfloat16 CPU tensor's bits (strides kept)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
           accumulate: bool = False) -> torch.Tensor:
    """a @ b (2-D) with both operands rounded to bfloat16 and the products accumulated in ``dtype``:
    float32 through MKL's bfloat16 GEMM (``out += a @ b`` with ``accumulate``), float64 (the
    reference's oracle) by a float64 matmul of the rounded values, which are exact in float64."""
    a, b = rounded(a), rounded(b)
    if dtype == torch.float64:
        product = a.double() @ b.double()
        return product if out is None else (out.add_(product) if accumulate else out.copy_(product))
    if not a.is_contiguous() and not a.t().is_contiguous():
        a = a.contiguous()
    if not b.is_contiguous() and not b.t().is_contiguous():
        b = b.contiguous()
    result = _bf16_gemm.matmul(_bits(a), _bits(b), None if out is None else out.numpy(), accumulate)
    return torch.from_numpy(result) if out is None else out


def numpy_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`matmul` on float32 numpy arrays (the fused backward's weight-gradient terms), converted
    by torch (multithreaded) in their own layouts."""
    dtype = torch.float64 if a.dtype == np.float64 else torch.float32
    return matmul(torch.from_numpy(a), torch.from_numpy(b), dtype=dtype).numpy()


class Projection(torch.autograd.Function):
    """rows @ weight^T + bias with the products in bfloat16 (float32 accumulation): the input
    projection of the bfloat16 mode. Keeps the bfloat16 rows and weight for backward, where both
    input gradients take the rounded output gradient; the bias gradient sums it unrounded."""

    @staticmethod
    def forward(ctx, rows, weight, bias):
        if rows.device.type != "cpu" or weight.device.type != "cpu":
            raise ConfigError(f"grukit's bfloat16 mode runs on the CPU, got inputs on {rows.device} and weights "
                              f"on {weight.device}; leave grukit.nn.bfloat16.mode() off for layers on other devices")
        rows_b, weight_b = rounded(rows), rounded(weight)
        ctx.save_for_backward(rows_b, weight_b)
        ctx.dtype, ctx.has_bias = rows.dtype, bias is not None
        out = torch.empty((rows.shape[0], weight.shape[0]), dtype=rows.dtype)
        if bias is None:
            return matmul(rows_b, weight_b.t(), out, rows.dtype)
        out.copy_(bias.expand_as(out))
        return matmul(rows_b, weight_b.t(), out, rows.dtype, accumulate=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @without_autocast
    def backward(ctx, grad):
        rows_b, weight_b = ctx.saved_tensors
        grad_b = rounded(grad)
        grad_rows = matmul(grad_b, weight_b, dtype=ctx.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = matmul(grad_b.t(), rows_b, dtype=ctx.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_rows, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear`` in the bfloat16 mode (:class:`Projection`), for x of any rank."""
    flat = Projection.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return flat.view(*x.shape[:-1], weight.shape[0])


class RecurrentWeightGradient(torch.autograd.Function):
    """``h @ weight^T`` at full precision, whose weight gradient takes bfloat16 operands: the
    reference loop's recurrent product in the bfloat16 mode, as the fused kernels compute it
    (the per-step product and grad h at full precision, grad W_hh = grad^T @ h rounded)."""

    @staticmethod
    def forward(ctx, h, weight):
        ctx.save_for_backward(h, weight)
        return h @ weight.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    @without_autocast
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = matmul(grad.t(), h, dtype=h.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_weight


__all__ = ["Projection", "RecurrentWeightGradient", "autocast_scope", "enabled", "linear", "mode", "matmul",
           "numpy_matmul", "rounded", "without_autocast"]
