"""grukit's bfloat16 mode (grukit.nn.bfloat16, kernels/bf16.py): a float32 layer under
``torch.autocast("cpu", dtype=torch.bfloat16)``.

Oracles: torch's own float32 -> bfloat16 conversion for the rounding; float64 matmuls of the
widened bfloat16 values for the GEMM (a product of two bfloat16 values is exact in float32); the
reference loop run in float64 with the mode forced, and a literal float64 transcription of the
GRU equations with the mode's roundings written out, for whole layers.

Two kinds of whole-layer comparison. In float64 (``bfloat16.mode()`` on a float64 layer: the fused
kernels accumulate the rounded operands' products in float64 and round them, as the reference does)
the fused kernels and the reference must agree to 1e-9: that checks where the roundings happen,
while leaving them out moves the numbers by 1e-3 or more. In float32 under autocast the comparison
with the float64 oracle is statistical: float32 and float64 round values that differ by ~1e-7, so
now and then one lands on the other side of a bfloat16 rounding boundary (one part in 256), and that
step propagates. Over 12 seeds per cell the norm-relative difference reached 8.0e-4 for one layer
and 3.4e-3 for a two-layer bidirectional stack (SimpleRNN; the per-step products rounded too); the
tolerances are about three times that.
"""

import copy

import numpy as np
import pytest
import torch

from grukit import nn as gnn
from grukit.errors import ConfigError
from grukit.nn import bfloat16
from grukit.nn.kernels import bf16, products, tiles
from grukit.nn.kernels.function import CALLS

I, H, T, B = 10, 24, 12, 6
ONE_LAYER, STACK = 2.5e-3, 1e-2   # norm-relative tolerances in float32, see the module docstring
EXACT = 1e-9                     # the same in float64
WITHOUT_THE_MODE = 1e-3          # what running without the mode differs by, at least


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _build(kind, **options):
    if kind == "gru_reset_before":
        return gnn.GRU(I, H, reset_after=False, **options)
    if kind.startswith("mgu"):
        return gnn.MGU(I, H, variant=kind, **options)
    if kind.startswith("mingru"):
        return gnn.MinGRU(I, H, candidate="g" if kind == "mingru_g" else "identity", **options)
    if kind == "rnn_relu":
        return gnn.RNN(I, H, nonlinearity="relu", **options)
    return {"gru": gnn.GRU, "lstm": gnn.LSTM, "rnn": gnn.RNN}[kind](I, H, **options)


