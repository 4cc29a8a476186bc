"""Which GEMM runs the kernels' per-step recurrent products (h @ W^T forward, dgates @ W backward),
and the operand each takes: the ``products`` argument of the cells' forward, backward and step.

* "blas": MKL's packed sgemm (float32) or BLAS's dgemm / OpenBLAS (blas.py), and in float32 on CPUs
  with AVX2 but no AVX-512 grukit's own register tiles instead of MKL (tiles.py, ``tiles.FASTER_F32``);
  operand: an empty 1-D array, so the block packs the weight itself (common.recurrent_operand).
* "onednn": oneDNN's float32 brgemm microkernel (onednn.py); operand: W itself as a batch of one,
  (1, K, N). The float32 default where it beat MKL (``onednn.FASTER_F32``).
* "brgemm": the bfloat16 mode on BF16 units: the microkernel on W rounded to bfloat16 in VNNI
  layout, ((K+1) // 2, 2N) uint16 (bf16.vnni_product).
* "rounded": the bfloat16 mode elsewhere, and in float64: a GEMM of the rounded values, rounded;
  operand: W's rounded values, (K, N) in W's dtype (bf16.rounded_product; in float32 on the tiles'
  CPUs the block packs them into panels once per call, bf16.rounded_tiles_product).

The compiled loops tell the kinds apart by the operand's type when they compile (common.gemm_packed).
"""

from __future__ import annotations

import numpy as np

from . import bf16, onednn

KINDS = ("blas", "onednn", "brgemm", "rounded")


def resolve(kind: str | None, dtype) -> str:
    """``kind``, or for None the default for ``dtype``: "onednn" for float32 where it is the faster
    GEMM, else "blas". "onednn" asked for float64 (it has no float64 form) gives "blas"."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"products: expected None or one of {KINDS}, got {kind!r}")
    if kind is None:
        kind = "onednn" if onednn.FASTER_F32 else "blas"
    if kind == "onednn" and np.dtype(dtype) != np.float32:
        return "blas"
    return kind


def operands(matrices, kind: str | None) -> tuple:
    """Each matrix's operand for the products of ``kind`` (resolved for their dtype by :func:`resolve`)."""
    kind = resolve(kind, matrices[0].dtype)
    if kind == "blas":
        return tuple(np.empty(0, m.dtype) for m in matrices)
    if kind == "onednn":
        if not onednn.FASTER_F32:
            raise RuntimeError("products 'onednn': torch's at::native::cpublas::brgemm is not available, or MKL "
                               "is the faster GEMM on this CPU (onednn.py); use 'blas'")
        return tuple(np.ascontiguousarray(m).reshape((1,) + m.shape) for m in matrices)
    if kind == "brgemm":
        return tuple(bf16.vnni_operand(m) if m.dtype == np.float32 else bf16.rounded_operand(m) for m in matrices)
    return tuple(bf16.rounded_operand(m) for m in matrices)


def operand_pair(first, second, kind: str | None) -> tuple:
    """The operands of a step's two weights; made once when ``second is first`` (the cells that pass
    one matrix twice, its second use idle: the GRU with reset after, the MGU without U_f)."""
    made = operands((first,) if second is first else (first, second), kind)
    return made[0], made[-1]


__all__ = ["KINDS", "operand_pair", "operands", "resolve"]
