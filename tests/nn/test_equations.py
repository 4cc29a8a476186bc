"""Every cell against a literal numpy transcription of its published equations, golden values
from hand-set weights, and the tutorial form of the GRU update."""

import itertools
import math

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.convert import flip_update_gate


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def blocks(param, count):
    """Split a (count*H, ...) parameter into its gate blocks as numpy arrays."""
    return np.split(param.detach().numpy(), count, axis=0)


# ---- literal transcriptions, written as the papers write them: W acts on x, U on h ----------

def gru_paper(xs, h, W, U, b_in, b_rec, reset_after):
    """Cho et al. (2014) with reset_after=False, the cuDNN/PyTorch form with reset_after=True."""
    (W_r, W_z, W_n), (U_r, U_z, U_n) = W, U
    (b_ir, b_iz, b_in_), (b_hr, b_hz, b_hn) = b_in, b_rec
    out = []
    for x in xs:
        r = sigmoid(W_r @ x + b_ir + U_r @ h + b_hr)
        z = sigmoid(W_z @ x + b_iz + U_z @ h + b_hz)
        if reset_after:
            n = np.tanh(W_n @ x + b_in_ + r * (U_n @ h + b_hn))
        else:
            n = np.tanh(W_n @ x + U_n @ (r * h) + b_in_ + b_hn)
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out)


def gru_tutorial(xs, h, W_r, U_r, b_r, W_z, U_z, b_z, W, U, b):
    """The tutorial form: W acts on h here, U on x, and z is how much new information to write."""
    out = []
    for x in xs:
        r = sigmoid(W_r @ h + U_r @ x + b_r)
        z = sigmoid(W_z @ h + U_z @ x + b_z)
        H_candidate = np.tanh(W @ (r * h) + U @ x + b)
        h = (1 - z) * h + z * H_candidate
        out.append(h)
    return np.stack(out)


def lstm_paper(xs, h, c, W, U, b):
    (W_i, W_f, W_g, W_o), (U_i, U_f, U_g, U_o), (b_i, b_f, b_g, b_o) = W, U, b
    out = []
    for x in xs:
        i = sigmoid(W_i @ x + U_i @ h + b_i)
        f = sigmoid(W_f @ x + U_f @ h + b_f)
        g = np.tanh(W_g @ x + U_g @ h + b_g)
        o = sigmoid(W_o @ x + U_o @ h + b_o)
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), c


def mgu_paper(xs, h, variant, W_f, U_f, b_f, W_n, U_n, b_n):
    """Zhou et al. (2016) MGU; Heck & Salem (2017) MGU1/2/3 drop terms of the forget gate."""
    out = []
    for x in xs:
        if variant == "mgu":
            f = sigmoid(W_f @ x + U_f @ h + b_f)
        elif variant == "mgu1":
            f = sigmoid(U_f @ h + b_f)
        elif variant == "mgu2":
            f = sigmoid(U_f @ h)
        else:
            f = sigmoid(b_f)
        n = np.tanh(W_n @ x + U_n @ (f * h) + b_n)
        h = (1 - f) * h + f * n
        out.append(h)
    return np.stack(out)


def mingru_paper(xs, h, W_z, b_z, W_h, b_h, candidate):
    def g(a):
        return np.where(a >= 0, a + 0.5, sigmoid(a))
    out = []
    for x in xs:
        z = sigmoid(W_z @ x + b_z)
        h_tilde = W_h @ x + b_h
        if candidate == "g":
            h_tilde = g(h_tilde)
        h = (1 - z) * h + z * h_tilde
        out.append(h)
    return np.stack(out)


I, H, T = 3, 4, 7


def sequence():
    return torch.randn(T, I, dtype=torch.float64), torch.randn(1, H, dtype=torch.float64)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_matches_transcription(reset_after):
    layer = gnn.GRU(I, H, reset_after=reset_after, dtype=torch.float64)
    xs, h0 = sequence()
    out, _ = layer(xs, h0)
    W, U = blocks(layer.weight_ih_l0, 3), blocks(layer.weight_hh_l0, 3)
    if reset_after:
        b_in, b_rec = blocks(layer.bias_ih_l0, 3), blocks(layer.bias_hh_l0, 3)
    else:
        b_in, b_rec = blocks(layer.bias_l0, 3), [np.zeros(H)] * 3
    expected = gru_paper(xs.numpy(), h0[0].numpy(), W, U, b_in, b_rec, reset_after)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12, rtol=0)


