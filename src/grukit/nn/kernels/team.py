"""The threads that run the kernels' row blocks in parallel: torch's OpenMP team when there is one.

A training step alternates torch's GEMMs with our time loops. After each of its parallel regions,
torch's OpenMP (GNU libgomp) keeps its worker thread spinning for a while (``OMP_WAIT_POLICY``
unset), and a time loop that runs on a thread of its own then shares a core with that spinner:
on two cores the second block ran at half speed (tutorial sentiment step, GRU forward: 12.5 ms
for the calling thread's block, 16.1 ms for the pool's). So when torch's libgomp is in the
process, the blocks run inside one ``GOMP_parallel`` region of torch's own team: the spinning
worker takes the second block at once and no third thread competes. Measured in one process,
rotating order, 2 cores (S2/S3 are the benchmark's shapes): S2 training GRU 67.9 -> 50.9 ms,
LSTM 89.6 -> 79.6 ms; S3 training GRU 16.0 -> 11.6 ms, LSTM 20.6 -> 15.0 ms; inference, whose
projection runs on these threads too, unchanged.

Here each block is a Python callback (ctypes) that calls a compiled ``nogil`` loop, so the GIL is
held only to start and finish it. Where a rows function has a launcher its blocks start from
compiled code instead (region.team_rows, common.run_rows); this is the fallback. Without torch's
libgomp (a torch-free runtime, an LLVM OpenMP build, a process forked after the team was used:
libgomp's team does not survive a fork) a small Python thread pool runs the blocks instead. Nothing
here imports torch: the library is found on disk, as blas.py finds torch's MKL.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .torch_libraries import open_torch_library

_BLOCK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _torch_libgomp():
    """(GOMP_parallel, omp_get_thread_num, omp_get_num_threads) of the libgomp torch loaded, or None."""
    if "torch" not in sys.modules:          # a torch-free runtime: nothing to share
        return None
    library = open_torch_library("libgomp.so.1", ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
    if library is None:
        return None
    parallel, thread_num, num_threads = library.GOMP_parallel, library.omp_get_thread_num, library.omp_get_num_threads
    parallel.argtypes = [_BLOCK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    thread_num.restype = num_threads.restype = ctypes.c_int
    return parallel, thread_num, num_threads


_UNSET = object()
_openmp = _UNSET               # looked up on first use
_forked = False
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _forked, _pool
    _forked, _pool = True, None      # neither the parent's OpenMP team nor its pool threads exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def _team():
    global _openmp
    if _forked:
        return None
    if _openmp is _UNSET:
        _openmp = _torch_libgomp()
    return _openmp


def provider() -> str:
    """Which threads run the blocks in this process: "torch's OpenMP team" or "Python thread pool"."""
    return "torch's OpenMP team" if _team() is not None else "Python thread pool"


def run_blocks(block: Callable[[int], object], count: int) -> None:
    """Call ``block(i)`` for i in range(count) in parallel, block 0 on this thread; re-raise the
    first exception a block raised, after all have finished."""
    team = _team()
    if team is None:
        _run_in_pool(block, count)
        return
    parallel, thread_num, num_threads = team
    errors: list[BaseException] = []

    def member(_data):
        try:   # a team smaller than asked for (nested region) takes the blocks in turn
            for index in range(thread_num(), count, max(1, num_threads())):
                block(index)
        except BaseException as error:     # ctypes would print and drop it
            errors.append(error)

    callback = _BLOCK(member)
    parallel(callback, None, count, 0)
    if errors:
        raise errors[0]


def _run_in_pool(block: Callable[[int], object], count: int) -> None:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < count - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=count - 1, thread_name_prefix="grukit-kernel")
        pool = _pool
    futures = [pool.submit(block, index) for index in range(1, count)]
    error = None
    try:
        block(0)
    except BaseException as raised:
        error = raised
    for future in futures:
        try:
            future.result()
        except BaseException as raised:
            error = error or raised
    if error is not None:
        raise error
