"""grukit's bfloat16 mode: what a float32 layer computes under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

In this mode the large products take bfloat16 operands, accumulate in float32 and round their
result to bfloat16, as torch's autocast computes a matmul:

* the input projection ``x @ W_ih^T`` (and the embedded-token projection), in the forward pass
  and both of its gradients (grad x = grad @ W_ih, grad W_ih = grad^T @ x);
* the recurrent weight gradient, grad W_hh = sum over steps of grad_gates^T @ h, one product over
  all steps (the reference loop adds its steps' products at full precision and rounds the sum);
* every step's recurrent product h_{t-1} @ W_hh^T and its gradient grad_gates @ W_hh (as torch's
  autocast runs an ``nn.LSTM`` on the CPU, and as a hand-written GRU of ``nn.Linear`` layers under
  autocast computes it). The state itself stays float32 (torch's bfloat16 LSTM keeps it in
  bfloat16): only the product's operand copy and its result are rounded.

Everything else stays float32: the gate arithmetic, the state, biases and their gradients, and the
layer's outputs (float32, not bfloat16: torch's autocast lets an op choose, and a float32 output
costs the next autocast op one cast). The parameters stay float32 (master weights), and a bfloat16
copy of each operand is made per call (round to nearest, ties to even: torch's own conversion). The
projection keeps its bfloat16 input copy for backward, half the memory of the float32 one.

The products run through torch's bfloat16 matmul where the CPU has BF16 units (AVX-512 BF16 or
AMX, through oneDNN; :data:`BACKEND`), else through MKL's ``cblas_gemm_bf16bf16f32``
(kernels/bf16.py), which widens the operands itself on CPUs without them, and on AMD's Zen 4 too:
measured there it ran at float32 speed while torch's bfloat16 matmul ran 2.2-2.4x faster. torch's
matmul returns bfloat16, which is why the result is rounded to bfloat16 on every path: the mode
gives the same numbers on every CPU, up to the order of the float32 additions. The fused kernels'
per-step products run inside their compiled loops: on BF16 units through oneDNN's brgemm
microkernel, which torch exports (:func:`recurrent_products`), elsewhere as a float32 GEMM of the
rounded values (kernels/bf16.py).

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
from torch.nn.utils.rnn import PackedSequence

from ..errors import ConfigError
from .first_order import first_order_backward
from .kernels import bf16 as _bf16_gemm
from .kernels import buffers


class _ThreadState(threading.local):
    on = False   # a class default: enabled() finds it without a failed lookup (0.4 against 0.05 us)


_STATE = _ThreadState()


def enabled() -> bool:
    """Whether the bfloat16 mode is on in this thread (:func:`mode`, or a layer's forward under autocast)."""
    return _STATE.on


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


def autocast_inputs(dtype: torch.dtype, *values):
    """``values`` (tensors, tuples of tensors such as an LSTM state, PackedSequences or None) with
    each bfloat16 or float16 tensor converted to ``dtype``, the layer's own: what autocast does to
    an op that runs in float32. Under autocast a torch Linear before the layer returns bfloat16, and
    the layer takes it as torch.nn.GRU does (the conversion to float32 is exact)."""
    def convert(value):
        if isinstance(value, tuple) and not isinstance(value, PackedSequence):
            return tuple(convert(part) for part in value)
        data = value.data if isinstance(value, PackedSequence) else value
        if isinstance(data, torch.Tensor) and data.dtype in (torch.bfloat16, torch.float16) and data.dtype != dtype:
            return value.to(dtype)
        return value
    return tuple(convert(value) for value in values)


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


def _kept(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype) on one of the kernels' kept arrays (kernels/buffers.py): a
    step that allocates the same sizes again touches no fresh pages (S4: 27 against 5.6 ms to widen
    and bias the 12800 x 1536 projection, 13.7 against 2.7 ms to round the gate gradients)."""
    if dtype == torch.bfloat16:   # numpy has no bfloat16: kept as uint16, viewed as bfloat16
        return torch.from_numpy(buffers.empty(tuple(shape), np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(buffers.empty(tuple(shape), np.float64 if dtype == torch.float64 else np.float32))


def rounded(t: torch.Tensor) -> torch.Tensor:
    """t as bfloat16 (a no-op on bfloat16), in t's own layout: a transposed view stays one."""
    if t.dtype == torch.bfloat16:
        return t
    if t.is_contiguous():
        return _kept(t.shape, torch.bfloat16).copy_(t)
    if t.dim() == 2 and t.t().is_contiguous():
        return _kept(t.t().shape, torch.bfloat16).copy_(t.t()).t()
    return t.to(torch.bfloat16)


def widened(t: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    """t (bfloat16) converted to ``dtype`` (exactly) on a kept array, plus ``bias`` if given."""
    out = _kept(t.shape, dtype).copy_(t)
    return out if bias is None else out.add_(bias)


def _bits(t: torch.Tensor) -> np.ndarray:
    """A numpy uint16 view of a bfloat16 CPU tensor's bits (strides kept)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def _torch_uses_bf16_units() -> bool:
    """Whether torch's bfloat16 matmul runs on this CPU's BF16 units (oneDNN with AVX-512 BF16 or
    AMX): measured on a Zen 4 at 370-430 GFLOP/s against 150-200 for float32 (2 threads). On a CPU
    without them oneDNN falls back to a reference loop (1-3 GFLOP/s on a Zen 3)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(cpu, c, lambda: False)() for c in checks)


# Who multiplies: "torch" (its bfloat16 matmul, on BF16 units), else "mkl" (kernels/bf16.py: MKL's
# bfloat16 GEMM, or a float32 GEMM of the widened values). Both give the same rounded result up to
# the order of the float32 additions; the tests run both.
BACKEND = "torch" if _torch_uses_bf16_units() else "mkl"


def recurrent_products() -> str | None:
    """How the fused kernels compute the per-step recurrent products in this thread (their
    ``products``, kernels/products.py): None outside the mode (the dtype's default GEMM); "brgemm",
    oneDNN's microkernel called from the compiled loop, where torch's bfloat16 matmul runs on BF16
    units (:data:`BACKEND` "torch") and torch exports it; else "rounded", a GEMM of the rounded
    values (kernels/bf16.py)."""
    if not enabled():
        return None
    return "brgemm" if BACKEND == "torch" and _bf16_gemm.HAS_BRGEMM else "rounded"


def product(a: torch.Tensor, b: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """a @ b (2-D) as torch's autocast computes a matmul: both operands rounded to bfloat16, the
    products accumulated in float32, the result rounded to bfloat16 (returned as a bfloat16 tensor;
    the caller widens it, fused with its next pass where it can). ``exact`` accumulates in float64
    instead: the oracle for the float64 reference, whose rounded operands are exact in float64."""
    a, b = rounded(a), rounded(b)
    if exact:
        return rounded(a.double() @ b.double())
    if BACKEND == "torch":
        return torch.matmul(a, b, out=_kept((a.shape[0], b.shape[1]), torch.bfloat16))
    if not a.is_contiguous() and not a.t().is_contiguous():
        a = a.contiguous()
    if not b.is_contiguous() and not b.t().is_contiguous():
        b = b.contiguous()
    out = buffers.empty((a.shape[0], b.shape[1]), np.float32)
    return rounded(torch.from_numpy(_bf16_gemm.matmul(_bits(a), _bits(b), out)))


def matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`product` widened to ``dtype`` (float32, or float64 for the oracle)."""
    return widened(product(a, b, exact=dtype == torch.float64), dtype)


def numpy_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`matmul` on float32 (or float64) numpy arrays (the fused backward's weight-gradient
    terms), converted by torch (multithreaded) in their own layouts."""
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
        out = product(rows_b, weight_b.t(), exact=rows.dtype == torch.float64)
        return widened(out, rows.dtype, bias)

    @staticmethod
    @first_order_backward("grukit's bfloat16 mode", "run the double backward in float32 (no bfloat16 mode or "
                          "bfloat16 autocast around grukit's layers) with kernel='reference'")
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


class RecurrentProduct(torch.autograd.Function):
    """``h @ weight^T`` in the mode, as the fused kernels compute the per-step recurrent product:
    both operands rounded to bfloat16, the result rounded (:func:`matmul`), and grad h the same way.
    Its weight gradient is left unrounded: the steps' gradients add up in the layer's dtype, and
    :class:`RoundedGradient` rounds their sum."""

    @staticmethod
    def forward(ctx, h, weight):
        ctx.save_for_backward(h, weight)
        return matmul(h, weight.t(), dtype=h.dtype)

    @staticmethod
    @first_order_backward("grukit's bfloat16 mode", "run the double backward in float32 (no bfloat16 mode or "
                          "bfloat16 autocast around grukit's layers) with kernel='reference'")
    @without_autocast
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = matmul(grad, weight, dtype=h.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:   # exact products of the rounded operands, accumulated in h's dtype
            grad_weight = rounded(grad).t().to(h.dtype) @ rounded(h).to(h.dtype)
        return grad_h, grad_weight


class RoundedGradient(torch.autograd.Function):
    """The identity, whose gradient is rounded to bfloat16. The reference loop passes weight_hh
    through it once per layer and direction, so its gradient is the sum over all steps rounded once:
    what the fused kernels' single grad W_hh product over all steps gives."""

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    @first_order_backward("grukit's bfloat16 mode", "run the double backward in float32 (no bfloat16 mode or "
                          "bfloat16 autocast around grukit's layers) with kernel='reference'")
    @without_autocast
    def backward(ctx, grad):
        return grad.to(torch.bfloat16).to(grad.dtype)


__all__ = ["BACKEND", "Projection", "RecurrentProduct", "RoundedGradient", "autocast_inputs", "autocast_scope",
           "enabled", "linear", "mode", "matmul", "numpy_matmul", "product", "recurrent_products", "rounded", "widened",
           "without_autocast"]
