"""Parallel regions started from compiled code: every thread of torch's OpenMP team runs a
compiled function, with no Python on any of them.

team.run_blocks starts each block as a Python callback: the team's second thread takes the GIL to
start its block, after the first thread has let it go, and again to finish it; in S3's LSTM training
step it started its block 40-76 us after the first thread. Here a compiled caller calls
``GOMP_parallel`` itself (a 5 us region), with a thunk made by :func:`run_in_team`'s code generator:
it loads the arguments the caller stored, sets flush-to-zero (common.py) and calls the function.

Two uses:

* :func:`team_rows`, a batch's row blocks (common.run_rows: calls of two or more blocks), through a
  launcher per rows function (each family's forward and backward, the backward's GEMMs, the
  inference projection), which calls the rows function through its address (:func:`call_unlinked`):
  the same compiled code as a serial call, and a launcher compiles in well under a second. One
  process, the two forms alternating, Zen 5: S3 training GRU 1.11x, LSTM 1.09-1.13x, SimpleRNN
  1.20x, MGU 1.14x; S2 training 1.05x, inference 1.02x; S4 level.
* A batch of one's steps split over the threads by hidden unit (unit_shares.py), whose threads meet
  at :func:`barrier`, a counter each thread adds to and then spins on (40 ns a barrier, a 60 ns round
  trip, on the Zen 5's two cores). A spinning wait is what OpenMP's own barriers do first; here it
  never sleeps, so such a region is for work that keeps every thread busy between barriers, and the
  callers run one such region at a time (api._SPLIT_RUNNING).

Nothing here imports torch: libgomp is found on disk (torch_libraries.py); where it is missing,
the symbols are bound to a stub so that cached code links, and :func:`usable` says False.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import platform

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, compiler
from numba.extending import intrinsic, overload

from . import team
from .blas import set_local_threads
from .torch_libraries import open_torch_library

_NAMES = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
_LIBRARY = open_torch_library("libgomp.so.1", _NAMES)
_X86 = platform.machine().lower() in ("x86_64", "amd64")
_stub = ctypes.CFUNCTYPE(None)(lambda *args: None)
for _name in _NAMES:
    _function = getattr(_LIBRARY, _name) if _LIBRARY is not None else _stub
    llvm.add_symbol(f"grukit_{_name}", ctypes.cast(_function, ctypes.c_void_p).value)
_thread_num = types.ExternalFunction("grukit_omp_get_thread_num", types.int32())
_num_threads = types.ExternalFunction("grukit_omp_get_num_threads", types.int32())


def usable() -> bool:
    """Whether :func:`run_in_team` may be called in this process: torch's libgomp is loaded and
    its team is this process's (not a forked child's), on x86 (the spin's pause instruction)."""
    return _LIBRARY is not None and _X86 and team.provider() == "torch's OpenMP team"


@intrinsic
def atomic_add(typingctx, counter, index, value):
    """counter[index] += value as one atomic operation (int64 array); returns the new value."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]])
        return builder.add(builder.atomic_rmw("add", pointer, args[2], ordering="seq_cst"), args[2])
    return types.int64(counter, index, value), codegen


@intrinsic
def atomic_read(typingctx, counter, index):
    """counter[index], read with acquire ordering: a load the compiler may not hoist out of a loop,
    after which the writes made before the matching atomic_add are visible."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]])
        return builder.load_atomic(pointer, ordering="acquire", align=8)
    return types.int64(counter, index), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, signature, args):
        pause = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(pause, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(cache=True, nogil=True)
def barrier(counter, arrivals):
    """Add this thread's arrival to counter[0], then wait until it reaches ``arrivals`` (the
    threads times the barriers passed so far, this one included): the counter is never reset."""
    atomic_add(counter, 0, 1)
    while atomic_read(counter, 0) < arrivals:
        _pause()


@intrinsic
def run_in_team(typingctx, function, threads, args):
    """Call ``function(thread, team_size, *args)`` on each of ``threads`` threads of a GOMP_parallel
    region (thread = omp_get_thread_num(), team_size = omp_get_num_threads(), which may be smaller
    than asked for, in a nested region), each with flush-to-zero set; returns 0, or 1 when a thread's
    call raised. ``function`` is a jitted function (a global of the caller), ``args`` a tuple."""
    from .common import _enter_flush_to_zero, _restore_fp_mode

    def block(function, args):
        previous = _enter_flush_to_zero()
        function(_thread_num(), _num_threads(), *args)
        _restore_fp_mode(previous)

    block_signature = types.void(function, args)

    def codegen(context, builder, signature, llargs):
        _, count, values = llargs
        module = builder.module
        bytes_pointer = ir.IntType(8).as_pointer()
        payload_type = ir.LiteralStructType([values.type, ir.IntType(32)])   # the args, the error flag
        thunk = ir.Function(module, ir.FunctionType(ir.VoidType(), [bytes_pointer]),
                            name=module.get_unique_name("grukit_team_block"))
        thunk.linkage = "internal"
        body = ir.IRBuilder(thunk.append_basic_block())
        payload = body.bitcast(thunk.args[0], payload_type.as_pointer())
        zero = ir.Constant(ir.IntType(32), 0)
        compiled = context.compile_subroutine(body, block, block_signature)
        status, _ = context.call_internal_no_propagate(
            body, compiled.fndesc, block_signature,
            [context.get_dummy_value(), body.load(body.gep(payload, [zero, zero]))])
        with body.if_then(status.is_error):
            body.store(ir.Constant(ir.IntType(32), 1), body.gep(payload, [zero, ir.Constant(ir.IntType(32), 1)]))
        body.ret_void()

        slot = cgutils.alloca_once(builder, payload_type)
        builder.store(values, builder.gep(slot, [zero, zero]))
        error = builder.gep(slot, [zero, ir.Constant(ir.IntType(32), 1)])
        builder.store(zero, error)
        parallel = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [thunk.type, bytes_pointer, ir.IntType(32), ir.IntType(32)]),
            "grukit_GOMP_parallel")
        builder.call(parallel, [thunk, builder.bitcast(slot, bytes_pointer), builder.trunc(count, ir.IntType(32)), zero])
        return builder.sext(builder.load(error), ir.IntType(64))

    return types.int64(function, threads, args), codegen


