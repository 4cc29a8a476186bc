"""layer(x) under torch.no_grad runs every layer and direction through kernels.function.fused_inference:
the reference loop's numbers, the counted kernel calls, and the cases that must not take it."""

from __future__ import annotations

import itertools

import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError
from grukit.nn.kernels import function

I, H, T = 4, 5, 7
KINDS = {"gru": (gnn.GRU, {}), "gru_reset_before": (gnn.GRU, {"reset_after": False}), "lstm": (gnn.LSTM, {}),
         "lstm_single_bias": (gnn.LSTM, {"single_bias": True}), "rnn_relu": (gnn.RNN, {"nonlinearity": "relu"}),
         "rnn_no_bias": (gnn.RNN, {"bias": False}), "mgu": (gnn.MGU, {}), "mgu1": (gnn.MGU, {"variant": "mgu1"}),
         "mingru": (gnn.MinGRU, {}), "mingru_g": (gnn.MinGRU, {"candidate": "g"})}


def _leaves(result):
    return torch.utils._pytree.tree_leaves(result)


@pytest.mark.parametrize("kind,num_layers,bidirectional",
                         list(itertools.product(KINDS, [1, 2], [False, True])))
def test_inference_equals_the_reference_loop_and_counts_one_run_per_direction(kind, num_layers, bidirectional):
    cls, options = KINDS[kind]
    torch.manual_seed(0)
    for batch_first, batch, with_state, with_lengths in itertools.product([False, True], [1, 3], [False, True],
                                                                         [False, True]):
        layer = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                    dtype=torch.float64, **options)
        x = torch.randn(batch, T, I, dtype=torch.float64)
        x = x if batch_first else x.transpose(0, 1).contiguous()
        rows = num_layers * layer.num_directions
        hx = None
        if with_state:
            h0 = torch.randn(rows, batch, H, dtype=torch.float64)
            hx = (h0, torch.randn_like(h0)) if cls is gnn.LSTM else h0
        lengths = torch.tensor([T, 3, 1][:batch]) if with_lengths else None
        layer.kernel = "reference"
        with torch.no_grad():
            want = layer(x, hx, lengths=lengths)
        layer.kernel = "auto"
        before = function.CALLS["run"]
        with torch.no_grad():
            got = layer(x, hx, lengths=lengths)
        covered = kind != "mgu1"       # MGU1-3 project per gate: each direction goes its own way
        assert function.CALLS["run"] - before == rows, (kind, batch_first, batch, with_state, with_lengths)
        for a, b in zip(_leaves(got), _leaves(want)):
            assert a.shape == b.shape and not a.requires_grad
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        assert layer.__dict__["_fused_inference_covered"] is covered


def test_only_calls_without_gradients_or_dropout_take_the_single_call(monkeypatch):
    calls = []
    real = function.fused_inference
    monkeypatch.setattr(function, "fused_inference", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = gnn.GRU(I, H, num_layers=2, dropout=0.5)
    x = torch.randn(T, 2, I)
    with torch.no_grad():
        layer.eval()(x)
    assert len(calls) == 1
    layer(x)                                   # gradients recorded: the autograd path
    layer.kernel = "reference"
    with torch.no_grad():
        layer(x)
    layer.kernel = "auto"
    torch.manual_seed(1)
    with torch.no_grad():                      # training with dropout between layers: applied
        first, _ = layer.train()(x)
        second, _ = layer(x)
    assert len(calls) == 1
    assert not torch.equal(first, second)
    with torch.no_grad():                      # a float64 input to a float32 layer: refused first
        with pytest.raises(ConfigError, match="input is torch.float64"):
            layer.eval()(x.double())
    assert len(calls) == 1


def test_float32_batch_of_one_matches_the_autograd_path():
    torch.manual_seed(2)
    layer = gnn.LSTM(64, 128, batch_first=True).eval()
    x = torch.randn(1, 100, 64)
    want, (h, c) = layer(x)
    with torch.no_grad():
        got, (h1, c1) = layer(x)
    for a, b in ((got, want), (h1, h), (c1, c)):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=0)
