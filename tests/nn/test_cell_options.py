"""Keras's cell options on the grukit.nn layers: recurrent_dropout and activations.

Oracles: a literal transcription of Keras 3's cell equations (keras/src/layers/rnn/gru.py,
lstm.py, simple_rnn.py, ``implementation=1``, the path Keras takes with recurrent_dropout),
written in grukit's weight names and fed the same injected mask; torch.nn for eval mode.
The Keras layers themselves are the oracle in tests/test_cell_options_keras.py."""

import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError, UnsupportedKernelConfig
from grukit.nn import reference
from grukit.nn.cells import ACTIVATIONS
from grukit.nn.kernels.function import CALLS

I, H, T, N = 3, 5, 6, 4
P = 0.4


def _layer(kind, **options):
    options = {"dtype": torch.float64, "batch_first": True, **options}
    if kind == "gru_reset_before":
        return gnn.GRU(I, H, reset_after=False, **options)
    if kind == "rnn_relu":
        return gnn.RNN(I, H, nonlinearity="relu", **options)
    return {"gru": gnn.GRU, "lstm": gnn.LSTM, "rnn": gnn.RNN, "mgu": gnn.MGU}[kind](I, H, **options)


def _fixed_mask(layer, seed=0):
    """A Keras-like mask (0 or 1 / (1 - p)) for every (layer, direction), injected into the layer."""
    gates = len(layer.layout.recurrent_gates)
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(N, gates * H, generator=generator, dtype=torch.float64) > P).double() / (1 - P)
    layer.recurrent_dropout_mask = lambda batch_size, like: mask
    return mask


