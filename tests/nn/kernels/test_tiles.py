"""grukit's own float32 GEMM (kernels/tiles.py): register tiles over a weight packed into panels.

Oracle: the float64 product of the same float32 operands, within the standard bound of a float32
sum of K products (|error| <= gamma_K * (|x| @ |m|), gamma_K = K u / (1 - K u), u = 2^-24) per
element. Shapes cover every tile height (1-4 rows and more), full panels, the 8-column panel, the
columns past it, and K beyond one chunk (tiles.K_CHUNK). A row's bits must not depend on the
other rows of the call (the batch's split over threads relies on it).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from grukit.nn.kernels import bf16, buffers, common, tiles

U = 2.0 ** -24
SHAPES = [(0, 5, 16), (1, 128, 384), (2, 64, 192), (3, 5, 24), (4, 16, 8), (5, 300, 40), (7, 1, 17), (9, 64, 23),
          (16, 128, 512), (13, tiles.K_CHUNK * 2 + 8, 9), (33, 70, 131), (6, 0, 16), (2, 3, 7)]


def _operands(R, K, N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((R, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32),
            rng.standard_normal(N).astype(np.float32))


def _assert_within_the_float32_bound(got, x, m, start):
    K = x.shape[1]
    want = start + x.astype(np.float64) @ m.astype(np.float64)
    gamma = (K + 1) * U / (1 - (K + 1) * U)   # K products and the start value
    bound = gamma * (np.abs(start) + np.abs(x).astype(np.float64) @ np.abs(m).astype(np.float64)) + 1e-30
    excess = np.abs(got - want) - bound
    assert got.shape == want.shape
    assert excess.size == 0 or excess.max() <= 0, f"{excess.max():.3g} past the bound at {np.unravel_index(excess.argmax(), got.shape)}"


@pytest.mark.parametrize("R,K,N", SHAPES)
def test_the_product_the_sum_and_the_bias_are_within_float32_round_off(R, K, N):
    x, m, bias = _operands(R, K, N)
    packed = tiles.pack(m)
    out = np.full((R, N), np.nan, np.float32)
    tiles.product(x, m, packed, out, np.bool_(False))
    _assert_within_the_float32_bound(out, x, m, 0.0)
    before = np.random.default_rng(1).standard_normal((R, N)).astype(np.float32)
    summed = before.copy()
    tiles.product(x, m, packed, summed, np.bool_(True))
    _assert_within_the_float32_bound(summed, x, m, before.astype(np.float64))
    biased = np.full((R, N), np.nan, np.float32)
    tiles.biased_product(x, m, packed, bias, biased)
    _assert_within_the_float32_bound(biased, x, m, np.broadcast_to(bias.astype(np.float64), (R, N)))


def test_the_panels_hold_every_full_and_half_panel_column_on_a_cache_line():
    K, N = 5, 16 * 3 + 8 + 3
    m = np.arange(K * N, dtype=np.float32).reshape(K, N)
    packed = tiles.pack(m)
    assert packed.size == tiles.packed_size(K, N) == K * (N - 3)
    assert packed.ctypes.data % buffers.ALIGNMENT == 0
    panels = [packed[p * K * 16:(p + 1) * K * 16].reshape(K, 16) for p in range(3)]
    for p, panel in enumerate(panels):
        np.testing.assert_array_equal(panel, m[:, 16 * p:16 * (p + 1)])
    np.testing.assert_array_equal(packed[3 * K * 16:].reshape(K, 8), m[:, 48:56])


@pytest.mark.parametrize("R,K,N", [(16, 128, 384), (11, 300, 45), (7, 64, 23)])
def test_a_rows_bits_do_not_depend_on_the_other_rows_of_the_call(R, K, N):
    x, m, _ = _operands(R, K, N, seed=2)
    packed = tiles.pack(m)
    whole = np.empty((R, N), np.float32)
    tiles.product(x, m, packed, whole, np.bool_(False))
    for split in range(1, R):
        parts = np.empty((R, N), np.float32)
        tiles.product(x[:split], m, packed, parts[:split], np.bool_(False))
        tiles.product(x[split:], m, packed, parts[split:], np.bool_(False))
        np.testing.assert_array_equal(parts, whole)


def test_rows_of_wider_arrays_are_read_and_written_in_place():
    """x and out as column slices of wider arrays (their rows further apart than K and N)."""
    R, K, N = 6, 40, 24
    x, m, _ = _operands(R, K, N, seed=3)
    wide_x = np.zeros((R, K + 9), np.float32)
    wide_x[:, 4:4 + K] = x
    wide_out = np.full((R, N + 5), 7.0, np.float32)
    tiles.product(wide_x[:, 4:4 + K], m, tiles.pack(m), wide_out[:, :N], np.bool_(False))
    _assert_within_the_float32_bound(wide_out[:, :N], x, m, 0.0)
    assert (wide_out[:, N:] == 7.0).all()


@settings(max_examples=40, deadline=None)
@given(R=st.integers(1, 12), K=st.integers(0, 40), N=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_any_shape_is_within_float32_round_off(R, K, N, seed):
    x, m, bias = _operands(R, K, N, seed)
    out = np.empty((R, N), np.float32)
    tiles.biased_product(x, m, tiles.pack(m), bias, out)
    _assert_within_the_float32_bound(out, x, m, np.broadcast_to(bias.astype(np.float64), (R, N)))


@njit
def _kernels_product(x, m, out):
    common.gemm_packed(x, m, common.recurrent_operand(m, x.shape[0], common.no_operand(x.dtype)), out)


@njit
def _kernels_projection(x, w_ih, b_ih, gx):
    common.project_rows(np.int64(0), x.shape[0], x, w_ih, b_ih, gx, common.no_operand(x.dtype))


@pytest.mark.skipif(not tiles.FASTER_F32, reason="grukit's tiles run on CPUs with AVX2 and FMA but no AVX-512")
def test_the_kernels_float32_products_and_projection_run_on_the_tiles():
    """Where the tiles are the faster GEMM, a block's product (2 rows and more) and the projection
    give exactly the tiles' bits; float64 stays on BLAS."""
    for R in (common.TILES_MIN_ROWS, 16):
        x, m, bias = _operands(R, 64, 192, seed=4)
        got = np.empty((R, 192), np.float32)
        _kernels_product(x, m, got)
        want = np.empty((R, 192), np.float32)
        tiles.product(x, m, tiles.pack(m), want, np.bool_(False))
        np.testing.assert_array_equal(got, want)
    w_ih = np.ascontiguousarray(m.T)
    gx = np.empty((R, 192), np.float32)
    _kernels_projection(x, w_ih, bias, gx)
    want = np.empty((R, 192), np.float32)
    tiles.biased_product(x, m, tiles.pack(m), bias, want)
    np.testing.assert_array_equal(gx, want)
    x64, m64 = x.astype(np.float64), m.astype(np.float64)
    got64 = np.empty((R, 192))
    _kernels_product(x64, m64, got64)
    np.testing.assert_allclose(got64, x64 @ m64, rtol=1e-12, atol=1e-12)


