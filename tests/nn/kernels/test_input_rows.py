"""Narrow inputs projected inside the fused time loop (function.InputRows, api.forward's input_rows)
against the pure-torch oracle fed the projection ``x @ weight_ih.T + bias``: outputs, final states
and the gradients of x, weight_ih, the bias, the initial state(s), weight_hh and bias_hh."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn import bfloat16
from grukit.nn.kernels import api, common
from grukit.nn.kernels.function import CALLS, InputRows, fused_run_direction
from grukit.nn.reference import run_direction
from kernel_cases import assert_close_lists, make_case

MODES = [m for m in api.MODES if m != "MINGRU"]   # minGRU's backward reads gx: never input rows


def projected_case(mode, T, B, H, I, dtype=torch.float64, seed=0, bias=True, ragged=False, batch_first=False):
    """make_case's state and recurrent weights, plus x (T, B, I) (a transposed view of a (B, T, I)
    tensor when batch_first), weight_ih (G, I) and the outer bias."""
    _, state0, weights, lengths, leaves = make_case(mode, T, B, H, dtype, seed, ragged=ragged)
    g = torch.Generator().manual_seed(seed + 1)
    G = api.GATES[mode] * H
    if batch_first:
        x = torch.randn(B, T, I, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        x_tm = x.transpose(0, 1)
    else:
        x = x_tm = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w_ih = (torch.randn(G, I, generator=g, dtype=torch.float64) / I ** 0.5).to(dtype).requires_grad_()
    b_in = torch.randn(G, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    return x, x_tm, w_ih, b_in, state0, weights, lengths, [x, w_ih, *([b_in] if bias else []), *leaves[1:]]


def outputs_and_grads(mode, case, reverse, fused):
    x, x_tm, w_ih, b_in, state0, weights, lengths, leaves = case
    if fused:
        out, state = fused_run_direction(mode, InputRows(x_tm, w_ih, b_in), state0, weights, lengths, reverse)
    else:
        gx = x_tm @ w_ih.t() + (0 if b_in is None else b_in)
        out, state = run_direction(mode, gx, state0, weights, lengths, reverse)
    states = list(state) if isinstance(state, tuple) else [state]
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)).sum() for t in [out, *states])
    return [out.detach(), *[s.detach() for s in states]], list(torch.autograd.grad(loss, leaves))


def check(mode, case, reverse, atol):
    runs = CALLS["input rows"]
    want_vals, want_grads = outputs_and_grads(mode, case, reverse, fused=False)
    got_vals, got_grads = outputs_and_grads(mode, case, reverse, fused=True)
    assert CALLS["input rows"] == runs + 1
    assert_close_lists(got_vals, want_vals, atol, "outputs/states")
    assert_close_lists(got_grads, want_grads, atol, "grads (x, weight_ih, bias, states, weight_hh, bias_hh)")


@pytest.mark.parametrize("mode", MODES)
def test_float64_against_the_reference(mode):
    for (T, B, H, I), reverse, ragged, batch_first in itertools.product(
            [(5, 3, 4, 3), (4, 1, 3, 1), (1, 3, 4, 5), (4, 3, 1, 2)], (False, True), (False, True), (False, True)):
        case = projected_case(mode, T, B, H, I, seed=T * 100 + B * 10 + H, ragged=ragged, batch_first=batch_first)
        check(mode, case, reverse, 1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_float32_without_bias_and_split_over_threads(mode, monkeypatch):
    monkeypatch.setattr(common, "MIN_PARALLEL_WORK", 0)   # one block of rows per thread
    for reverse, batch_first in itertools.product((False, True), (False, True)):
        case = projected_case(mode, 6, 5, 8, 7, torch.float32, seed=3, bias=False, ragged=True,
                              batch_first=batch_first)
        check(mode, case, reverse, 1e-5)


def test_api_forward_projects_as_the_precomputed_gx_does():
    """The numpy entry point: input_rows gives the numbers of gx = x @ w_ih.T + b_ih, to round-off."""
    rng = np.random.default_rng(0)
    T, B, I, H = 7, 4, 5, 6
    x = rng.standard_normal((B, T, I))
    w_ih, b_ih = rng.standard_normal((4 * H, I)), rng.standard_normal(4 * H)
    w = rng.standard_normal((4 * H, H)) * 0.3
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    gx = np.ascontiguousarray((x @ w_ih.T + b_ih).transpose(1, 0, 2))
    lengths = np.array([7, 2, 5, 1])
    want = api.forward("LSTM", gx, h0, c0, api.pack_weight(w), None, lengths, True, True)
    got = api.forward("LSTM", None, h0, c0, api.pack_weight(w), None, lengths, True, True,
                      input_rows=(x, w_ih, b_ih, True))
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    for a, b in zip(got[3], want[3]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_api_forward_refuses_what_it_cannot_project():
    x, h0 = np.zeros((3, 2, 4)), np.zeros((2, 5))
    with pytest.raises(ValueError, match="MINGRU"):
        api.forward("MINGRU", None, h0, input_rows=(x, np.zeros((10, 4)), None, False))
    with pytest.raises(ValueError, match=r"weight_ih: expected a C-contiguous \(15, 4\)"):
        api.forward("GRU", None, h0, w_t=np.zeros((5, 15)), input_rows=(x, np.zeros((15, 3)), None, False))
    with pytest.raises(ValueError, match="C-contiguous 3-D"):
        api.forward("GRU", None, h0, w_t=np.zeros((5, 15)), input_rows=(x.transpose(1, 0, 2), np.zeros((15, 4)),
                                                                         None, False))


@pytest.mark.parametrize("cell", [gnn.GRU, gnn.LSTM, gnn.RNN, gnn.MGU])
def test_layers_train_narrow_inputs_on_it(cell):
    """A spy on the kernels' counter: narrow inputs in training go through the loop's projection, and
    the layer's gradients match its reference loop; wide inputs and the bfloat16 mode do not (inference:
    the next test)."""
    torch.manual_seed(0)
    layer = cell(api.INPUT_ROWS_MAX, 6, num_layers=2, batch_first=True, dtype=torch.float64)
    oracle = cell(api.INPUT_ROWS_MAX, 6, num_layers=2, batch_first=True, dtype=torch.float64, kernel="reference")
    oracle.load_state_dict(layer.state_dict())
    x = torch.randn(3, 5, api.INPUT_ROWS_MAX, dtype=torch.float64, requires_grad=True)
    x_oracle = x.detach().clone().requires_grad_()
    runs = CALLS["input rows"]
    layer(x)[0].square().sum().backward()
    assert CALLS["input rows"] == runs + 2   # both layers: the second's input is H = 6 wide
    oracle(x_oracle)[0].square().sum().backward()
    torch.testing.assert_close(x.grad, x_oracle.grad, rtol=0, atol=1e-9)
    for a, b in zip(layer.parameters(), oracle.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-9)
    wide = cell(api.INPUT_ROWS_MAX + 1, 6)
    wide(torch.randn(5, 3, api.INPUT_ROWS_MAX + 1))[0].sum().backward()
    with bfloat16.mode(True):
        layer.float()(x.float())[0].sum().backward()
    assert CALLS["input rows"] == runs + 2


def test_changing_x_in_place_before_backward_raises():
    """x is saved for its weight's gradient as torch saves tensors: an in-place change is caught."""
    layer = gnn.GRU(4, 5)
    x = torch.randn(6, 2, 4)
    leaf = x.clone().requires_grad_()
    source = leaf * 1.0
    out = layer(source)[0]
    source.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("cell", [gnn.GRU, gnn.LSTM, gnn.RNN, gnn.MGU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_inference_projects_narrow_inputs_in_the_loop_too(cell, batch_first, monkeypatch):
    """api.forward_stack (a whole stack under no_grad) takes input rows for every layer whose input is
    narrow: the same numbers as the reference loop, with ragged lengths, both directions, two layers."""
    sources = []
    original = api.input_rows_source
    monkeypatch.setattr(api, "input_rows_source", lambda *a, **k: sources.append(a[0].shape) or original(*a, **k))
    torch.manual_seed(0)
    layer = cell(5, 6, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64).eval()
    oracle = cell(5, 6, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64,
                  kernel="reference").eval()
    oracle.load_state_dict(layer.state_dict())
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    lengths = torch.tensor([7, 3, 5, 1])
    with torch.no_grad():
        got, want = layer(x, lengths=lengths), oracle(x, lengths=lengths)
    assert len(sources) == 4   # two layers, two directions: the second layer's input is 12 wide
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-9)
    for a, b in zip(got[1] if isinstance(got[1], tuple) else (got[1],),
                    want[1] if isinstance(want[1], tuple) else (want[1],)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
