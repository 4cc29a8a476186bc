"""Autograd beyond one plain backward (frozen parameters, double backward, checkpointing) and
torch.nn's state and error conventions, against torch.nn's twins."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import grukit.nn as gnn
from grukit.errors import ShapeError, UnsupportedKernelConfig
from grukit.nn.kernels.function import CALLS

CELLS = [("GRU", gnn.GRU, torch.nn.GRU), ("LSTM", gnn.LSTM, torch.nn.LSTM), ("RNN", gnn.RNN, torch.nn.RNN)]


def twins(make, make_torch, kernel="auto", **options):
    torch.manual_seed(0)
    layer = make(3, 4, kernel=kernel, **options).double()
    twin = make_torch(3, 4, **options).double()
    twin.load_state_dict(layer.state_dict())
    return layer, twin


@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_bias_hh_trains_when_weight_hh_is_frozen(name, make, make_torch):
    """Only weight_hh frozen: bias_hh still gets its gradient (the fused backward dropped it)."""
    layer, twin = twins(make, make_torch)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for model in (layer, twin):
        model.weight_hh_l0.requires_grad_(False)
        model(x)[0].sin().sum().backward()
    before = CALLS["backward"]
    layer.zero_grad()
    layer(x)[0].sin().sum().backward()
    assert CALLS["backward"] == before + 1, "the fused backward did not run"
    assert layer.weight_hh_l0.grad is None
    for pname in ("bias_hh_l0", "bias_ih_l0", "weight_ih_l0"):
        got, want = getattr(layer, pname).grad, getattr(twin, pname).grad
        assert got is not None, f"{name}: {pname} got no gradient"
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def gradient_penalty_grads(model, x0, square_output):
    """The second-order gradients of a gradient penalty: ||d loss / d x||^2 differentiated again."""
    x = x0.clone().requires_grad_(True)
    out = model(x)[0]
    loss = (out ** 2).sum() if square_output else out.sum()
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    (grad_x ** 2).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("square_output", [False, True], ids=["linear loss", "square loss"])
@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_double_backward_through_the_fused_kernel_names_the_fix(name, make, make_torch, square_output):
    """A linear first loss used to slip past once_differentiable: the second backward ran and missed
    every term through weight_hh (x.grad None, weight_ih's off by a quarter of its norm)."""
    layer, _ = twins(make, make_torch)
    x0 = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedKernelConfig, match=r"create_graph=True.*layer\.kernel = 'reference'"):
        gradient_penalty_grads(layer, x0, square_output)


@pytest.mark.parametrize("square_output", [False, True], ids=["linear loss", "square loss"])
@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_double_backward_on_the_reference_loop_matches_torch(name, make, make_torch, square_output):
    layer, twin = twins(make, make_torch)
    layer.kernel = "reference"   # what the error tells the user to do
    x0 = torch.randn(5, 2, 3, dtype=torch.float64)
    got = gradient_penalty_grads(layer, x0, square_output)
    want = gradient_penalty_grads(twin, x0, square_output)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=0)


def test_double_backward_through_an_embedded_first_layer_names_the_fix():
    layer = gnn.GRU(3, 4, kernel="reference")
    table = torch.randn(10, 3, requires_grad=True)
    out = layer(torch.randint(0, 10, (5, 2)), embedding=table)[0]
    with pytest.raises(UnsupportedKernelConfig, match="embedded first layer.*Embedding's output"):
        torch.autograd.grad(out.sum(), table, create_graph=True)