def _keep_reload_init_on_cached_libraries() -> None:
    """Numba (0.68) runs a cached function's reload_init when it loads it, but the library it loads
    comes back without them. A function compiled later that links that library (a kernel calling
    tiles.pack, itself loaded from the cache) then inherits none, and a process that loads that
    kernel alone from the cache aborts on the unlinked function's missing symbol ("LLVM ERROR:
    Symbol not found"). Kept on the loaded library, they pass on as a fresh compile's do
    (tests/nn/kernels/test_unlinked_cache.py)."""
    rebuild = compiler.CompileResult._rebuild.__func__
    if getattr(rebuild, "keeps_reload_init", False):
        return

    def rebuild_keeping_reload_init(cls, *args, **kwargs):
        result = rebuild(cls, *args, **kwargs)
        if result.reload_init:
            result.library._reload_init.update(result.reload_init)
        return result

    rebuild_keeping_reload_init.keeps_reload_init = True
    compiler.CompileResult._rebuild = classmethod(rebuild_keeping_reload_init)


_keep_reload_init_on_cached_libraries()


def _symbol(dispatcher, argtypes) -> str:
    """The stable name under which a compiled rows function is registered for call_unlinked: its
    module, name and argument types (Numba's own mangled names carry a per-process counter)."""
    py_func = dispatcher.py_func
    return f"grukit_unlinked.{py_func.__module__}.{py_func.__qualname__}{tuple(argtypes)}"


