"""layer.step() in inference: one compiled call per layer on the weights as stored (api.StepStack),
against the reference loop's full sequence. The numpy views of the parameters that step() and
layer(x) keep for inference: in-place updates are read at once, replaced or moved parameters are
picked up, and nothing of it is pickled."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from hypothesis import given, settings
from hypothesis import strategies as st

import grukit.nn as gnn
from grukit.errors import ShapeError
from grukit.nn.kernels import api, function
from grukit.nn.kernels.common import stored_product

I, H, T = 5, 6, 7

BUILDERS = {
    "gru": lambda i, h, **o: gnn.GRU(i, h, **o),
    "gru_reset_before": lambda i, h, **o: gnn.GRU(i, h, reset_after=False, **o),
    "lstm": lambda i, h, **o: gnn.LSTM(i, h, **o),
    "rnn_tanh": lambda i, h, **o: gnn.RNN(i, h, **o),
    "rnn_relu": lambda i, h, **o: gnn.RNN(i, h, nonlinearity="relu", **o),
    "mgu": lambda i, h, **o: gnn.MGU(i, h, **o),
    "mingru": lambda i, h, **o: gnn.MinGRU(i, h, **o),
    "mingru_g": lambda i, h, **o: gnn.MinGRU(i, h, candidate="g", **o),
}


def twins(kind, dtype, num_layers=2, input_size=I, hidden_size=H, seed=3):
    """The layer on its default kernel and a reference-loop copy with the same weights."""
    torch.manual_seed(seed)
    layer = BUILDERS[kind](input_size, hidden_size, num_layers=num_layers, dtype=dtype).eval()
    reference = BUILDERS[kind](input_size, hidden_size, num_layers=num_layers, dtype=dtype,
                               kernel="reference").eval()
    reference.load_state_dict(layer.state_dict())
    return layer, reference


def states_of(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("batch", [1, 3])     # one row: dot products; more: BLAS on W.T
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_steps_equal_the_reference_sequence(kind, batch, dtype, atol):
    layer, reference = twins(kind, dtype)
    x = torch.randn(T, batch, I, dtype=dtype)
    want_out, want_state = reference(x)
    calls = function.CALLS["step"]
    state = None
    with torch.no_grad():
        for t in range(T):
            y, state = layer.step(x[t], state)
            torch.testing.assert_close(y, want_out[t], atol=atol, rtol=0)
    assert function.CALLS["step"] == calls + 2 * T, "every step ran the fused stack (two layers)"
    for got, want in zip(states_of(state), states_of(want_state)):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(list(BUILDERS)), inputs=st.integers(1, 5), hidden=st.integers(1, 5),
       batch=st.integers(1, 3), layers=st.integers(1, 2), seed=st.integers(0, 2 ** 16))
def test_property_random_shapes(kind, inputs, hidden, batch, layers, seed):
    """Down to one input, one unit and one sequence: where W.T is both C- and Fortran-ordered."""
    layer, reference = twins(kind, torch.float64, layers, inputs, hidden, seed)
    x = torch.randn(3, batch, inputs, dtype=torch.float64)
    want_out, want_state = reference(x)
    state = None
    calls = function.CALLS["step"]
    with torch.no_grad():
        for t in range(3):
            y, state = layer.step(x[t], state)
            torch.testing.assert_close(y, want_out[t], atol=1e-12, rtol=0)
    assert function.CALLS["step"] == calls + 3 * layers
    for got, want in zip(states_of(state), states_of(want_state)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_unbatched_steps_and_a_given_state(kind):
    layer, reference = twins(kind, torch.float64)
    x = torch.randn(T, I, dtype=torch.float64)
    start = tuple(torch.randn(2, H, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1))
    start = start if kind == "lstm" else start[0]
    want_out, want_state = reference(x, start)
    kept = [part.clone() for part in states_of(start)]
    state = start
    with torch.no_grad():
        for t in range(T):
            y, state = layer.step(x[t], state)
            assert y.shape == (H,)
            torch.testing.assert_close(y, want_out[t], atol=1e-12, rtol=0)
    for got, want in zip(states_of(state), states_of(want_state)):
        assert got.shape == (2, H)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(states_of(start), kept)), "the given state is left as it was"


def test_the_given_state_is_not_changed_and_the_result_is_new():
    layer, _ = twins("gru", torch.float64)
    state = torch.randn(2, 3, H, dtype=torch.float64)
    kept = state.clone()
    with torch.no_grad():
        y, new = layer.step(torch.randn(3, I, dtype=torch.float64), state)
        y.add_(1.0)
    assert torch.equal(state, kept)
    assert not torch.equal(new[-1], y), "the output is its own tensor, not a view of the state"


@pytest.mark.parametrize("update", ["data", "fused_adam", "load_state_dict"])
def test_in_place_updates_are_read_at_once(update):
    """The kept arrays are views of the parameters: every in-place change is seen, also those
    that do not bump the tensor's version (writes through .data, torch's fused Adam)."""
    layer, reference = twins("gru", torch.float32)
    x, state = torch.randn(2, I), torch.randn(2, 2, H)   # a state: from zeros weight_hh would not show
    with torch.no_grad():
        layer.step(x, state)                        # keeps the views
        layer(x[None], state)
    if update == "data":
        layer.weight_hh_l0.data.mul_(-2.0)
    elif update == "fused_adam":
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.Adam(layer.parameters(), lr=0.5, fused=True).step()
    else:
        other, _ = twins("gru", torch.float32)
        other.weight_ih_l1.data.normal_()
        layer.load_state_dict(other.state_dict())
    reference.load_state_dict(layer.state_dict())
    check_step_and_sequence(layer, reference, x, state)


def check_step_and_sequence(layer, reference, x, state):
    """layer.step(x, state) and layer(sequence, state) under no_grad (both on the kept views) equal
    the reference loop with the weights the layer has now."""
    sequence = torch.cat([x[None], torch.randn(3, *x.shape, dtype=x.dtype)])
    with torch.no_grad():
        got, _ = layer.step(x, state)
        got_sequence, _ = layer(sequence, state)
    torch.testing.assert_close(got, reference(x[None], state)[0][0], atol=2e-6, rtol=0)
    torch.testing.assert_close(got_sequence, reference(sequence, state)[0], atol=2e-6, rtol=0)


@pytest.mark.parametrize("change", ["replace", "assign_data", "transpose_data", "to_float64"])
def test_replaced_or_moved_parameters_are_picked_up(change):
    layer, reference = twins("lstm", torch.float32)
    x, state = torch.randn(2, I), (torch.randn(2, 2, H), torch.randn(2, 2, H))
    with torch.no_grad():
        layer.step(x, state)
        layer(x[None], state)
    if change == "replace":
        layer.weight_hh_l1 = torch.nn.Parameter(torch.randn_like(layer.weight_hh_l1))
    elif change == "assign_data":
        layer.bias_ih_l0.data = torch.randn_like(layer.bias_ih_l0)
    elif change == "transpose_data":   # the same memory read another way: only the strides change
        layer.weight_hh_l0.data = layer.weight_hh_l0.data.view(H, 4 * H).t()
    else:
        layer.double()
        reference.double()
        x, state = x.double(), tuple(part.double() for part in state)
    reference.load_state_dict(layer.state_dict())
    check_step_and_sequence(layer, reference, x, state)


def test_parametrized_weights_are_computed_on_every_call():
    """With torch.nn.utils.parametrizations (weight norm here) a weight is computed from other
    parameters on every access: step() and layer(x) must follow in-place changes of those."""
    layer, reference = twins("gru", torch.float32)
    torch.nn.utils.parametrizations.weight_norm(layer, "weight_hh_l0")
    x, state = torch.randn(2, I), torch.randn(2, 2, H)
    with torch.no_grad():
        layer.step(x, state)
        layer(x[None], state)
        layer.parametrizations.weight_hh_l0.original0.mul_(0.5)   # the norm g: the weight halves
        reference.weight_hh_l0.copy_(layer.weight_hh_l0)
    check_step_and_sequence(layer, reference, x, state)
    assert "_kept_kernel_views" not in layer.__dict__


def test_pruned_weights_are_read_as_recomputed():
    """torch.nn.utils.prune keeps weight_orig as the parameter and recomputes the weight from it
    and the mask before every call: layer(x) must follow in-place changes of weight_orig."""
    layer, reference = twins("gru", torch.float32)
    torch.nn.utils.prune.l1_unstructured(layer, "weight_hh_l0", amount=0.5)
    sequence, state = torch.randn(4, 2, I), torch.randn(2, 2, H)
    with torch.no_grad():
        layer(sequence, state)
        layer.weight_hh_l0_orig.mul_(-1.5)
        got, _ = layer(sequence, state)   # the pre-hook recomputes weight_hh_l0 first
        reference.weight_hh_l0.copy_(layer.weight_hh_l0)
        want, _ = reference(sequence, state)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    assert "_kept_kernel_views" not in layer.__dict__


def test_the_kept_views_are_not_pickled_and_copies_use_their_own_weights():
    layer, _ = twins("gru", torch.float32)
    x = torch.randn(1, I)
    with torch.no_grad():
        before, _ = layer.step(x)
    assert layer.__dict__.get("_kept_kernel_views") is not None
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert "_kept_kernel_views" not in loaded.__dict__
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight_ih_l0.mul_(0.5)   # (from a zero state, weight_hh would not show)
        torch.testing.assert_close(loaded.step(x)[0], before, atol=0, rtol=0)
        torch.testing.assert_close(layer.step(x)[0], before, atol=0, rtol=0)
        assert not torch.equal(twin.step(x)[0], before)


def test_a_bad_state_raises_the_layers_error():
    layer, _ = twins("gru", torch.float32)
    with torch.no_grad(), pytest.raises(ShapeError, match="h_0 must have shape"):
        layer.step(torch.randn(3, I), torch.zeros(2, 4, H))
    with torch.no_grad(), pytest.raises(ShapeError, match="tuple"):
        gnn.LSTM(I, H).step(torch.randn(3, I), torch.zeros(1, 3, H))
    with torch.no_grad(), pytest.raises(ShapeError, match=r"c_0 must have shape \(1, 3, 6\)"):
        gnn.LSTM(I, H).step(torch.randn(3, I), (torch.zeros(1, 3, H), torch.zeros(1, 3, H + 1)))
    with torch.no_grad(), pytest.raises(ShapeError, match=r"h_0 must have shape \(2, 6\)"):
        layer.step(torch.randn(I), torch.zeros(2, 1, H))   # an unbatched step takes (L, H)


def test_step_stack_checks_its_arrays():
    rng = np.random.default_rng(0)
    w_ih = rng.standard_normal((3 * H, I))
    w_hh = rng.standard_normal((3 * H, H))
    with pytest.raises(ValueError, match="weight_hh of layer 0"):
        api.StepStack("GRU", [(w_ih, None, np.asfortranarray(w_hh), None)])
    with pytest.raises(ValueError, match="w_ih of layer 1"):
        api.StepStack("GRU", [(w_ih, None, w_hh, None), (w_ih, None, w_hh, None)])
    with pytest.raises(ValueError, match="MGU1"):
        api.StepStack("MGU1", [(w_ih, None, w_hh, None)])
    stack = api.StepStack("GRU", [(w_ih, None, w_hh, None)])
    with pytest.raises(ValueError, match="x: expected"):
        stack.step(np.zeros((2, I), np.float32))
    with pytest.raises(ValueError, match="h: expected"):
        stack.step(np.zeros((2, I)), np.zeros((1, 3, H)))


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_product_reads_a_weight_as_stored(rows, dtype):
    """stored_product: x @ W.T with W as stored, by dot products for one row (four rows of W at a
    time, and the rest) and through BLAS for more."""
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((3 * H + 1, H + 3)).astype(dtype)
    x = rng.standard_normal((rows, H + 3)).astype(dtype)
    out = np.full((rows, 3 * H + 1), np.nan, dtype)
    stored_product(x, w, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64),
                               atol=1e-5 if dtype == np.float32 else 1e-12, rtol=0)
