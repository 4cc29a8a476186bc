"""Large result and workspace arrays, reused once nothing refers to them any more.

A training step frees its workspaces, gradients and outputs (several MB each) and allocates the
same sizes again in the next step. glibc gives large freed blocks back to the system, so the next
step touches fresh pages: a page fault every 4 KB, about 4.5 us each on this VM. Rather than change
the allocator for the whole process, the kernels keep their own large arrays. :func:`empty`
returns a view of the smallest kept array of the dtype that is large enough and that no one else
holds (CPython's reference count says so: torch.from_numpy's tensors, numpy views and saved
workspaces all hold a reference to it), else a new one, kept while the total stays under
LIMIT_BYTES; arrays under MIN_BYTES come from numpy directly. Any large enough array serves, not
only one of the same shape, because batches bucketed by length change the number of steps from
batch to batch (on the tutorial IMDB model: 480 faults per batch on average with shapes as keys).
Measured in alternating processes (three pairs each), page faults and time per training step:
LSTM S3 1490-1850 faults and 15.0-17.0 ms without, 100-200 faults and 12.9-14.7 ms with; GRU S2
730-1270 faults and 51.6-62.9 ms without, 300-800 faults and 42.8-50.9 ms with.
Each view starts on a cache line (ALIGNMENT), as the weights the kernels copy do (:func:`aligned_empty`):
the loops read rows with 64-byte vector loads, and numpy's arrays start 16 bytes into a line, so
each load of a row read two lines (benchmarks/NOTES.md, "Alignment").
:func:`release` lets the kept arrays go.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

MIN_BYTES = 256 * 1024
LIMIT_BYTES = 256 * 1024 * 1024
ALIGNMENT = 64
_kept: dict[str, list[tuple[np.ndarray, int]]] = {}   # dtype -> (flat array, elements before its aligned start)
_kept_bytes = 0
_lock = threading.Lock()


def _padded(size: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """A flat array with room for ``size`` elements from its first ALIGNMENT-byte boundary, and how many
    elements lie before that boundary."""
    array = np.empty(size + ALIGNMENT // dtype.itemsize, dtype)
    return array, (-array.ctypes.data % ALIGNMENT) // dtype.itemsize


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """np.empty(shape, dtype), C-contiguous, its data starting on an ALIGNMENT-byte boundary."""
    size = math.prod(shape)
    array, skip = _padded(size, np.dtype(dtype))
    return array[skip:skip + size].reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` on an ALIGNMENT-byte boundary (:func:`aligned_empty`)."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _free_arrays(arrays: list[tuple[np.ndarray, int]]):
    """The (array, skip) pairs of the list whose array no one else holds: while the loop looks at one,
    its references are the pair's, the loop variable's and getrefcount's argument."""
    for array, skip in arrays:
        if sys.getrefcount(array) == 3:
            yield array, skip


def empty(shape: tuple, dtype) -> np.ndarray:
    """np.empty(shape, dtype): a C-contiguous view of the smallest free kept array of this dtype
    with room for it, else a new array (kept if the limit allows)."""
    global _kept_bytes
    dtype = np.dtype(dtype)
    size = math.prod(shape)   # np.prod of a tuple costs ~5 us: several calls per kernel call
    nbytes = size * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    with _lock:
        kept = _kept.setdefault(dtype.str, [])
        best = None
        for array, skip in _free_arrays(kept):
            if array.size - skip >= size and (best is None or array.size < best[0].size):
                best = array, skip
        if best is not None:
            return best[0][best[1]:best[1] + size].reshape(shape)
        array, skip = _padded(size, dtype)
        if _kept_bytes + nbytes > LIMIT_BYTES:
            _release_free()
        if _kept_bytes + nbytes <= LIMIT_BYTES:
            kept.append((array, skip))
            _kept_bytes += nbytes
        return array[skip:skip + size].reshape(shape)


def _release_free() -> None:
    """Forget every kept array no one holds (under the lock)."""
    global _kept_bytes
    for arrays in _kept.values():
        free = {id(array) for array, _ in _free_arrays(arrays)}
        _kept_bytes -= sum(array.nbytes - ALIGNMENT for array, _ in arrays if id(array) in free)
        arrays[:] = [pair for pair in arrays if id(pair[0]) not in free]


def release() -> None:
    """Let every kept array that no one holds go (its memory returns to the allocator)."""
    with _lock:
        _release_free()


def kept_bytes() -> int:
    """Bytes of the arrays kept for reuse, held elsewhere or not (each array's ALIGNMENT bytes of
    slack aside)."""
    return _kept_bytes