def test_tutorial_form_is_reset_before_gru_with_update_gate_negated():
    rng = np.random.default_rng(3)
    W_r, W_z, W = (rng.normal(size=(H, H)) for _ in range(3))       # act on h in the tutorial
    U_r, U_z, U = (rng.normal(size=(H, I)) for _ in range(3))       # act on x in the tutorial
    b_r, b_z, b = (rng.normal(size=H) for _ in range(3))
    xs, h0 = rng.normal(size=(T, I)), rng.normal(size=H)
    expected = gru_tutorial(xs, h0, W_r, U_r, b_r, W_z, U_z, b_z, W, U, b)

    layer = gnn.GRU(I, H, reset_after=False, dtype=torch.float64)
    with torch.no_grad():
        # grukit's z keeps the old state; the tutorial's z writes new information: z_grukit = 1 - z_tutorial
        layer.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([U_r, -U_z, U])))
        layer.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([W_r, -W_z, W])))
        layer.bias_l0.copy_(torch.from_numpy(np.concatenate([b_r, -b_z, b])))
    out, _ = layer(torch.from_numpy(xs), torch.from_numpy(h0)[None])
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12, rtol=0)

    # flip_update_gate performs exactly that negation
    plain = gnn.GRU(I, H, reset_after=False, dtype=torch.float64)
    with torch.no_grad():
        plain.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([U_r, U_z, U])))
        plain.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([W_r, W_z, W])))
        plain.bias_l0.copy_(torch.from_numpy(np.concatenate([b_r, b_z, b])))
    flip_update_gate(plain)
    out_flipped, _ = plain(torch.from_numpy(xs), torch.from_numpy(h0)[None])
    np.testing.assert_allclose(out_flipped.detach().numpy(), expected, atol=1e-12, rtol=0)


def test_flip_update_gate_twice_restores_the_layer():
    layer = gnn.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    flip_update_gate(layer)
    assert not torch.equal(layer.weight_hh_l0, before["weight_hh_l0"])
    flip_update_gate(layer)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_lstm_matches_transcription():
    layer = gnn.LSTM(I, H, dtype=torch.float64)
    xs, h0 = sequence()
    c0 = torch.randn(1, H, dtype=torch.float64)
    out, (_, c_n) = layer(xs, (h0, c0))
    b = [a + c for a, c in zip(blocks(layer.bias_ih_l0, 4), blocks(layer.bias_hh_l0, 4))]
    expected, c_expected = lstm_paper(xs.numpy(), h0[0].numpy(), c0[0].numpy(),
                                      blocks(layer.weight_ih_l0, 4), blocks(layer.weight_hh_l0, 4), b)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(c_n[0].detach().numpy(), c_expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_transcription(nonlinearity):
    layer = gnn.RNN(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    xs, h0 = sequence()
    out, _ = layer(xs, h0)
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    W, U = layer.weight_ih_l0.detach().numpy(), layer.weight_hh_l0.detach().numpy()
    b = (layer.bias_ih_l0 + layer.bias_hh_l0).detach().numpy()
    h, expected = h0[0].numpy(), []
    for x in xs.numpy():
        h = act(W @ x + U @ h + b)
        expected.append(h)
    np.testing.assert_allclose(out.detach().numpy(), np.stack(expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", gnn.MGU_VARIANTS)
def test_mgu_matches_transcription(variant):
    layer = gnn.MGU(I, H, variant=variant, dtype=torch.float64)
    xs, h0 = sequence()
    out, _ = layer(xs, h0)
    zeros_x, zeros_h, zeros_b = np.zeros((H, I)), np.zeros((H, H)), np.zeros(H)
    W = blocks(layer.weight_ih_l0, 2) if variant == "mgu" else [zeros_x, *blocks(layer.weight_ih_l0, 1)]
    U = blocks(layer.weight_hh_l0, 2) if variant != "mgu3" else [zeros_h, *blocks(layer.weight_hh_l0, 1)]
    b = blocks(layer.bias_l0, 2) if variant != "mgu2" else [zeros_b, *blocks(layer.bias_l0, 1)]
    expected = mgu_paper(xs.numpy(), h0[0].numpy(), variant, W[0], U[0], b[0], W[1], U[1], b[1])
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12, rtol=0)


def test_mgu_parameter_counts_follow_heck_and_salem():
    counts = {v: sum(p.numel() for p in gnn.MGU(I, H, variant=v).parameters()) for v in gnn.MGU_VARIANTS}
    assert counts["mgu"] == 2 * (H * I + H * H + H)
    assert counts["mgu1"] == counts["mgu"] - H * I           # no W_f
    assert counts["mgu2"] == counts["mgu1"] - H              # no W_f, no b_f
    assert counts["mgu3"] == counts["mgu1"] - H * H          # no W_f, no U_f


@pytest.mark.parametrize("candidate", ["identity", "g"])
def test_mingru_matches_transcription(candidate):
    layer = gnn.MinGRU(I, H, candidate=candidate, dtype=torch.float64)
    xs, h0 = sequence()
    out, _ = layer(xs, h0)
    W_z, W_h = blocks(layer.weight_ih_l0, 2)
    b_z, b_h = blocks(layer.bias_ih_l0, 2)
    expected = mingru_paper(xs.numpy(), h0[0].numpy(), W_z, b_z, W_h, b_h, candidate)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12, rtol=0)


# ---- golden values: constant weights chosen so that any gate-order swap changes the answer --------

def set_gru_constants(layer):
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.tensor([[0.1], [0.2], [0.3]], dtype=torch.float64))    # r, z, n
        layer.weight_hh_l0.copy_(torch.tensor([[0.4], [0.5], [0.6]], dtype=torch.float64))
        if layer.reset_after:
            layer.bias_ih_l0.copy_(torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64))
            layer.bias_hh_l0.copy_(torch.tensor([0.04, 0.05, 0.06], dtype=torch.float64))
        else:
            layer.bias_l0.copy_(torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64))


