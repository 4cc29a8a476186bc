"""Torch entry points of the fused CPU kernels.

``fused_run_direction`` has the signature and results of
:func:`grukit.nn.reference.run_direction` and is differentiable (a
``torch.autograd.Function``: gradients for gx, the initial state(s), weight_hh and
bias_hh). ``fused_step`` mirrors :func:`grukit.nn.reference.step` for inference.
``supports`` says whether a configuration is covered (None) or why not (a short reason).

Tensors reach the kernels as numpy views (no copy when already contiguous on the CPU).
The kernels use at most torch.get_num_threads() threads (see common.run_rows), and each
of them calls BLAS (the per-step GEMMs, scipy's OpenBLAS) single-threaded: see
:func:`one_blas_thread`.

``CALLS`` counts kernel invocations ("run" per fused_run_direction forward, "project" per
inference input projection on the kernels' threads (fused_projection), "input rows" per forward
that projects its input inside the loop (InputRows), "step" per fused_step, "backward" per
backward) so tests can prove the fused path ran.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from torch._functorch.utils import unwrap_dead_wrappers

from .. import bfloat16
from ..dispatch import records_gradient
from ..embedded import TableRows, row_sums
from ..first_order import first_order_backward
from ..projection_grads import projection_grads
from ..reference import DirectionWeights
from . import api, backward_gemms, buffers, products, tiles
from .blas import PER_THREAD_LIMIT
from .common import GEMM_MIN_ROWS, TINY_GRADIENT_FLOAT32, flush_tiny, set_threads

CALLS: Counter = Counter()

_DTYPES = (torch.float32, torch.float64)
_DTYPES_NP = {torch.float32: np.float32, torch.float64: np.float64}


def supports(mode: str, dtype: torch.dtype, device: torch.device | str,
             weights: DirectionWeights | None = None) -> str | None:
    """None when the fused kernels cover this configuration, else a short reason."""
    if mode not in api.MODES:
        return f"unknown cell mode {mode!r}"
    if torch.device(device).type != "cpu":
        return f"fused kernels run on the CPU only, not on {torch.device(device).type}"
    if dtype not in _DTYPES:
        return f"fused kernels support float32 and float64, not {dtype}"
    if weights is not None:
        if mode == "LSTM" and weights.weight_hr is not None:
            return "LSTM with projection (proj_size > 0) has no fused kernel"
        if api.RECURRENT_ROWS[mode] and weights.weight_hh is None:
            return f"{mode} needs weight_hh"
        for name in ("weight_hh", "bias_hh"):
            t = getattr(weights, name)
            if t is not None and (t.device.type != "cpu" or t.dtype != dtype):
                return f"{name} is {t.dtype} on {t.device}, expected {dtype} on cpu"
    return None


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A numpy view of a CPU tensor (a copy only when it is not contiguous)."""
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _packed(weight: torch.Tensor | None) -> np.ndarray | None:
    """W^T packed for the forward loop, made anew on every call.

    No cache: a tensor's _version does not witness every in-place update (torch's fused Adam
    changes parameters without bumping it), and a stale packed weight silently trains the
    wrong model. Packing costs one transpose copy of W_hh (common.pack_transposed: ~18 us at
    H=128 for GRU).
    """
    return None if weight is None else api.pack_weight(_np(weight))


_BLAS: ThreadpoolController | None = None


def one_blas_thread(batch: int):
    """Context holding BLAS at one thread while a kernel runs (~25 us), for batches that
    reach the per-step GEMMs (common.GEMM_MIN_ROWS rows).

    The batch is already split over our threads; OpenBLAS threads on top would compete
    for the same cores, and they would run without the kernels' subnormal flush
    (MXCSR is per thread). Measured on 2 cores: two blocks of rows with one BLAS thread
    each beat one block with two BLAS threads (see common.GEMM_MIN_ROWS).
    """
    global _BLAS
    if batch < GEMM_MIN_ROWS or PER_THREAD_LIMIT:   # MKL: limited per thread in common.run_rows
        return contextlib.nullcontext()
    if _BLAS is None:
        import scipy.linalg.cython_blas  # noqa: F401  the OpenBLAS the kernels call: load it first
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _check_supported(mode: str, gx: torch.Tensor, weights: DirectionWeights) -> None:
    reason = supports(mode, gx.dtype, gx.device, weights)
    if reason is not None:
        from ...errors import UnsupportedKernelConfig
        raise UnsupportedKernelConfig(reason)


