"""Shared pieces of the fused CPU kernels: activations, the recurrent products, threading.

Everything here imports numpy and numba only (no torch), so a torch-free runtime can
use the kernels. All compiled functions are ``cache=True``: the first call of a process
on a fresh checkout compiles, later processes load the machine code from ``__pycache__``.

Floating point: ``FASTMATH`` allows only FMA contraction (``contract``): no reassociation
(every recurrent sum runs in input order), NaN/inf semantics kept. A sum of two products
(``p * q + r * s``) is written with ``fma``: contraction could fuse either product, and the
code a process compiles and the code it later loads from the cache chose differently (tested
in tests/nn/kernels/test_cache_determinism.py). exp, sigmoid and tanh are our own
vectorizable versions, within a few eps of libm (bounds below, tested). The kernels agree
with the pure-torch reference to round-off (tested at 1e-9 in float64 and 1e-5 in float32,
outputs and all gradients).

Caveat of ``cache=True``: numba does not invalidate a cached function when a function it
calls changes in *another* file. After editing this module, delete
``kernels/__pycache__/*.nbi *.nbc`` (a fresh checkout has none).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import buffers, onednn, region, tiles
from .bf16 import rounded_product, rounded_tiles_product, vnni_product
from .blas import (PER_THREAD_LIMIT, blas_gemm, blas_gemm_nt_acc, one_thread_here, pack_rows, packed_gemm,
                   restore_threads_here)
from .team import run_blocks

FASTMATH = {"contract"}
# error_model="numpy": x / 0 gives inf/NaN as in IEEE (and torch) instead of raising;
# the Python error model's zero checks would also keep every gate loop scalar.
# nogil: the batch blocks of one call run on plain Python threads (see run_rows).
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
# An overload is compiled into its callers (and cached with them).
OVERLOAD_JIT = {"fastmath": FASTMATH, "error_model": "numpy"}

# 1 as float32: float32 op float32 stays float32, and it promotes exactly for float64.
# (A plain 1.0 literal would silently run every float32 kernel in float64.)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
HALF = np.float32(0.5)

# --- exp, sigmoid, tanh that the loop vectorizer can turn into SIMD code -------------
#
# libm's exp/tanh are opaque calls that keep every gate loop scalar; these are plain
# arithmetic (Cody-Waite range reduction, Cephes polynomial / Pade approximant, 2^n by
# building the float's exponent bits) and so vectorize. Accuracy (tested in
# tests/nn/kernels/test_fused_activations.py): exp within 2 ulp of libm where it does not
# overflow or underflow; sigmoid and tanh within 4 eps absolute. Arguments are clamped to
# [-87, 88] (float32) / [-708, 709] (float64): exp saturates there instead of reaching
# 0 or inf, which changes sigmoid and tanh by less than 1e-37 / 1e-307. NaN stays NaN.


@intrinsic
def _pow2_of_shifted(typingctx, t):
    """2.0 ** n from t = n + MAGIC (MAGIC = 1.5 * 2**23, or 1.5 * 2**52 for float64; |n| < 1023).

    t lies in the binade where one unit is the last mantissa bit, so the bits of t are those of
    MAGIC plus n; shifted into the exponent field, MAGIC's bits fall off the top and leave
    n + bias. Integer arithmetic on the bits: a NaN t gives some finite power, and the NaN of
    the polynomial carries through (a float-to-int conversion of NaN would be undefined)."""
    if not isinstance(t, types.Float):
        return None

    def codegen(context, builder, signature, args):
        if t.bitwidth == 32:
            ity, bias, shift, fty = ir.IntType(32), 127, 23, ir.FloatType()
        else:
            ity, bias, shift, fty = ir.IntType(64), 1023, 52, ir.DoubleType()
        i = builder.bitcast(args[0], ity)
        i = builder.shl(builder.add(i, ir.Constant(ity, bias)), ir.Constant(ity, shift))
        return builder.bitcast(i, fty)

    return t(t), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma). Writes out a contraction that the compiler would
    otherwise choose: in ``p * q + r * s`` either product may be fused, and the choice can
    differ between the code a process compiles and the code it loads from the cache."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return a(a, b, c), codegen


_F32 = np.float32
# float32: Cephes expf (polynomial on |r| <= ln2 / 2).
E32_LO, E32_HI = _F32(-87.0), _F32(88.0)
E32_LOG2E, E32_MAGIC = _F32(1.44269504088896341), _F32(12582912.0)   # 1.5 * 2**23
E32_C1, E32_C2 = _F32(0.693359375), _F32(-2.12194440e-4)
E32_P0, E32_P1, E32_P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
E32_P3, E32_P4, E32_P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)


@njit(**JIT)
def _exp32(x):
    xc = E32_LO if E32_LO > x else x     # NaN compares false and falls through both clamps
    xc = E32_HI if E32_HI < xc else xc
    shifted = xc * E32_LOG2E + E32_MAGIC     # n + MAGIC: rounds xc / ln2 to an integer n
    n = shifted - E32_MAGIC
    r = (xc - n * E32_C1) - n * E32_C2
    y = ((((E32_P0 * r + E32_P1) * r + E32_P2) * r + E32_P3) * r + E32_P4) * r + E32_P5
    y = (y * (r * r) + r) + ONE
    return y * _pow2_of_shifted(shifted)


# float64: Cephes exp (Pade approximant on |r| <= ln2 / 2).
E64_LO, E64_HI = -708.0, 709.0
E64_LOG2E, E64_MAGIC = 1.4426950408889634, 6755399441055744.0         # 1.5 * 2**52
E64_C1, E64_C2 = 6.93145751953125e-1, 1.42860682030941723212e-6
E64_P0, E64_P1, E64_P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
E64_Q0, E64_Q1 = 3.00198505138664455042e-6, 2.52448340349684104192e-3
E64_Q2, E64_Q3 = 2.27265548208155028766e-1, 2.00000000000000000009e0


@njit(**JIT)
def _exp64(x):
    xc = E64_LO if E64_LO > x else x
    xc = E64_HI if E64_HI < xc else xc
    shifted = xc * E64_LOG2E + E64_MAGIC
    n = shifted - E64_MAGIC
    r = (xc - n * E64_C1) - n * E64_C2
    rr = r * r
    px = r * ((E64_P0 * rr + E64_P1) * rr + E64_P2)
    qx = ((E64_Q0 * rr + E64_Q1) * rr + E64_Q2) * rr + E64_Q3
    y = 1.0 + 2.0 * (px / (qx - px))
    return y * _pow2_of_shifted(shifted)


def vexp(x):
    """exp for float32/float64 scalars inside compiled loops (vectorizable)."""
    return math.exp(x)


@overload(vexp, jit_options=OVERLOAD_JIT)
def _vexp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@njit(**JIT)
def sigmoid(x):
    return ONE / (ONE + vexp(-x))


@njit(**JIT)
def tanh(x):
    return ONE - (ONE + ONE) / (vexp(x + x) + ONE)


@njit(**JIT)
def axpy_matvec(x, m, r0, c0, n, out):
    """out[k] += sum_i x[i] * m[r0 + i, c0 + k] for k < n, summed in i order.

    The inner loop runs over contiguous rows of ``m`` and over ``out``, so it vectorizes
    without reassociating any sum. Four rows per pass (the sum is still in i order, so the
    result is the same as one row at a time) cut the loads and stores of ``out``.
    """
    K = x.shape[0]
    i = 0
    while i + 4 <= K:
        x0 = x[i]
        x1 = x[i + 1]
        x2 = x[i + 2]
        x3 = x[i + 3]
        a0 = m[r0 + i, c0:c0 + n]
        a1 = m[r0 + i + 1, c0:c0 + n]
        a2 = m[r0 + i + 2, c0:c0 + n]
        a3 = m[r0 + i + 3, c0:c0 + n]
        for k in range(n):
            out[k] = (((out[k] + x0 * a0[k]) + x1 * a1[k]) + x2 * a2[k]) + x3 * a3[k]
        i += 4
    while i < K:
        xi = x[i]
        a = m[r0 + i, c0:c0 + n]
        for k in range(n):
            out[k] += xi * a[k]
        i += 1


@njit(**JIT)
def matmul_acc(x, m, r0, c0, n, out):
    """out[b, k] += sum_i x[b, i] * m[r0 + i, c0 + k] for every row b and k < n.

    Rows go four at a time so each row of ``m`` read from cache serves four states;
    every sum still runs in i order, so each row's result equals :func:`axpy_matvec`'s.
    """
    R, K = x.shape
    b = 0
    while b + 4 <= R:
        o0 = out[b, :n]
        o1 = out[b + 1, :n]
        o2 = out[b + 2, :n]
        o3 = out[b + 3, :n]
        i = 0
        while i + 2 <= K:
            a0 = m[r0 + i, c0:c0 + n]
            a1 = m[r0 + i + 1, c0:c0 + n]
            x00, x01 = x[b, i], x[b, i + 1]
            x10, x11 = x[b + 1, i], x[b + 1, i + 1]
            x20, x21 = x[b + 2, i], x[b + 2, i + 1]
            x30, x31 = x[b + 3, i], x[b + 3, i + 1]
            for k in range(n):
                w0 = a0[k]
                w1 = a1[k]
                o0[k] = (o0[k] + x00 * w0) + x01 * w1
                o1[k] = (o1[k] + x10 * w0) + x11 * w1
                o2[k] = (o2[k] + x20 * w0) + x21 * w1
                o3[k] = (o3[k] + x30 * w0) + x31 * w1
            i += 2
        if i < K:
            a0 = m[r0 + i, c0:c0 + n]
            x00, x10, x20, x30 = x[b, i], x[b + 1, i], x[b + 2, i], x[b + 3, i]
            for k in range(n):
                w0 = a0[k]
                o0[k] += x00 * w0
                o1[k] += x10 * w0
                o2[k] += x20 * w0
                o3[k] += x30 * w0
        b += 4
    while b < R:
        axpy_matvec(x[b], m, r0, c0, n, out[b])
        b += 1


# GATE_LOOPS: a gate loop that writes to many arrays stays scalar. LLVM vectorizes a loop over
# arrays that might overlap only behind run-time overlap checks between the arrays it writes and
# the others, and gives up ("too many memory checks needed", in its remarks) past a handful of
# them; with H a compile-time constant the same loop vectorized (LSTM backward rows, H=64, one
# thread: 0.97 against 0.41 ms). So each gate loop writes only the gradients and states it
# computes, and copies of them (for the GEMM, for the bias sums) go in loops of their own: the
# LSTM's backward gate pass alone (S3's 3200 rows, one thread) went from 0.98 to 0.60 ms (H=64) and
# 2.13 to 0.92 ms (H=128), the same bits out.

# Two habits keep the first calls' compile time down (tests/nn/kernels/test_cache_determinism.py
# checks both):
# - Array-to-array copies go through these loops, not slice assignment (``a[i, :] = b``): Numba
#   compiles a slice assignment between arrays together with its shape-mismatch error message, and
#   that string formatting cost 3.9 s of compile time on an empty cache (a 2-D assignment alone,
#   in a fresh process; 0.1 s for the loop), some 4 s of every cell's first call.
# - A kernel calls another with typed values, ``np.int64(0)`` and ``np.bool_(False)``, not the
#   literals ``0`` and ``False``: Numba compiles the callee once per literal value (each streamer
#   frame compiled its family's whole forward loop a second time, 1-1.5 s).


@njit(**JIT)
def copy_vector(dst, src):
    """dst[j] = src[j] for 1-D arrays of one length."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(**JIT)
