"""The backward's GEMMs on oneDNN's float32 microkernel (kernels/backward_gemms.py): the weight
gradients' a^T @ b, also of steps read in place (a batch-first input's transposed view), and the input
gradient's a @ b (on grukit's tiles where those are the faster GEMM).

Oracles: numpy's product in float64, within the float32 error bound of a sum of R products
(R * eps * (|a|^T |b|), elementwise) and within 4x the error of torch's float32 matmul; the same
layer trained in float64 on its reference loop. The bits must not depend on the thread count. Runs
only where the microkernel (or, for a @ b, the tiles) is the float32 GEMM.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn import embedded, projection_grads
from grukit.nn.kernels import backward_gemms, common, onednn

# a^T @ b runs on oneDNN's microkernel only (AMD CPUs with AVX-512); a @ b there or on grukit's tiles
# (CPUs with AVX2 and no AVX-512)
TRANSPOSED = pytest.mark.skipif(not backward_gemms.TRANSPOSED_USABLE,
                                reason="oneDNN's float32 microkernel is used on AMD CPUs with AVX-512 only")
PRODUCT = pytest.mark.skipif(not backward_gemms.USABLE,
                             reason="neither oneDNN's float32 microkernel nor grukit's tiles are the faster GEMM here")

EPS32 = float(np.finfo(np.float32).eps)


def _operands(R, M, N, seed=0, strided=False):
    rng = np.random.default_rng(seed)
    if strided:   # column slices of wider arrays, as the kernels' terms are views of dgx
        return (rng.standard_normal((R, M + 7), np.float32)[:, 3:3 + M],
                rng.standard_normal((R, N + 5), np.float32)[:, 2:2 + N])
    return rng.standard_normal((R, M), np.float32), rng.standard_normal((R, N), np.float32)


def _assert_within_float32_bound(out, a, b, torch_error_factor=4):
    """out = a^T b within the worst-case bound of a float32 sum of R products, and at most
    ``torch_error_factor`` times as far from the float64 product as torch's float32 matmul (MKL's) is."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    exact = a64.T @ b64
    bound = a.shape[0] * EPS32 * (np.abs(a64).T @ np.abs(b64))
    error = np.abs(out.astype(np.float64) - exact)
    assert (error <= bound).all(), f"largest error / bound: {(error / bound).max():.3g}"
    torch_error = np.abs((torch.from_numpy(a).t() @ torch.from_numpy(b)).numpy().astype(np.float64) - exact)
    assert error.max() <= torch_error_factor * torch_error.max(), \
        f"error {error.max():.3g}, torch's {torch_error.max():.3g}"


def _on_two_threads_and_one(product, a, b):
    threads = common.set_threads(2)
    try:
        out = product(a, b)
        common.set_threads(1)
        return out, product(a, b)
    finally:
        common.set_threads(threads)


# Shapes: several row tiles (split by rows), one row tile (the summed rows split in parts; split by
# columns when they are a single chunk), a narrow operand, the narrower operand first or second; R
# not a multiple of CHUNK_ROWS, M not one of TILE_ROWS.
SHAPES = [(1300, 200, 70), (1300, 70, 200), (2100, 40, 900), (700, 130, 9), (9000, 3, 1), (5000, 64, 250),
          (400, 40, 300), (1024, 17, 33)]


