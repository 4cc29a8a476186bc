"""grukit.nn.GRU/LSTM/RNN against torch.nn in float64: outputs, final states and every gradient."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grukit.nn as gnn
from grukit.nn.convert import from_torch, to_torch

ATOL = 1e-10
CELLS = {
    "gru": (torch.nn.GRU, gnn.GRU, {}),
    "lstm": (torch.nn.LSTM, gnn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, gnn.LSTM, {"proj_size": 3}),
    "rnn_tanh": (torch.nn.RNN, gnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, gnn.RNN, {"nonlinearity": "relu"}),
}
INPUTS = ["dense", "batch_of_one", "sequence_of_one", "non_contiguous", "packed", "lengths", "unbatched"]
I, H, T, N = 4, 5, 6, 3


def make_pair(cell, num_layers, bidirectional, batch_first, bias, kernel):
    torch_cls, ours_cls, extra = CELLS[cell]
    theirs = torch_cls(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional, dtype=torch.float64, **extra)
    ours = ours_cls(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                    bidirectional=bidirectional, dtype=torch.float64, kernel=kernel, **extra)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_input(kind, batch_first):
    n = 1 if kind == "batch_of_one" else N
    t = 1 if kind == "sequence_of_one" else T
    if kind == "unbatched":
        return torch.randn(t, I, dtype=torch.float64), None
    if kind == "non_contiguous":
        # feature-major storage, then a transposed view: strides are not the default ones
        x = torch.randn(I, n, t, dtype=torch.float64).permute(1, 2, 0) if batch_first else \
            torch.randn(I, t, n, dtype=torch.float64).permute(1, 2, 0)
        assert not x.is_contiguous()
        return x, None
    shape = (n, t, I) if batch_first else (t, n, I)
    lengths = torch.tensor([T, 2, 1]) if kind in ("packed", "lengths") else None
    return torch.randn(shape, dtype=torch.float64), lengths


def run(module, x, lengths, kind, batch_first, hx, grukit):
    if kind == "packed":
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, state = module(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return out, state
    if kind == "lengths":
        if grukit:
            return module(x, hx, lengths=lengths)
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, state = module(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return out, state
    return module(x, hx)


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def initial_state(theirs, cell, kind, batched_n):
    D = 2 if theirs.bidirectional else 1
    rows = theirs.num_layers * D
    h_size = theirs.proj_size if cell == "lstm_proj" else H
    shape_h = (rows, batched_n, h_size) if kind != "unbatched" else (rows, h_size)
    h0 = torch.randn(shape_h, dtype=torch.float64)
    if cell.startswith("lstm"):
        shape_c = (rows, batched_n, H) if kind != "unbatched" else (rows, H)
        return (h0, torch.randn(shape_c, dtype=torch.float64))
    return h0


SWEEP = list(itertools.product(CELLS, [1, 2], [False, True], [False, True], [True, False], INPUTS))


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,bias,kind", SWEEP)
def test_matches_torch_nn(cell, num_layers, bidirectional, batch_first, bias, kind, kernel="auto"):
    theirs, ours = make_pair(cell, num_layers, bidirectional, batch_first, bias, kernel)
    x, lengths = make_input(kind, batch_first)
    n = 1 if kind == "batch_of_one" else N
    hx = initial_state(theirs, cell, kind, n)
    results = []
    for module, grukit in ((theirs, False), (ours, True)):
        xi = x.detach().clone().requires_grad_(True)
        hxi = tuple(s.clone().requires_grad_(True) for s in flat(hx))
        out, state = run(module, xi, lengths, kind, batch_first, hxi if len(hxi) == 2 else hxi[0], grukit)
        torch.manual_seed(1)
        # torch.randn(shape), not randn_like: randn_like follows the strides, which differ between paths
        loss = (out * torch.randn(out.shape, dtype=out.dtype)).sum() + \
            sum((s * torch.randn(s.shape, dtype=s.dtype)).sum() for s in flat(state))
        grads = torch.autograd.grad(loss, [xi, *hxi, *module.parameters()])
        results.append((out, flat(state), grads))
    (out_t, state_t, grads_t), (out_g, state_g, grads_g) = results
    torch.testing.assert_close(out_g, out_t, atol=ATOL, rtol=0)
    for a, b in zip(state_g, state_t):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    names = ["input", *[f"h0[{i}]" for i in range(len(flat(hx)))], *dict(theirs.named_parameters())]
    for name, a, b in zip(names, grads_g, grads_t):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_round_trip_with_torch(cell):
    theirs, _ = make_pair(cell, 2, True, False, True, "auto")
    ours = from_torch(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    back = to_torch(ours)
    for (name, a), (_, b) in zip(theirs.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert type(back) is type(theirs)


def test_dropout_between_layers_is_active_only_in_training():
    layer = gnn.GRU(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(T, N, I, dtype=torch.float64)
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    assert torch.equal(a, b)
    layer.train()
    c, _ = layer(x)
    assert not torch.allclose(a, c)
    # the last layer's output is never dropped: no exact zeros appear in it
    assert (c != 0).all()
