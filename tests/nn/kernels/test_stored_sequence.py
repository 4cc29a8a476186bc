"""A batch of one in inference: ``layer(x)`` and ``streamer.run`` run each layer and direction as one
compiled call on the weights as stored (api.SequenceStack), against the reference loop,
torch.nn and the packed-weight path (api.forward_stack)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import grukit.nn as gnn
from grukit.nn import streaming
from grukit.nn.kernels import api
from grukit.nn.kernels.common import (STORED_MATVEC_FASTER, STORED_MATVEC_MIN_K, STORED_TRANSPOSE_MIN_STEPS,
                                      stored_operand)

I, H, T = 5, 6, 7
# A sequence this long reads weight_hh through a transposed copy (common.stored_operand) where W^T is
# the faster mat-vec; T does not.
LONG = STORED_TRANSPOSE_MIN_STEPS

CELLS = {   # kind: (layer class, options)
    "gru": (gnn.GRU, {}),
    "gru_reset_before": (gnn.GRU, {"reset_after": False}),
    "lstm": (gnn.LSTM, {}),
    "rnn_tanh": (gnn.RNN, {}),
    "rnn_relu": (gnn.RNN, {"nonlinearity": "relu"}),
    "mgu": (gnn.MGU, {}),
    "mingru": (gnn.MinGRU, {}),
    "mingru_g": (gnn.MinGRU, {"candidate": "g"}),
}
BUILDERS = {kind: (lambda cls=cls, fixed=fixed, **o: cls(I, H, **fixed, **o)) for kind, (cls, fixed) in CELLS.items()}
MGU_VARIANTS = ("mgu1", "mgu2", "mgu3")


@pytest.fixture
def stored_calls(monkeypatch):
    """A list that gets the stack's mode whenever a SequenceStack runs (run or advance)."""
    calls = []
    real = api.SequenceStack._advance

    def spy(self, *args, **kwargs):
        calls.append(self.mode)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(api.SequenceStack, "_advance", spy)
    return calls


def twins(build, dtype, **options):
    torch.manual_seed(7)
    layer = build(num_layers=2, dtype=dtype, **options).eval()
    reference = build(num_layers=2, dtype=dtype, kernel="reference", **options).eval()
    reference.load_state_dict(layer.state_dict())
    return layer, reference


def parts(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("steps", [T, LONG])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_layer_call_on_a_batch_of_one_equals_the_reference(kind, bidirectional, dtype, atol, steps, stored_calls):
    if dtype == torch.float32:
        atol *= steps / T     # float32 round-off grows with the steps (float64 holds 1e-12 throughout)
    layer, reference = twins(BUILDERS[kind], dtype, bidirectional=bidirectional, batch_first=True)
    x = torch.randn(1, steps, I, dtype=dtype)
    shape = (4 if bidirectional else 2, 1, H)
    h0 = tuple(torch.randn(shape, dtype=dtype) for _ in range(2)) if kind == "lstm" else torch.randn(shape, dtype=dtype)
    kept = [part.clone() for part in parts(h0)]
    with torch.no_grad():
        for state in (None, h0):
            out, final = layer(x, state)
            want_out, want_final = reference(x, state)
            torch.testing.assert_close(out, want_out, atol=atol, rtol=0)
            for got, want in zip(parts(final), parts(want_final)):
                torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert len(stored_calls) == 2, "both calls ran the stored-weight stack"
    assert all(torch.equal(a, b) for a, b in zip(parts(h0), kept)), "the given state is left as it was"


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn_tanh"])
def test_batch_of_one_matches_torch_nn(kind, stored_calls):
    twin_type = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn_tanh": torch.nn.RNN}[kind]
    torch.manual_seed(0)
    theirs = twin_type(I, H, num_layers=2, bidirectional=True).eval()
    ours = BUILDERS[kind](num_layers=2, bidirectional=True).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, I)          # unbatched: a batch of one as well
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    torch.testing.assert_close(got[0], want[0], atol=2e-6, rtol=0)
    for a, b in zip(parts(got[1]), parts(want[1])):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
    assert stored_calls == [ours.mode]