def keras_gru_loop(x, layer, mask, reset_after):
    """Keras's GRUCell.call, implementation 1, in grukit's names: rows r, z, n of weight_ih /
    weight_hh; Keras's masks rec_dp_mask[0], [1], [2] (z, r, h) are mask blocks z, r, n."""
    W_r, W_z, W_n = layer.weight_ih_l0.chunk(3)
    U_r, U_z, U_n = layer.weight_hh_l0.chunk(3)
    m_r, m_z, m_n = mask.chunk(3, dim=1)
    if reset_after:
        b_r, b_z, b_n = layer.bias_ih_l0.chunk(3)
        rb_r, rb_z, rb_n = layer.bias_hh_l0.chunk(3)
    else:
        b_r, b_z, b_n = layer.bias_l0.chunk(3)
    h_tm1 = torch.zeros(N, H, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        inputs = x[:, t]
        x_z, x_r, x_h = inputs @ W_z.T + b_z, inputs @ W_r.T + b_r, inputs @ W_n.T + b_n
        h_tm1_z, h_tm1_r, h_tm1_h = h_tm1 * m_z, h_tm1 * m_r, h_tm1 * m_n
        recurrent_z, recurrent_r = h_tm1_z @ U_z.T, h_tm1_r @ U_r.T
        if reset_after:
            recurrent_z, recurrent_r = recurrent_z + rb_z, recurrent_r + rb_r
        z = torch.sigmoid(x_z + recurrent_z)
        r = torch.sigmoid(x_r + recurrent_r)
        if reset_after:
            recurrent_h = r * (h_tm1_h @ U_n.T + rb_n)
        else:
            recurrent_h = (r * h_tm1_h) @ U_n.T
        hh = torch.tanh(x_h + recurrent_h)
        h_tm1 = z * h_tm1 + (1 - z) * hh
        outputs.append(h_tm1)
    return torch.stack(outputs, 1)


def keras_lstm_loop(x, layer, mask):
    """Keras's LSTMCell.call, implementation 1 (one bias, Keras's layout; torch's pair is summed)."""
    W = layer.weight_ih_l0.chunk(4)
    U = layer.weight_hh_l0.chunk(4)
    b = (layer.bias_ih_l0 + layer.bias_hh_l0).chunk(4)
    masks = mask.chunk(4, dim=1)
    h_tm1 = c_tm1 = torch.zeros(N, H, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        x_i, x_f, x_c, x_o = (x[:, t] @ w.T + bias for w, bias in zip(W, b))
        h_tm1_i, h_tm1_f, h_tm1_c, h_tm1_o = (h_tm1 * m for m in masks)
        i = torch.sigmoid(x_i + h_tm1_i @ U[0].T)
        f = torch.sigmoid(x_f + h_tm1_f @ U[1].T)
        c = f * c_tm1 + i * torch.tanh(x_c + h_tm1_c @ U[2].T)
        o = torch.sigmoid(x_o + h_tm1_o @ U[3].T)
        h_tm1, c_tm1 = o * torch.tanh(c), c
        outputs.append(h_tm1)
    return torch.stack(outputs, 1)


def keras_simple_rnn_loop(x, layer, mask):
    """Keras's SimpleRNNCell.call: output = act(x W + b + (prev_output * rec_dp_mask) U)."""
    act = torch.relu if layer.nonlinearity == "relu" else torch.tanh
    prev_output = torch.zeros(N, H, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        h = x[:, t] @ layer.weight_ih_l0.T + layer.bias_ih_l0 + layer.bias_hh_l0
        prev_output = act(h + (prev_output * mask) @ layer.weight_hh_l0.T)
        outputs.append(prev_output)
    return torch.stack(outputs, 1)


def keras_loop(kind, x, layer, mask):
    if kind.startswith("gru"):
        return keras_gru_loop(x, layer, mask, reset_after=kind == "gru")
    if kind == "lstm":
        return keras_lstm_loop(x, layer, mask)
    return keras_simple_rnn_loop(x, layer, mask)


LOOP_KINDS = ["gru", "gru_reset_before", "lstm", "rnn", "rnn_relu"]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_training_with_a_fixed_mask_equals_keras_equations_and_gradients(kind):
    layer = _layer(kind, recurrent_dropout=P)
    mask = _fixed_mask(layer)
    x = torch.randn(N, T, I, dtype=torch.float64, requires_grad=True)
    layer.train()
    out, _ = layer(x)
    expected = keras_loop(kind, x, layer, mask)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    # the mask matters: without it the numbers differ
    assert not torch.allclose(out, keras_loop(kind, x, layer, torch.ones_like(mask)))
    # gradients flow through the masked products, and equal the literal loop's
    weights = torch.randn_like(out)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad((out * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for name, g, w in zip(["x", *(n for n, _ in layer.named_parameters())], got, want):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        torch.testing.assert_close(g, w, atol=1e-11, rtol=0, msg=name)


@pytest.mark.parametrize("kind", LOOP_KINDS + ["mgu"])
def test_eval_mode_equals_no_dropout_and_runs_fused(kind):
    dropping = _layer(kind, recurrent_dropout=P)
    plain = _layer(kind)
    plain.load_state_dict(dropping.state_dict())
    x = torch.randn(N, T, I, dtype=torch.float64)
    dropping.eval()
    before = CALLS["run"]
    torch.testing.assert_close(dropping(x)[0], plain(x)[0], atol=1e-12, rtol=0)
    assert CALLS["run"] == before + 2, "eval mode (no mask) runs the fused kernel"


def test_mask_is_sampled_once_per_sequence_and_fixed_over_time(monkeypatch):
    """Instrument the reference step: every step of one direction sees the same mask; the mask
    differs between sequences of the batch, between directions and layers, and between calls."""
    seen = []
    original = reference.step

    def spy(mode, gx_t, state, weights, candidate="identity", layout=None, recurrent_mask=None):
        seen.append(recurrent_mask)
        return original(mode, gx_t, state, weights, candidate, layout, recurrent_mask)

    monkeypatch.setattr(reference, "step", spy)
    layer = gnn.GRU(I, 16, num_layers=2, bidirectional=True, recurrent_dropout=0.5, batch_first=True)
    x = torch.randn(8, T, I)
    layer(x)
    assert len(seen) == 2 * 2 * T
    runs = [seen[k * T:(k + 1) * T] for k in range(4)]  # (layer, direction) in call order
    for run in runs:
        assert run[0].shape == (8, 3 * 16)
        assert all(m is run[0] for m in run), "one mask per sequence, fixed over the time steps"
        values = set(run[0].unique().tolist())
        assert values == {0.0, 2.0}, values  # Bernoulli(1 - p) / (1 - p)
        assert len({tuple(row.tolist()) for row in run[0]}) == 8, "each sequence draws its own mask"
    assert len({tuple(run[0].flatten().tolist()) for run in runs}) == 4
    first = runs[0][0]
    seen.clear()
    layer(x)
    assert not torch.equal(seen[0], first), "a new call (batch) draws a new mask"
    seen.clear()
    layer.eval()
    layer.kernel = "reference"
    layer(x)
    assert all(m is None for m in seen), "no mask in eval mode"


def test_mask_statistics_and_shape_per_cell():
    torch.manual_seed(1)
    layer = gnn.LSTM(I, 50, proj_size=7, recurrent_dropout=0.3)
    mask = layer.recurrent_dropout_mask(4000, torch.empty(0))
    assert mask.shape == (4000, 4 * 7)  # one block per gate over the projected state
    assert abs((mask == 0).double().mean().item() - 0.3) < 0.01
    assert abs(mask.mean().item() - 1.0) < 0.02
    assert gnn.MGU(I, H, variant="mgu3", recurrent_dropout=0.2).recurrent_dropout_mask(2, mask).shape == (2, H)
    assert gnn.MGU(I, H, recurrent_dropout=0.2).recurrent_dropout_mask(2, mask).shape == (2, 2 * H)


@pytest.mark.parametrize("kind", ["gru", "gru_reset_before", "lstm", "rnn", "mgu"])
def test_recurrent_dropout_with_lengths_bidirectional_and_layers(kind):
    """The reference path keeps its padding semantics with a mask: each padded sequence equals
    itself run alone with its own row of the mask."""
    layer = _layer(kind, recurrent_dropout=P, num_layers=2, bidirectional=True)
    width = len(layer.layout.recurrent_gates) * H
    masks = [(torch.rand(N, width, dtype=torch.float64) > P).double() / (1 - P) for _ in range(4)]
    calls = []

    def fixed(rows):  # forward asks once per (layer, direction), in the same order on every call
        def sample(batch_size, like):
            calls.append(None)
            return masks[(len(calls) - 1) % 4][rows]
        return sample

    layer.recurrent_dropout_mask = fixed(slice(None))
    lengths = torch.tensor([T, 3, 1, 5])
    x = torch.randn(N, T, I, dtype=torch.float64)
    out, _ = layer(x, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        layer.recurrent_dropout_mask = fixed(slice(b, b + 1))
        alone, _ = layer(x[b:b + 1, :length])
        torch.testing.assert_close(out[b, :length], alone[0], atol=1e-12, rtol=0)
        assert (out[b, length:] == 0).all()


def test_dispatch_with_recurrent_dropout():
    x = torch.randn(N, T, I)
    auto = gnn.GRU(I, H, recurrent_dropout=0.2, batch_first=True)
    before = CALLS["run"]
    auto(x)
    assert CALLS["run"] == before, "training with recurrent dropout runs the reference loop"
    fused = gnn.GRU(I, H, recurrent_dropout=0.2, batch_first=True, kernel="fused")
    with pytest.raises(UnsupportedKernelConfig, match="recurrent_dropout"):
        fused(x)
    fused.eval()
    fused(x)
    assert CALLS["run"] == before + 1, "in eval mode kernel='fused' runs"
    with pytest.raises(ConfigError, match=r"\.eval\(\)"):
        auto.step(x[:, 0])
    auto.eval()
    auto.step(x[:, 0])


# ---- activations ------------------------------------------------------------------------------

def _literal_gru(x, layer, act, rec):
    """torch.nn.GRU's equations with the two activations swapped in (reset_after=True)."""
    W, U = layer.weight_ih_l0, layer.weight_hh_l0
    h = torch.zeros(N, H, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        gx_r, gx_z, gx_n = (x[:, t] @ W.T + layer.bias_ih_l0).chunk(3, dim=1)
        gh_r, gh_z, gh_n = (h @ U.T + layer.bias_hh_l0).chunk(3, dim=1)
        r, z = rec(gx_r + gh_r), rec(gx_z + gh_z)
        h = (1 - z) * act(gx_n + r * gh_n) + z * h
        outputs.append(h)
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_name_on_the_reference_loop(name):
    layer = gnn.GRU(I, H, activation=name, recurrent_activation=name, batch_first=True, dtype=torch.float64)
    x = torch.randn(N, T, I, dtype=torch.float64)
    out, h_n = layer(x)
    torch.testing.assert_close(out, _literal_gru(x, layer, ACTIVATIONS[name], ACTIVATIONS[name]), atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n[0], out[:, -1])


def test_hard_sigmoid_is_keras_3s_definition():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["hard_sigmoid"](x), torch.nn.functional.relu6(x + 3) / 6)


@pytest.mark.parametrize("kind,options", [
    ("gru", {"activation": "relu"}), ("lstm", {"recurrent_activation": "hard_sigmoid"}),
    ("mgu", {"activation": "softsign"}), ("rnn", {"nonlinearity": "sigmoid"}),
])
def test_dispatch_with_non_default_activations(kind, options):
    x = torch.randn(N, T, I, dtype=torch.float64)
    layer = _layer(kind, **options)
    layer.eval()
    before = CALLS["run"]
    out, _ = layer(x)
    assert CALLS["run"] == before, "non-default activations run on the reference loop"
    with torch.no_grad():
        y, _ = layer.step(x[:, 0])
    torch.testing.assert_close(y, out[:, 0], atol=1e-12, rtol=0)
    layer.kernel = "fused"
    with pytest.raises(UnsupportedKernelConfig, match="activation"):
        layer(x)
    with pytest.raises(ConfigError, match="streamer"):
        layer.streamer()


def test_default_activations_spelled_out_still_run_fused():
    layer = gnn.GRU(I, H, activation="tanh", recurrent_activation="sigmoid", kernel="fused")
    assert layer.layout.has_default_activations
    relu = gnn.RNN(I, H, nonlinearity="relu", kernel="fused")
    assert relu.layout.has_default_activations and relu.mode == "RNN_RELU"
    before = CALLS["run"]
    layer(torch.randn(T, N, I))
    relu(torch.randn(T, N, I))
    assert CALLS["run"] == before + 2


def test_repr_names_the_options():
    assert repr(gnn.GRU(I, H, activation="relu", recurrent_dropout=0.25)) == \
        f"GRU({I}, {H}, activation='relu', recurrent_dropout=0.25)"
    assert repr(gnn.RNN(I, H, nonlinearity="softsign")) == f"RNN({I}, {H}, nonlinearity='softsign')"