def _run(layer, x, how, lengths=None, state0=None):
    """Output, final state(s), grad x and every parameter's gradient of a fixed loss."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    if state0 is not None:
        state0 = tuple(s.to(x.dtype) for s in state0) if isinstance(state0, tuple) else state0.to(x.dtype)
    if how == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = layer(x, state0, lengths=lengths)
    elif how == "forced":
        with bfloat16.mode():
            out, state = layer(x, state0, lengths=lengths)
    else:
        out, state = layer(x, state0, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    (out.sin().sum() + sum((s * s).sum() for s in states)).backward()
    return [out.detach(), *[s.detach() for s in states], x.grad, *[p.grad for p in layer.parameters()]]


# -- the rounding and the GEMM ------------------------------------------------------------

def test_rounding_matches_torch_bit_for_bit():
    torch.manual_seed(0)
    values = torch.cat([torch.randn(10000) * 10.0 ** torch.randint(-40, 38, (10000,)),
                        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-45, 1e-39,
                                      1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20])])
    ours = bf16.from_float32(values.numpy())
    theirs = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(bf16.to_float32(ours), values.to(torch.bfloat16).float().numpy())
    assert np.isnan(bf16.to_float32(bf16.from_float32(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("provider", ["default", "fallback"])
def test_gemm_equals_float64_product_of_widened_values(transpose_a, transpose_b, provider, monkeypatch):
    if provider == "fallback":
        monkeypatch.setattr(bf16, "_GEMM", None)
    rng = np.random.default_rng(0)
    M, K, N = 37, 130, 21
    a = bf16.from_float32(rng.standard_normal((K, M) if transpose_a else (M, K)).astype(np.float32))
    b = bf16.from_float32(rng.standard_normal((N, K) if transpose_b else (K, N)).astype(np.float32))
    a, b = (a.T if transpose_a else a), (b.T if transpose_b else b)
    exact = bf16.to_float32(a).astype(np.float64) @ bf16.to_float32(b).astype(np.float64)
    product = bf16.matmul(a, b)
    assert product.dtype == np.float32
    np.testing.assert_allclose(product, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    start = rng.standard_normal((M, N)).astype(np.float32)
    np.testing.assert_allclose(bf16.matmul(a, b, start.copy(), accumulate=True), start + exact, rtol=0,
                               atol=1e-5 * np.abs(exact).max())


def test_gemm_rejects_what_it_cannot_multiply():
    a = np.zeros((3, 4), np.uint16)
    with pytest.raises(ValueError, match="uint16"):
        bf16.matmul(a.astype(np.float32), a.T)
    with pytest.raises(ValueError, match="expected uint16"):
        bf16.matmul(a, a)
    with pytest.raises(ValueError, match="out must be float32"):
        bf16.matmul(a, a.T, out=np.zeros((3, 3), np.float64))


BACKENDS = ["torch", "mkl", "fallback"]   # torch's bfloat16 matmul, MKL's GEMM, MKL's absence


def _use(backend, monkeypatch):
    monkeypatch.setattr(bfloat16, "BACKEND", "torch" if backend == "torch" else "mkl")
    if backend == "fallback":
        monkeypatch.setattr(bf16, "_GEMM", None)


def _assert_rounded(got, exact):
    """got is the exactly computed ``exact`` rounded to bfloat16, but for the rare values (< 1%)
    whose float32 accumulation landed on the other side of a rounding boundary: one bfloat16 step
    (at most 2^-7 relative) away."""
    assert got.dtype == torch.bfloat16 or torch.equal(got, got.to(torch.bfloat16).to(got.dtype))
    got, exact = got.double(), exact.double()
    assert (got != exact.to(torch.bfloat16).double()).double().mean().item() < 0.01
    assert ((got - exact).abs() <= 2 ** -7 * exact.abs()).all()


@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_product_is_the_exact_product_of_the_rounded_operands_rounded(transpose_a, transpose_b, backend,
                                                                     monkeypatch):
    _use(backend, monkeypatch)
    torch.manual_seed(0)
    M, K, N = 37, 130, 21
    a = torch.randn((K, M) if transpose_a else (M, K))
    b = torch.randn((N, K) if transpose_b else (K, N))
    a, b = (a.t() if transpose_a else a), (b.t() if transpose_b else b)
    got = bfloat16.product(a, b)
    assert got.dtype == torch.bfloat16 and got.shape == (M, N)
    _assert_rounded(got, a.to(torch.bfloat16).double() @ b.to(torch.bfloat16).double())
    # the float64 oracle's own product: the same rounding of the float64 accumulation
    exact = bfloat16.product(a.double(), b.double(), exact=True)
    assert torch.equal(exact, (a.to(torch.bfloat16).double() @ b.to(torch.bfloat16).double()).to(torch.bfloat16))


# -- the per-step recurrent products, inside the compiled loops ----------------------------

def test_compiled_rounding_matches_torch_bit_for_bit():
    """bf16.round_rows in float32, and in float64 (through float32 first, as torch converts a double:
    a float64 just above a tie that float32 rounds onto the tie rounds to even, not up)."""
    torch.manual_seed(0)
    values = torch.cat([torch.randn(10000) * 10.0 ** torch.randint(-40, 38, (10000,)),
                        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4e38, 1e-45, 1e-39,
                                      1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)])]).double()
    values = torch.cat([values, torch.tensor([1 + 2 ** -8 + 2 ** -40], dtype=torch.float64)])
    for dtype in (torch.float32, torch.float64):
        ours = values.to(dtype).numpy().reshape(4, -1).copy()
        bf16.round_rows(ours)
        theirs = values.to(dtype).to(torch.bfloat16).to(dtype).numpy().reshape(4, -1)
        np.testing.assert_array_equal(ours, theirs)   # NaN where NaN
    assert values[-1].to(torch.bfloat16).item() == 1.0   # the double-rounding case is in the sweep


PRODUCT_SHAPES = [(16, 128, 384), (7, 33, 20), (1, 64, 192), (64, 5, 3), (3, 1, 5)]


@pytest.mark.parametrize("R,K,N", PRODUCT_SHAPES)
@pytest.mark.parametrize("how", ["brgemm", "rounded float32", "rounded float64", "rounded on tiles"])
def test_recurrent_product_is_the_exact_product_of_the_rounded_operands_rounded(R, K, N, how):
    """vnni_product (oneDNN's microkernel on the VNNI-packed weight; odd K padded), rounded_product and
    rounded_tiles_product against the float64 product of the rounded operands, rounded; written into
    a strided view."""
    if how == "brgemm" and not bf16.HAS_BRGEMM:
        pytest.skip("no BF16 units on this CPU, or torch exports no brgemm: the mode takes rounded_product")
    rng = np.random.default_rng(R * K + N)
    dtype = np.float64 if how.endswith("64") else np.float32
    x = rng.standard_normal((R, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    exact = torch.from_numpy(x).to(torch.bfloat16).double() @ torch.from_numpy(w).to(torch.bfloat16).double()
    wide = np.full((R, N + 3), 7.0, dtype)
    out = wide[:, 1:N + 1]   # rows of stride N + 3
    if how == "brgemm":
        bf16.vnni_product(x, bf16.vnni_operand(w), out)
    elif how == "rounded on tiles":
        rounded_w = bf16.rounded_operand(w)
        bf16.rounded_tiles_product(x, rounded_w, tiles.pack(rounded_w), out)
    else:
        bf16.rounded_product(x, bf16.rounded_operand(w), out)
    assert (wide[:, 0] == 7).all() and (wide[:, N + 1:] == 7).all()
    if dtype == np.float64:   # float64 accumulation of exact products: the oracle to the bit
        assert torch.equal(torch.from_numpy(out.copy()), exact.to(torch.bfloat16).double())
    else:
        _assert_rounded(torch.from_numpy(out.copy()), exact)


def test_vnni_operand_interleaves_row_pairs_and_pads_an_odd_k():
    if not bf16.HAS_BRGEMM:
        pytest.skip("no BF16 units on this CPU, or torch exports no brgemm")
    w = np.arange(15, dtype=np.float32).reshape(5, 3)   # exact in bfloat16
    packed = bf16.vnni_operand(w)
    assert packed.shape == (3, 6) and packed.dtype == np.uint16
    widened = bf16.to_float32(packed)
    np.testing.assert_array_equal(widened[1], [w[2, 0], w[3, 0], w[2, 1], w[3, 1], w[2, 2], w[3, 2]])
    np.testing.assert_array_equal(widened[2], [w[4, 0], 0, w[4, 1], 0, w[4, 2], 0])


def test_the_mode_multiplies_per_step_on_bf16_units_only(monkeypatch):
    """recurrent_products: the microkernel where torch's bfloat16 matmul runs on BF16 units, rounded
    GEMMs elsewhere (forcing the "torch" backend on a CPU without them must not reach the microkernel,
    which would abort the process), nothing outside the mode."""
    assert bfloat16.recurrent_products() is None
    with bfloat16.mode():
        assert bfloat16.recurrent_products() == ("brgemm" if bf16.HAS_BRGEMM and bfloat16.BACKEND == "torch"
                                                 else "rounded")
        monkeypatch.setattr(bfloat16, "BACKEND", "torch")
        monkeypatch.setattr(bf16, "HAS_BRGEMM", False)
        assert bfloat16.recurrent_products() == "rounded"
        with pytest.raises(RuntimeError, match="rounded_operand"):
            products.operands((np.zeros((4, 4), np.float32),), "brgemm")
        monkeypatch.setattr(bfloat16, "BACKEND", "mkl")
        assert bfloat16.recurrent_products() == "rounded"


@pytest.mark.parametrize("backend", BACKENDS)
def test_projection_is_the_rounded_linear_map_and_its_gradients(backend, monkeypatch):
    _use(backend, monkeypatch)
    torch.manual_seed(0)
    rows = torch.randn(50, 10, requires_grad=True)
    weight = torch.randn(24, 10, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    grad = torch.randn(50, 24)
    bfloat16.Projection.apply(rows, weight, bias).backward(grad)

    def r(t):
        return t.detach().to(torch.bfloat16).double()
    out = bfloat16.Projection.apply(rows, weight, None)
    assert out.dtype == torch.float32
    _assert_rounded(out, r(rows) @ r(weight).t())
    torch.testing.assert_close(bfloat16.Projection.apply(rows, weight, bias), out + bias, rtol=0, atol=0)
    assert rows.grad.dtype == weight.grad.dtype == torch.float32
    _assert_rounded(rows.grad, r(grad) @ r(weight))
    _assert_rounded(weight.grad, r(grad).t() @ r(rows))
    torch.testing.assert_close(bias.grad, grad.sum(0))


# -- whole layers -------------------------------------------------------------------------

KINDS = ["gru", "gru_reset_before", "lstm", "rnn", "rnn_relu", "mgu", "mgu1", "mgu3", "mingru", "mingru_g"]


STACKED = {"num_layers": 2, "bidirectional": True, "batch_first": True}


def _inputs(kind, options):
    """x, and in the stacked case lengths and a random initial state (whose weight-gradient term
    SimpleRNN's kernels add separately)."""
    x = torch.randn(B, T, I) if options.get("batch_first") else torch.randn(T, B, I)
    if not options:
        return x, None, None
    h0 = torch.randn(4, B, H)
    return x, torch.tensor([T, 5, 1, T, 9, 3]), ((h0, torch.randn(4, B, H)) if kind == "lstm" else h0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, STACKED])
def test_fused_layer_in_the_mode_equals_the_reference_in_float64(kind, options):
    """Fused kernels against grukit's reference loop, both in float64 with the mode on: the same
    roundings in the same places (padded lengths in the stacked case)."""
    torch.manual_seed(1)
    layer = _build(kind, kernel="auto", dtype=torch.float64, **options)
    oracle = copy.deepcopy(layer)
    oracle.kernel = "reference"
    x, lengths, state0 = _inputs(kind, options)
    CALLS.clear()
    ours = _run(layer, x.double(), "forced", lengths, state0)
    assert CALLS["run"] > 0 and CALLS["backward"] > 0   # the fused kernels ran
    expected = _run(oracle, x.double(), "forced", lengths, state0)
    for got, want in zip(ours, expected):
        assert _rel(got, want) < EXACT
    # the comparison can tell the mode from no mode: the gradients differ by far more
    plain = _run(layer, x.double(), "plain", lengths, state0)
    assert max(_rel(got, want) for got, want in zip(plain[2:], expected[2:])) > WITHOUT_THE_MODE


# every cell on this host's backend; the GRU and LSTM stacks on each backend
LAYER_CASES = ([(kind, options, tolerance, None) for kind in KINDS
                for options, tolerance in (({}, ONE_LAYER), (STACKED, STACK))]
               + [(kind, STACKED, STACK, backend) for kind in ("gru", "lstm") for backend in BACKENDS])


@pytest.mark.parametrize("kind,options,tolerance,backend", LAYER_CASES)
def test_fused_layer_under_autocast_is_the_float64_mode_up_to_rounding(kind, options, tolerance, backend,
                                                                        monkeypatch):
    """Fused kernels in float32 under autocast against grukit's reference loop in float64 with the
    mode forced, within the statistical tolerance of the module docstring."""
    if backend is not None:
        _use(backend, monkeypatch)
    torch.manual_seed(1)
    layer = _build(kind, kernel="auto", **options)
    oracle = copy.deepcopy(layer).double()
    oracle.kernel = "reference"
    x, lengths, state0 = _inputs(kind, options)
    CALLS.clear()
    ours = _run(layer, x, "autocast", lengths, state0)
    assert CALLS["run"] > 0 and CALLS["backward"] > 0
    expected = _run(oracle, x.double(), "forced", lengths, state0)
    for got, want in zip(ours, expected):
        assert got.dtype == torch.float32
        assert _rel(got, want) < tolerance


def _rounded_linear(a, weight):
    """r(r(a) @ r(W)^T), whose gradients r(r(grad) @ r(W)) and r(r(grad)^T @ r(a)) take the rounded
    output gradient: a literal float64 transcription of the mode's input projection."""
    class RoundedLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, weight):
            ctx.save_for_backward(a, weight)
            return _r(_r(a) @ _r(weight).t())

        @staticmethod
        def backward(ctx, grad):
            a, weight = ctx.saved_tensors
            return _r(_r(grad) @ _r(weight)), _r(_r(grad).t() @ _r(a))
    return RoundedLinear.apply(a, weight)


