"""bfloat16 GEMMs with float32 results: the products of grukit's bfloat16 mode.

Two kinds: whole-array products called from Python (:func:`matmul`, the fallback of the input
projection and the weight gradients), and the per-step recurrent products that the compiled time
loops call (:func:`recurrent_operand`, :func:`vnni_product`, :func:`rounded_product`).

A bfloat16 value is the upper 16 bits of a float32; these functions take such values as uint16
arrays (numpy has no bfloat16 type), multiply them and accumulate in float32. The product of two
bfloat16 values is exact in float32 (8 + 8 significand bits), so the result equals a float32 GEMM
of the widened operands up to the order of the additions: that float32 GEMM is the fallback, and
the tests' oracle.

The fast path is MKL's ``cblas_gemm_bf16bf16f32``, which torch's CPU build exports from
``libtorch_cpu.so`` (found on disk and opened with ctypes, as blas.py opens its sgemm). On the AMD
hosts this project ran on it never used BF16 units: on the AVX2-only Zen 3 it ran at float32 speed
(165 against 174 GFLOP/s for 12800 x 512 by 1536, 138 against 109 for 64 x 512 by 1536), and on the
Zen 4, which has AVX-512 BF16, at float32 speed too, whatever ``MKL_ENABLE_INSTRUCTIONS`` said,
while torch's bfloat16 matmul (oneDNN) ran 2.2-2.4x faster there. So grukit's bfloat16 mode calls
this module only where the CPU has no BF16 units (``grukit.nn.bfloat16.BACKEND``): there torch's
bfloat16 matmul runs at 1-3 GFLOP/s (oneDNN's reference path).
Nothing here imports torch.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import onednn, tiles
from .blas import blas_gemm
from .torch_libraries import open_torch_library

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112   # MKL's CBLAS enum values


def _mkl_gemm():
    library = open_torch_library("libtorch_cpu.so", ("cblas_gemm_bf16bf16f32",))
    if library is None:
        return None
    gemm = library.cblas_gemm_bf16bf16f32
    gemm.restype = None
    gemm.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int])
    return gemm


_GEMM = _mkl_gemm()
PROVIDER = "MKL's cblas_gemm_bf16bf16f32 (torch's libtorch_cpu)" if _GEMM else "float32 GEMM of widened values"


def from_float32(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (to nearest, ties to even, as torch rounds), as uint16 bits."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))
    nan = np.isnan(x)
    out = (rounded >> 16).astype(np.uint16)
    if nan.any():   # keep NaN a NaN: rounding up could carry its payload into the exponent
        out[nan] = 0x7FC0
    return out


def to_float32(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) widened to float32, exactly."""
    return (x.astype(np.uint32) << 16).view(np.float32)


def _layout(a: np.ndarray) -> tuple[int, int] | None:
    """(CBLAS transpose flag, leading dimension) of a 2-D array stored row-major or as the
    transpose of a row-major array; None for any other layout."""
    rows, cols = a.shape
    item = a.itemsize
    if a.strides[1] == item or cols == 1:
        return _NO_TRANS, max(a.strides[0] // item if rows > 1 else cols, cols, 1)
    if a.strides[0] == item or rows == 1:
        return _TRANS, max(a.strides[1] // item if cols > 1 else rows, rows, 1)
    return None


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False) -> np.ndarray:
    """a @ b in float32 (``out += a @ b`` with ``accumulate``) for bfloat16 operands (uint16 bits)
    a (M, K) and b (K, N), each row-major or a transposed view of a row-major array; out (M, N)
    float32 C-contiguous, made when None."""
    if a.dtype != np.uint16 or b.dtype != np.uint16 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"bf16.matmul: expected uint16 (M, K) and (K, N), got {a.dtype} {a.shape} and "
                         f"{b.dtype} {b.shape}")
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = np.zeros((M, N), np.float32) if accumulate else np.empty((M, N), np.float32)
    if out.shape != (M, N) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"bf16.matmul: out must be float32 C-contiguous {(M, N)}, got {out.dtype} {out.shape}")
    if M == 0 or N == 0:
        return out
    layout_a, layout_b = _layout(a), _layout(b)
    if _GEMM is None or K == 0 or layout_a is None or layout_b is None:
        product = to_float32(a) @ to_float32(b)
        if accumulate:
            out += product
        else:
            out[...] = product
        return out
    (trans_a, ld_a), (trans_b, ld_b) = layout_a, layout_b
    _GEMM(_ROW_MAJOR, trans_a, trans_b, M, N, K, 1.0, a.ctypes.data, ld_a, b.ctypes.data, ld_b,
          1.0 if accumulate else 0.0, out.ctypes.data, max(N, 1))
    return out


# --- the per-step recurrent products, called from the compiled loops --------------------
#
# In the mode every step's h @ W_hh^T (and backward's dgates @ W_hh) takes bfloat16 operands and
# its float32 result is rounded to bfloat16, as torch's autocast computes a matmul. Where the CPU
# has BF16 units the compiled loop calls oneDNN's brgemm microkernel (onednn.py) on the weight in
# oneDNN's VNNI layout: rows 2k and 2k+1 of W interleaved, (K/2, N, 2). Measured on a Zen 4 (AVX-512
# BF16), one thread, against torch's float32 matmul on the same core: 64 x 512 by 1536 202 against
# 76 GFLOP/s, 16 x 128 by 384 150 against 64. Elsewhere the same numbers come from a float32 GEMM of
# the rounded values, rounded (:func:`rounded_product`), and float64 layers take that path in
# float64, as the tests' oracle.

