"""The GEMMs of the kernels' per-step recurrent products (kernels/products.py): BLAS (MKL's packed
sgemm) and oneDNN's float32 microkernel, the default where it is the faster one (kernels/onednn.py).

Oracle: the same layer run in float64 (BLAS's dgemm). Both float32 kinds must agree with it to float32
round-off, outputs and every gradient, over a ragged batch in reverse with blocks wide enough for
the GEMM path (common.GEMM_MIN_ROWS, common.ONEDNN_MIN_ROWS) and blocks that stay on the mat-vec
loop (3 rows under BLAS, 1 under oneDNN).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import api, function, onednn, products, tiles
from grukit.nn.kernels.common import GEMM_MIN_ROWS

from kernel_cases import make_case

MODES = [m for m in api.MODES if api.RECURRENT_ROWS[m]]   # minGRU has no per-step product
FLOAT32_KINDS = ["blas", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn.FASTER_F32, reason="oneDNN's float32 microkernel is used on AMD CPUs with AVX-512 only"))]


def test_the_default_is_onednn_where_it_beat_mkl_and_blas_elsewhere():
    assert products.resolve(None, np.float32) == ("onednn" if onednn.FASTER_F32 else "blas")
    assert products.resolve(None, np.float64) == "blas"
    assert products.resolve("onednn", np.float64) == "blas"   # no float64 form
    assert products.resolve("rounded", np.float32) == "rounded"
    with pytest.raises(ValueError, match="one of"):
        products.resolve("mkl", np.float32)


def test_onednn_operands_are_refused_where_it_is_not_used(monkeypatch):
    """The microkernel's symbol is bound to a stub there: its operand must never be made."""
    monkeypatch.setattr(onednn, "FASTER_F32", False)
    with pytest.raises(RuntimeError, match="'blas'"):
        products.operands((np.zeros((4, 4), np.float32),), "onednn")


def _run(mode, dtype, kind, B):
    """api.forward (training, reverse, ragged) and api.backward on one case: every result as float64."""
    gx, state0, weights, lengths, _ = make_case(mode, 7, B, 5, ragged=True, seed=3)
    cast = (lambda t: t.detach().numpy().astype(dtype))
    h0, c0 = (cast(t) for t in state0) if mode == "LSTM" else (cast(state0), None)
    w = cast(weights.weight_hh)
    bias = None if weights.bias_hh is None else cast(weights.bias_hh)
    gx, lengths = cast(gx), lengths.numpy()
    out, h_n, c_n, ws = api.forward(mode, gx, h0, c0, api.pack_weight(w), bias, lengths, reverse=True,
                                    training=True, products=kind)
    rng = np.random.default_rng(0)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    grad_c_n = None if c_n is None else rng.standard_normal(c_n.shape).astype(dtype)
    dgx, dh0, dc0, terms, _ = api.backward(mode, ws, gx, w, grad_out, grad_h_n, grad_c_n, lengths, True,
                                           products=kind)
    results = [out, h_n, dgx, dh0] + ([c_n, dc0] if c_n is not None else [])
    return [np.asarray(r, np.float64) for r in results]


@pytest.mark.parametrize("B", [GEMM_MIN_ROWS + 10, 3, 1])
@pytest.mark.parametrize("kind", FLOAT32_KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_float32_products_agree_with_float64_to_round_off(mode, kind, B):
    ours = _run(mode, np.float32, kind, B)
    oracle = _run(mode, np.float64, "blas", B)
    for got, want in zip(ours, oracle):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))
    # and the two float32 kinds are different code: at most round-off apart, not equal by accident
    if kind == "onednn":
        blas = _run(mode, np.float32, "blas", B)
        for got, want in zip(ours, blas):
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.skipif(not onednn.FASTER_F32, reason="oneDNN's float32 microkernel is not used on this CPU")
def test_a_layer_in_float32_runs_the_microkernel_by_default(monkeypatch):
    """The default of a float32 layer reaches the microkernel (spied through the operands asked for)."""
    import grukit.nn as gnn

    asked = []
    real = products.operands
    monkeypatch.setattr(products, "operands", lambda m, kind: asked.append(
        products.resolve(kind, m[0].dtype)) or real(m, kind))
    layer = gnn.GRU(4, 6, kernel="fused")
    out, _ = layer(torch.randn(5, 8, 4))
    out.sum().backward()
    assert asked and set(asked) == {"onednn"}


@pytest.mark.parametrize("faster", [False, pytest.param(True, marks=pytest.mark.skipif(
    not onednn.FASTER_F32, reason="oneDNN's float32 microkernel is used on AMD CPUs with AVX-512 only"))])