def copy_matrix(dst, src):
    """dst[i, j] = src[i, j] for 2-D arrays of one shape."""
    for i in range(dst.shape[0]):
        copy_vector(dst[i], src[i])


@njit(**JIT)
def copy_and_sum(src, dst, total):
    """dst[j] = src[j] and total[j] += src[j] for j < len(dst): a backward gate pass's copy of its
    gate gradients for the recurrent GEMM and their sum over time (grad bias_hh), in a loop of
    its own (see GATE_LOOPS)."""
    for j in range(dst.shape[0]):
        v = src[j]
        dst[j] = v
        total[j] += v


@njit(**JIT)
def zero_vector(dst):
    for j in range(dst.shape[0]):
        dst[j] = 0


@njit(**JIT)
def add_vector(dst, src):
    """dst[j] += src[j] for 1-D arrays of one length."""
    for j in range(dst.shape[0]):
        dst[j] += src[j]


# A dot product may sum in any order (LLVM then keeps several partial sums in vector registers):
# for the mat-vec on a weight as stored, where each output is a dot product of a row of W.
JIT_DOT = {**JIT, "fastmath": FASTMATH | {"reassoc"}}


@njit(**JIT_DOT)
def _dot(r, x):
    s = r[0] * ZERO
    for k in range(x.shape[0]):
        s += r[k] * x[k]
    return s


@njit(**JIT)
def dot_matvec(x, w, out):
    """out[n] = w[n] . x for w (N, K) as stored and x (K,): one row of a product with W^T, read in
    place, one dot product per row. At 384 x 128, float32, in one process: 1.9 us, as fast as
    axpy_matvec on W^T (1.7 us), where transposing W first takes 18 us and a BLAS call for one
    row 6.1-6.4 us. (Four rows per pass over x, which an earlier version did, took 4.1-4.9 us:
    LLVM kept the four sums' chains apart badly.)"""
    for n in range(w.shape[0]):
        out[n] = _dot(w[n], x)


@njit(**JIT)
def stored_product(x, w, out):
    """out = x @ w.T for w (N, K) a weight as stored, read in place: by dot products for up to
    GEMM_MIN_ROWS - 1 rows of x (H=128: 2 rows 6.4 against 14.3 us for the BLAS call, 4 rows 12.5
    against 13.5), else one BLAS call that reads w transposed. The product of the frames and
    sequences on stored weights (each family's ``stored_frame`` and ``stored_sequence``)."""
    if x.shape[0] < GEMM_MIN_ROWS:
        for r in range(x.shape[0]):
            dot_matvec(x[r], w, out[r])
        return
    out[:] = 0
    blas_gemm_nt_acc(x, w, out)