@njit
def _block_operand(rounded_m, rows):
    return common.recurrent_operand(rounded_m, rows, rounded_m)


@njit
def _kernels_rounded_product(x, rounded_m, out):
    common.gemm_packed(x, rounded_m, common.recurrent_operand(rounded_m, x.shape[0], rounded_m), out)


@pytest.mark.skipif(not tiles.FASTER_F32, reason="grukit's tiles run on CPUs with AVX2 and FMA but no AVX-512")
def test_the_bfloat16_modes_block_products_run_on_the_tiles():
    """The mode's float32 products without BF16 units ("rounded" operands): a block packs the
    rounded values into the tiles' panels once per call (none for a block of one row), and its
    products give the bits of bf16.rounded_tiles_product; float64 keeps the operand as it is."""
    x, m, _ = _operands(16, 64, 197, seed=6)
    rounded_m = bf16.rounded_operand(m)
    operand, panels = _block_operand(rounded_m, np.int64(16))
    assert operand is rounded_m or np.shares_memory(operand, rounded_m)
    np.testing.assert_array_equal(panels, tiles.pack(rounded_m))
    assert _block_operand(rounded_m, np.int64(1))[1].size == 0
    for R in (1, common.TILES_MIN_ROWS, 16):
        got = np.empty((R, 197), np.float32)
        _kernels_rounded_product(x[:R], rounded_m, got)
        want = np.empty((R, 197), np.float32)
        bf16.rounded_tiles_product(x[:R], rounded_m, panels if R >= common.TILES_MIN_ROWS else panels[:0], want)
        np.testing.assert_array_equal(got, want)
    m64 = rounded_m.astype(np.float64)
    assert isinstance(_block_operand(m64, np.int64(16)), np.ndarray)
    got64 = np.empty((16, 197))
    _kernels_rounded_product(x.astype(np.float64), m64, got64)
    want64 = np.empty((16, 197))
    bf16.rounded_product(x.astype(np.float64), m64, want64)
    np.testing.assert_array_equal(got64, want64)