def test_the_inference_projection_agrees_with_float64(faster, monkeypatch):
    """api.project and api.project_batch_first (gx = x @ W_ih^T + b over chunks of rows on the kernels'
    threads) with MKL's GEMM and with oneDNN's microkernel, against numpy in float64; enough rows for
    several chunks per thread (common.PROJECTION_CHUNK_BYTES)."""
    monkeypatch.setattr(onednn, "FASTER_F32", faster)
    rng = np.random.default_rng(5)
    T, B, I, G = 150, 20, 33, 96
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = rng.standard_normal((G, I)).astype(np.float32)
    b = rng.standard_normal(G).astype(np.float32)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    got = api.project(x, w, b)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    table, index = api.project_batch_first(np.ascontiguousarray(x.transpose(1, 0, 2)), w, b)
    np.testing.assert_allclose(table[index], want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.skipif(not (onednn.FASTER_F32 or tiles.FASTER_F32),
                    reason="the kernels' float32 GEMM (oneDNN's microkernel or grukit's tiles) is not the faster one here")
@pytest.mark.parametrize("cell", [gnn.GRU, gnn.LSTM, gnn.RNN])
def test_the_training_projection_runs_on_the_kernels_gemm_and_agrees_with_float64(cell):
    """A fused float32 layer's training projection (recurrent._FusedInputProjection) on the kernels'
    threads and GEMM (oneDNN's microkernel or grukit's tiles): a spy on the kernels' counter, and the
    output and every gradient against the same layer in float64, to float32 round-off."""
    torch.manual_seed(0)
    wide = api.BLOCK_PROJECTION_MAX + 4   # narrower inputs are projected inside the loop
    layer = cell(wide, 16, batch_first=True)
    oracle = cell(wide, 16, batch_first=True, dtype=torch.float64)
    oracle.load_state_dict(layer.state_dict())
    x = torch.randn(6, 40, wide, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    before = function.CALLS["project"]
    out = layer(x)[0]
    assert function.CALLS["project"] == before + 1
    upstream = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * upstream).sum().backward()
    want = oracle(x64)[0]
    (want * upstream).sum().backward()
    for got, expected in [(out, want), (x.grad, x64.grad)] + [(a.grad, b.grad) for a, b in
                                                           zip(layer.parameters(), oracle.parameters())]:
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5 * expected.abs().max().item())


def test_the_training_projection_is_torchs_where_the_kernels_gemm_is_not_the_faster_one(monkeypatch):
    monkeypatch.setattr(onednn, "FASTER_F32", False)
    monkeypatch.setattr(tiles, "FASTER_F32", False)
    layer = gnn.GRU(api.INPUT_ROWS_MAX + 4, 8)
    before = function.CALLS["project"]
    layer(torch.randn(5, 3, api.INPUT_ROWS_MAX + 4, requires_grad=True))[0].sum().backward()
    assert function.CALLS["project"] == before


@pytest.mark.skipif(not onednn.FASTER_F32, reason="oneDNN's float32 microkernel is used on AMD CPUs with AVX-512 only")
@pytest.mark.parametrize("accumulate", [False, True])
def test_a_large_operand_goes_in_tiles(accumulate):
    """common._onednn splits an m of ONEDNN_TILE_MIN_BYTES or more into tiles: with K within one tile,
    the same bits as one microkernel call over all columns (compiled here), a last tile narrower than
    the others; with K over several tiles, float64's product to float32 round-off, and each row's
    result the same whatever the other rows (the threads' blocks)."""
    from numba import njit

    from grukit.nn.kernels import common

    @njit
    def one_call(x, m, out, accumulate):
        onednn.brgemm_f32(x.shape[0], m.shape[1], x.shape[1], x.shape[1], m.shape[1], out.shape[1],
                          np.int32(1 if accumulate else 0), x.ctypes.data, m.ctypes.data, out.ctypes.data,
                          np.int32(0))

    rng = np.random.default_rng(7)
    for K in (common.ONEDNN_TILE_ROWS, 2 * common.ONEDNN_TILE_ROWS + 37):
        N = common.ONEDNN_TILE_MIN_BYTES // (4 * K) + common.ONEDNN_TILE_COLUMNS // 2 + 3
        x = rng.standard_normal((9, K)).astype(np.float32)
        m = rng.standard_normal((K, N)).astype(np.float32)
        start = rng.standard_normal((9, N)).astype(np.float32)
        tiled, whole, rows = start.copy(), start.copy(), start.copy()
        common._onednn(x, m.reshape((1, K, N)), tiled, np.bool_(accumulate))
        if K <= common.ONEDNN_TILE_ROWS:
            one_call(x, m, whole, accumulate)
            assert np.array_equal(tiled, whole)
        for r in (slice(0, 4), slice(4, 9)):
            common._onednn(x[r], m.reshape((1, K, N)), rows[r], np.bool_(accumulate))
        assert np.array_equal(tiled, rows)
        want = x.astype(np.float64) @ m + (start if accumulate else 0)
        np.testing.assert_allclose(tiled, want, rtol=0, atol=1e-5 * np.abs(want).max())