@njit(**JIT)
def rows_product(x, w, transposed, r0, r1, out):
    """out = x @ W[r0:r1].T: the rows r0..r1 of a weight W given as stored (N, K), read by
    :func:`stored_product`, or with ``transposed`` as W^T (K, N), whose columns r0..r1 matmul_acc
    reads (the streamer's packed copy; a long GRU sequence's, see :func:`stored_operand`)."""
    if not transposed:
        stored_product(x, w[r0:r1], out)
        return
    for i in range(x.shape[0]):
        zero_vector(out[i])
    matmul_acc(x, w, np.int64(0), r0, r1 - r0, out)


# A batch of one's product with a weight (stored_sequence, the streamer's frames): dot products on W
# as stored (dot_matvec) or passes over W^T (matmul_acc). Which is faster depends on the core and on
# the dot products' length K. One row, float32, one process: 384 x 128 on a Zen 4 2.6 us on W^T
# against 3.4 us as dot products; on the first hosts (Xeon, Zen 3) 1.7 against 1.9; on a Zen 5
# 2.04-2.06 against 1.35-1.38 us for K = 128 (512 x 128 2.8 against 2.6), but 0.19 against 0.82 us
# for K = 13, 0.44-0.60 against 0.48-0.54 for K = 64, and level from K = 256 (two runs each). So dot
# products run on the Zen 5 (LLVM's "znver5") from STORED_MATVEC_MIN_K on, W^T elsewhere.
STORED_MATVEC_FASTER = llvm.get_host_cpu_name() == "znver5"
STORED_MATVEC_MIN_K = 128


@njit(**JIT)
def stored_matvec(K):
    """Whether a batch of one's product with a weight of K columns (each output a dot product of
    length K) reads it as stored (dot products) rather than transposed."""
    return STORED_MATVEC_FASTER and K >= STORED_MATVEC_MIN_K


# Where W^T is the faster form, the GRU's stored_sequence reads weight_hh through a transposed copy
# from this many steps on (the copy took 15 us). The GRU's loop at T=100, I=64, H=128, float32, the
# two forms alternating in one process, Zen 4: 1.10-1.16x faster on the copy; at T=24 0.98x, T=32
# 1.05x, T=48 1.16x. The LSTM, SimpleRNN and MGU loops gained nothing that held (0.87-1.04x,
# 0.83-0.91x, 1.00x) and read W as stored. On the Zen 5 the GRU's loop on W as stored: `layer(x)`
# at S1 1.22-1.29x (313 to 242-257 us), `streamer.run` 1.13x. On the tiles' CPUs every family's loop
# reads W^T's panels from this many steps on (tiles_transposed, stored_panels): S1 on a Zen 3, GRU
# 1.06x, LSTM 1.11x, SimpleRNN 1.07x, MGU 1.09x; on a Zen 4 1.07x, 1.10x, 1.06x, 1.04x.
STORED_TRANSPOSE_MIN_STEPS = 32


# Weights the kernels copy (W^T for the batch-of-one loops, the packed W^T of the batched ones, a
# streamer's snapshot) start on a cache line (buffers.ALIGNMENT, buffers.aligned_empty). Zen 5, one
# process, alternating, the batch-of-one loop at S1 (T=100, I=64, H=128): the GRU's on W^T 219 us
# against 250 at offsets 16 and 32; the LSTM's on W as stored 237 against 289 and 273 us.
ALIGNMENT = buffers.ALIGNMENT