def _index_np(index: torch.Tensor) -> np.ndarray:
    """A TableRows index (T, N) as the kernels read it: int64, C-contiguous, on the CPU."""
    return index.detach().to("cpu", torch.int64).contiguous().numpy()


def _lengths_np(lengths: torch.Tensor | None, T: int, B: int) -> np.ndarray | None:
    if lengths is None:
        return None
    out = lengths.detach().to("cpu", torch.int64).contiguous().numpy()
    if out.shape != (B,) or (B and (out.min() < 0 or out.max() > T)):
        from ...errors import DataError
        raise DataError(f"lengths: expected {B} values in [0, {T}], got {lengths.tolist()}")
    return out


def _run_forward(mode, reverse, candidate, lengths, training, gx_index, gx, h0, c0, weight_hh, bias_hh,
                 weight_ih=None, bias_in=None):
    """The kernel's forward on tensors: ((out, h_n[, c_n]) as tensors, workspace or None).
    ``gx_index`` (T, B) int64 or None: gx is a table read through it (api.forward). With
    ``weight_ih``, gx is the input x (T, B, I) (a batch-first layer's transposed view is read in
    place), projected inside the loop with ``bias_in`` (api.forward's input_rows)."""
    set_threads(torch.get_num_threads())
    input_rows = None
    if weight_ih is not None:
        source, batch_first = _time_major_source(gx)
        input_rows, gx = (_np(source), _np(weight_ih), _np(bias_in), batch_first), None
        CALLS["input rows"] += 1
    with one_blas_thread(h0.shape[0]):
        out, h_n, c_n, ws = api.forward(mode, _np(gx), _np(h0), _np(c0), _packed(weight_hh),
                                        _np(bias_hh), lengths, reverse, training, candidate, gx_index,
                                        bfloat16.recurrent_products(), input_rows)
    CALLS["run"] += 1
    results = (torch.from_numpy(out), torch.from_numpy(h_n))
    if c_n is not None:
        results += (torch.from_numpy(c_n),)
    return results, ws


class _Workspace:
    """What a kernel's forward keeps for its backward (numpy arrays, or None), passed from
    _FusedDirection.forward to its setup_context as a non-tensor output."""

    def __init__(self, arrays) -> None:
        self.arrays = arrays


# Positions of forward's inputs in ctx.needs_input_grad.
_GX, _WEIGHT_HH, _BIAS_HH, _WEIGHT_IH, _BIAS_IN = 6, 9, 10, 11, 12


