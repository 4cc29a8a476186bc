"""The backward's large float32 GEMMs through oneDNN's microkernel on the kernels' threads, where it
is the faster GEMM: the weight gradients a^T @ b (G^T X summed over all time steps and sequences:
grad weight_hh from the kernels' terms, grad weight_ih of the projection) and the input's gradient
a @ b (grad @ weight_ih).

On AMD CPUs with AVX-512 torch's matmul runs MKL's AVX2 code (onednn.py), and these GEMMs were the
slowest part of a large training step: on a Zen 5, S4's (1536 x 12800) by (12800 x 512) ran at 190
GFLOP/s on two threads where oneDNN's own matmul reaches 400.

The microkernel takes row-major operands only. For a^T @ b the K = R rows of the sum run in chunks of
``CHUNK_ROWS``: the narrower operand's chunk is transposed into a buffer of the thread, the other is
read as stored. Each thread owns whole tiles of the result (``TILE_ROWS`` x ``TILE_COLUMNS``), or, for
a result of one row tile, a fixed part of the summed rows (``SUM_PARTS``, set by the row count alone;
the partial results added in order), so every element is summed in the same chunks, in the same
order, whatever the thread count: the bits do not depend on it. The sums are not MKL's: the results
agree with torch's matmul to float32 round-off (tested against float64). Two products that share the
wide operand (an LSTM's grad weight_hh and grad weight_ih share its gate gradients) can run as one,
reading each chunk of it once (:func:`shared_transposed_products`), with the same bits.

The transposed operand may also be given as steps, a (T, B, N) array of any strides for its first two
axes whose row t * B + b is [t, b]: a batch-first layer's input as the transposed view of its (B, T, N)
storage, read in place (a time-major copy of it had cost 0.3 ms of S2's 21 ms training step and 3.4 MB
of its peak memory, Zen 4). The chunks and bits are those of its rows copied.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

from . import onednn, tiles
from .common import JIT, part_bounds, run_rows
from .region import team_rows

# Tiles of the result and chunks of the summed rows. One thread, Zen 5, (12800 x 512)^T by
# (12800 x 1536): chunks of 512 rows with 64 x 128 tiles 121 ms, 256 rows 130, 1024 rows 150;
# untiled columns 150 (MKL: 219 ms).
CHUNK_ROWS = 512
TILE_ROWS = 64
TILE_COLUMNS = 128
NARROW_TILE_COLUMNS = 64
SUM_PARTS = 2
# Where it is used: from MIN_WORK multiply-adds, or with an operand narrower than NARROW, whose
# product MKL runs slowly (projection_grads.py). Two threads, Zen 5, paired medians, against torch's
# matmul: S4's (12800 x 1536)^T by (12800 x 512) 1.78x, S2's 6400 rows by 384 x 128 1.39-1.60x and
# 512 x 128 1.47-1.70x, S3's 3200 rows by 192 x 64 1.31-1.33x and 256 x 64 1.68x; 1000 rows by 192 x 64
# (12 M multiply-adds) 1.16x, but 3200 rows by 64 x 64 (13 M) 0.90x and 2000 by 96 x 32 (6 M) 0.72x.
# A narrow input's grad weight_ih against torch's faster order for it (projection_grads.py): 3200
# rows by 256 x 10 (8 M) 2.0x, 192 x 10 1.24x, 128 x 10 1.00x, 64 x 10 (2 M) 0.66x.
MIN_WORK = 1 << 24
NARROW = 16
MIN_NARROW_WORK = 1 << 22
# a @ b (the input's gradient) needs no transposed copy: 1.47-2.43x torch's matmul from S3's 3200 x 192
# by 192 x 64 to S4's 12800 x 1536 by 1536 x 512, 1.5x at S4 (two threads, Zen 5).
MIN_PRODUCT_WORK = 1 << 22

# grukit's tiles (tiles.py) take the microkernel's place where they are the faster GEMM (AVX2 without
# AVX-512), for a @ b only, b packed into panels by each thread. Zen 3,
# two threads, paired medians of 15 against torch's matmul: a @ b at S2's 6400 x 384 by 128 1.22x,
# S3's 3200 x 192 by 64 1.09x, S4's 12800 x 1536 by 512 1.10x; but a^T @ b 0.77-0.91x from S3 to S4
# (MKL's own order is the faster there), level with torch's faster order for narrow operands.
ON_TILES = tiles.FASTER_F32 and not onednn.FASTER_F32
USABLE = onednn.FASTER_F32 or ON_TILES
TRANSPOSED_USABLE = onednn.FASTER_F32


def applies_transposed(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether :func:`transposed_product` takes these operands: float32 2-D (R, M) and (R, N) arrays of one
    dtype whose rows are contiguous, on a CPU where oneDNN's microkernel is the faster GEMM; or either one
    steps (T, B, ...) with T * B = R (both steps: of one shape), which are read in place where they are the
    narrower operand (the one transposed), else copied to rows."""
    if a.ndim == 3 and b.ndim == 3 and a.shape[:2] != b.shape[:2]:
        return False
    return (TRANSPOSED_USABLE and _float32_rows(a, b) and _rows(a) == _rows(b)
            and _worth_it(_rows(a) * a.shape[-1] * b.shape[-1], min(a.shape[-1], b.shape[-1])))


