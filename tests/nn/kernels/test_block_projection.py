"""A step's input rows projected as one block inside the fused time loop, by oneDNN's microkernel
(common.gx_block with an input-rows source whose operand is 3-D; api.projects_in_loop says where).

Oracles: the same layer in float64 (no microkernel there: its rows are projected one at a time, or
before the loop), to float32 round-off; and for inputs wider than api.INPUT_ROWS_MAX, the same float32
layer with its projection before the loop (api.BLOCK_PROJECTION_MAX lowered), bit for bit: both add
x @ W_ih^T to rows filled with the bias, through the same microkernel, whose rows do not depend on how
many rows a call takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import api, common, function, onednn

pytestmark = pytest.mark.skipif(not onednn.FASTER_F32,
                                reason="oneDNN's float32 microkernel is used on AMD CPUs with AVX-512 only")

CELLS = [(gnn.GRU, {}), (gnn.GRU, {"reset_after": False}), (gnn.LSTM, {}), (gnn.RNN, {}),
         (gnn.RNN, {"nonlinearity": "relu"}), (gnn.MGU, {})]
IDS = ["GRU", "GRU-reset-before", "LSTM", "RNN", "RNN-relu", "MGU"]
# Enough rows for every thread's block to take the block projection (api.BLOCK_PROJECTION_MIN_ROWS).
BATCH = api.BLOCK_PROJECTION_MIN_ROWS * common._MAX_THREADS + 1


def _pair(cell, options, width, **kwargs):
    torch.manual_seed(0)
    layer = cell(width, 24, num_layers=2, batch_first=True, **options, **kwargs)
    oracle = cell(width, 24, num_layers=2, batch_first=True, dtype=torch.float64, **options, **kwargs)
    oracle.load_state_dict(layer.state_dict())
    return layer, oracle


def _train(layer, x, upstream):
    """Output, final state(s) and every gradient (x's too) of one backward through ``layer``."""
    x = x.detach().clone().requires_grad_()
    out, final = layer(x)
    finals = final if isinstance(final, tuple) else (final,)
    (out.double() * upstream).sum().backward()
    return [out, *finals, x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("cell,options", CELLS, ids=IDS)
@pytest.mark.parametrize("width", [api.INPUT_ROWS_MAX - 6, api.INPUT_ROWS_MAX + 24])
def test_training_projects_block_by_block_and_agrees_with_float64(cell, options, width):
    """Both layers' inputs (the second's is 24 wide) take the loop's projection (a spy on the
    kernels' counter); outputs, states and every gradient agree with float64 to round-off."""
    layer, oracle = _pair(cell, options, width)
    x = torch.randn(BATCH, 30, width)
    upstream = torch.randn(BATCH, 30, 24, dtype=torch.float64)
    before = function.CALLS["input rows"]
    got = _train(layer, x, upstream)
    assert function.CALLS["input rows"] == before + 2
    want = _train(oracle, x.double(), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=3e-5 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("cell,options", CELLS, ids=IDS)
def test_wide_inputs_give_the_bits_of_the_projection_before_the_loop(cell, options, monkeypatch):
    """Training and inference (api.forward_stack), batch-first and time-major: the block projection
    and the projection before the loop give the same bits, and the spy says which ran."""
    width = api.INPUT_ROWS_MAX + 24
    layer, _ = _pair(cell, options, width)
    x = torch.randn(BATCH, 30, width)
    upstream = torch.randn(BATCH, 30, 24, dtype=torch.float64)
    sources = []
    original = api.input_rows_source
    monkeypatch.setattr(api, "input_rows_source", lambda *a, **k: sources.append(a[0].shape) or original(*a, **k))

    def run():
        with torch.no_grad():   # a batch-first x, and a time-major one seen batch-first
            inference = [layer(x)[0], layer(x.transpose(0, 1).contiguous().transpose(0, 1))[0]]
        return _train(layer, x, upstream) + inference

    in_loop = run()
    assert len(sources) == 6   # two layers, in training and in both inference calls
    monkeypatch.setattr(api, "BLOCK_PROJECTION_MAX", api.INPUT_ROWS_MAX)
    before = run()
    assert len(sources) == 6   # both inputs (40 and 24 wide) projected before the loop
    for a, b in zip(in_loop, before):
        assert torch.equal(a, b)


def test_where_the_loop_projects_wide_inputs(monkeypatch):
    """api.projects_in_loop: wide inputs only in float32 on the microkernel, up to
    BLOCK_PROJECTION_MAX features, blocks of at least BLOCK_PROJECTION_MIN_ROWS rows, and sequences of
    one length; narrow ones always (minGRU never)."""
    wide = api.INPUT_ROWS_MAX + 1
    monkeypatch.setattr(common, "_threads", 2)
    enough = 2 * api.BLOCK_PROJECTION_MIN_ROWS
    assert api.projects_in_loop("GRU", wide, np.float32, enough)
    assert api.projects_in_loop("LSTM", api.BLOCK_PROJECTION_MAX, np.float32, enough, np.full(enough, 7))
    assert not api.projects_in_loop("GRU", wide, np.float32, enough, np.arange(enough) + 1)
    assert not api.projects_in_loop("GRU", wide, np.float32, enough - 1)
    assert not api.projects_in_loop("GRU", api.BLOCK_PROJECTION_MAX + 1, np.float32, enough)
    assert not api.projects_in_loop("GRU", wide, np.float64, enough)
    assert not api.projects_in_loop("MINGRU", wide, np.float32, enough)
    assert api.projects_in_loop("GRU", api.INPUT_ROWS_MAX, np.float64, 1, np.arange(1) + 1)
    monkeypatch.setattr(onednn, "FASTER_F32", False)
    assert not api.projects_in_loop("GRU", wide, np.float32, enough)


def test_a_padded_batch_of_wide_inputs_projects_before_the_loop():
    """Sequences of several lengths would project row by row: the layer keeps the projection before
    the loop, and its results agree with float64."""
    width = api.INPUT_ROWS_MAX + 24
    layer, oracle = _pair(gnn.GRU, {}, width)
    x = torch.randn(BATCH, 30, width)
    lengths = torch.randint(1, 31, (BATCH,))
    lengths[0] = 30
    upstream = torch.randn(BATCH, 30, 24, dtype=torch.float64)
    before = function.CALLS["input rows"]

    def train(net, inputs):
        inputs = inputs.detach().clone().requires_grad_()
        out, final = net(inputs, lengths=lengths)
        (out.double() * upstream).sum().backward()
        return [out, final, inputs.grad] + [p.grad for p in net.parameters()]

    got = train(layer, x)
    assert function.CALLS["input rows"] == before   # neither layer's input (40 and 24 wide)
    for a, b in zip(got, train(oracle, x.double())):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=3e-5 * max(1.0, b.abs().max().item()))