class _FusedDirection(torch.autograd.Function):
    """One layer and direction on the fused kernels. gx is the input pre-activations (or a table
    read through gx_index); or, with weight_ih, the input x itself, projected inside the time loop
    with bias_in (InputRows), whose backward then gives the gradients of x, weight_ih and bias_in."""

    @staticmethod
    def forward(mode, reverse, candidate, lengths, training, gx_index, gx, h0, c0, weight_hh, bias_hh,
                weight_ih=None, bias_in=None):
        # The workspace is returned beside the results for setup_context (forward takes no ctx, so
        # that torch.func.grad can run it); fused_run_direction drops it.
        results, ws = _run_forward(mode, reverse, candidate, lengths, training, gx_index, gx, h0, c0,
                                   weight_hh, bias_hh, weight_ih, bias_in)
        return (*results, _Workspace(ws))

    @staticmethod
    def setup_context(ctx, inputs, output):
        # apply binds forward's defaults: inputs always has all 13, weight_ih and bias_in included
        mode, reverse, candidate, lengths, training, gx_index, gx, h0, c0, weight_hh, bias_hh, weight_ih, bias_in = inputs
        *results, ws = output
        ctx.mode, ctx.reverse, ctx.candidate, ctx.lengths = mode, reverse, candidate, lengths
        ctx.gx_index, ctx.gx_rows = gx_index, gx.shape[0]
        ctx.input_rows, ctx.has_bias_in = weight_ih is not None, bias_in is not None
        ctx.has_bias = bias_hh is not None
        ctx.bf16 = bfloat16.enabled()   # grad weight_hh with bfloat16 operands (nn/bfloat16.py)
        ctx.products = bfloat16.recurrent_products()   # and the per-step products, as forward's
        # Only minGRU's backward reads gx: other modes let the (T, B, G*H) pre-activations go. Input
        # rows keep x and weight_ih for their gradients.
        # RNN's workspace is its output and h0 (rnn.py): saved as tensors, so that changing either
        # in place before backward raises torch's usual error instead of giving wrong gradients.
        reads_output = mode in api.WORKSPACE_IS_OUTPUT
        ctx.ws = None if reads_output else ws.arrays
        ctx.save_for_backward(gx if mode == "MINGRU" or ctx.input_rows else None, weight_hh, weight_ih,
                              *((results[0], h0) if reads_output else ()))
        # An unused output (the sequence, when only the last state is read) gets None instead of a
        # fresh zero tensor: backward passes small zeros instead.
        ctx.set_materialize_grads(False)
        ctx.shapes, ctx.dtype = tuple(tuple(r.shape) for r in results), results[0].dtype

    @staticmethod
    @first_order_backward("grukit's fused CPU kernel", "set layer.kernel = 'reference' (or build the layer with "
                          "kernel='reference'): the pure-torch loop, which torch differentiates twice")
    @bfloat16.without_autocast
    def backward(ctx, grad_out, grad_h_n, *rest):
        grad_c_n = rest[0] if len(rest) == 2 else None   # the last output is the workspace
        gx, weight_hh, weight_ih, *output_and_h0 = ctx.saved_tensors
        # An unused output sequence's gradient is one zero row the kernels read at every step
        # (common.output_grad): no (T, B, H) zeros to write and read back.
        shapes = ((1, 1, ctx.shapes[0][2]),) + ctx.shapes[1:]
        grads = [torch.zeros(shape, dtype=ctx.dtype) if grad is None else grad
                 for grad, shape in zip((grad_out, grad_h_n, grad_c_n), shapes)]
        grad_out, grad_h_n, grad_c_n = grads + [None] * (3 - len(grads))   # no c_n but for LSTM
        ws = tuple(_np(t) for t in output_and_h0) if output_and_h0 else ctx.ws
        set_threads(torch.get_num_threads())
        w = _np(weight_hh)
        # A batch-first layer's output is a transposed view, and so is its gradient: the kernels read
        # it in place (B, T, H) instead of a time-major copy (S2: 3.3 MB less at the step's peak).
        grad_rows, batch_first = _time_major_source(grad_out)
        with one_blas_thread(grad_out.shape[1]):
            dgx, dh0, dc0, terms, bias_src = api.backward(
                ctx.mode, ws, None if ctx.input_rows else _np(gx), w, _np(grad_rows), _np(grad_h_n),
                _np(grad_c_n), ctx.lengths,
                ctx.reverse, ctx.candidate, batch_first, ctx.products)
        CALLS["backward"] += 1
        # torch's GEMMs below must not meet tiny values (see common.py). The weight terms' gradients
        # are mostly views of dgx, flushed with it (checking .base missed them: a view of a kept
        # buffer's view has the buffer as its base, and S3's SimpleRNN flushed dgx three times).
        if dgx.dtype == np.float32 and ctx.mode not in api.FLUSHES_IN_KERNEL:
            for gradient in (dgx, *(term[2] for term in terms or () if not np.may_share_memory(term[2], dgx))):
                flush_tiny(gradient, TINY_GRADIENT_FLOAT32)
        grad_w = grad_b = None
        x_rows = _input_rows(gx) if ctx.input_rows else None
        shared = _shared_weight_grads(ctx, terms, dgx, x_rows)
        bias_hh = api.bias_hh_source(ctx.mode, bias_src)
        if terms and (ctx.needs_input_grad[_WEIGHT_HH] or ctx.needs_input_grad[_BIAS_HH]):
            one_pass = shared[0] if shared is not None else _one_pass_weight_hh_grad(ctx, terms, w.shape)
            if one_pass is not None:
                grad_w, grad_b = np.ascontiguousarray(one_pass), api.bias_grad(bias_hh if ctx.has_bias else None)
            else:
                grad_w, grad_b = api.weight_grads(api.merged_terms(terms) if ctx.bf16 else terms,
                                                  bias_hh if ctx.has_bias else None, w.shape,
                                                  matmul=bfloat16.numpy_matmul if ctx.bf16 else _weight_matmul)
            grad_w = torch.from_numpy(grad_w)
            grad_b = None if grad_b is None else torch.from_numpy(np.asarray(grad_b))
        grad_gx = torch.from_numpy(dgx)
        grad_projection = (None, None)   # forward's defaults (weight_ih, bias_in) count as inputs too
        if ctx.input_rows:   # gx was x, projected in the loop: the gradients of x, weight_ih, bias_in
            # bias_in's gradient is the gates' sum, which LSTM's and RNN's kernels have summed already
            # (S3's LSTM: a pass of some 60 us over its 3200 x 256 gradients saved)
            need_b_in = ctx.has_bias_in and ctx.needs_input_grad[_BIAS_IN]
            summed = api.gate_sums(ctx.mode, bias_src, None if grad_b is None else grad_b.numpy()) if need_b_in else None
            grad_gx, grad_w_ih, grad_b_in = projection_grads(
                x_rows, weight_ih, grad_gx.view(-1, dgx.shape[2]), ctx.needs_input_grad[_GX],
                ctx.needs_input_grad[_WEIGHT_IH] and shared is None, need_b_in and summed is None)
            if shared is not None:
                grad_w_ih = torch.from_numpy(np.ascontiguousarray(shared[1]))
            if summed is not None:
                grad_b_in = torch.from_numpy(np.array(summed))   # a copy: grad_b may be the same sums
            grad_gx = None if grad_gx is None else grad_gx.view(gx.shape)
            grad_projection = (grad_w_ih, grad_b_in)
        elif ctx.gx_index is not None:   # gx was a table: each row gets the sum over its positions
            grad_gx = row_sums(torch.from_numpy(ctx.gx_index.reshape(-1)), grad_gx.view(-1, dgx.shape[2]),
                               ctx.gx_rows)
        return (None, None, None, None, None, None, grad_gx, torch.from_numpy(dh0),
                None if dc0 is None else torch.from_numpy(dc0), grad_w, grad_b, *grad_projection)


