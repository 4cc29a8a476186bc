"""The BLAS GEMM the compiled time loops call once per step.

Numba's ``np.dot`` calls scipy's OpenBLAS. For the kernels' per-step shapes, measured on this
project's 2-core Xeon (one thread, float32), that ran at 46-79 GFLOP/s (B=16..128 rows, H=128..512)
while MKL's sgemm ran at 97-125 GFLOP/s on the same shapes. torch's CPU build carries MKL and exports
its Fortran ``sgemm_``/``dgemm_`` from ``libtorch_cpu.so``, so the kernels call that when torch is
installed, and scipy's OpenBLAS (its Cython BLAS capsules, same Fortran interface) otherwise, which
keeps the kernels usable without torch. Nothing here imports torch: the library is found on disk
and opened with ctypes.

The compiled code calls the symbols ``grukit_sgemm``/``grukit_dgemm``, which this module binds
to the provider's addresses (``llvmlite.binding.add_symbol``) on import, before any kernel is
compiled or loaded from numba's disk cache: cached machine code refers to the name, not to an
address, so it stays valid in every new process whichever provider that process has.

Threads: the kernels split the batch over their own threads, and each block's GEMMs must run on
one thread. MKL takes a per-thread limit (:func:`one_thread_here`); OpenBLAS only
a process-wide one, which the torch wrapper sets around each kernel call (threadpoolctl).
"""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types

from .torch_libraries import open_torch_library

_POINTER_ARGS = types.void(*(types.intp,) * 13)   # the Fortran interface: every argument by address
_sgemm = types.ExternalFunction("grukit_sgemm", _POINTER_ARGS)
_dgemm = types.ExternalFunction("grukit_dgemm", _POINTER_ARGS)
# MKL's packed-matrix GEMM (C interface, arguments by value): the recurrent weight is packed once
# per call and every step's product reuses it, instead of MKL packing it again on each step.
_I32 = types.int32
_pack_size = types.ExternalFunction("grukit_sgemm_pack_get_size", types.intp(_I32, _I32, _I32, _I32))
_pack = types.ExternalFunction("grukit_sgemm_pack", types.void(
    _I32, _I32, _I32, _I32, _I32, _I32, types.float32, types.intp, _I32, types.intp))
_compute = types.ExternalFunction("grukit_sgemm_compute", types.void(
    _I32, _I32, _I32, _I32, _I32, _I32, types.intp, _I32, types.intp, _I32, types.float32, types.intp, _I32))
_ROW_MAJOR, _NO_TRANS, _PACKED, _B_MATRIX = 101, 111, 151, 162   # MKL's CBLAS enum values

_NOTRANS = np.int32(ord("N"))   # a Fortran CHARACTER*1 argument: 'N' in the first byte
_TRANS = np.int32(ord("T"))


def _torch_mkl() -> ctypes.CDLL | None:
    """torch's libtorch_cpu.so when it exports MKL's Fortran GEMMs, else None."""
    return open_torch_library("libtorch_cpu.so", (
        "sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local", "cblas_sgemm_pack_get_size", "cblas_sgemm_pack",
        "cblas_sgemm_compute"))


def _scipy_openblas() -> tuple[int, int]:
    from scipy.linalg import cython_blas

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    capsules = cython_blas.__pyx_capi__
    return tuple(get_pointer(capsules[n], get_name(capsules[n])) for n in ("sgemm", "dgemm"))


_MKL = _torch_mkl()
if _MKL is not None:
    PROVIDER = "MKL (torch's libtorch_cpu)"
    _addresses = (ctypes.cast(_MKL.sgemm_, ctypes.c_void_p).value,
                  ctypes.cast(_MKL.dgemm_, ctypes.c_void_p).value)
    _set_local_threads = _MKL.MKL_Set_Num_Threads_Local   # the C interface: int by value
    _set_local_threads.argtypes, _set_local_threads.restype = [ctypes.c_int], ctypes.c_int
    _packing = tuple(ctypes.cast(getattr(_MKL, f"cblas_sgemm_{n}"), ctypes.c_void_p).value
                     for n in ("pack_get_size", "pack", "compute"))
else:
    PROVIDER = "OpenBLAS (scipy)"
    _addresses = _scipy_openblas()
    _set_local_threads = None
    # No packed GEMM: a pack size of 0 makes pack_rows return an empty array, so pack and compute
    # are never called; they are bound to a stub only so that cached code links.
    _no_packing = ctypes.CFUNCTYPE(ctypes.c_ssize_t)(lambda *args: 0)
    _packing = (ctypes.cast(_no_packing, ctypes.c_void_p).value,) * 3
llvm.add_symbol("grukit_sgemm", _addresses[0])
llvm.add_symbol("grukit_dgemm", _addresses[1])
for _name, _address in zip(("pack_get_size", "pack", "compute"), _packing):
    llvm.add_symbol(f"grukit_sgemm_{_name}", _address)

PER_THREAD_LIMIT = _set_local_threads is not None
# The same limit for compiled code (region.team_rows), which calls it only where PER_THREAD_LIMIT.
_no_limit = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda n: 0)
llvm.add_symbol("grukit_mkl_set_num_threads_local",
                ctypes.cast(_set_local_threads if PER_THREAD_LIMIT else _no_limit, ctypes.c_void_p).value)
