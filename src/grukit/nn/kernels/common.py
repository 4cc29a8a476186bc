"""Shared pieces of the fused CPU kernels: activations, the recurrent mat-vec, threading.

Everything here imports numpy and numba only (no torch), so a torch-free runtime can
use the kernels. All compiled functions are ``cache=True``: the first call of a process
on a fresh checkout compiles, later processes load the machine code from ``__pycache__``.

Floating point: ``FASTMATH`` allows only FMA contraction (``contract``), which changes
rounding by at most one ulp per multiply-add and keeps NaN/inf semantics, reassociation
and the libm accuracy of exp/tanh. The kernels therefore agree with the pure-torch
reference to round-off (tested at 1e-9 in float64, 1e-5 in float32).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

FASTMATH = {"contract"}

# 1 as float32: float32 op float32 stays float32, and it promotes exactly for float64.
# (A plain 1.0 literal would silently run every float32 kernel in float64.)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
HALF = np.float32(0.5)

# Parallel split over the batch: each thread runs the whole time loop for its block of
# rows (sequences are independent), so there is one parallel region per call, never
# one per step. A call goes parallel only when every thread gets at least
# MIN_ROWS_PER_THREAD rows and the call has at least MIN_PARALLEL_WORK multiply-adds.
MIN_ROWS_PER_THREAD = 1
MIN_PARALLEL_WORK = 2_000_000


@njit(cache=True, fastmath=FASTMATH, inline="always")
def sigmoid(x):
    return ONE / (ONE + math.exp(-x))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def tanh(x):
    return math.tanh(x)


@njit(cache=True, fastmath=FASTMATH)
def axpy_matvec(x, m, r0, c0, n, out):
    """out[k] += sum_i x[i] * m[r0 + i, c0 + k] for k < n.

    The inner loop runs over a contiguous row of ``m`` and over ``out``, so it vectorizes
    without reassociating any sum (each out[k] accumulates in i order).
    """
    for i in range(x.shape[0]):
        xi = x[i]
        row = m[r0 + i]
        for k in range(n):
            out[k] += xi * row[c0 + k]


def chunk_bounds(batch: int, work: int) -> np.ndarray | None:
    """Row bounds of the per-thread blocks, or None for a serial call."""
    threads = numba.get_num_threads()
    if threads < 2 or work < MIN_PARALLEL_WORK:
        return None
    chunks = min(threads, batch // max(MIN_ROWS_PER_THREAD, 1))
    if chunks < 2:
        return None
    return np.linspace(0, batch, chunks + 1).round().astype(np.int64)


def set_threads(n: int) -> int:
    """Use at most n numba threads (clamped to numba's pool); returns the count set."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def full_lengths(T: int, B: int) -> np.ndarray:
    return np.full(B, T, dtype=np.int64)


def pack_transposed(w: np.ndarray) -> np.ndarray:
    """W (rows, H) -> W^T (H, rows) C-contiguous: the layout the forward inner loop reads."""
    return np.ascontiguousarray(w.T)