def _input_rows(x: torch.Tensor) -> torch.Tensor:
    """The in-loop projection's input (T, B, I) as the rows of its weight gradients: (T * B, I) rows where
    it is time-major, else the steps themselves, a batch-first input's transposed view, which
    backward_gemms reads in place (a time-major copy had cost 0.3 ms of S2's 21 ms step, Zen 4) and
    projection_grads copies only for torch's matmul."""
    return x.view(-1, x.shape[2]) if x.is_contiguous() else x


def _shared_weight_grads(ctx, terms, dgx: np.ndarray, x_rows: torch.Tensor | None):
    """(grad weight_hh, grad weight_ih) as numpy arrays from one pass over the gate gradients
    (backward_gemms.shared_transposed_products), where both are needed, the input was projected in the
    loop and the kernel's one weight term pairs all of dgx with the previous states (LSTM's); None where
    the two run apart. S3's LSTM: 496 -> 425 us for the two (3200 rows, 256 x (64 + 10); alternating)."""
    if (x_rows is None or ctx.bf16 or not terms or len(terms) != 1 or terms[0][2] is not dgx
            or not (ctx.needs_input_grad[_WEIGHT_HH] and ctx.needs_input_grad[_WEIGHT_IH])):
        return None
    gates, states = dgx.reshape(-1, dgx.shape[2]), terms[0][3].reshape(-1, terms[0][3].shape[2])
    if torch.is_grad_enabled() or x_rows.dtype != torch.float32:
        return None
    rows = x_rows.detach().numpy()   # steps stay a view
    if not (backward_gemms.applies_transposed(gates, states) and backward_gemms.applies_transposed(gates, rows)):
        return None
    if max(states.shape[-1], rows.shape[-1]) > gates.shape[-1]:
        return None
    return backward_gemms.shared_transposed_products(gates, states, rows)


