"""bfloat16 GEMMs with float32 results: the products of grukit's bfloat16 mode.

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


__all__ = ["PROVIDER", "from_float32", "matmul", "to_float32"]