@njit(**JIT)
def aligned_matrix(rows, cols, like):
    """np.empty((rows, cols), like.dtype) in compiled code, on an ALIGNMENT-byte boundary."""
    size = rows * cols
    buf = np.empty(size + ALIGNMENT // like.itemsize, like.dtype)
    offset = np.int64(buf.ctypes.data % np.uint64(ALIGNMENT))
    skip = ((ALIGNMENT - offset) % ALIGNMENT) // like.itemsize
    return buf[skip:skip + size].reshape((rows, cols))


@njit(**JIT)
def stored_operand(w, T):
    """The recurrent weight for rows_product over a sequence of T steps: (W^T, True), transposed
    here, from STORED_TRANSPOSE_MIN_STEPS steps on where W^T is the faster form (:func:`stored_matvec`),
    else (W as stored, False)."""
    if T < STORED_TRANSPOSE_MIN_STEPS or stored_matvec(w.shape[1]):
        return w, False
    w_t = aligned_matrix(w.shape[1], w.shape[0], w)
    _transpose_into(w, w_t)
    return w_t, True


def stored_panels(w_r, transposed):
    """The panels of ``stored_operand``'s W^T for :func:`rows_product_on` (tiles.pack), on CPUs where
    the tiles' one-row product is the faster (tiles.FASTER_ROW_F32); else empty (rows_product)."""


@overload(stored_panels, jit_options=OVERLOAD_JIT)
def _stored_panels(w_r, transposed):
    if _rows_on_tiles(w_r):
        return lambda w_r, transposed: tiles.pack(w_r) if transposed else np.empty(0, np.float32)
    return lambda w_r, transposed: np.empty(0, w_r.dtype)


def tiles_transposed(w, T):
    """The weight form of a batch of one for the families that read W as stored elsewhere (LSTM,
    SimpleRNN, MGU): where the tiles' one-row product is the faster (float32, tiles.FASTER_ROW_F32),
    from STORED_TRANSPOSE_MIN_STEPS steps on, ``(W^T, True)``, copied here, whose panels the
    one-thread loop multiplies on and whose columns a split over threads reads (the same bits);
    else ``(w, False)``."""


@overload(tiles_transposed, jit_options=OVERLOAD_JIT)
def _tiles_transposed(w, T):
    if _rows_on_tiles(w):
        def on_tiles(w, T):
            if T < STORED_TRANSPOSE_MIN_STEPS:
                return w, False
            w_t = aligned_matrix(w.shape[1], w.shape[0], w)
            _transpose_into(w, w_t)
            return w_t, True
        return on_tiles
    return lambda w, T: (w, np.bool_(False))   # typed, not a literal: one compile


@njit(**JIT)
def stored_tiles_operand(w, T):
    """``(w_r, transposed, panels)``: :func:`tiles_transposed` and its :func:`stored_panels` for
    :func:`rows_product_on` (one Zen 3 core, one row, 128 x 128: 0.47 against 1.1 us; the copies
    take about 20 us a call)."""
    w_r, transposed = tiles_transposed(w, T)
    return w_r, transposed, stored_panels(w_r, transposed)


def frame_panels(w, transposed, batch_size: int) -> np.ndarray:
    """The panels a streamer's frames multiply a batch of one on (rows_product_on), made once per
    streamer: tiles.pack of its W^T where the tiles' one-row product is the faster (tiles.FASTER_ROW_F32), else empty
    (None for a cell without a recurrent weight, the minGRU)."""
    if w is None:
        return None
    if tiles.FASTER_ROW_F32 and transposed and batch_size == 1 and w.dtype == np.float32:
        return tiles.pack(w)
    return np.empty(0, w.dtype)


def rows_product_on(x, w, transposed, panels, r0, r1, out):
    """:func:`rows_product`, or for a single row with ``panels = stored_panels(w, transposed)`` the
    tiles' one-row product on them (the same bits, each weight read once: tiles.row_product)."""


@njit(**JIT)
def _rows_product_on_tiles(x, w, transposed, panels, r0, r1, out):
    if panels.size > 0 and x.shape[0] == 1 and r0 % tiles.PANEL == 0 and w.strides[1] == 4:
        tiles.row_product(x, w, panels, r0, r1, out)
    else:
        rows_product(x, w, transposed, r0, r1, out)


@overload(rows_product_on, jit_options=OVERLOAD_JIT)
def _rows_product_on(x, w, transposed, panels, r0, r1, out):
    if _rows_on_tiles(x):
        return lambda x, w, transposed, panels, r0, r1, out: _rows_product_on_tiles(x, w, transposed, panels, r0, r1,
                                                                                    out)
    return lambda x, w, transposed, panels, r0, r1, out: rows_product(x, w, transposed, r0, r1, out)


@njit(**JIT)
def project_stored(x, w_ih, b_in, g):
    """g = x @ w_ih.T + b_in for one frame, w_ih (G*H, I) as stored."""
    stored_product(x, w_ih, g)
    for i in range(g.shape[0]):
        add_vector(g[i], b_in)


def as_rows(x):
    """x (K,) as one row (1, K), a view; x (B, K) itself."""


@overload(as_rows, jit_options=OVERLOAD_JIT)
def _as_rows(x):
    if x.ndim == 1:
        return lambda x: x.reshape((1, x.shape[0]))
    return lambda x: x


@njit(**JIT)
def project_frame(x, w_in, transposed, panels, b_in, gx):
    """gx[0] = x @ W_ih^T + b_in for one frame of streaming: x (B, I), or (I,) for a batch of one,
    w_in W_ih^T (I, G*H) with ``transposed``, else W_ih as stored (G*H, I) (:func:`stored_matvec`),
    ``panels`` its common.frame_panels, b_in (G*H,), gx (1, B, G*H). The input side of a frame is a
    handful of mat-vecs, too small for a BLAS call to pay off; a batch of one's on the panels, where
    there are some (one Zen 4 core, 64 x 384: 0.87 against 1.09 us)."""
    x = as_rows(x)
    g = gx[0]
    if not transposed:
        project_stored(x, w_in, b_in, g)
        return
    if panels.size > 0:
        rows_product_on(x, w_in, transposed, panels, np.int64(0), g.shape[1], g)
        for i in range(g.shape[0]):
            add_vector(g[i], b_in)
        return
    for i in range(g.shape[0]):
        copy_vector(g[i], b_in)
    matmul_acc(x, w_in, np.int64(0), np.int64(0), g.shape[1], g)


# The per-step recurrent products are BLAS GEMMs (blas.blas_gemm: MKL from torch's build, else
# scipy's OpenBLAS): 2-4x the loops above. Blocks of up to GEMM_MIN_ROWS - 1 rows stay on the
# mat-vec loop (axpy_matvec per row), where a BLAS call costs more than it saves. MKL float32,
# 3H x H weights, one thread, per product: H=128, 2 rows 6.4 us on the loop against 11.4-11.7 us
# (plain or packed GEMM), 4 rows 8.4 against 13.3-15.6, 6 rows 18.7 against 18.5-20.5, 8 rows 23.8
# against 19.1-20.1; H=64, 4 rows 2.4 against 3.7-3.8; H=512, 4 rows 161 against 209-316 us, 8 rows
# 461 against 298-370. Under OpenBLAS, float32 GEMMs of at most
# GEMM_SMALL_MNK multiply-adds take its small-matrix kernel (no packing; ~40 GMAC/s a core
# here for H = 64..128, against ~20 for the packed path at the same size), so a block's rows
# go in chunks under that size, unless a chunk would have fewer than GEMM_MIN_CHUNK rows
# (large H: the packed path wins). MKL runs such chunks as fast as whole blocks (123 vs 125
# GFLOP/s at 8 and 16 rows, H=128), so the chunking stays whichever library runs.
# float64 gains nothing from chunking (measured).
# The callers (function.py) hold BLAS at one thread per call: the batch is already split
# over our threads, and OpenBLAS's own threads would neither share the cores nor run
# with subnormals flushed. Measured in the GRU layer's training step on 2 cores, two
# blocks with one BLAS thread each beat one block with two BLAS threads (B=32, H=128:
# 58-76 ms vs 80-105; B=128, H=512: 1.37-1.57 s vs 1.44-1.69) and, at H=512, one serial
# block (1.7-1.9 s), although the serial block wins when the kernel is timed alone.
GEMM_MIN_ROWS = 6
# oneDNN's microkernel (products "onednn") takes blocks from 2 rows: up to 5 rows it reads the
# weight once for all of them, in about the time of one row. One Zen 5 core, per product, 128 x
# 512 weight: 2-5 rows 2.9-3.2 us against 5.1-8.2 us on the mat-vec loop, 1 row 3.2 against 2.6;
# 128 x 384: 2-5 rows 1.9-2.4 against 4.2-9.3 us; 64 x 256: 0.76-0.86 against 1.5-2.9 us. LSTM
# layer, T = 100, I = 64, H = 128, alternating processes: inference B = 4 0.99 -> 0.66 ms, B = 8
# 1.57 -> 0.68 ms; training B = 8 3.1 -> 2.4 ms.
ONEDNN_MIN_ROWS = 2
# grukit's tiles (tiles.py) likewise read the weight once for up to 4 rows: one Zen 3 core, 3H x H
# weight at H = 128, 2-5 rows 6.2-12.6 us against 9.3-19.2 us on the mat-vec loop (1.5-2.1x), 1 row
# 5.2 against 4.6 us; H = 64, 2 and 4 rows 1.9x and 1.7x.
TILES_MIN_ROWS = 2
GEMM_SMALL_MNK = 1_000_000
GEMM_MIN_CHUNK = 4


@njit(**JIT)
def gemm(x, m, out):
    """out = x @ m for C-contiguous x (R, K), m (K, N), out (R, N); row i of out depends
    on row i of x only (so inactive rows of a block can ride along)."""
    R, K = x.shape
    N = m.shape[1]
    if R < GEMM_MIN_ROWS:
        out[:] = 0
        matmul_acc(x, m, np.int64(0), np.int64(0), N, out)
        return
    per = GEMM_SMALL_MNK // max(1, K * N) if x.itemsize == 4 else R
    if R <= per or per < GEMM_MIN_CHUNK:
        blas_gemm(x, m, out)
        return
    chunks = (R + per - 1) // per
    for c in range(chunks):
        r0 = R * c // chunks
        r1 = R * (c + 1) // chunks
        blas_gemm(x[r0:r1], m, out[r0:r1])


@njit(**JIT)
def _float_gemm_packed(x, m, packed, out):
    """:func:`gemm` with ``packed = pack_weight_for(m, x.shape[0])``: MKL reuses the weight packed
    once per call instead of packing it on every step (float32; 1.1-1.5x on the kernels' shapes)."""
    if packed.size == 0 or x.shape[0] < GEMM_MIN_ROWS:
        gemm(x, m, out)
    else:
        packed_gemm(x, m, packed, out)


@njit(**JIT)
def _tiles_gemm_packed(x, m, packed, out):
    """:func:`gemm` with ``packed = pack_weight_for(m, x.shape[0])``: grukit's tiles (tiles.py) on
    the weight packed once per call, or the mat-vec loop where it was not packed."""
    if packed.size == 0:
        gemm(x, m, out)
    else:
        tiles.product(x, m, packed, out, np.bool_(False))


def _on_tiles(x) -> bool:
    """Whether products of ``x``'s Numba type run on grukit's tiles: float32 where they are the
    faster GEMM (tiles.FASTER_F32). Decided when a loop compiles, so float64 loops never compile them."""
    return tiles.FASTER_F32 and x.dtype == types.float32


def _rows_on_tiles(x) -> bool:
    """Whether a batch of one's products of ``x``'s Numba type run on the tiles' panels
    (tiles.row_product): float32 where that beats the mat-vec loop (tiles.FASTER_ROW_F32)."""
    return tiles.FASTER_ROW_F32 and x.dtype == types.float32


# The microkernel reads all of m for each block of rows it holds in registers: an m larger than the
# core's cache (S4's 512 x 2048 W_hh^T and W_ih^T, 4 MB; the backward's 2048 x 512 W) comes from L3
# again and again. From ONEDNN_TILE_MIN_BYTES on it goes in tiles of ONEDNN_TILE_COLUMNS columns by
# ONEDNN_TILE_ROWS rows of m, each of which stays in cache while every row of x passes over it (a
# K longer than a tile is summed tile by tile, in a fixed order: a row's result still does not
# depend on the other rows). One Zen 5 core, rows of 64, against one call: by 512 x 2048 777-780 ->
# 666-676 us, 512 x 1536 476-488 -> 438-449 us (the same bits: K in one tile); by 2048 x 512 746-769
# -> 594-600 us, 1536 x 512 744-749 -> 438-442 us (tiles of 128 columns over all 2048 rows took
# 990-1090: the K tiles are what pays there); 128 x 512 (256 KB) level.
ONEDNN_TILE_COLUMNS = 128
ONEDNN_TILE_ROWS = 512
ONEDNN_TILE_MIN_BYTES = 512 * 1024


@njit(**JIT)
def _onednn(x, batch_of_one, out, accumulate):
    """out = x @ m (``out += x @ m`` with ``accumulate``) through oneDNN's float32 microkernel,
    ``batch_of_one`` = m (K, N) as (1, K, N); rows of x and out contiguous. A large m goes in tiles
    (ONEDNN_TILE_COLUMNS x ONEDNN_TILE_ROWS)."""
    R, K = x.shape
    m = batch_of_one[0]
    N = m.shape[1]
    columns, rows = N, K
    if K * N * 4 >= ONEDNN_TILE_MIN_BYTES:
        columns, rows = ONEDNN_TILE_COLUMNS, ONEDNN_TILE_ROWS
    lda = x.strides[0] // 4 if R > 1 else K
    ldb = m.strides[0] // 4 if K > 1 else N
    ldc = out.strides[0] // 4 if R > 1 else N
    for n0 in range(0, N, columns):
        for k0 in range(0, K, rows):
            add = accumulate or k0 > 0
            onednn.brgemm_f32(R, min(columns, N - n0), min(rows, K - k0), lda, ldb, ldc, np.int32(1 if add else 0),
                              x[:, k0:].ctypes.data, m[k0:, n0:].ctypes.data, out[:, n0:].ctypes.data, np.int32(0))


@njit(**JIT)
def _onednn_gemm(x, batch_of_one, out):
    """out = x @ m through oneDNN's microkernel (:func:`_onednn`); the mat-vec loop for blocks of
    fewer than ONEDNN_MIN_ROWS rows, as :func:`gemm`."""
    if x.shape[0] < ONEDNN_MIN_ROWS:
        gemm(x, batch_of_one[0], out)
    else:
        _onednn(x, batch_of_one, out, np.bool_(False))   # typed, not a literal: compiled once


def gemm_packed(x, m, packed, out):
    """out = x @ m, the kernels' per-step recurrent product, with ``packed = recurrent_operand(m,
    rows, operand)``. Chosen by packed's type when the loop is compiled (products.py): a 1-D float
    array is MKL's packed m (or empty), a BLAS GEMM; a 3-D float array is m as a batch of one, for
    oneDNN's float32 microkernel; a 2-D array is the bfloat16 mode's operand (bf16.py), whose product
    rounds both operands and its result to bfloat16, and a pair (that operand, its tiles' panels) the
    same product on grukit's tiles."""


@overload(gemm_packed, jit_options=OVERLOAD_JIT)
def _gemm_packed(x, m, packed, out):
    if isinstance(packed, types.BaseTuple):   # the bfloat16 mode's rounded values and their panels
        return lambda x, m, packed, out: rounded_tiles_product(x, packed[0], packed[1], out)
    if packed.ndim == 3:
        return lambda x, m, packed, out: _onednn_gemm(x, packed, out)
    if packed.ndim == 2 and packed.dtype == types.uint16:
        return lambda x, m, packed, out: vnni_product(x, packed, out)
    if packed.ndim == 2:
        return lambda x, m, packed, out: rounded_product(x, packed, out)
    if _on_tiles(x):
        return lambda x, m, packed, out: _tiles_gemm_packed(x, m, packed, out)
    return lambda x, m, packed, out: _float_gemm_packed(x, m, packed, out)


def pack_weight_for(m, rows):
    """The packed form of a block's recurrent weight for :func:`gemm_packed` (may be empty: no
    packing for the blocks that stay on the mat-vec loop): MKL's packed form, or grukit's panels
    (tiles.pack) for its tiles, which take blocks from TILES_MIN_ROWS rows."""


@overload(pack_weight_for, jit_options=OVERLOAD_JIT)
def _pack_weight_for(m, rows):
    if _on_tiles(m):
        return lambda m, rows: tiles.pack(m) if rows >= TILES_MIN_ROWS else np.empty(0, np.float32)
    return lambda m, rows: pack_rows(m, rows if rows >= GEMM_MIN_ROWS else 0)


def recurrent_operand(m, rows, operand):
    """The second operand of a block's per-step products with m for :func:`gemm_packed`: ``operand``
    itself (products.operands: oneDNN's or the bfloat16 mode's; on grukit's tiles the mode's float32
    operand with its panels, packed once per call), or for an empty 1-D array ("blas"),
    :func:`pack_weight_for` of m."""


@njit(**JIT)
def no_operand(dtype):
    """The ``operand`` of :func:`recurrent_operand` for BLAS's GEMMs (the streaming frames')."""
    return np.empty(0, dtype)


@overload(recurrent_operand, jit_options=OVERLOAD_JIT)
def _recurrent_operand(m, rows, operand):
    if operand.ndim == 2 and _on_tiles(operand):
        # the bfloat16 mode's rounded values (float32): on the tiles, with their panels
        return lambda m, rows, operand: (operand, tiles.pack(operand) if rows >= TILES_MIN_ROWS
                                         else np.empty(0, np.float32))
    if operand.ndim >= 2:
        return lambda m, rows, operand: operand
    return lambda m, rows, operand: pack_weight_for(m, rows)


def gemm_add(x, m, packed, scratch, out):
    """out += x @ m (C-contiguous; ``packed`` from :func:`recurrent_operand`, may be empty;
    ``scratch`` has out's shape and receives x @ m, except on grukit's tiles, which add to out)."""


@njit(**JIT)
def _gemm_add_through(x, m, packed, scratch, out):
    gemm_packed(x, m, packed, scratch)
    for i in range(out.shape[0]):
        o = out[i]
        a = scratch[i]
        for j in range(o.shape[0]):
            o[j] += a[j]


@njit(**JIT)
def _tiles_gemm_add(x, m, packed, scratch, out):
    if packed.size == 0:
        _gemm_add_through(x, m, packed, scratch, out)
    else:
        tiles.product(x, m, packed, out, np.bool_(True))


@overload(gemm_add, jit_options=OVERLOAD_JIT)
def _gemm_add(x, m, packed, scratch, out):
    if _on_tiles(x) and isinstance(packed, types.Array) and packed.ndim == 1:
        return lambda x, m, packed, scratch, out: _tiles_gemm_add(x, m, packed, scratch, out)
    return lambda x, m, packed, scratch, out: _gemm_add_through(x, m, packed, scratch, out)


# The inference projection fills its output with the bias, then lets the GEMM add x @ w_ih.T
# (beta = 1). Over a thread's whole share of S2's rows the bias-filled output (6.5 MB for the
# LSTM) leaves the core's cache before the GEMM reads it back; in chunks of about 256 KB it is
# still there. Timed in one process, rotating order, S2 rows on 2 threads: GRU (G*H = 384)
# 9.2 -> 6.4 ms, LSTM (512) 11.4 -> 8.6 ms, the same bits out.
PROJECTION_CHUNK_BYTES = 256 * 1024
PROJECTION_MIN_CHUNK_ROWS = 64


def _projection_acc(x, w_ih, operand, out):
    """out += x @ w_ih.T: MKL's GEMM on w_ih as stored, or for a 3-D ``operand`` (products.py's
    "onednn" operand of w_ih.T) oneDNN's microkernel (on the Zen 4 1.25x MKL for S2's chunks of
    170 x 128 by 384, one thread)."""


@overload(_projection_acc, jit_options=OVERLOAD_JIT)
def _projection_acc_overload(x, w_ih, operand, out):
    if operand.ndim == 3:
        return lambda x, w_ih, operand, out: _onednn(x, operand, out, np.bool_(True))
    return lambda x, w_ih, operand, out: blas_gemm_nt_acc(x, w_ih, out)


@njit(**JIT)
def _project_chunks(r0, r1, x, w_ih, b_ih, gx, operand):
    rows = max(PROJECTION_MIN_CHUNK_ROWS, PROJECTION_CHUNK_BYTES // max(1, gx.shape[1] * gx.itemsize))
    for c0 in range(r0, r1, rows):
        c1 = min(c0 + rows, r1)
        g = gx[c0:c1]
        for r in range(c1 - c0):
            copy_vector(g[r], b_ih)
        _projection_acc(x[c0:c1], w_ih, operand, g)


@njit(**JIT)
def _project_on_tiles(r0, r1, x, w_ih, b_ih, gx, operand):
    if r1 > r0:
        w_t = w_ih.T
        tiles.biased_product(x[r0:r1], w_t, tiles.pack(w_t), b_ih, gx[r0:r1])


def _projection(r0, r1, x, w_ih, b_ih, gx, operand):
    """:func:`project_rows`'s GEMMs, on grukit's tiles or the others (chosen when the loop compiles)."""


@overload(_projection, jit_options=OVERLOAD_JIT)
def _projection_overload(r0, r1, x, w_ih, b_ih, gx, operand):
    if _on_tiles(x) and operand.ndim == 1:
        return lambda r0, r1, x, w_ih, b_ih, gx, operand: _project_on_tiles(r0, r1, x, w_ih, b_ih, gx, operand)
    return lambda r0, r1, x, w_ih, b_ih, gx, operand: _project_chunks(r0, r1, x, w_ih, b_ih, gx, operand)


@njit(**JIT)
def project_rows(r0, r1, x, w_ih, b_ih, gx, operand):
    """gx[r] = x[r] @ w_ih.T + b_ih for the rows r0 <= r < r1 of the 2-D views x (R, I) and
    gx (R, G*H): GEMMs over chunks of rows, each output chunk filled with the bias first.
    w_ih (G*H, I) as stored; ``operand``: products.operands of w_ih.T (empty for MKL's GEMM or,
    in float32 where they are the faster GEMM, grukit's tiles, which start each row from the bias
    themselves: one Zen 3 core, S2's 3200 x 128 by 384 1.04x MKL with its bias pass, S4's 6400 x 512
    by 1536 1.10x)."""
    _projection(r0, r1, x, w_ih, b_ih, gx, operand)


@njit(**JIT)
def project_rows_in_team(bounds, blas_limit, args):
    """project_rows's blocks started from compiled code (run_rows, region.team_rows)."""
    return region.team_rows(project_rows, bounds, blas_limit, args)


@njit(**JIT)
def project_sequence(x, w_ih, b_in):
    """g (T, B, G*H) = x @ w_ih.T + b_in on this thread, for a whole sequence x (T, B, I)
    C-contiguous; w_ih (G*H, I) as stored. The input side of each family's ``stored_sequence``."""
    T, B, I = x.shape
    G = w_ih.shape[0]
    g = np.empty((T, B, G), x.dtype)
    project_rows(np.int64(0), T * B, x.reshape((T * B, I)), w_ih, b_in, g.reshape((T * B, G)),
                 no_operand(x.dtype))
    return g


@njit(**JIT)
def max_length(lengths, b0, b1):
    L = 0
    for b in range(b0, b1):
        L = max(L, lengths[b])
    return L


@njit(**JIT)
def one_length(lengths, b0, b1):
    """True when the sequences b0 <= b < b1 all have the same length: then every step's rows lie
    side by side in a (T, B, ...) array (step t's rows b0..b1 are one C-contiguous block)."""
    for b in range(b0 + 1, b1):
        if lengths[b] != lengths[b0]:
            return False
    return True


@njit(**JIT)
def time_index(s, L, reverse):
    """The time index of processing step s of a sequence of length L, or -1 past its end.

    Forward runs t = s; reverse runs t = L - 1 - s, so each sequence starts at its own
    last valid step (PackedSequence semantics, as reference.run_direction)."""
    if s >= L:
        return -1
    return L - 1 - s if reverse else s


def gx_row(gx, gidx, t, b):
    """Step t's input pre-activations of sequence b: gx[t, b], or with an index gidx (T, B) (not
    empty), row gidx[t, b] of the table gx (1, U, G*H). An embedded first layer's projection is a
    table of one row per distinct token (nn/embedded.py); reading it through the token index saves
    writing the (T, B, G*H) gather, 7.7 MB per batch of the tutorial IMDB GRU.

    With ``gidx = (x, w_in_t, b_in, batch_first, operand)`` (api.input_rows_source), the row is
    projected here, into row b of the scratch gx (1, B, G*H): x[t, b] @ w_in_t + b_in (x[b, t] when
    batch_first)."""


@overload(gx_row, jit_options=OVERLOAD_JIT)
def _gx_row(gx, gidx, t, b):
    if isinstance(gidx, types.BaseTuple):
        def projected(gx, gidx, t, b):
            x, w_in_t, b_in, batch_first, operand = gidx
            row = gx[0, b]
            copy_vector(row, b_in)
            axpy_matvec(x[b, t] if batch_first else x[t, b], w_in_t, np.int64(0), np.int64(0), row.shape[0], row)
            return row
        return projected

    def read(gx, gidx, t, b):
        if gidx.shape[0] == 0:
            return gx[t, b]
        return gx[0, gidx[t, b]]
    return read


def gx_block(gx, gidx, t, b0, b1, scratch):
    """Step t's input pre-activations of the sequences b0 <= b < b1 (all of one length) as one
    (b1 - b0, G*H) block whose rows lie side by side, for the block gate passes: gx[t, b0:b1]; for
    input rows, the scratch gx's rows gx[0, b0:b1], projected there as one block by oneDNN's
    microkernel when the source's operand is 3-D (products.operands of w_in_t), by
    :func:`project_rows`, the projection before the loop (so the same bits), else row by row
    (:func:`gx_row`); a table's rows (gidx an index) copied into ``scratch`` (b1 - b0, G*H)."""


@overload(gx_block, jit_options=OVERLOAD_JIT)
def _gx_block(gx, gidx, t, b0, b1, scratch):
    if isinstance(gidx, types.BaseTuple) and gidx.types[4].ndim == 3:
        def block_projected(gx, gidx, t, b0, b1, scratch):
            x, w_in_t, b_in, batch_first, operand = gidx
            g = gx[0, b0:b1]
            # project_rows reads its w_ih only for MKL's GEMM, never with a 3-D operand
            project_rows(np.int64(0), b1 - b0, x[b0:b1, t] if batch_first else x[t, b0:b1], w_in_t, b_in, g, operand)
            return g
        return block_projected
    if isinstance(gidx, types.BaseTuple):
        def projected(gx, gidx, t, b0, b1, scratch):
            for b in range(b0, b1):
                gx_row(gx, gidx, t, b)
            return gx[0, b0:b1]
        return projected

    def read(gx, gidx, t, b0, b1, scratch):
        if gidx.shape[0] == 0:
            return gx[t, b0:b1]
        for b in range(b0, b1):
            copy_vector(scratch[b - b0], gx[0, gidx[t, b]])
        return scratch
    return read


@njit(**JIT)
def no_gx_index():
    """The empty gidx of gx_row: gx is read as it is, not as a table."""
    return np.empty((0, 0), np.int64)


@njit(**JIT)
def output_grad(grad_out, t, b, batch_first):
    """grad_out[t, b] (grad_out[b, t] when ``batch_first``), the gradient reaching step t's output of
    sequence b. Batch-first: the (B, T, H) gradient of a batch-first layer's output, read in place
    rather than copied to time-major first (one (T, B, H) array less at the step's peak). A
    (1, 1, H) grad_out stands for zeros at every step: the loss did not read the output sequence (a
    model that keeps only the last state), and an array of zeros would be written and read for
    nothing."""
    if grad_out.shape[0] == 1 and grad_out.shape[1] == 1:
        return grad_out[0, 0]
    return grad_out[b, t] if batch_first else grad_out[t, b]


@njit(**JIT)
def zero_tail(a, b, L):
    """a[t, b, :] = 0 for the padded steps t >= L of sequence b."""
    for t in range(L, a.shape[0]):
        a[t, b, :] = 0


# --- threads ----------------------------------------------------------------------
#
# Sequences of a batch are independent, so each thread runs the whole time loop for its
# block of rows: one fork/join per call, never one per step. The threads are torch's own
# OpenMP team, or a small Python pool without torch (team.py), calling the compiled (nogil)
# loops; not a numba parallel region: no second OpenMP runtime next to torch's, nothing
# compiled twice, and the count is ours to set.
# A call goes parallel only with at least two rows and MIN_PARALLEL_WORK multiply-adds
# (~0.2 ms of work against ~30 us of pool overhead); a batch of one never does.
MIN_PARALLEL_WORK = 2_000_000
_MAX_THREADS = max(1, min(numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1))
_threads = _MAX_THREADS


def set_threads(n: int) -> int:
    """Use at most n threads (clamped to NUMBA_NUM_THREADS and the cores); returns the count.

    The torch wrapper calls this with torch.get_num_threads() before every kernel call.
    """
    global _threads
    _threads = max(1, min(int(n), _MAX_THREADS))
    return _threads


def get_threads() -> int:
    return _threads


@njit(**JIT)
def part_bounds(n, part, parts):
    """(i0, i1): part ``part`` of ``parts`` even parts of n items, the bounds at multiples of 16 (whole
    vectors, whole cache lines of float32), the last part taking the rest. Set by n and parts alone."""
    i0 = (n * part // parts) // 16 * 16
    i1 = n if part == parts - 1 else (n * (part + 1) // parts) // 16 * 16
    return i0, i1


_EVERY_CALL_IN_BLOCKS = False


@contextlib.contextmanager
def every_call_in_blocks():
    """Within: every call of two or more rows runs in two blocks (chunk_bounds), whatever its work and
    the thread count, so that a small call compiles the launcher (region.team_rows) a large one
    runs: for precompile, whose calls are small and may run on one thread."""
    global _EVERY_CALL_IN_BLOCKS
    previous, _EVERY_CALL_IN_BLOCKS = _EVERY_CALL_IN_BLOCKS, True
    try:
        yield
    finally:
        _EVERY_CALL_IN_BLOCKS = previous


def chunk_bounds(batch: int, work: int, min_work: int = MIN_PARALLEL_WORK) -> list[int] | None:
    """Row bounds of the per-thread blocks, as even as whole rows allow, or None for a serial call
    (fewer than two rows or threads, or less than ``min_work`` multiply-adds; see every_call_in_blocks).
    Integer arithmetic: numpy's linspace, round and astype cost some 10 us on every kernel call."""
    chunks = min(_threads, batch)
    if _EVERY_CALL_IN_BLOCKS and batch >= 2:
        chunks, work = 2, min_work
    if chunks < 2 or work < min_work:
        return None
    return [_round_half_even(batch * i, chunks) for i in range(chunks + 1)]


def _round_half_even(n: int, d: int) -> int:
    """n / d rounded to the nearest integer, ties to even (as numpy rounds)."""
    q, r = divmod(n, d)
    return q + (2 * r > d or (2 * r == d and q % 2 == 1))


# --- flush-to-zero --------------------------------------------------------------------
#
# Backpropagation through time shrinks gradients step by step; with the loss on the last
# step (the tutorials' models) most of them fall below 1e-38 in float32 long before t = 0,
# and x86 CPUs compute on such subnormal numbers about a hundred times slower. The kernels
# therefore run with the SSE control bits FTZ (results below the normal range become 0)
# and DAZ (subnormal inputs read as 0) set, and restore the thread's previous mode after.
# The change to any result is below 1.2e-38 (float32) / 2.3e-308 (float64).

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_FTZ_DAZ = 0x8040  # MXCSR bit 15 (flush to zero) and bit 6 (denormals are zero)


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, signature, args):
        slot = builder.alloca(ir.IntType(32))
        fn = builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer()]))
        builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return builder.load(slot)
    return types.uint32(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, signature, args):
        slot = builder.alloca(ir.IntType(32))
        builder.store(args[0], slot)
        fn = builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer()]))
        builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()
    return types.void(types.uint32), codegen