def _one_pass_weight_hh_grad(ctx, terms, w_shape):
    """grad weight_hh as a (possibly transposed) numpy view where its two terms pair side-by-side rows of
    it with one state array (the GRU's, reset after: dG_rz and dn * r, each against h): one product
    over h (backward_gemms.products_with_shared_narrow), the bits of the two; None otherwise."""
    if ctx.bf16 or not terms or len(terms) != 2 or terms[0][3] is not terms[1][3] or torch.is_grad_enabled():
        return None
    (row0, row1, g1, x), (row2, row3, g2, _) = terms
    if row0 != 0 or row1 != row2 or row3 != w_shape[0]:
        return None
    states = x.reshape(-1, x.shape[2])
    first, second = g1.reshape(-1, row1), g2.reshape(-1, row3 - row2)
    if not backward_gemms.applies_with_shared_narrow(states, first, second):
        return None
    return backward_gemms.products_with_shared_narrow(states, first, second).T


# Function.apply binds forward's arguments on every call (setup_context takes them with defaults);
# inspect.signature rebuilds the signature each time unless the function carries it: 20 against 7 us
# a call, with it stored (one process, Zen 5). Under torch.func's transforms the binding still runs
# (_apply); otherwise fused_run_direction passes all 13 arguments and skips it.
_FusedDirection.forward.__signature__ = inspect.signature(_FusedDirection.forward)
_FORWARD_ARGUMENTS = len(_FusedDirection.forward.__signature__.parameters)


def _apply(*args):
    """_FusedDirection.apply(*args) with every one of forward's arguments given: torch's C++ apply,
    without the Python binding of those arguments to forward's signature, which is then the identity
    (a binding of 13 arguments is some 200 Python calls; S3's LSTM training step, alternating in one
    process: 38 us of about 2.4 ms). Under torch.func's transforms, torch's Function.apply."""
    if len(args) != _FORWARD_ARGUMENTS or torch._C._are_functorch_transforms_active():
        return _FusedDirection.apply(*args)
    return _BASE_APPLY(*unwrap_dead_wrappers(args))


_BASE_APPLY = super(torch.autograd.Function, _FusedDirection).apply   # what Function.apply calls after binding


def kept_empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype) (float32 or float64) on one of the kept arrays
    (buffers.py), so that a step allocating the same size again touches no fresh pages."""
    return torch.from_numpy(buffers.empty(shape, _DTYPES_NP[dtype]))


def _weight_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for api.weight_grads, whose a is a transposed view (G^T): oneDNN's microkernel where
    backward_gemms takes it, else torch's matmul (and its threads)."""
    if backward_gemms.applies_transposed(a.T, b):
        return backward_gemms.transposed_product(a.T, b)
    return torch.from_numpy(a).matmul(torch.from_numpy(b)).numpy()