def _recurrent(h, weight):
    """r(r(h) @ r(W)^T), grad h = r(r(grad) @ r(W)), grad W = r(grad)^T @ r(h) unrounded (the steps'
    sum is rounded once, by _rounded_gradient): the mode's per-step recurrent product."""
    class Recurrent(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, weight):
            ctx.save_for_backward(h, weight)
            return _r(_r(h) @ _r(weight).t())

        @staticmethod
        def backward(ctx, grad):
            h, weight = ctx.saved_tensors
            return _r(_r(grad) @ _r(weight)), _r(grad).t() @ _r(h)
    return Recurrent.apply(h, weight)


def _rounded_gradient(weight):
    """weight, whose gradient (summed over all its uses) is rounded to bfloat16."""
    class Rounded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weight):
            return weight.clone()

        @staticmethod
        def backward(ctx, grad):
            return _r(grad)
    return Rounded.apply(weight)


def _r(t):
    return t.to(torch.bfloat16).double()


@pytest.mark.parametrize("how,backend", [("float64", None)] + [("autocast", backend) for backend in BACKENDS])
def test_fused_gru_in_the_mode_equals_a_literal_transcription(how, backend, monkeypatch):
    """torch.nn.GRU's equations (reset after), written out in float64 with the mode's roundings:
    the fused float64 layer in the mode to 1e-9, the float32 one under autocast up to rounding."""
    if backend is not None:
        _use(backend, monkeypatch)
    torch.manual_seed(2)
    layer = gnn.GRU(I, H, dtype=torch.float64 if how == "float64" else torch.float32)
    x = torch.randn(T, B, I, dtype=layer.weight_ih_l0.dtype)
    ours = _run(layer, x, "forced" if how == "float64" else "autocast")
    w_ih, w_hh, b_ih, b_hh = (p.detach().double().requires_grad_(True) for p in
                              (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0))
    xs = x.double().requires_grad_(True)
    gx = _rounded_linear(xs.reshape(-1, I), w_ih).view(T, B, 3 * H) + b_ih
    h = torch.zeros(B, H, dtype=torch.float64)
    w_hh_rounded = _rounded_gradient(w_hh)
    outs = []
    for t in range(T):
        gh = _recurrent(h, w_hh_rounded) + b_hh
        r = torch.sigmoid(gx[t, :, :H] + gh[:, :H])
        z = torch.sigmoid(gx[t, :, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gx[t, :, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    out = torch.stack(outs)
    (out.sin().sum() + (h * h).sum()).backward()
    expected = [out.detach(), h.detach(), xs.grad, w_ih.grad, w_hh.grad, b_ih.grad, b_hh.grad]
    for got, want in zip(ours, expected):
        assert _rel(got, want) < (EXACT if how == "float64" else ONE_LAYER)


def test_inference_step_and_embedding_under_autocast_give_the_training_numbers():
    torch.manual_seed(3)
    layer = gnn.GRU(I, H, batch_first=True)
    x = torch.randn(B, T, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained, _ = layer(x)
        with torch.no_grad():
            inferred, _ = layer(x)
            state, steps = None, []
            for t in range(T):
                y_t, state = layer.step(x[:, t], state)
                steps.append(y_t)
    torch.testing.assert_close(inferred, trained.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.stack(steps, 1), inferred, rtol=0, atol=1e-6)

    embedding = torch.randn(30, I, requires_grad=True)
    tokens = torch.randint(0, 30, (B, T))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        through_ids, _ = layer(tokens, embedding=embedding)
        looked_up, _ = layer(embedding[tokens])
    torch.testing.assert_close(through_ids, looked_up, rtol=0, atol=1e-6)
    (grad_ids,) = torch.autograd.grad(through_ids.sin().sum(), embedding)
    (grad_looked_up,) = torch.autograd.grad(looked_up.sin().sum(), embedding)
    # The distinct-token path rounds each token's summed gradient, the looked-up one each position's
    # before the sum: the same up to bfloat16's rounding, not closer.
    assert _rel(grad_ids, grad_looked_up) < 1e-2


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bfloat16_input_under_autocast_is_taken_as_its_float32_values(kind):
    """Under autocast a torch Linear before the layer returns bfloat16; the layer takes it (and a
    bfloat16 state) as torch.nn.GRU does, converting to its float32 exactly: the same outputs and
    gradients as the float32 copies of the same values, bit for bit."""
    torch.manual_seed(4)
    layer = _build(kind, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.bfloat16)
    h0 = torch.randn(1, B, H, dtype=torch.bfloat16)
    state = (h0, h0.clone()) if kind == "lstm" else h0
    float_state = tuple(s.float() for s in state) if kind == "lstm" else state.float()
    results = []
    for inputs in ((x, state), (x.float(), float_state)):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(*inputs)
            y_t, _ = layer.step(inputs[0][:, 0], inputs[1])
        out.sin().sum().backward()
        results.append((out.detach(), y_t.detach(), [p.grad.clone() for p in layer.parameters()]))
    (out_b, y_b, grads_b), (out_f, y_f, grads_f) = results
    assert out_b.dtype == torch.float32
    assert torch.equal(out_b, out_f) and torch.equal(y_b, y_f)
    assert all(torch.equal(a, b) for a, b in zip(grads_b, grads_f))


def test_backward_inside_autocast_and_outside_give_the_same_gradients():
    """Backward may run inside the autocast block (it once raised there: the weight-gradient GEMM
    met bfloat16 tensors it could not read)."""
    torch.manual_seed(4)
    layer = gnn.LSTM(I, H)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
        out.sum().backward()
    inside = [p.grad.clone() for p in layer.parameters()]
    outside = _run(layer, x, "autocast")
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    out.sum().backward()
    for a, b in zip(inside, [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert outside[0].dtype == torch.float32


@pytest.mark.parametrize("autocast_dtype,layer_dtype", [(torch.float16, torch.float32),
                                                        (torch.bfloat16, torch.float64)])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_other_autocast_requests_leave_the_layer_in_its_own_dtype(autocast_dtype, layer_dtype, kind):
    """Outputs and gradients as without autocast, the backward run inside the block too (the fused
    path's own backward GEMMs once ran there in float16)."""
    torch.manual_seed(5)
    layer = _build(kind, dtype=layer_dtype, batch_first=True)
    x = torch.randn(B, T, I, dtype=layer_dtype)
    plain = _run(layer, x, "plain")
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=autocast_dtype):
        out, state = layer(x)
        states = state if isinstance(state, tuple) else (state,)
        (out.sin().sum() + sum((s * s).sum() for s in states)).backward()   # _run's loss
    assert out.dtype == layer_dtype
    torch.testing.assert_close(out, plain[0], rtol=0, atol=0)
    for got, want in zip([x.grad, *[p.grad for p in layer.parameters()]], plain[len(states) + 1:]):
        assert got.dtype == layer_dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_mode_is_for_cpu_layers():
    """Autocast on the CPU leaves a layer on another device alone; the mode turned on by hand
    there raises, naming the fix ("meta" stands in for a GPU)."""
    layer = gnn.GRU(I, H, device="meta", kernel="reference")
    x = torch.randn(T, B, I, device="meta")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert out.dtype == torch.float32 and out.device.type == "meta"
    with pytest.raises(ConfigError, match="runs on the CPU.*leave grukit.nn.bfloat16.mode"), bfloat16.mode():
        layer(x)