@njit(cache=True, nogil=True)
def _enter_flush_to_zero():
    previous = _read_mxcsr()
    _write_mxcsr(previous | np.uint32(_FTZ_DAZ))
    return previous


@njit(cache=True, nogil=True)
def _restore_fp_mode(previous):
    _write_mxcsr(previous)


# Gradients leave the kernels for torch's GEMMs (the input projection's backward), which run in
# the caller's floating-point mode: a float32 gradient of 1e-36 times a weight of 0.01 would
# be subnormal there again. Gradients below 2^-100 (about 8e-31; float32 only) are therefore
# set to zero on the way out, which keeps every such product normal for weights above 1e-8.
TINY_GRADIENT_FLOAT32 = np.float32(2.0 ** -100)


def tiny_gradient(dtype):
    """The flush threshold of a backward pass's outgoing gradients: TINY_GRADIENT_FLOAT32 for
    float32, 0 (nothing flushed) for float64."""
    return TINY_GRADIENT_FLOAT32 if dtype == np.float32 else np.float64(0.0)


@njit(**JIT)
def flushed(v, threshold):
    """v, or 0 where |v| < threshold (NaN kept): for gradients on their way out of a backward
    pass, fused into its gate loop (threshold 0 flushes nothing, as for float64)."""
    return ZERO if abs(v) < threshold else v