@pytest.mark.parametrize("steps", [T, LONG])
def test_same_numbers_as_the_packed_weight_stack_up_to_summation_order(steps):
    """SequenceStack against forward_stack (pack_weight, the batched path's loops) on
    the same arrays, every mode, two layers, both directions, float64."""
    rng = np.random.default_rng(0)
    for mode in api.MODES:
        for candidate in ("identity", "g") if mode == "MINGRU" else ("identity",):
            G, R = api.GATES[mode], api.RECURRENT_ROWS[mode]
            directions = [[(rng.standard_normal((G * H, size)) * 0.4, rng.standard_normal(G * H) * 0.1,
                            rng.standard_normal((R * H, H)) * 0.4 if R else None, rng.standard_normal(G * H) * 0.1)
                           for _ in range(2)] for size in (I, 2 * H)]
            packed = [[(w, b, api.pack_weight(w_hh), b_hh) for w, b, w_hh, b_hh in layer] for layer in directions]
            x = rng.standard_normal((steps, 1, I))
            h0 = rng.standard_normal((4, 1, H))
            c0 = rng.standard_normal((4, 1, H)) if mode == "LSTM" else None
            want = api.forward_stack(mode, x, packed, h0, c0, candidate=candidate)
            got = api.SequenceStack(mode, directions, candidate).run(x, h0, c0)
            for a, b in zip(got, want):
                assert (a is None and b is None) or np.allclose(a, b, rtol=0, atol=1e-13), (mode, candidate)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(list(CELLS)), inputs=st.integers(1, 5), hidden=st.integers(1, 5),
       steps=st.integers(1, 4), layers=st.integers(1, 2), bidirectional=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_random_shapes(kind, inputs, hidden, steps, layers, bidirectional, seed):
    """Down to one step, one input and one unit: layer(x) on a batch of one against the reference."""
    cls, options = CELLS[kind]
    torch.manual_seed(seed)
    options = dict(options, num_layers=layers, bidirectional=bidirectional, dtype=torch.float64)
    layer = cls(inputs, hidden, **options).eval()
    reference = cls(inputs, hidden, kernel="reference", **options).eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(steps, 1, inputs, dtype=torch.float64)
    with torch.no_grad():
        got, want = layer(x), reference(x)
    torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=0)
    for a, b in zip(parts(got[1]), parts(want[1])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_long_sequences_read_a_transposed_copy_of_the_recurrent_weight_where_it_is_faster():
    """common.stored_operand: short sequences and, on a core where dot products of that length are the
    faster mat-vec (common.stored_matvec), wide weights read W as stored; else W^T, copied."""
    w = np.arange(12.0).reshape(4, 3)
    operand, transposed = stored_operand(w, LONG - 1)
    assert not transposed and operand is w
    operand, transposed = stored_operand(w, LONG)   # 3 columns: short dot products
    assert transposed and np.array_equal(operand, w.T) and operand.flags.c_contiguous
    wide = np.arange(4.0 * STORED_MATVEC_MIN_K).reshape(4, STORED_MATVEC_MIN_K)
    operand, transposed = stored_operand(wide, LONG)
    if STORED_MATVEC_FASTER:
        assert not transposed and operand is wide
    else:
        assert transposed and np.array_equal(operand, wide.T)


def test_lengths_take_the_batched_path(stored_calls):
    layer, reference = twins(BUILDERS["gru"], torch.float64)
    x = torch.randn(T, 1, I, dtype=torch.float64)
    with torch.no_grad():
        out, final = layer(x, lengths=torch.tensor([4]))
        want_out, want_final = reference(x, lengths=torch.tensor([4]))
    torch.testing.assert_close(out, want_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(final, want_final, atol=1e-12, rtol=0)
    assert stored_calls == []


@pytest.mark.parametrize("stored_frames", [True, False], ids=["frames-on-W", "frames-on-W^T"])
@pytest.mark.parametrize("kind", list(BUILDERS) + list(MGU_VARIANTS))
def test_streamer_run_on_a_batch_of_one_equals_its_frames(kind, stored_frames, stored_calls, monkeypatch):
    """run() in two chunks carries the state and gives what frame-by-frame step() gives, float64, with
    the frames on the weights as stored (dot products) and transposed, whichever this core prefers
    (common.stored_matvec); and the reference loop's output over the whole sequence."""
    monkeypatch.setattr(streaming, "stored_matvec", lambda K: stored_frames)
    build = (lambda **o: gnn.MGU(I, H, variant=kind, **o)) if kind in MGU_VARIANTS else BUILDERS[kind]
    layer, reference = twins(build, torch.float64)
    x = torch.randn(T, I, dtype=torch.float64)
    chunked, framed = layer.streamer(), layer.streamer()
    got = np.concatenate([chunked.run(x[:3].numpy()), chunked.run(x[3:].numpy())])
    frames = np.stack([framed.step(frame) for frame in x.numpy()])
    with torch.no_grad():
        want = reference(x)[0].numpy()
    np.testing.assert_allclose(got, frames, atol=1e-12, rtol=0)
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    for mine, theirs in zip(chunked.h + (chunked.c or []), framed.h + (framed.c or [])):
        np.testing.assert_allclose(mine, theirs, atol=1e-12, rtol=0)
    assert len(stored_calls) == 2


def test_bad_arrays_name_what_is_wrong():
    rng = np.random.default_rng(1)
    layer = [(rng.standard_normal((3 * H, I)), None, rng.standard_normal((3 * H, H)), None)]
    stack = api.SequenceStack("GRU", [layer])
    x = rng.standard_normal((T, 1, I))
    with pytest.raises(ValueError, match="h0: expected"):
        stack.run(x, np.zeros((2, 1, H)))
    with pytest.raises(ValueError, match=r"x: expected a C-contiguous \(T, B, 5\)"):
        stack.run(x[..., :2].copy())
    with pytest.raises(ValueError, match="x: expected"):
        stack.run(x.astype(np.float32))
    with pytest.raises(ValueError, match="weight_hh of layer 0"):
        api.SequenceStack("GRU", [[(layer[0][0], None, np.zeros((H, H)), None)]])
    with pytest.raises(ValueError, match="w_ih of layer 1"):
        api.SequenceStack("GRU", [layer, layer])
    lstm = api.SequenceStack("LSTM", [[(rng.standard_normal((4 * H, I)), None, rng.standard_normal((4 * H, H)), None)]])
    with pytest.raises(ValueError, match="c0: expected"):
        lstm.run(x, np.zeros((1, 1, H)), np.zeros((1, 2, H)))
    zeros = lstm.run(x)
    for h0, c0 in ((np.zeros((1, 1, H)), None), (None, np.zeros((1, 1, H)))):   # None: zeros, each on its own
        assert all(np.array_equal(a, b) for a, b in zip(lstm.run(x, h0, c0), zeros))
    with pytest.raises(ValueError, match="c: expected"):
        lstm.advance(x, np.zeros((1, 1, H)))
    with pytest.raises(ValueError, match="h: expected a C-contiguous array"):
        stack.advance(x, np.zeros((1, 1, 2 * H))[..., ::2])
    with pytest.raises(ValueError, match="mode"):
        api.SequenceStack("GRU2", [layer])


def test_the_stack_is_kept_and_follows_weight_updates():
    """layer(x) makes its SequenceStack once; an in-place update of the weights is read at once,
    a replaced parameter gets a new stack."""
    layer, reference = twins(BUILDERS["gru"], torch.float64)
    x = torch.randn(T, 1, I, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        stack = layer._made_of(layer._kernel_views(x))["sequence"]
        layer(x)
        assert layer._made_of(layer._kernel_views(x))["sequence"] is stack
        for ours, theirs in zip(layer.parameters(), reference.parameters()):
            ours.mul_(0.5)
            theirs.mul_(0.5)
        torch.testing.assert_close(layer(x)[0], reference(x)[0], atol=1e-12, rtol=0)
        layer.weight_hh_l0 = torch.nn.Parameter(torch.randn(3 * H, H, dtype=torch.float64))
        reference.weight_hh_l0 = torch.nn.Parameter(layer.weight_hh_l0.detach().clone())
        torch.testing.assert_close(layer(x)[0], reference(x)[0], atol=1e-12, rtol=0)
        assert layer._made_of(layer._kernel_views(x))["sequence"] is not stack