def test_double_backward_in_the_bfloat16_mode_names_the_fix():
    layer = gnn.GRU(3, 4, kernel="reference")
    x = torch.randn(5, 2, 3, requires_grad=True)
    with gnn.bfloat16.mode():
        out = layer(x)[0]
    with pytest.raises(UnsupportedKernelConfig, match="bfloat16 mode"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_checkpointing_gives_the_plain_gradients(name, make, make_torch, reentrant):
    """torch.utils.checkpoint recomputes the forward inside backward: first-order, so the fused
    backward runs there as in a plain call."""
    layer, _ = twins(make, make_torch)
    x0 = torch.randn(6, 2, 3, dtype=torch.float64)
    grads = []
    for wrapped in (False, True):
        layer.zero_grad()
        x = x0.clone().requires_grad_(True)
        out = checkpoint(lambda t: layer(t)[0], x, use_reentrant=reentrant) if wrapped else layer(x)[0]
        out.tanh().sum().backward()
        grads.append([x.grad] + [p.grad.clone() for p in layer.parameters()])
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_an_lstm_state_may_be_a_list_as_torch_accepts():
    layer, twin = twins(gnn.LSTM, torch.nn.LSTM)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    state = [torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)]
    out, (h_n, c_n) = layer(x, state)
    want_out, (want_h, want_c) = twin(x, state)
    for got, want in ((out, want_out), (h_n, want_h), (c_n, want_c)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    layer.eval()
    with torch.no_grad():
        y, _ = layer.step(x[0], state)
    torch.testing.assert_close(y, want_out[0], atol=1e-12, rtol=0)


def test_a_shape_error_is_caught_as_torch_nn_s_runtime_error():
    layer = gnn.GRU(3, 4)
    with pytest.raises(RuntimeError) as caught:
        layer(torch.randn(5, 2, 7))
    assert isinstance(caught.value, ShapeError) and isinstance(caught.value, ValueError)


def test_min_gru_runs_in_float16():
    """The log-space scan's stand-in for log(0) overflowed float16 ("value cannot be converted")."""
    torch.manual_seed(0)
    layer = gnn.MinGRU(3, 4)
    x = torch.randn(7, 2, 3)
    want = layer(x)[0]
    got = layer.half()(x.half())[0]
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=5e-3, rtol=0)


@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_functional_call_uses_the_given_parameters(name, make, make_torch):
    """torch.func.functional_call (MAML, hypernetworks): the given tensors, not the stored ones,
    are used, and the gradients reach them."""
    layer, twin = twins(make, make_torch)
    torch.manual_seed(1)
    given = {k: torch.randn_like(v, requires_grad=True) for k, v in layer.named_parameters()}
    twin.load_state_dict({k: v.detach() for k, v in given.items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out = torch.func.functional_call(layer, given, (x,))[0]
    out.tanh().sum().backward()
    twin(x)[0].tanh().sum().backward()
    torch.testing.assert_close(out, twin(x)[0], atol=1e-12, rtol=0)
    for k, v in given.items():
        torch.testing.assert_close(v.grad, twin.get_parameter(k).grad, atol=1e-9, rtol=0)
    assert all(p.grad is None for p in layer.parameters())


@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_weight_norm_on_the_recurrent_weight(name, make, make_torch):
    """A parametrized weight_hh is read through its parametrization, in forward and in step."""
    from torch.nn.utils.parametrizations import weight_norm
    layer, twin = twins(make, make_torch)
    for model in (layer, twin):
        weight_norm(model, "weight_hh_l0")
        with torch.no_grad():
            model.parametrizations.weight_hh_l0.original0.mul_(0.5)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for model in (layer, twin):
        model(x)[0].sin().sum().backward()
    torch.testing.assert_close(layer(x)[0], twin(x)[0], atol=1e-12, rtol=0)
    for (k, p), q in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=0, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval().step(x[0])[0], twin(x[:1])[0][0], atol=1e-12, rtol=0)


def test_threads_sharing_one_layer_get_the_results_of_calls_made_alone():
    from concurrent.futures import ThreadPoolExecutor
    torch.manual_seed(0)
    layer = gnn.LSTM(3, 16).eval()
    inputs = [torch.randn(t, b, 3) for t, b in ((40, 1), (30, 17), (25, 64), (50, 8))] * 3
    with torch.no_grad():
        alone = [layer(x)[0] for x in inputs]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda x: layer(x)[0], inputs))
    for got, want in zip(together, alone):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,make,make_torch", CELLS)
def test_torch_func_grad(name, make, make_torch):
    """torch.func.grad differentiates with create_graph=True (so that it nests): on the reference
    loop it matches torch.nn; through the fused kernel it raises, naming that fix."""
    layer, twin = twins(make, make_torch)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    want = torch.func.grad(lambda t: twin(t)[0].pow(2).sum())(x)
    with pytest.raises(UnsupportedKernelConfig, match="kernel = 'reference'"):
        torch.func.grad(lambda t: layer(t)[0].pow(2).sum())(x)
    layer.kernel = "reference"
    got = torch.func.grad(lambda t: layer(t)[0].pow(2).sum())(x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