@TRANSPOSED
@pytest.mark.parametrize("R,M,N", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_against_float64_and_the_same_bits_on_one_or_two_threads(R, M, N, strided, monkeypatch):
    monkeypatch.setattr(backward_gemms, "MIN_WORK", 1)   # the small shapes too
    a, b = _operands(R, M, N, strided=strided)
    assert backward_gemms.applies_transposed(a, b)
    out, serial = _on_two_threads_and_one(backward_gemms.transposed_product, a, b)
    assert out.shape == (M, N)
    _assert_within_float32_bound(out, a, b)
    np.testing.assert_array_equal(out, serial)


@TRANSPOSED
def test_applies_to_large_float32_operands_with_contiguous_rows_only(monkeypatch):
    a, b = _operands(6400, 384, 128)
    assert backward_gemms.applies_transposed(a, b)
    assert backward_gemms.applies_transposed(*_operands(3200, 192, 10))                   # narrow
    assert backward_gemms.applies_transposed(*_operands(3200, 192, 64))                   # S3
    assert not backward_gemms.applies_transposed(*_operands(2000, 96, 32))                # MKL is faster
    assert not backward_gemms.applies_transposed(a.astype(np.float64), b.astype(np.float64))
    assert not backward_gemms.applies_transposed(np.asfortranarray(a), b)                 # strided rows
    assert not backward_gemms.applies_transposed(a[:-1], b)                               # row counts differ
    monkeypatch.setattr(backward_gemms, "USABLE", False)
    assert not backward_gemms.applies_transposed(a, b)


def _steps(T, B, M, N, seed=0):
    """a batch-first (B, T, M) array's transposed view and a time-major (T, B, N) array: the steps of a
    batch-first input and of the kernels' gate gradients."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, M), np.float32).transpose(1, 0, 2), rng.standard_normal((T, B, N), np.float32)


def _rows(steps):
    """The steps' rows in time-major order, (T * B, N): the copy they are read in place of (rows as they are)."""
    return np.ascontiguousarray(steps).reshape(-1, steps.shape[-1])


# (T, B, M, N): row tiles (S2's shape, smaller), column tiles (few rows), the summed rows' parts with their
# bounds inside a sequence (1110 rows: parts of 544 and 566 rows, sequences of 37 steps), chunks (CHUNK_ROWS)
# that start inside a sequence, the narrower operand second (the batch-first one then copied to rows).
STEP_SHAPES = [(40, 12, 128, 384), (9, 40, 64, 200), (37, 30, 10, 192), (1300, 2, 70, 40), (50, 64, 256, 10)]


@TRANSPOSED
@pytest.mark.parametrize("T,B,M,N", STEP_SHAPES)
def test_steps_have_the_bits_of_their_rows_copied_on_one_or_two_threads(T, B, M, N, monkeypatch):
    """A batch-first input's transposed view beside time-major gradients, each given as steps or as rows:
    the bits of the product of the copied rows, within the float32 bound of the float64 product."""
    monkeypatch.setattr(backward_gemms, "MIN_WORK", 1)
    a, b = _steps(T, B, M, N)
    for first, second in ((a, b), (b, a), (a, _rows(b)), (_rows(b), a)):
        assert backward_gemms.applies_transposed(first, second)
        out, serial = _on_two_threads_and_one(backward_gemms.transposed_product, first, second)
        assert out.shape == (first.shape[-1], second.shape[-1])
        np.testing.assert_array_equal(out, serial)
        np.testing.assert_array_equal(out, backward_gemms.transposed_product(_rows(first), _rows(second)))
        _assert_within_float32_bound(np.ascontiguousarray(out), _rows(first), _rows(second))


@TRANSPOSED
def test_steps_apply_beside_rows_or_steps_of_as_many_rows(monkeypatch):
    a, b = _steps(200, 32, 128, 384)
    assert backward_gemms.applies_transposed(a, b) and backward_gemms.applies_transposed(a, _rows(b))
    assert not backward_gemms.applies_transposed(a[:-1], b)              # step counts differ
    assert not backward_gemms.applies_transposed(a[:, :-1], b)           # batch sizes differ
    assert not backward_gemms.applies_transposed(a[:, :-1], _rows(b))    # row counts differ
    assert not backward_gemms.applies_transposed(a.reshape(100, 64, 128), b)   # same rows, other steps
    assert not backward_gemms.applies_transposed(a[:, :, ::2], b)        # strided rows
    assert not backward_gemms.applies_with_shared_narrow(a, b, b)       # rows only there


@TRANSPOSED
def test_shared_products_read_a_batch_first_input_in_place(monkeypatch):
    """S3's LSTM, batch-first: grad weight_hh and grad weight_ih from one pass over the time-major gate
    gradients, the previous states time-major and the input a transposed view; on one thread or two, the
    bits of the two products of the copied rows, within the float32 bound of the float64 products."""
    monkeypatch.setattr(backward_gemms, "MIN_WORK", 1)
    rng = np.random.default_rng(5)
    g, states = (rng.standard_normal((50, 64, n), np.float32) for n in (256, 64))
    x = rng.standard_normal((64, 50, 10), np.float32).transpose(1, 0, 2)
    out, serial = _on_two_threads_and_one(lambda g, pair: backward_gemms.shared_transposed_products(g, *pair),
                                          g, (states, x))
    for ours, one_thread, operand in zip(out, serial, (states, x)):
        assert ours.shape == (256, operand.shape[2])
        np.testing.assert_array_equal(ours, one_thread)
        np.testing.assert_array_equal(ours, backward_gemms.transposed_product(_rows(g), _rows(operand)))
        _assert_within_float32_bound(np.ascontiguousarray(ours), _rows(g), _rows(operand))


# (R, width of g, first's, second's): both on the summed rows' parts (S3's LSTM), both on column tiles
# (few rows), both on row tiles (S2's LSTM on this CPU), and the pairs that run apart: row tiles with first
# not a whole number of tiles, and two different paths.
SHARED_SHAPES = [(3200, 256, 64, 10), (400, 256, 64, 10), (1300, 512, 128, 70), (1300, 256, 100, 10),
                 (3200, 256, 64, 100)]


@TRANSPOSED
@pytest.mark.parametrize("R,G,M1,M2", SHARED_SHAPES)
def test_shared_products_have_the_bits_of_two_products(R, G, M1, M2, monkeypatch):
    """An LSTM's grad weight_hh and grad weight_ih from one pass over g: the bits of two transposed_product
    calls, on one thread or two, within the float32 bound of the float64 products."""
    monkeypatch.setattr(backward_gemms, "MIN_WORK", 1)
    rng = np.random.default_rng(3)
    g, first, second = (rng.standard_normal((R, n), np.float32) for n in (G, M1, M2))
    threads = common.set_threads(2)
    try:
        shared = backward_gemms.shared_transposed_products(g, first, second)
        common.set_threads(1)
        serial = backward_gemms.shared_transposed_products(g, first, second)
    finally:
        common.set_threads(threads)
    apart = backward_gemms.transposed_product(g, first), backward_gemms.transposed_product(g, second)
    for ours, one_thread, alone, operand in zip(shared, serial, apart, (first, second)):
        assert ours.shape == (G, operand.shape[1])
        np.testing.assert_array_equal(ours, alone)
        np.testing.assert_array_equal(ours, one_thread)
        _assert_within_float32_bound(np.ascontiguousarray(ours), g, operand)


def _s3_step_calls_and_matches_float64(cell, function_name, monkeypatch):
    """An S3 training step (10 features, H = 64, loss on the last step) of ``cell``: asserts that it called
    backward_gemms.``function_name`` once and that every gradient matches the float64 reference loop's."""
    calls = []
    original = getattr(backward_gemms, function_name)
    monkeypatch.setattr(backward_gemms, function_name, lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    layer = cell(10, 64, batch_first=True)
    oracle = cell(10, 64, batch_first=True, dtype=torch.float64, kernel="reference")
    oracle.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x, target = torch.randn(64, 50, 10), torch.randn(64, 64)
    for model, inputs in ((layer, x), (oracle, x.double())):
        torch.nn.functional.mse_loss(model(inputs)[0][:, -1], target.to(inputs.dtype)).backward()
    assert calls == [1]
    for (name, p), q in zip(layer.named_parameters(), oracle.parameters()):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=0, atol=2e-5 * scale, msg=name)


@TRANSPOSED
def test_an_lstm_with_a_narrow_input_forms_both_weight_gradients_in_one_pass(monkeypatch):
    """S3's LSTM (10 features, projected inside the loop): grad weight_hh and grad weight_ih come from
    shared_transposed_products."""
    _s3_step_calls_and_matches_float64(gnn.LSTM, "shared_transposed_products", monkeypatch)


# (R, narrow, wide, wide2): S3's GRU (summed rows' parts), few rows (column tiles, whose threads' ranges
# cross from wide into wide2), S2's GRU (row tiles), ragged widths.
SHARED_NARROW_SHAPES = [(3200, 64, 128, 64), (400, 64, 128, 64), (6400, 128, 256, 128), (1300, 50, 100, 50),
                        (3200, 100, 200, 100)]


@TRANSPOSED
@pytest.mark.parametrize("R,M,N1,N2", SHARED_NARROW_SHAPES)
def test_products_with_a_shared_narrow_operand_have_the_bits_of_two_products(R, M, N1, N2, monkeypatch):
    """A GRU's two grad weight_hh terms against h in one pass: the bits of two transposed_product calls,
    on one thread or two, within the float32 bound of the float64 products."""
    monkeypatch.setattr(backward_gemms, "MIN_WORK", 1)   # the small shapes too
    rng = np.random.default_rng(4)
    narrow, wide, wide2 = (rng.standard_normal((R, n), np.float32) for n in (M, N1, N2))
    assert backward_gemms.applies_with_shared_narrow(narrow, wide, wide2)
    out, serial = _on_two_threads_and_one(lambda a, b: backward_gemms.products_with_shared_narrow(a, *b),
                                          narrow, (wide, wide2))
    assert out.shape == (M, N1 + N2)
    np.testing.assert_array_equal(out, serial)
    np.testing.assert_array_equal(out[:, :N1].T, backward_gemms.transposed_product(wide, narrow))
    np.testing.assert_array_equal(out[:, N1:].T, backward_gemms.transposed_product(wide2, narrow))
    _assert_within_float32_bound(out, narrow, np.concatenate([wide, wide2], 1))


@TRANSPOSED
def test_a_shared_narrow_operand_applies_to_the_two_products_work_together():
    narrow, wide, wide2 = np.ones((3200, 64), np.float32), np.ones((3200, 128), np.float32), np.ones((3200, 64), np.float32)
    assert backward_gemms.applies_with_shared_narrow(narrow, wide, wide2)
    assert not backward_gemms.applies_transposed(wide2, narrow)          # alone, torch's matmul is faster
    assert not backward_gemms.applies_with_shared_narrow(narrow[:1000], wide[:1000], wide2[:1000])  # too small
    assert not backward_gemms.applies_with_shared_narrow(wide, narrow, wide2)     # the narrow one wider
    assert not backward_gemms.applies_with_shared_narrow(narrow, wide[:-1], wide2)  # row counts differ


@TRANSPOSED
def test_a_gru_forms_its_weight_hh_gradient_in_one_pass(monkeypatch):
    """S3's GRU (reset after): grad weight_hh's two terms (dG_rz and dn * r against h) come from
    products_with_shared_narrow."""
    _s3_step_calls_and_matches_float64(gnn.GRU, "products_with_shared_narrow", monkeypatch)


# a @ b: several tiles of rows and columns, ragged ones, a long K (S4's input gradient), narrow results.
PRODUCT_SHAPES = [(1000, 200, 70), (129, 1536, 512), (3000, 64, 200), (700, 130, 10), (5000, 384, 1)]


@PRODUCT
@pytest.mark.parametrize("R,K,N", PRODUCT_SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_the_product_against_float64_and_the_same_bits_on_one_or_two_threads(R, K, N, strided, monkeypatch):
    monkeypatch.setattr(backward_gemms, "MIN_PRODUCT_WORK", 1)   # the small shapes too
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((R, K + 7), np.float32), rng.standard_normal((K, N + 5), np.float32)
    a, b = a[:, 3:3 + K], b[:, 2:2 + N]      # column slices of wider arrays
    if not strided:
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert backward_gemms.applies(a, b)
    out, serial = _on_two_threads_and_one(backward_gemms.product, a, b)
    assert out.shape == (R, N)
    _assert_within_float32_bound(out, np.ascontiguousarray(a.T), b, torch_error_factor=8)
    np.testing.assert_array_equal(out, serial)


@PRODUCT
def test_the_product_applies_to_float32_operands_with_contiguous_rows_only(monkeypatch):
    a, b = np.ones((3200, 192), np.float32), np.ones((192, 64), np.float32)
    assert backward_gemms.applies(a, b)
    assert not backward_gemms.applies(a[:100], b)                       # too small to pay
    assert not backward_gemms.applies(a.astype(np.float64), b.astype(np.float64))
    assert not backward_gemms.applies(np.asfortranarray(a), b)
    assert not backward_gemms.applies(a[:, :-1], b)                     # inner sizes differ
    monkeypatch.setattr(backward_gemms, "USABLE", False)
    assert not backward_gemms.applies(a, b)


@TRANSPOSED
def test_weight_gradient_takes_it_and_falls_back_to_torch(monkeypatch):
    a, b = _operands(3000, 300, 150, seed=1)
    grad, rows = torch.from_numpy(a), torch.from_numpy(b)
    calls = []
    original = backward_gemms.transposed_product
    monkeypatch.setattr(backward_gemms, "transposed_product", lambda a, b: calls.append(1) or original(a, b))
    with torch.no_grad():     # as in a backward that records no graph
        ours = projection_grads.weight_gradient(grad, rows)
        assert calls and ours.is_contiguous() and ours.shape == (300, 150)
        _assert_within_float32_bound(ours.numpy(), a, b)
        monkeypatch.setattr(backward_gemms, "USABLE", False)
        torch.testing.assert_close(projection_grads.weight_gradient(grad, rows), grad.t() @ rows, rtol=0, atol=0)


@TRANSPOSED
def test_weight_gradient_reads_steps_in_place_and_copies_them_for_torch(monkeypatch):
    """rows given as steps (a batch-first input's transposed view), grad time-major: the microkernel's
    product reads them in place, with the bits of the copied rows; torch's fallback gets the time-major
    copy, with torch's bits."""
    a, b = _steps(60, 50, 40, 300, seed=2)
    grad, steps = torch.from_numpy(_rows(b)), torch.from_numpy(a)
    copies = []
    original = projection_grads.time_major_rows
    monkeypatch.setattr(projection_grads, "time_major_rows", lambda x: copies.append(1) or original(x))
    with torch.no_grad():
        ours = projection_grads.weight_gradient(grad, steps)
        assert not copies and ours.is_contiguous() and ours.shape == (300, 40)
        torch.testing.assert_close(ours, projection_grads.weight_gradient(grad, torch.from_numpy(_rows(a))),
                                   rtol=0, atol=0)
        monkeypatch.setattr(backward_gemms, "USABLE", False)
        rows = torch.from_numpy(_rows(a))
        torch.testing.assert_close(projection_grads.weight_gradient(grad, steps), grad.t() @ rows, rtol=0, atol=0)
        assert copies == [1]


@PRODUCT
@pytest.mark.parametrize("cell", [gnn.GRU, gnn.LSTM])
def test_a_fused_training_step_takes_it_and_matches_float64(cell, monkeypatch):
    """A spy on both products: an S2-like layer's weight gradients (the kernels' terms' grad weight_hh,
    the projection's grad weight_ih) and its input's gradient go through them; the gradients match the
    float64 reference loop's."""
    calls = []
    for name in ("transposed_product", "shared_transposed_products", "products_with_shared_narrow", "product"):
        original = getattr(backward_gemms, name)
        monkeypatch.setattr(backward_gemms, name, lambda *a, f=original, name=name: calls.append(name) or f(*a))
    copied = []
    original_copy = embedded.kept_empty
    monkeypatch.setattr(embedded, "kept_empty", lambda shape, like: copied.append((shape, like.dtype)) or original_copy(shape, like))
    torch.manual_seed(0)
    layer = cell(96, 128, batch_first=True)
    oracle = cell(96, 128, batch_first=True, dtype=torch.float64, kernel="reference")
    oracle.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x = torch.randn(24, 120, 96, requires_grad=True)
    x_oracle = x.detach().double().requires_grad_()
    layer(x)[0].square().mean().backward()
    oracle(x_oracle)[0].square().mean().backward()
    # two weight gradients: two products, or (an LSTM projecting inside its loop) one shared pass; a GRU's
    # weight_hh terms may be one product too
    weight_products = (calls.count("transposed_product") + 2 * calls.count("shared_transposed_products")
                       + calls.count("products_with_shared_narrow"))
    assert weight_products >= 2 if backward_gemms.TRANSPOSED_USABLE else weight_products == 0
    assert calls.count("product") == 1
    # the batch-first input is read in place by the microkernel's product, copied to time-major rows for torch's
    # (the float64 oracle's projection copies it too)
    assert copied.count(((120, 24, 96), torch.float32)) == (0 if backward_gemms.TRANSPOSED_USABLE else 1)
    torch.testing.assert_close(x.grad.double(), x_oracle.grad, rtol=0, atol=2e-5 * x_oracle.grad.abs().max().item())
    for (name, p), q in zip(layer.named_parameters(), oracle.parameters()):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=0, atol=2e-5 * scale, msg=name)


@PRODUCT
def test_a_backward_that_records_a_graph_keeps_torchs_ops():
    """create_graph=True (and torch.func) differentiate the gradients again: the products must then
    be torch's, recorded, not numpy results."""
    grad = torch.randn(3000, 300, requires_grad=True)
    rows, weight = torch.randn(3000, 150), torch.randn(300, 150)
    with torch.no_grad():
        assert projection_grads.weight_gradient(grad, rows).grad_fn is None
    with torch.enable_grad():
        recorded = projection_grads.weight_gradient(grad, rows)
        recorded_input = projection_grads._input_grad(grad, weight)
    assert recorded.grad_fn is not None and recorded_input.grad_fn is not None
    torch.autograd.grad(recorded.sum() + recorded_input.sum(), grad)