HAS_BRGEMM = onednn.HAS_BF16   # the tests switch it off to take the other path


@intrinsic
def _bits_of(typingctx, x):
    """The bits of a float32 as a uint32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _float_of(typingctx, b):
    """The float32 whose bits are the uint32 b."""
    if b != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(b), codegen


@njit(cache=True, nogil=True)
def rounded_bits(v):
    """v (float32, or float64 through float32 first, as torch converts a double) rounded to
    bfloat16, to nearest, ties to even; its bits in the upper half of a uint32. NaN stays NaN."""
    f = np.float32(v)
    b = _bits_of(f)
    if f != f:
        return np.uint32(0x7FC00000)
    return np.uint32((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))


@njit(cache=True, nogil=True)
def rounded_value(v):
    """v rounded to bfloat16, as a float32 (exact in float64 too)."""
    return _float_of(rounded_bits(v))


@njit(cache=True, nogil=True)
def round_rows(out):
    """Every entry of the 2-D array out (rows contiguous) rounded to bfloat16, in place."""
    for i in range(out.shape[0]):
        o = out[i]
        for j in range(o.shape[0]):
            o[j] = rounded_value(o[j])


@njit(cache=True, nogil=True)
def vnni_product(x, packed, out):
    """out = r(r(x) @ W) for x (R, K) float32 with contiguous rows, ``packed = vnni_operand(W)``
    ((K+1) // 2, 2N) uint16, out (R, N) float32 with contiguous rows; r rounds to bfloat16."""
    R, K = x.shape
    if R == 0:
        return
    K2 = 2 * packed.shape[0]
    N = packed.shape[1] // 2
    a = np.empty((R, K2), np.uint16)
    for i in range(R):
        xi = x[i]
        ai = a[i]
        for k in range(K):
            ai[k] = np.uint16(rounded_bits(xi[k]) >> np.uint32(16))
        for k in range(K, K2):
            ai[k] = 0
    ld_out = out.strides[0] // 4 if R > 1 else N
    onednn.brgemm_bf16(R, N, K2, K2, N, ld_out, np.int32(0), a.ctypes.data, packed.ctypes.data, out.ctypes.data,
                       np.int32(1))
    round_rows(out)


@njit(cache=True, nogil=True)
def rounded_product(x, rounded_m, out):
    """out = r(r(x) @ W) with ``rounded_m = rounded_operand(W)`` (the rounded values, x's dtype):
    a float32 (or float64) GEMM whose products of bfloat16 values are exact, as :func:`vnni_product`
    up to the order of the additions."""
    blas_gemm(_rounded_copy(x), rounded_m, out)
    round_rows(out)


@njit(cache=True, nogil=True)
def rounded_tiles_product(x, rounded_m, panels, out):
    """:func:`rounded_product` on grukit's float32 tiles (tiles.py), ``panels = tiles.pack(rounded_m)``
    (packed once per call by the block; empty for the blocks of one row, which take
    :func:`rounded_product`). On the Zen 3, one core, 16 x 128 by 384: 17 us against 25 us for
    MKL's unpacked sgemm."""
    if panels.size == 0:
        rounded_product(x, rounded_m, out)
        return
    tiles.product(_rounded_copy(x), rounded_m, panels, out, np.bool_(False))
    round_rows(out)


@njit(cache=True, nogil=True)
def _rounded_copy(x):
    """x's values rounded to bfloat16, in a new C-contiguous array of x's dtype."""
    R, K = x.shape
    a = np.empty((R, K), x.dtype)
    for i in range(R):
        xi = x[i]
        ai = a[i]
        for k in range(K):
            ai[k] = rounded_value(xi[k])
    return a


def vnni_operand(m: np.ndarray) -> np.ndarray:
    """W (K, N) float32 rounded to bfloat16 in oneDNN's VNNI layout, for :func:`vnni_product`:
    ((K+1) // 2, 2N) uint16 whose row k holds W[2k, n], W[2k+1, n] for n = 0..N-1 (a zero row
    pads an odd K)."""
    if not HAS_BRGEMM:
        raise RuntimeError("bf16.vnni_operand: torch's at::native::cpublas::brgemm is not available, or this "
                           "CPU has no BF16 units (onednn.py); use rounded_operand")
    K, N = m.shape
    bits = np.zeros((K + K % 2, N), np.uint16)
    bits[:K] = from_float32(m)
    return np.ascontiguousarray(bits.reshape(-1, 2, N).transpose(0, 2, 1)).reshape(-1, 2 * N)


def rounded_operand(m: np.ndarray) -> np.ndarray:
    """W's values rounded to bfloat16, in W's dtype (C-contiguous), for :func:`rounded_product`."""
    return to_float32(from_float32(m)).astype(m.dtype).reshape(m.shape)


__all__ = ["HAS_BRGEMM", "PROVIDER", "from_float32", "matmul", "round_rows", "rounded_bits",
           "rounded_operand", "rounded_product", "rounded_tiles_product", "rounded_value", "to_float32", "vnni_operand", "vnni_product"]