@pytest.mark.parametrize("reset_after,golden", [(True, 0.4977190479758463), (False, 0.48635560654806353)])
def test_gru_golden_value(reset_after, golden):
    """x = 1, h0 = 0.5. Worked by hand (reset_after=True):
    r = sig(0.1 + 0.01 + 0.4 * 0.5 + 0.04), z = sig(0.2 + 0.02 + 0.5 * 0.5 + 0.05),
    n = tanh(0.3 + 0.03 + r * (0.6 * 0.5 + 0.06)), h' = (1 - z) n + 0.5 z."""
    layer = gnn.GRU(1, 1, reset_after=reset_after, dtype=torch.float64)
    set_gru_constants(layer)
    out, _ = layer(torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64))
    s = lambda a: 1 / (1 + math.exp(-a))  # noqa: E731
    if reset_after:
        r, z = s(0.35), s(0.52)
        by_hand = (1 - z) * math.tanh(0.33 + r * 0.36) + z * 0.5
    else:
        r, z = s(0.31), s(0.47)
        by_hand = (1 - z) * math.tanh(0.33 + 0.6 * r * 0.5) + z * 0.5
    assert by_hand == pytest.approx(golden, abs=1e-15)
    assert out.item() == pytest.approx(golden, abs=1e-14)


def test_gru_golden_value_detects_gate_swaps():
    """The golden value differs for every permutation of the gate blocks but the right one."""
    layer = gnn.GRU(1, 1, dtype=torch.float64)
    results = set()
    for order in itertools.permutations(range(3)):
        set_gru_constants(layer)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                param = getattr(layer, name)
                param.copy_(param[list(order)].clone())
        out, _ = layer(torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64))
        results.add(round(out.item(), 12))
    assert len(results) == 6
    assert round(0.4977190479758463, 12) in results


def test_lstm_golden_value():
    """x = 1, h0 = c0 = 0.5, gate weights W = (0.1, 0.2, 0.3, 0.4) for i, f, g, o, U = W + 0.4, no bias."""
    layer = gnn.LSTM(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.tensor([[0.1], [0.2], [0.3], [0.4]], dtype=torch.float64))
        layer.weight_hh_l0.copy_(torch.tensor([[0.5], [0.6], [0.7], [0.8]], dtype=torch.float64))
    half = torch.full((1, 1), 0.5, dtype=torch.float64)
    out, (_, c) = layer(torch.ones(1, 1, dtype=torch.float64), (half, half))
    s = lambda a: 1 / (1 + math.exp(-a))  # noqa: E731
    c_by_hand = s(0.2 + 0.3) * 0.5 + s(0.1 + 0.25) * math.tanh(0.3 + 0.35)
    h_by_hand = s(0.4 + 0.4) * math.tanh(c_by_hand)
    assert c.item() == pytest.approx(c_by_hand, abs=1e-14)
    assert out.item() == pytest.approx(h_by_hand, abs=1e-14)
    assert out.item() == pytest.approx(0.3928466536, abs=1e-9)


@pytest.mark.parametrize("reset_after,count", [(True, 99_072), (False, 98_688)])
def test_gru_parameter_count_matches_keras(reset_after, count):
    """Keras: GRU(128) on 128 inputs has 99,072 parameters (reset_after=True) and 98,688 (False)."""
    layer = gnn.GRU(128, 128, reset_after=reset_after)
    assert sum(p.numel() for p in layer.parameters()) == count
