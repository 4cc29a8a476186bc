"""Layer behaviour that has no torch.nn twin: padding, bidirectional and stacked MGU / MinGRU /
reset-before GRU, streaming step(), and minGRU's parallel scan."""

import itertools

import numpy as np

import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ShapeError
from grukit.nn.reference import DirectionWeights, mingru_parallel_scan, run_direction

I, H, T = 3, 4, 6


def build(kind, **options):
    if kind == "gru_reset_before":
        return gnn.GRU(I, H, reset_after=False, dtype=torch.float64, **options)
    if kind.startswith("mgu"):
        return gnn.MGU(I, H, variant=kind, dtype=torch.float64, **options)
    if kind.startswith("mingru"):
        return gnn.MinGRU(I, H, candidate="g" if kind == "mingru_g" else "identity", dtype=torch.float64, **options)
    return {"gru": gnn.GRU, "lstm": gnn.LSTM, "rnn": gnn.RNN}[kind](I, H, dtype=torch.float64, **options)


KINDS = ["gru", "gru_reset_before", "lstm", "rnn", "mgu", "mgu1", "mgu2", "mgu3", "mingru", "mingru_g"]


@pytest.mark.parametrize("kind,num_layers,bidirectional", list(itertools.product(KINDS, [1, 2], [False, True])))
def test_lengths_equal_running_each_sequence_alone(kind, num_layers, bidirectional):
    """Oracle for padding: a padded batch with lengths= equals each sequence run trimmed, alone."""
    layer = build(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([T, 3, 1, 5])
    x = torch.randn(len(lengths), T, I, dtype=torch.float64)
    out, state = layer(x, lengths=lengths)
    state = state[0] if isinstance(state, tuple) else state
    for b, length in enumerate(lengths.tolist()):
        alone, alone_state = layer(x[b:b + 1, :length])
        alone_state = alone_state[0] if isinstance(alone_state, tuple) else alone_state
        torch.testing.assert_close(out[b, :length], alone[0], atol=1e-12, rtol=0)
        assert (out[b, length:] == 0).all(), "padded outputs must be zero"
        torch.testing.assert_close(state[:, b], alone_state[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_step_by_step_equals_full_sequence(kind):
    layer = build(kind, num_layers=2)
    x = torch.randn(T, 2, I, dtype=torch.float64)
    out, final = layer(x)
    state = None
    for t in range(T):
        y, state = layer.step(x[t], state)
        torch.testing.assert_close(y, out[t], atol=1e-12, rtol=0)
    for a, b in zip(state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_step_unbatched_input():
    layer = build("gru")
    x = torch.randn(T, I, dtype=torch.float64)
    out, _ = layer(x)
    state = None
    for t in range(T):
        y, state = layer.step(x[t], state)
    torch.testing.assert_close(y, out[-1], atol=1e-12, rtol=0)
    assert state.shape == (1, H)


@pytest.mark.parametrize("candidate,reverse,padded", list(itertools.product(["identity", "g"], [False, True], [False, True])))
def test_mingru_parallel_scan_equals_sequential_loop(candidate, reverse, padded):
    N = 4
    gx = (3 * torch.randn(50, N, 2 * H, dtype=torch.float64)).requires_grad_(True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([50, 17, 1, 33]) if padded else None
    seq_out, seq_h = run_direction("MINGRU", gx, h0, DirectionWeights(None), lengths, reverse, candidate)
    par_out, par_h = mingru_parallel_scan(gx, h0, lengths, reverse, candidate)
    torch.testing.assert_close(par_out, seq_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(par_h, seq_h, atol=1e-10, rtol=1e-10)
    weights = torch.randn(seq_out.shape, dtype=torch.float64)
    g_seq = torch.autograd.grad((seq_out * weights).sum() + seq_h.sum(), [gx, h0])
    g_par = torch.autograd.grad((par_out * weights).sum() + par_h.sum(), [gx, h0])
    for a, b in zip(g_par, g_seq):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_mingru_parallel_scan_is_stable_on_long_sequences():
    """Gates near 1 over 5,000 steps: a naive cumulative product underflows, log space does not."""
    T_long = 5000
    gx = torch.randn(T_long, 2, 2 * H, dtype=torch.float64)
    gx[..., :H] += 4.0  # z close to 1: state forgets fast, A_t = prod(1 - z) underflows
    h0 = torch.randn(2, H, dtype=torch.float64)
    par_out, _ = mingru_parallel_scan(gx, h0)
    seq_out, _ = run_direction("MINGRU", gx, h0, DirectionWeights(None))
    assert torch.isfinite(par_out).all()
    torch.testing.assert_close(par_out, seq_out, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("cls", [gnn.GRU, gnn.LSTM, gnn.RNN])
def test_torch_code_that_flattens_parameters_runs_unchanged(cls):
    """Tutorials call rnn.flatten_parameters() before each forward (a cuDNN step in torch.nn); for
    grukit it changes nothing: the same parameters, the same outputs."""
    torch.manual_seed(0)
    layer = cls(3, 4)
    x = torch.randn(5, 2, 3)
    before, parameters = layer(x)[0], [p.clone() for p in layer.parameters()]
    assert layer.flatten_parameters() is None
    assert torch.equal(layer(x)[0], before)
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), parameters))
    theirs = getattr(torch.nn, cls.__name__)(3, 4)
    public = {name for name in dir(theirs) if not name.startswith(("_", "check_", "get_"))}
    assert public - set(dir(layer)) <= {"permute_hidden"}   # torch.nn's public methods, bar an internal helper


def test_state_dict_keys_per_cell():
    assert list(build("gru_reset_before").state_dict()) == ["weight_ih_l0", "weight_hh_l0", "bias_l0"]
    assert list(build("mgu3").state_dict()) == ["weight_ih_l0", "weight_hh_l0", "bias_l0"]
    assert list(build("mingru").state_dict()) == ["weight_ih_l0", "bias_ih_l0"]
    layer = gnn.MGU(I, H, variant="mgu1", bias=False)
    assert list(layer.state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
    assert layer.weight_ih_l0.shape == (H, I) and layer.weight_hh_l0.shape == (2 * H, H)


@pytest.mark.parametrize("cls,extra", [(gnn.LSTM, {}), (gnn.RNN, {"nonlinearity": "relu"})])
def test_single_bias_equals_the_summed_pair(cls, extra):
    """single_bias=True (Keras's layout) is the torch layer with bias = bias_ih + bias_hh."""
    pair = cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    single = cls(I, H, num_layers=2, bidirectional=True, single_bias=True, dtype=torch.float64, **extra)
    state = {}
    for key, value in pair.state_dict().items():
        if key.startswith("bias_ih"):
            state[key.replace("bias_ih", "bias")] = value + pair.state_dict()[key.replace("bias_ih", "bias_hh")]
        elif not key.startswith("bias_hh"):
            state[key] = value
    single.load_state_dict(state)
    x = torch.randn(T, 2, I, dtype=torch.float64)
    torch.testing.assert_close(single(x)[0], pair(x)[0], atol=1e-12, rtol=0)
    assert sum(p.numel() for p in single.parameters()) == sum(p.numel() for p in pair.parameters()) - 4 * (
        4 if cls is gnn.LSTM else 1) * H


def test_keras_parameter_count_of_lstm_with_single_bias():
    assert sum(p.numel() for p in gnn.LSTM(128, 128, single_bias=True).parameters()) == 131_584


def _two_layers_and_their_output(kind):
    """A two-layer float64 layer, an input of 3 sequences (T, 3, I) and the layer's output for it."""
    layer = build(kind, num_layers=2)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    with torch.no_grad():
        out, _ = layer(x)
    return layer, x, out


@pytest.mark.parametrize("kind", KINDS)
def test_streamer_equals_full_sequence(kind):
    layer, x, out = _two_layers_and_their_output(kind)
    streamer = layer.streamer(batch_size=3)
    for t in range(T):
        y = streamer.step(x[t].numpy())
        np.testing.assert_allclose(y, out[t].numpy(), atol=1e-12, rtol=0)
    streamer.reset()
    single = layer.streamer()
    with torch.no_grad():
        out1, _ = layer(x[:, 0])
    for t in range(T):
        y = single.step(x[t, 0].numpy())
    np.testing.assert_allclose(y, out1[-1].numpy(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_streamer_keeps_the_weights_it_was_made_with(kind):
    """A streamer is a snapshot: changing the layer's parameters in place afterwards (an optimizer
    step) changes neither step() nor run(), for a batch of one and a batch of three."""
    layer, x, _ = _two_layers_and_their_output(kind)
    with torch.no_grad():
        want, _ = layer(x)
    streamers = {1: layer.streamer(), 3: layer.streamer(batch_size=3)}
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.mul_(0.5).add_(0.1)
    for batch, streamer in streamers.items():
        got = np.stack([streamer.step(x[t, :batch].squeeze(0).numpy()) for t in range(T)])
        np.testing.assert_allclose(got, want[:, :batch].squeeze(1).numpy(), atol=1e-12, rtol=0)
        streamer.reset()
        np.testing.assert_allclose(streamer.run(x[:, :batch].squeeze(1).numpy()), want[:, :batch].squeeze(1).numpy(),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_streamer_run_continues_the_sequence_across_chunks_and_frames(kind):
    """run() over chunks, mixed with step(), equals one forward call over the whole sequence."""
    layer, x, out = _two_layers_and_their_output(kind)
    streamer = layer.streamer(batch_size=3)
    first = streamer.run(x[:2].numpy())
    middle = streamer.step(x[2].numpy())
    rest = streamer.run(x[3:].numpy())
    assert first.shape == (2, 3, H) and rest.shape == (T - 3, 3, H)
    got = np.concatenate([first, middle[None], rest])
    np.testing.assert_allclose(got, out.numpy(), atol=1e-12, rtol=0)
    streamer.reset()   # a new sequence from a zero state
    np.testing.assert_allclose(streamer.run(x.numpy()), out.numpy(), atol=1e-12, rtol=0)
    single = layer.streamer()
    with torch.no_grad():
        out1, _ = layer(x[:, 1])
    np.testing.assert_allclose(single.run(x[:, 1].numpy()), out1.numpy(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamer_of_one_takes_frames_of_any_form_with_the_bits_of_its_bound_frames(kind):
    """A batch of one's frames run through compiled entry points bound to one frame type. Frames of
    other forms (a list, big-endian floats, a strided or read-only view, (1, H_in)) are converted and give
    the same bits; both equal the layer; a wrong shape names the expected ones."""
    layer, x, _ = _two_layers_and_their_output(kind)
    with torch.no_grad():
        want, _ = layer(x[:, 0])
    fast, converted = layer.streamer(), layer.streamer()
    wide = np.zeros((T, 2 * I))
    wide[:, ::2] = x[:, 0].numpy()
    read_only = x[:, 0].numpy().copy()
    read_only.flags.writeable = False
    forms = [lambda t: x[t, 0].tolist(), lambda t: x[t, 0].numpy().astype(">f8"), lambda t: wide[t, ::2],
             lambda t: read_only[t], lambda t: x[t, :1].numpy()]
    for t in range(T):
        y = fast.step(x[t, 0].numpy())
        assert y.shape == (H,) and not np.shares_memory(y, fast.h[-1])
        np.testing.assert_allclose(y, want[t].numpy(), atol=1e-12, rtol=0)
        form = forms[t % len(forms)]
        got = converted.step(form(t))
        np.testing.assert_array_equal(got.reshape(-1), y)
        assert got.shape == np.shape(form(t))[:-1] + (H,)
    assert fast._calls_of_one is not None
    with pytest.raises(ShapeError, match=r"\(3,\) or \(1, 3\)"):
        fast.step(np.zeros(I + 1))


def test_streamer_run_in_float32_matches_the_layer_and_names_the_expected_shape():
    layer = gnn.LSTM(I, H, num_layers=2).eval()
    x = torch.randn(50, I)
    with torch.no_grad():
        out, _ = layer(x)
    streamer = layer.streamer()
    np.testing.assert_allclose(streamer.run(x.numpy()), out.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ShapeError, match=r"\(T, 3\) or \(T, 1, 3\) with time first"):
        streamer.run(np.zeros((5, 2, I), np.float32))
    with pytest.raises(ShapeError, match="at least one frame"):
        streamer.run(np.zeros((0, I), np.float32))


def test_step_runs_the_fused_kernel_without_gradients():
    from grukit.nn.kernels.function import CALLS
    layer = build("gru")
    before = CALLS["step"]
    with torch.no_grad():
        layer.step(torch.randn(2, I, dtype=torch.float64))
    assert CALLS["step"] == before + 1
    y, _ = layer.step(torch.randn(2, I, dtype=torch.float64))  # gradients recorded: reference path
    assert y.requires_grad and CALLS["step"] == before + 1