@njit(**JIT)
def flush_tiny(values, threshold):
    """:func:`flushed` over every entry, in place: for the modes whose backward does not flush
    inside its gate loop. values is 3-D, any strides."""
    for t in range(values.shape[0]):
        for b in range(values.shape[1]):
            row = values[t, b]
            for j in range(row.shape[0]):
                row[j] = flushed(row[j], threshold)


def flushing_subnormals(rows_fn, *args) -> None:
    """Call a compiled loop with FTZ/DAZ set in this thread (x86), then restore the mode. The
    loop's GEMMs run on this thread only (the batch is already split over threads)."""
    threads = one_thread_here()
    previous = _enter_flush_to_zero() if _X86 else None
    try:
        rows_fn(*args)
    finally:
        if previous is not None:
            _restore_fp_mode(previous)
        restore_threads_here(threads)


def run_rows(rows_fn, batch: int, work: int, args: tuple, min_work: int = MIN_PARALLEL_WORK,
             in_team=None) -> None:
    """Call ``rows_fn(b0, b1, *args)`` over the batch in per-thread row blocks, each with
    subnormals flushed (see above); serial below ``min_work`` multiply-adds (chunk_bounds).

    ``in_team``: rows_fn's compiled launcher (region.team_rows), which starts the blocks from compiled
    code where torch's OpenMP team takes them (region.usable); else, and without one, each block is a
    Python callback (team.run_blocks), whose thread takes the GIL to start it: there the team's second
    thread started 40-76 us after the first (S3's LSTM step, three such regions a step).
    The calling thread runs the first block itself. Serial calls, blocks and launchers all run the one
    compiled rows_fn (region.call_unlinked), so the path taken does not change the bits.
    """
    bounds = chunk_bounds(batch, work, min_work)
    if bounds is None:
        flushing_subnormals(rows_fn, 0, batch, *args)
        return
    if in_team is not None and region.usable():
        if in_team(np.array(bounds, np.int64), np.bool_(PER_THREAD_LIMIT), args):
            raise RuntimeError(f"{rows_fn.__name__}: a block raised inside the parallel region")
        return
    run_blocks(lambda i: flushing_subnormals(rows_fn, bounds[i], bounds[i + 1], *args), len(bounds) - 1)