def test_a_matrix_of_any_strides_packs_as_its_contiguous_copy():
    """pack reads rows of contiguous floats by address, other strides (a weight's transposed view, as
    the projection packs W_ih^T) element by element: the same panels either way."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((61, 37)).astype(np.float32)
    for view in (w.T, w[::2, 3:30], w[:, 1:]):
        np.testing.assert_array_equal(tiles.pack(view), tiles.pack(np.ascontiguousarray(view)))


@pytest.mark.parametrize("K,N,c0,c1", [(128, 384, 0, 384), (128, 384, 256, 384), (40, 120, 0, 80), (40, 120, 80, 120),
                                       (20, 60, 32, 60), (7, 24, 0, 24), (5, 13, 0, 13), (64, 200, 48, 200),
                                       (0, 32, 0, 32), (300, 64, 16, 48)])
def test_one_rows_product_over_panels_gives_the_bits_of_the_tiles(K, N, c0, c1):
    """tiles.row_product (a batch of one's product, several panels at a time) on any column range
    that starts on a panel: the bits of tiles.product's row and of common.matmul_acc, within the
    float32 bound; nothing written outside the range."""
    x, m, _ = _operands(1, K, N, seed=K + N)
    packed = tiles.pack(m)
    wide = np.full((1, c1 - c0 + 2), 7.0, np.float32)
    tiles.row_product(x, m, packed, c0, c1, wide[:, 1:-1])
    got = wide[:, 1:-1]
    assert wide[0, 0] == 7.0 and wide[0, -1] == 7.0
    whole = np.empty((1, N), np.float32)
    tiles.product(x, m, packed, whole, np.bool_(False))
    np.testing.assert_array_equal(got, whole[:, c0:c1])
    looped = np.zeros((1, c1 - c0), np.float32)
    common.matmul_acc(x, m, np.int64(0), np.int64(c0), np.int64(c1 - c0), looped)
    np.testing.assert_array_equal(got, looped)
    _assert_within_the_float32_bound(got, x, m[:, c0:c1], 0.0)


@njit
def _stored_tiles_operand(w, T):
    return common.stored_tiles_operand(w, T)


@njit
def _stored_rows_product(h, w, T, r0, r1, out):
    w_r, transposed, panels = common.stored_tiles_operand(w, T)
    common.rows_product_on(h, w_r, transposed, panels, r0, r1, out)


@pytest.mark.skipif(not tiles.FASTER_ROW_F32, reason="a batch of one runs on the tiles' panels on AVX2 CPUs without AVX-512 and on Zen 4")
def test_a_long_batch_of_one_multiplies_on_panels_of_w_transposed():
    """A batch of one over common.STORED_TRANSPOSE_MIN_STEPS steps or more (the families'
    stored_sequence) reads W^T's panels; shorter ones and float64 read W as stored. Either way a
    column range of the product agrees with the float64 product."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((96, 48)).astype(np.float32)        # (G*H, H) as stored
    long_steps, short_steps = common.STORED_TRANSPOSE_MIN_STEPS, common.STORED_TRANSPOSE_MIN_STEPS - 1
    w_t, transposed, panels = _stored_tiles_operand(w, np.int64(long_steps))
    assert transposed and np.array_equal(w_t, w.T) and np.array_equal(panels, tiles.pack(np.ascontiguousarray(w.T)))
    assert not _stored_tiles_operand(w, np.int64(short_steps))[1]
    assert not _stored_tiles_operand(w.astype(np.float64), np.int64(long_steps))[1]
    h = rng.standard_normal((1, 48)).astype(np.float32)
    for T in (short_steps, long_steps):
        out = np.empty((1, 48), np.float32)
        _stored_rows_product(h, w, np.int64(T), np.int64(48), np.int64(96), out)
        _assert_within_the_float32_bound(out, h, np.ascontiguousarray(w[48:].T), 0.0)


@pytest.mark.skipif(not tiles.FASTER_ROW_F32, reason="a batch of one runs on the tiles' panels on AVX2 CPUs without AVX-512 and on Zen 4")
def test_a_streamer_of_one_sequence_steps_on_panels_and_keeps_the_layers_numbers():
    """A float32 streamer of batch one holds its W^T's and W_ih^T's panels (common.frame_panels);
    batches of more, W as stored and float64 hold none. Its frames still give the layer's outputs."""
    import torch

    import grukit.nn as gnn

    rng = np.random.default_rng(9)
    w_t = rng.standard_normal((32, 96)).astype(np.float32)
    np.testing.assert_array_equal(common.frame_panels(w_t, np.bool_(True), 1), tiles.pack(w_t))
    assert common.frame_panels(w_t, np.bool_(True), 2).size == 0
    assert common.frame_panels(w_t, np.bool_(False), 1).size == 0
    assert common.frame_panels(w_t.astype(np.float64), np.bool_(True), 1).size == 0
    torch.manual_seed(0)
    for layer in (gnn.GRU(5, 32, batch_first=True), gnn.LSTM(5, 32, batch_first=True),
                  gnn.RNN(5, 32, batch_first=True), gnn.MGU(5, 32, batch_first=True)):
        x = torch.randn(1, 6, 5)
        with torch.no_grad():
            want, _ = layer(x)
        streamer = layer.streamer()
        _, (w_in, input_transposed, input_panels, *_) = streamer._frames[0]
        assert input_transposed and np.array_equal(input_panels, tiles.pack(w_in))   # the input side's too
        got = np.stack([streamer.step(x[0, t].numpy()) for t in range(6)])
        np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-5, atol=1e-6)