set_local_threads = types.ExternalFunction("grukit_mkl_set_num_threads_local", types.int32(types.int32))


def one_thread_here() -> int | None:
    """MKL: this thread's GEMMs run on one thread from now on; returns the previous setting for
    :func:`restore_threads_here`. OpenBLAS: nothing, None (its limit is process-wide; see the
    module docstring). Two plain calls rather than a context manager: the kernels set this around
    every compiled call, where a generator-based context cost ~2 us."""
    return None if _set_local_threads is None else _set_local_threads(1)


def restore_threads_here(previous: int | None) -> None:
    if previous is not None:
        _set_local_threads(previous)


@njit(cache=True, nogil=True)
def _fortran_gemm(x, m, out, m_transposed, beta):
    """out = x @ op(m) + beta * out, op(m) = m (K, N) or, with m_transposed, m.T for m (N, K);
    float32 or float64 arrays whose rows are contiguous (any row stride).

    Row-major out is column-major out^T = op(m)^T x^T: one Fortran GEMM with m first.
    """
    R, K = x.shape
    N = out.shape[1]
    size = x.itemsize
    ints = np.empty(8, np.int32)   # n, m, k, ld(m), ld(x), ld(out), transpose flags of m and x
    ints[0] = N
    ints[1] = R
    ints[2] = K
    # a dimension of size 1 may carry any stride; BLAS wants ld >= the row length
    if m_transposed:
        ints[3] = m.strides[0] // size if N > 1 else K
        ints[6] = _TRANS
    else:
        ints[3] = m.strides[0] // size if K > 1 else N
        ints[6] = _NOTRANS
    ints[4] = x.strides[0] // size if R > 1 else K
    ints[5] = out.strides[0] // size if R > 1 else N
    ints[7] = _NOTRANS
    scalars = np.empty(2, x.dtype)   # alpha, beta
    scalars[0] = 1
    scalars[1] = beta
    n, m_, k, ld_m = ints.ctypes.data, ints[1:].ctypes.data, ints[2:].ctypes.data, ints[3:].ctypes.data
    ld_x, ld_out = ints[4:].ctypes.data, ints[5:].ctypes.data
    flag_m, flag_x = ints[6:].ctypes.data, ints[7:].ctypes.data
    alpha, beta_ = scalars.ctypes.data, scalars[1:].ctypes.data
    if size == 4:
        _sgemm(flag_m, flag_x, n, m_, k, alpha, m.ctypes.data, ld_m, x.ctypes.data, ld_x, beta_,
               out.ctypes.data, ld_out)
    else:
        _dgemm(flag_m, flag_x, n, m_, k, alpha, m.ctypes.data, ld_m, x.ctypes.data, ld_x, beta_,
               out.ctypes.data, ld_out)


@njit(cache=True, nogil=True)
def blas_gemm(x, m, out):
    """out = x @ m for float32 or float64 arrays (R, K) @ (K, N) -> (R, N) whose rows are
    contiguous (any row stride)."""
    _fortran_gemm(x, m, out, np.bool_(False), np.int64(0))   # typed values: see blas_gemm_nt_acc


@njit(cache=True, nogil=True)
def blas_gemm_nt_acc(x, w, out):
    """out += x @ w.T for w (N, K) as stored (a torch Linear weight): no transposed copy needed."""
    # np.bool_/np.int64, not the literals True and 1: Numba would compile _fortran_gemm once per
    # literal combination (0.45 s more of every first call on an empty cache; see common.copy_vector)
    _fortran_gemm(x, w, out, np.bool_(True), np.int64(1))


@njit(cache=True, nogil=True)
def pack_rows(m, rows):
    """MKL's packed form of the float32 matrix m (K, N) as the second operand of GEMMs with
    ``rows`` rows, or an empty array where packing does not apply (float64, fewer than 2 rows,
    OpenBLAS): :func:`packed_gemm` then falls back to :func:`blas_gemm`."""
    K, N = m.shape
    if m.itemsize != 4 or rows < 2 or K * N == 0:
        return np.empty(0, np.float32)
    size = _pack_size(_B_MATRIX, rows, N, K)
    if size <= 0:
        return np.empty(0, np.float32)
    packed = np.empty(size // 4 + 1, np.float32)
    ld = m.strides[0] // 4 if K > 1 else N
    _pack(_ROW_MAJOR, _B_MATRIX, _NO_TRANS, rows, N, K, np.float32(1.0), m.ctypes.data, ld,
          packed.ctypes.data)
    return packed


@njit(cache=True, nogil=True)
def packed_gemm(x, m, packed, out):
    """out = x @ m, with ``packed = pack_rows(m, x.shape[0])`` (any result of it)."""
    R, K = x.shape
    if packed.size == 0 or x.itemsize != 4:
        blas_gemm(x, m, out)
        return
    N = m.shape[1]
    ld_x = x.strides[0] // 4 if R > 1 else K
    ld_out = out.strides[0] // 4 if R > 1 else N
    _compute(_ROW_MAJOR, _NO_TRANS, _PACKED, R, N, K, x.ctypes.data, ld_x, packed.ctypes.data, N,
             np.float32(0.0), out.ctypes.data, ld_out)


__all__ = ["PROVIDER", "PER_THREAD_LIMIT", "blas_gemm", "blas_gemm_nt_acc", "pack_rows", "packed_gemm",
           "one_thread_here", "restore_threads_here"]