def run_forward(rows_fn, gx, states0, params, lengths, reverse, flags, training, ws_widths, work,
                gx_index=None, in_team=None):
    """Allocate the results, run a family's forward loop over the batch, return them.

    Every family's ``_fwd_rows`` takes ``(b0, b1, gx, gidx, *states0, *params, lengths, reverse,
    *flags, training, out, *states, *workspace)``; the workspace is one (T, B, width)
    array per entry of ``ws_widths`` (1-element stand-ins when not training). ``gx_index``
    (T, B) int64: gx is a (1, U, G*H) table read through it (gx_row).
    Returns (out, states, workspace or None).
    """
    T, B, _ = gx_shape(gx, gx_index)
    if gx_index is None:
        gx_index = no_gx_index()
    H = states0[0].shape[1]
    dt = gx.dtype
    out = buffers.empty((T, B, H), dt)
    states = tuple(np.empty((B, H), dt) for _ in states0)
    if training:
        ws = tuple(buffers.empty((T, B, w), dt) for w in ws_widths)
    else:
        ws = (np.empty((1, 1, 1), dt),) * len(ws_widths)
    args = (gx, gx_index, *states0, *params, lengths, bool(reverse), *flags, bool(training), out, *states,
            *ws)
    run_rows(rows_fn, B, work, args, in_team=in_team)
    return out, states, (ws if training else None)