class InputRows(NamedTuple):
    """gx (T, N, G) given as the input x (T, N, I) and its projection ``x @ weight.T + bias``, which
    the kernels compute row by row inside the time loop (api.forward's input_rows)."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


def input_rows(mode: str, x, single: tuple[torch.Tensor, torch.Tensor | None] | None,
               lengths: torch.Tensor | None = None) -> InputRows | None:
    """gx as InputRows where the kernels project inside the loop: a single projection of an input
    that api.projects_in_loop takes (for these ``lengths``), recorded for backward, on the CPU in x's
    dtype. None otherwise (api.projects_in_loop says why)."""
    if single is None or not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES_NP:
        return None
    T, N = x.shape[:2]
    if not api.projects_in_loop(mode, x.shape[-1], _DTYPES_NP[x.dtype], N,
                                None if lengths is None else _lengths_np(lengths, T, N)):
        return None
    weight, bias = single
    if not records_gradient(x, weight, bias) or not _on_cpu_as(x.dtype, x, weight, bias):
        return None
    return InputRows(x, weight, bias)


def _on_cpu_as(dtype: torch.dtype, *tensors: torch.Tensor | None) -> bool:
    """Whether every tensor given (None aside) is on the CPU in ``dtype``."""
    return all(t is None or (t.dtype == dtype and t.device.type == "cpu") for t in tensors)


def fused_run_direction(mode: str, gx: torch.Tensor, state0, weights: DirectionWeights,
                        lengths: torch.Tensor | None = None, reverse: bool = False,
                        candidate: str = "identity"):
    """Same arguments and results as :func:`grukit.nn.reference.run_direction`; gx may also be a
    :class:`grukit.nn.embedded.TableRows`, read row by row through its index (when gradients are
    recorded, not for minGRU, whose backward reads gx again; fused_projection gives minGRU a
    TableRows only in inference), or an :class:`InputRows`, projected inside the loop."""
    projection = ()
    if isinstance(gx, TableRows):
        gx, gx_index = gx.table, _index_np(gx.index)
        T, B = gx_index.shape
    elif isinstance(gx, InputRows):
        gx, projection = gx.x, (gx.weight, gx.bias)
        gx_index, (T, B) = None, gx.shape[:2]
    else:
        gx_index, (T, B) = None, gx.shape[:2]
    _check_supported(mode, gx, weights)
    h0, c0 = state0 if mode == "LSTM" else (state0, None)
    bias_hh = weights.bias_hh if mode in api.HAS_BIAS_HH else None
    weight_hh = weights.weight_hh if api.RECURRENT_ROWS[mode] else None
    leaves = (gx, h0, c0, weight_hh, bias_hh, *projection)
    # Keep a workspace for backward only when autograd will call it.
    training = records_gradient(*leaves)
    if training:
        results = _apply(mode, bool(reverse), candidate, _lengths_np(lengths, T, B), training, gx_index,
                         *leaves, *(None,) * (2 - len(projection)))[:-1]
    else:   # inference: the same kernel call without autograd's bookkeeping
        results = _run_forward(mode, bool(reverse), candidate, _lengths_np(lengths, T, B), False,
                               gx_index, *leaves)[0]
    if mode == "LSTM":
        out, h_n, c_n = results
        return out, (h_n, c_n)
    out, h_n = results
    return out, h_n


def fused_inference(mode: str, x: torch.Tensor, state0, directions, lengths: torch.Tensor | None,
                    candidate: str, hidden_size: int, made: dict | None = None):
    """A whole stack of layers for inference, when nothing records gradients: api.forward_stack
    (per layer and direction, api.project and api.forward) on numpy views of the tensors.

    The same kernels and results as projecting and running each direction through
    :func:`fused_projection` and :func:`fused_run_direction`, with far fewer torch and numpy calls
    between them. Measured in the benchmark's round-robin, where the calls before it leave the
    caches cold, each such call cost 10-16 us and a batch-of-one GRU layer call (S1) made about
    fifty of them (1.5-1.6 ms in all, against 1.0 ms for the same work on numpy arrays directly).
    A batch of one without lengths goes further: an api.SequenceStack runs each layer and direction
    as one compiled call on the weights as stored (no packed copy of weight_hh); ``made``, the dict
    the layer keeps with its views, keeps the stack between calls.

    x: (T, N, I) time-major (a transposed view of a batch-first tensor is projected in place), or
    an :class:`grukit.nn.embedded.EmbeddedTokens`, whose first layer is projected per distinct token;
    state0: (L*D, N, H), or (h0, c0) for LSTM, or None for zeros; directions: one list per layer of
    (weight_ih, outer bias or None, weight_hh or None, bias_hh or None) per direction, numpy views
    of the parameters (recurrent.RecurrentLayer._kernel_views), every layer's input side a single
    projection (recurrent.single_projection). Returns the last layer's output (T, N, D*H) and the
    final state(s) (L*D, N, H) as tensors.
    """
    T, N = x.shape[0], x.shape[1]
    if mode == "LSTM" and state0 is not None:
        h0, c0 = _np(state0[0]), _np(state0[1])
    else:
        h0, c0 = (None if state0 is None else _np(state0)), None
    if isinstance(x, torch.Tensor) and N == 1 and lengths is None:
        made = {} if made is None else made
        stack = made.get("sequence")
        if stack is None:
            stack = made["sequence"] = api.SequenceStack(mode, directions, candidate)
        set_threads(torch.get_num_threads())   # a wide GRU's or LSTM's steps split over them (api.SPLITS)
        return _stack_results(*stack.run(_np(x), h0, c0))
    if h0 is None:
        h0 = np.zeros((sum(len(layer) for layer in directions), N, hidden_size), _DTYPES_NP[x.dtype])
        c0 = np.zeros_like(h0) if mode == "LSTM" else None
    if isinstance(x, torch.Tensor):
        (source, batch_first), first_gx = _time_major_source(x), None
    else:   # embedded tokens: torch's GEMM on the distinct tokens' rows, then the same loop
        source, batch_first = None, False
        tables = [x.project_distinct(torch.from_numpy(w_ih), None if bias is None else torch.from_numpy(bias))
                  for w_ih, bias, _, _ in directions[0]]
        first_gx = [(_np(table), _index_np(index)) for table, index in tables]
    arrays = [[(w_ih, bias, api.pack_weight(w_hh), b_hh) for w_ih, bias, w_hh, b_hh in layer]
              for layer in directions]
    set_threads(torch.get_num_threads())
    with one_blas_thread(N):
        out, h_n, c_n = api.forward_stack(mode, _np(source), arrays, h0, c0, _lengths_np(lengths, T, N),
                                          candidate, batch_first, first_gx)
    return _stack_results(out, h_n, c_n)


def _stack_results(out, h_n, c_n):
    """fused_inference's results as tensors, the kernel calls counted."""
    CALLS["project"] += len(h_n)
    CALLS["run"] += len(h_n)
    final = torch.from_numpy(h_n)
    return torch.from_numpy(out), final if c_n is None else (final, torch.from_numpy(c_n))


