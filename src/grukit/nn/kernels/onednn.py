"""oneDNN's batch-reduce GEMM microkernel (brgemm), which the compiled loops call for their per-step
recurrent products where it is the faster GEMM.

torch's CPU build exports it as the C++ function ``at::native::cpublas::brgemm``: C (M, N) float32
(+)= A (M, K) @ B (K, N), with overloads for float32 and bfloat16 operands, oneDNN's kernel for the
shape generated on a thread's first call and kept per thread. Every argument is an integer, a bool
or a pointer, so Numba calls it like the sgemm of blas.py: the symbols ``grukit_brgemm_f32`` and
``grukit_brgemm_bf16`` are bound to its addresses on import (``llvmlite.binding.add_symbol``), before
any kernel is compiled or loaded from the cache.

* bfloat16 (the bfloat16 mode, bf16.py): B in oneDNN's VNNI layout. Only where the CPU has BF16 units
  (AVX-512 BF16 or AMX): elsewhere the call throws a C++ exception, which would end the process from
  compiled code. torch's own ``could_pack(bfloat16)`` said False on a Zen 4 (it packs for AMX only),
  yet the microkernel ran there, so the CPU's features are read here, from LLVM.
* float32: B row-major as stored. Used where it beat MKL's packed sgemm: AMD CPUs with AVX-512 (MKL
  runs AVX2 code there). Measured on a Zen 4, one thread, paired medians of 15 alternating rounds:
  16 x 128 by 512 1.50x MKL, 16 x 128 by 384 1.46x, 32 x 64 by 192 1.33x, 32 x 64 by 256 1.26x, 64 x
  512 by 1536 1.27x, 64 x 512 by 2048 1.10x; on a Zen 3 (AVX2) 0.65-1.30x, so MKL stays there. A
  row's result does not depend on how many rows a call takes (checked), so the batch's split over
  threads leaves the numbers alone, as with MKL.

Nothing here imports torch: the library is found on disk.
"""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
from numba import types

from .torch_libraries import open_torch_library

_SYMBOLS = {"bf16": "_ZN2at6native7cpublas6brgemmEllllllbPKN3c108BFloat16ES5_Pfb",
            "f32": "_ZN2at6native7cpublas6brgemmEllllllbPKfS3_Pfb"}
_LIBRARY = open_torch_library("libtorch_cpu.so", tuple(_SYMBOLS.values()))


def _cpu_has(*features: str) -> bool:
    found = llvm.get_host_cpu_features()
    return any(found.get(name, False) for name in features)


HAS_BF16 = _LIBRARY is not None and _cpu_has("avx512bf16", "amx-bf16")
FASTER_F32 = _LIBRARY is not None and _cpu_has("avx512f") and llvm.get_host_cpu_name().startswith("znver")

# (M, N, K, ld_a, ld_b, ld_c, add_C, A, B, C, is_vnni): the two C++ bools passed as 32-bit 0 or 1,
# which reads the same under either convention for a bool in a register.
_SIGNATURE = types.void(*(types.int64,) * 6, types.int32, types.intp, types.intp, types.intp, types.int32)
# Bound to a stub where unusable, so that cached code links; the callers never reach it there
# (bf16.vnni_operand and products.operands refuse to make the operands).
_stub = ctypes.CFUNCTYPE(None)(lambda *args: None)
for _kind, _usable in (("bf16", HAS_BF16), ("f32", FASTER_F32)):
    _function = getattr(_LIBRARY, _SYMBOLS[_kind]) if _usable else _stub
    llvm.add_symbol(f"grukit_brgemm_{_kind}", ctypes.cast(_function, ctypes.c_void_p).value)
brgemm_bf16 = types.ExternalFunction("grukit_brgemm_bf16", _SIGNATURE)
brgemm_f32 = types.ExternalFunction("grukit_brgemm_f32", _SIGNATURE)

__all__ = ["FASTER_F32", "HAS_BF16", "brgemm_bf16", "brgemm_f32"]