def _register_unlinked(module: str, qualname: str, argtypes: tuple) -> None:
    """Compile (or load from the cache) ``module.qualname`` for ``argtypes`` (one of its signatures)
    and register its address under :func:`_symbol`'s name. Run again before a caller is loaded from
    the cache (Numba's reload_init), so that the caller's reference to it resolves."""
    dispatcher = importlib.import_module(module)
    for part in qualname.split("."):
        dispatcher = getattr(dispatcher, part)
    if argtypes not in dispatcher.overloads:      # (a function jitted with its signatures has them all)
        dispatcher.compile(argtypes)
    result = dispatcher.overloads[argtypes]
    llvm.add_symbol(_symbol(dispatcher, argtypes),
                    result.library.get_pointer_to_function(result.fndesc.llvm_func_name))


@intrinsic
def call_unlinked(typingctx, function, first, last, args):
    """``function(first, last, *args)`` for a jitted ``function`` (a global) that returns nothing,
    called through its address: its compiled library is not linked into the caller. Returns True
    when the call raised (the exception itself is dropped; the callers raise their own).

    Numba optimizes a library again with every library it links in, and once more in each library
    that links that one: a launcher that linked or inlined its rows function compiled that
    function's code two or three times over (S3's GRU, a first training step from an empty cache:
    20-30 s, against 10 s for the rows functions alone). Called this way, serial calls and blocks
    share one compiled rows function, and so its bits. The address is registered as a symbol now
    and, through Numba's reload_init, before the caller is loaded from the cache."""
    dispatcher = function.dispatcher
    py_func = dispatcher.py_func
    given = (first, last, *args.types)
    argtypes = typingctx.resolve_function_type(function, given, {}).args   # the overload a call would take
    _register_unlinked(py_func.__module__, py_func.__qualname__, argtypes)
    restype = dispatcher.overloads[argtypes].signature.return_type
    if restype != types.none:
        raise TypeError(f"call_unlinked: {py_func.__qualname__} returns {restype}; it takes functions that "
                        "return nothing")
    reload = functools.partial(_register_unlinked, py_func.__module__, py_func.__qualname__, argtypes)

    def codegen(context, builder, signature, llargs):
        context.active_code_library._reload_init.add(reload)
        callee = cgutils.get_or_insert_function(
            builder.module, context.call_conv.get_function_type(restype, argtypes),
            _symbol(dispatcher, argtypes))
        values = [llargs[1], llargs[2], *cgutils.unpack_tuple(builder, llargs[3], len(args))]
        values = [context.cast(builder, v, t, to) for v, t, to in zip(values, given, argtypes)]
        status, _ = context.call_conv.call_function(builder, callee, restype, argtypes, values)
        return status.is_error

    return types.boolean(function, first, last, args), codegen


def team_rows(rows_fn, bounds, blas_limit, args):
    """Call ``rows_fn(bounds[i], bounds[i + 1], *args)`` for each block i, in parallel on the threads of
    one GOMP_parallel region (:func:`run_in_team`: flush-to-zero set in each); with ``blas_limit``, each
    thread's BLAS (MKL) held at one thread meanwhile, as common.flushing_subnormals holds it. Returns
    0, or 1 when a block raised. For compiled launchers, one per rows function, each a global of its
    module: ``return team_rows(_fwd_rows, bounds, blas_limit, args)``. A launcher that took the rows
    function as an argument would not be cached (Numba caches no function of a function argument).
    The rows function is called through its address (:func:`call_unlinked`), so a launcher compiles
    in a fraction of a second."""


@overload(team_rows, jit_options={"nogil": True})
def _team_rows(rows_fn, bounds, blas_limit, args):
    function = rows_fn.dispatcher

    @njit(nogil=True)
    def member(thread, team_size, bounds, blas_limit, args):
        previous = set_local_threads(np.int32(1)) if blas_limit else np.int32(0)
        raised = False
        for i in range(thread, len(bounds) - 1, team_size):
            raised |= call_unlinked(function, bounds[i], bounds[i + 1], args)
        if blas_limit:
            set_local_threads(previous)     # also after a block raised
        if raised:
            raise RuntimeError("a block raised")

    def launch(rows_fn, bounds, blas_limit, args):
        return run_in_team(member, len(bounds) - 1, (bounds, blas_limit, args))
    return launch


__all__ = ["atomic_add", "atomic_read", "barrier", "call_unlinked", "run_in_team", "team_rows", "usable"]