def _time_major_source(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x, False) for time-major x (T, N, I); (the contiguous (N, T, I) tensor, True) when x is
    the transposed view of a batch-first tensor, which the kernels read in place (api.project an
    input, api.backward an output's gradient)."""
    batch_first = not x.is_contiguous() and x.transpose(0, 1).is_contiguous()
    return (x.transpose(0, 1) if batch_first else x), batch_first


def fused_projection(x: torch.Tensor, single: tuple[torch.Tensor, torch.Tensor | None] | None):
    """gx = x @ weight_ih.T + bias for inference, on the kernels' threads (api.project), from
    ``single = recurrent.single_projection(...)``; for a batch-first x (a transposed view), the
    TableRows of api.project_batch_first. None where torch's GEMM runs instead: autograd
    records, the projection is not a single GEMM (MGU1-3), or dtypes differ. The projection of a
    small batch stays on this thread (api.PROJECTION_MIN_PARALLEL_WORK), so that a batch of one is
    projected as :func:`fused_inference` projects it."""
    if single is None:
        return None
    weight, bias = single
    if records_gradient(x, weight, bias):
        return None
    if not _on_cpu_as(x.dtype, weight, bias):
        return None
    source, batch_first = _time_major_source(x)
    set_threads(torch.get_num_threads())
    with one_blas_thread(x.shape[1]):
        if batch_first:   # the per-row table and its index (api.project_batch_first)
            table, index = api.project_batch_first(_np(source), _np(weight), _np(bias))
            gx = TableRows(torch.from_numpy(table), torch.from_numpy(index))
        else:
            gx = torch.from_numpy(api.project(_np(source), _np(weight), _np(bias)))
    CALLS["project"] += 1
    return gx


def training_projection(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        out: torch.Tensor) -> bool:
    """out = rows @ weight.T + bias on the kernels' threads (api.project_into), for a fused layer's
    training projection, where the kernels' float32 GEMM is oneDNN's microkernel (products.py: AMD
    CPUs with AVX-512, where torch's MKL runs AVX2 code) or grukit's tiles (tiles.py: AVX2 without
    AVX-512). True when done; False leaves it to torch.

    Measured on the Zen 4, a training step against the same layer on torch's addmm, one process,
    alternating, 24 paired rounds: S2 GRU 1.06x, LSTM 1.08x (S2's projection alone: 3.9-4.1 against
    4.3-5.1 ms). On the Zen 3, the projection alone on the tiles against addmm, both threads, paired
    medians of 15: S2 GRU 1.05x, LSTM 1.20x, S4 1.05x; at 10 features 0.52x, but inputs that narrow
    are projected inside the time loop instead (api.INPUT_ROWS_MAX)."""
    faster = products.resolve(None, np.float32) == "onednn" or tiles.FASTER_F32
    if not faster or not _on_cpu_as(torch.float32, rows, weight, bias):
        return False
    set_threads(torch.get_num_threads())
    bias_np = np.zeros(weight.shape[0], np.float32) if bias is None else _np(bias)
    api.project_into(_np(rows), _np(weight), bias_np, out.numpy())
    CALLS["project"] += 1
    return True


def fused_step(mode: str, gx_t: torch.Tensor, state, weights: DirectionWeights,
               candidate: str = "identity"):
    """One inference step, as :func:`grukit.nn.reference.step` (no autograd: the
    result never requires grad). Serial: a step is too small to split over threads."""
    if gx_t.device.type != "cpu" or gx_t.dtype not in _DTYPES or (
            mode == "LSTM" and weights.weight_hr is not None):
        _check_supported(mode, gx_t, weights)
    h, c = state if mode == "LSTM" else (state, None)
    bias_hh = weights.bias_hh if mode in api.HAS_BIAS_HH else None
    weight_hh = weights.weight_hh if api.RECURRENT_ROWS[mode] else None
    with one_blas_thread(gx_t.shape[0]):
        h_n, c_n = api.step(mode, _np(gx_t), _np(h), _np(c), _packed(weight_hh), _np(bias_hh),
                            candidate, bfloat16.recurrent_products())
    CALLS["step"] += 1
    if mode == "LSTM":
        return torch.from_numpy(h_n), torch.from_numpy(c_n)
    return torch.from_numpy(h_n)


def fused_step_stack(mode: str, x: torch.Tensor, state, stack: api.StepStack, batched: bool = True):
    """``layer.step()`` for inference as one call, :meth:`api.StepStack.step` on the layer's
    weights as stored (recurrent.RecurrentLayer._step_plan).

    x: (N, I), or (I,) when not ``batched``; state: (L, N, H) (or (L, H)), or (h, c) for LSTM, or
    None for zeros, its shapes already checked. Returns (y, state) as ``layer.step()`` does.
    """
    x_np = _np(x)
    if state is None:
        states = ()
    else:
        states = (_np(state[0]), _np(state[1])) if mode == "LSTM" else (_np(state),)
    if not batched:
        x_np = x_np.reshape(1, -1)
        states = [part.reshape(part.shape[0], 1, part.shape[1]) for part in states]
    y, h_n, c_n = stack.step(x_np, *states)
    CALLS["step"] += stack.layers
    if not batched:
        y, h_n, c_n = y[0], h_n[:, 0], None if c_n is None else c_n[:, 0]
    final = torch.from_numpy(h_n)
    return torch.from_numpy(y), final if c_n is None else (final, torch.from_numpy(c_n))


__all__ = ["fused_inference", "fused_projection", "fused_run_direction", "fused_step", "fused_step_stack", "kept_empty",
           "supports", "CALLS"]