def gx_shape(gx, gx_index) -> tuple[int, int, int]:
    """(T, B, G*H) of a family forward's input: gx's shape, or with an index the index's (T, B), or
    with input rows (gx_row) those of x."""
    if gx_index is None:
        return gx.shape
    if isinstance(gx_index, tuple):
        x, batch_first = gx_index[0], gx_index[3]
        return (x.shape[1], x.shape[0], gx.shape[2]) if batch_first else (x.shape[0], x.shape[1], gx.shape[2])
    return (*gx_index.shape, gx.shape[2])


def run_step(rows_fn, gx_t, states, params, flags, n_ws):
    """One inference step through a family's forward loop (T = 1, no workspace, serial)."""
    B, G = gx_t.shape
    lengths = np.ones(B, np.int64)
    _, new, _ = run_forward(rows_fn, gx_t.reshape((1, B, G)), states, params, lengths, False,
                            flags, False, (0,) * n_ws, 0)
    return new


def full_lengths(T: int, B: int) -> np.ndarray:
    return np.full(B, T, dtype=np.int64)


@njit(**JIT)
def _transpose_into(w, out):
    """out = w.T for C-contiguous w (R, C), out (C, R). Eight rows of w at a time fill eight
    contiguous entries of each row of out: 3-4x numpy's transposing copy (18 against 68 us at
    384 x 128), which the forward pays on every call (see function._packed)."""
    R, C = w.shape
    for r0 in range(0, R - 7, 8):
        for c in range(C):
            o = out[c]
            for k in range(8):
                o[r0 + k] = w[r0 + k, c]
    for r in range(R - R % 8, R):
        for c in range(C):
            out[c, r] = w[r, c]


def pack_transposed(w: np.ndarray) -> np.ndarray:
    """W (rows, H) -> W^T (H, rows) C-contiguous: the layout the forward inner loop reads."""
    if w.ndim != 2 or w.dtype not in (np.float32, np.float64):
        return np.ascontiguousarray(w.T)
    out = buffers.aligned_empty((w.shape[1], w.shape[0]), w.dtype)
    _transpose_into(np.ascontiguousarray(w), out)
    return out