def applies(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether :func:`product` takes these operands: float32 2-D (R, K) and (K, N) arrays whose rows
    are contiguous, at least MIN_PRODUCT_WORK multiply-adds, on a CPU where oneDNN's microkernel or
    grukit's tiles are the faster GEMM."""
    return (_float32_rows(a, b) and a.ndim == b.ndim == 2 and a.shape[1] == b.shape[0]
            and a.shape[0] * a.shape[1] * b.shape[1] >= MIN_PRODUCT_WORK)


def _float32_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """Both operands float32 2-D arrays or steps (3-D) with contiguous rows, on a CPU where the
    microkernel is used."""
    return (USABLE and a.ndim in (2, 3) and b.ndim in (2, 3) and a.dtype == np.float32 and b.dtype == np.float32
            and a.strides[-1] == 4 and b.strides[-1] == 4)


def _rows(a: np.ndarray) -> int:
    """The rows of a 2-D array, or of steps (T * B)."""
    return a.shape[0] * a.shape[1] if a.ndim == 3 else a.shape[0]


def _as_steps(a: np.ndarray) -> np.ndarray:
    """The transposed operand as steps (a view): a 2-D (R, N) array is R steps of one row."""
    return a if a.ndim == 3 else a[:, None, :]


def _as_rows(b: np.ndarray) -> np.ndarray:
    """The operand read as stored as (R, N) rows: steps are reshaped, copied only where they are not
    time-major (the microkernel reads rows at one stride)."""
    return b if b.ndim == 2 else b.reshape(-1, b.shape[2])


def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (R, N) for a (R, K) and b (K, N) that :func:`applies` takes: each thread a block of
    TILE_ROWS-row tiles of the result, every tile one microkernel call per TILE_COLUMNS columns
    over the whole K."""
    _ready()
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    run_rows(_product_tiles, -(-a.shape[0] // TILE_ROWS), a.shape[0] * a.shape[1] * b.shape[1], (a, b, out),
             MIN_PRODUCT_WORK, _product_tiles_in_team())
    return out


def _worth_it(work: int, narrower: int) -> bool:
    return work >= MIN_WORK or (narrower < NARROW and work >= MIN_NARROW_WORK)


def transposed_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^T @ b (M, N) for a (R, M) and b (R, N) (either may be steps) that :func:`applies_transposed` takes.
    The narrower operand is the one transposed: for b narrower, b^T a is formed and its transposed view
    returned."""
    if a.shape[-1] > b.shape[-1]:
        return transposed_product(b, a).T
    return _stacked_product(a, a[..., :0], b)


def shared_transposed_products(g: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g^T @ first, g^T @ second) for operands that :func:`applies_transposed` takes pairwise, first and
    second narrower than g: an LSTM's grad weight_hh and grad weight_ih, which share the gate gradients g.
    Where both products take the same path (_path), one pass forms [first | second]^T g and reads each
    chunk of g once for both (S3's LSTM: 3200 rows, g 256 wide, 64 + 10 columns); the bits are those of
    the two transposed_product calls, which run otherwise. Results may be transposed views."""
    path = _path(first.shape[-1], _rows(first))
    if path != _path(second.shape[-1], _rows(second)) or (path == "row tiles" and first.shape[-1] % TILE_ROWS):
        return transposed_product(g, first), transposed_product(g, second)
    out = _stacked_product(first, second, g)
    return out[:first.shape[-1]].T, out[first.shape[-1]:].T


def applies_with_shared_narrow(narrow: np.ndarray, wide: np.ndarray, wide2: np.ndarray) -> bool:
    """Whether :func:`products_with_shared_narrow` takes these operands: float32 2-D arrays with
    contiguous rows, as many rows each, narrow no wider than either wide one, and enough work for the
    two products together (alone, S3's GRU's dn * r term, 13 M multiply-adds, runs on torch's matmul)."""
    if not narrow.ndim == wide.ndim == wide2.ndim == 2:
        return False
    R, M = narrow.shape
    N = wide.shape[1] + wide2.shape[1]
    return (TRANSPOSED_USABLE and _float32_rows(wide, narrow) and _float32_rows(wide2, narrow) and wide.shape[0] == R
            and wide2.shape[0] == R and M <= min(wide.shape[1], wide2.shape[1]) and _worth_it(R * M * N, M))


def products_with_shared_narrow(narrow: np.ndarray, wide: np.ndarray, wide2: np.ndarray) -> np.ndarray:
    """narrow^T @ [wide | wide2] (M, N1 + N2) in one pass that transposes each chunk of narrow once, for
    operands that :func:`applies_with_shared_narrow` takes: a GRU's two
    grad weight_hh terms, dG_rz and dn * r, each against h. Its columns are the two products'
    ``transposed_product(wide, narrow).T`` would give, from the same chunks; tested against them.
    S3's GRU (3200 rows, h 64 wide, 128 + 64 columns), alternating: 456-539 against 325-444 us."""
    return _stacked_product(narrow, narrow[..., :0], wide, wide2)


def _path(M: int, R: int) -> str:
    """How _stacked_product splits the work of an M-column operand's product over R summed rows: whole
    row tiles per thread, whole column tiles (few rows), or fixed parts of the summed rows."""
    if M > TILE_ROWS:
        return "row tiles"
    return "column tiles" if R <= CHUNK_ROWS else "sum parts"


def _stacked_product(a: np.ndarray, a2: np.ndarray, b: np.ndarray, b2: np.ndarray | None = None) -> np.ndarray:
    """[a | a2]^T @ [b | b2], the work split as _path says for a. With a2 and b2 empty, a^T @ b. a and a2
    may be steps, read in place; b and b2 are read as rows (:func:`_as_rows`)."""
    if not TRANSPOSED_USABLE:   # the microkernel's symbol is a stub there
        raise RuntimeError("backward_gemms: a^T @ b runs on oneDNN's microkernel only; check applies_transposed first")
    _ready()
    a, a2, b = _as_steps(a), _as_steps(a2), _as_rows(b)
    b2 = b[:, :0] if b2 is None else _as_rows(b2)
    M, N = a.shape[2] + a2.shape[2], b.shape[1] + b2.shape[1]
    out = np.empty((M, N), np.float32)
    work = b.shape[0] * M * N
    path = _path(a.shape[2], b.shape[0])
    if path == "row tiles":      # each thread a block of whole row tiles
        run_rows(_row_tiles, -(-M // TILE_ROWS), work, (a, a2, b, b2, out), MIN_NARROW_WORK, _row_tiles_in_team())
        return out
    if path == "column tiles":
        run_rows(_column_tiles, -(-N // NARROW_TILE_COLUMNS), work, (a, a2, b, b2, out), MIN_NARROW_WORK,
                 _column_tiles_in_team())
        return out
    # One row tile: the summed rows split into SUM_PARTS fixed parts (by R alone, not by the thread
    # count), one partial result each, added in order.
    parts = SUM_PARTS
    partial = np.empty((parts, M, N), np.float32)
    run_rows(_sum_parts, parts, work, (a, a2, b, b2, partial), MIN_NARROW_WORK, _sum_parts_in_team())
    out = partial[0]
    for p in range(1, parts):
        out += partial[p]
    return out


# One signature each (arrays of any strides, "A"): the operands come C-contiguous or as column views
# of the kernels' gradients, in either order, the transposed ones also as a batch-first input's
# transposed view, and each combination would otherwise compile again.
# They compile (or load from the cache) on the first product, callees first (_ready), not on import:
# from an empty cache that took 1.3 s, which an inference-only process paid in its first call.
_A = types.float32[:, :]
_S = types.float32[:, :, :]   # steps (T, B, N): the transposed operands
_C = types.float32[:, ::1]
_TILES = types.void(types.int64, types.int64, _A, _A, _C)
_STACKED_TILES = types.void(types.int64, types.int64, _S, _S, _A, _A, _C)


@njit(**JIT)
def _transpose_chunk(a, k0, k, m0, m1, buf, row0):
    """buf[row0 + i, r] = row k0 + r of the steps a at column m0 + i (row t * B + b is a[t, b]): whole
    16 x 16 blocks in loops of constant length, which LLVM unrolls (0.39-0.52 ns an element against
    0.95-1.09 for the same blocks with computed bounds, one Zen 5 core), then the edges."""
    M = m1 - m0
    kf = k - k % 16
    mf = M - M % 16
    B = a.shape[1]
    for r0 in range(0, kf, 16):
        for i0 in range(0, mf, 16):
            for r in range(16):
                row = k0 + r0 + r
                src = a[row // B, row % B]
                for i in range(16):
                    buf[row0 + i0 + i, r0 + r] = src[m0 + i0 + i]
    for r in range(k):
        src = a[(k0 + r) // B, (k0 + r) % B]
        for i in range(mf, M):
            buf[row0 + i, r] = src[m0 + i]
    for r in range(kf, k):
        src = a[(k0 + r) // B, (k0 + r) % B]
        for i in range(mf):
            buf[row0 + i, r] = src[m0 + i]


@njit(**JIT)
def _block(m0, m1, n0, n1, tile_columns, a, a2, b, b2, out, r0, r1):
    """out[m0:m1, n0:n1] = s[r0:r1, m0:m1]^T @ w[r0:r1, n0:n1] for s = [a | a2] (rows of steps) and
    w = [b | b2] (a2 and b2 may have no columns), in tiles of out that start at multiples of TILE_ROWS and,
    within b and within b2, of ``tile_columns``, over chunks of CHUNK_ROWS rows from r0."""
    M1 = a.shape[2]
    N1 = b.shape[1]
    if m1 <= m0 or n1 <= n0:
        return
    buf = np.empty((m1 - m0, CHUNK_ROWS), np.float32)   # a's chunk, transposed
    lda = np.int64(CHUNK_ROWS)
    ldc = np.int64(out.strides[0] // 4)
    for k0 in range(r0, r1, CHUNK_ROWS):
        k = min(CHUNK_ROWS, r1 - k0)
        if m0 < M1:
            _transpose_chunk(a, k0, k, m0, min(m1, M1), buf, np.int64(0))
        if m1 > M1:
            s0 = max(m0, M1)
            _transpose_chunk(a2, k0, k, s0 - M1, m1 - M1, buf, s0 - m0)
        accumulate = np.int32(1 if k0 > r0 else 0)
        for part in range(2):      # b's columns, then b2's
            source = b if part == 0 else b2
            lo, hi, offset = (n0, min(n1, N1), 0) if part == 0 else (max(n0, N1), n1, N1)
            ldb = np.int64(source.strides[0] // 4)
            for c0 in range(lo, hi, tile_columns):
                n = min(tile_columns, hi - c0)
                for i0 in range(m0, m1, TILE_ROWS):
                    rows = min(TILE_ROWS, m1 - i0)
                    onednn.brgemm_f32(rows, n, np.int64(k), lda, ldb, ldc, accumulate, buf[i0 - m0:].ctypes.data,
                                      source[k0:, c0 - offset:].ctypes.data, out[i0:, c0:].ctypes.data, np.int32(0))


@njit(**JIT)
def _row_tiles(t0, t1, a, a2, b, b2, out):
    _block(t0 * TILE_ROWS, min(t1 * TILE_ROWS, out.shape[0]), np.int64(0), out.shape[1], np.int64(TILE_COLUMNS),
           a, a2, b, b2, out, np.int64(0), b.shape[0])


@njit(**JIT)
def _column_tiles(t0, t1, a, a2, b, b2, out):
    _block(np.int64(0), out.shape[0], t0 * NARROW_TILE_COLUMNS, min(t1 * NARROW_TILE_COLUMNS, out.shape[1]),
           np.int64(NARROW_TILE_COLUMNS), a, a2, b, b2, out, np.int64(0), b.shape[0])


@njit(**JIT)
def _product_tiles(t0, t1, a, b, out):
    """out[r0:r1] = a[r0:r1] @ b for the row tiles t0 <= t < t1."""
    R = a.shape[0]
    K = a.shape[1]
    N = b.shape[1]
    if ON_TILES:
        r0, r1 = t0 * TILE_ROWS, min(t1 * TILE_ROWS, R)
        tiles.product(a[r0:r1], b, tiles.pack(b), out[r0:r1], np.bool_(False))
        return
    lda = np.int64(a.strides[0] // 4)
    ldb = np.int64(b.strides[0] // 4)
    ldc = np.int64(out.strides[0] // 4)
    for i0 in range(t0 * TILE_ROWS, min(t1 * TILE_ROWS, R), TILE_ROWS):
        rows = min(TILE_ROWS, R - i0)
        for c0 in range(0, N, TILE_COLUMNS):
            n = min(TILE_COLUMNS, N - c0)
            onednn.brgemm_f32(rows, n, K, lda, ldb, ldc, np.int32(0), a[i0:].ctypes.data, b[:, c0:].ctypes.data,
                              out[i0:, c0:].ctypes.data, np.int32(0))


@njit(**JIT)
def _sum_parts(p0, p1, a, a2, b, b2, partial):
    """partial[p] = (rows r0:r1 of a)^T @ b[r0:r1] for the parts p0 <= p < p1 of the summed rows: even parts,
    their bounds multiples of 16 (the last one takes the rest). Parts of whole chunks had been uneven,
    S3's 3200 rows 2048 and 1152: the two threads' parts now take 1.08-1.13x less time for S3's and S2's
    narrow gradients (one process, alternating, Zen 5)."""
    R = b.shape[0]
    parts = partial.shape[0]
    for p in range(p0, p1):
        r0, r1 = part_bounds(R, p, parts)
        _block(np.int64(0), partial.shape[1], np.int64(0), partial.shape[2], np.int64(TILE_COLUMNS), a, a2, b, b2,
               partial[p], r0, r1)


_PARTS = types.float32[:, :, ::1]
# callees first: each caller is typed against its callees' one signature
_SIGNATURES = ((_transpose_chunk, types.void(_S, *(types.int64,) * 4, _C, types.int64)),
               (_block, types.void(*(types.int64,) * 5, _S, _S, _A, _A, _C, types.int64, types.int64)),
               (_row_tiles, _STACKED_TILES), (_column_tiles, _STACKED_TILES), (_product_tiles, _TILES),
               (_sum_parts, types.void(types.int64, types.int64, _S, _S, _A, _A, _PARTS)))
_compiled = []


def _ready() -> None:
    """Compile (or load from the cache) each function for its one signature, then no other: a call
    with C-contiguous arrays takes that signature, as with signatures given to njit."""
    if _compiled:
        return
    for function, signature in _SIGNATURES:
        function.compile(signature)
        function.disable_compile()
    _compiled.append(True)


# The blocks started from compiled code (common.run_rows, region.team_rows), typed as their rows
# functions are (arrays of any strides: compiled once), and compiled (or loaded from the cache) on first
# use, not on import: the four take 1.8 s to compile from an empty cache (Zen 5), which every
# `import grukit` would pay.
_BOUNDS = types.int64[::1]
_TILE_ARGS = types.Tuple((_S, _S, _A, _A, _C))


def _in_team(launch, args):
    """A getter of njit(launch)'s dispatcher for these args, made on its first call."""
    made = []

    def launcher():
        if not made:
            made.append(njit(types.int64(_BOUNDS, types.boolean, args), **JIT)(launch))
        return made[0]
    return launcher


def _row_tiles_launch(bounds, blas_limit, args):
    return team_rows(_row_tiles, bounds, blas_limit, args)


def _column_tiles_launch(bounds, blas_limit, args):
    return team_rows(_column_tiles, bounds, blas_limit, args)


def _sum_parts_launch(bounds, blas_limit, args):
    return team_rows(_sum_parts, bounds, blas_limit, args)


def _product_tiles_launch(bounds, blas_limit, args):
    return team_rows(_product_tiles, bounds, blas_limit, args)


_row_tiles_in_team = _in_team(_row_tiles_launch, _TILE_ARGS)
_column_tiles_in_team = _in_team(_column_tiles_launch, _TILE_ARGS)
_sum_parts_in_team = _in_team(_sum_parts_launch, types.Tuple((_S, _S, _A, _A, _PARTS)))
_product_tiles_in_team = _in_team(_product_tiles_launch, types.Tuple((_A, _A, _C)))


def compile_launchers() -> None:
    """Compile (or load from the cache) the four launchers now (precompile): they are made on first use,
    and precompile's small calls do not reach these GEMMs."""
    _ready()
    for launcher in (_row_tiles_in_team, _column_tiles_in_team, _sum_parts_in_team, _product_tiles_in_team):
        launcher()


__all__ = ["applies", "applies_transposed", "applies_with_shared_narrow", "compile_launchers", "product",
           "products_with_shared_narrow", "shared_transposed_products", "transposed_product", "TRANSPOSED_USABLE",
           "USABLE"]
