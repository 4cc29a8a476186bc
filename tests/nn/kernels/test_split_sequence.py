"""A batch of one's GRU or LSTM sequence with its hidden units split over the threads (each family's
split_sequence, on region.run_in_team): the bits of the one-thread loop (stored_sequence), and a wide
layer's ``layer(x)`` and ``streamer.run`` on it against the float64 reference loop."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import api, common, gru, lstm, region

pytestmark = pytest.mark.skipif(not region.usable(), reason="needs torch's libgomp on x86 (region.usable)")


GATES = {"gru": 3, "lstm": 4}


def _sequence(family, T, I, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[family]
    x = rng.standard_normal((T, 1, I)).astype(dtype)
    weights = (rng.standard_normal((G * H, I)) * 0.3, rng.standard_normal(G * H) * 0.1,
               rng.standard_normal((G * H, H)) * 0.2, rng.standard_normal(G * H) * 0.1)
    states = [rng.standard_normal((1, H)).astype(dtype) for _ in range(1 if family == "gru" else 2)]
    return x, [w.astype(dtype) for w in weights], states


def _one_thread(family, x, weights, states, reverse, out):
    if family == "gru":
        common.flushing_subnormals(gru.stored_sequence, x, *weights, True, reverse, *states, out)
    else:
        common.flushing_subnormals(lstm.stored_sequence, x, *weights, reverse, *states, out)


def _split(family, x, weights, states, reverse, out, threads):
    status = []   # as SequenceStack calls it: BLAS (the projection's GEMM) on one thread, subnormals flushed
    module = gru if family == "gru" else lstm
    common.flushing_subnormals(lambda *args: status.append(module.split_sequence(*args)),
                               x, *weights, reverse, *states, out, threads)
    return status


# H: whole and ragged parts of 16 units (H = 100 splits 48 + 52), one part narrower than 16 (H = 20
# on three threads: 0, 0 and 20 units), long sequences (a GRU's transposed copy of W_hh where W^T is
# the faster mat-vec), and every thread count up to three (more threads than the two cores).
@pytest.mark.parametrize("T,I,H,threads", [(37, 5, 64, 2), (40, 8, 100, 2), (12, 3, 256, 2), (9, 4, 20, 3),
                                            (33, 6, 128, 3), (5, 2, 48, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_the_bits_of_the_one_thread_loop(family, T, I, H, threads, dtype, reverse):
    x, weights, states = _sequence(family, T, I, H, dtype)
    one = [state.copy() for state in states]
    out_one = np.empty((T, 1, H), dtype)
    _one_thread(family, x, weights, one, reverse, out_one)
    split = [state.copy() for state in states]
    out_split = np.full((T, 1, H), np.nan, dtype)
    assert _split(family, x, weights, split, reverse, out_split, threads) == [0]
    np.testing.assert_array_equal(out_split, out_one)
    for ours, expected in zip(split, one):
        np.testing.assert_array_equal(ours, expected)


@pytest.fixture
def split_calls(monkeypatch):
    """The thread counts of the split sequences that ran (either family)."""
    calls = []
    for module in (gru, lstm):
        real = module.split_sequence
        monkeypatch.setattr(module, "split_sequence", lambda *args, real=real: calls.append(args[-1]) or real(*args))
    return calls


LAYERS = {"gru": gnn.GRU, "lstm": gnn.LSTM}


def _twins(family, H, dtype):
    torch.manual_seed(3)
    layer = LAYERS[family](6, H, batch_first=True, dtype=dtype).eval()
    reference = LAYERS[family](6, H, batch_first=True, dtype=torch.float64, kernel="reference").eval()
    reference.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    return layer, reference


def _flat(state):
    return torch.cat([s.reshape(-1) for s in state]) if isinstance(state, tuple) else state.reshape(-1)


@pytest.mark.parametrize("family", ["gru", "lstm"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_a_wide_layer_splits_its_batch_of_one_and_matches_the_reference(split_calls, family, dtype, tolerance):
    H = api.SPLIT_SEQUENCE_MIN_H
    layer, reference = _twins(family, H, dtype)
    x = torch.randn(1, 20, 6, dtype=dtype)
    h0 = torch.randn(1, 1, H, dtype=dtype)
    state0 = (h0, torch.randn(1, 1, H, dtype=dtype)) if family == "lstm" else h0
    reference_state0 = tuple(s.double() for s in state0) if family == "lstm" else h0.double()
    with torch.no_grad():
        y, state = layer(x, state0)
        y_ref, state_ref = reference(x.double(), reference_state0)
    assert split_calls == [torch.get_num_threads()]
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=tolerance)
    torch.testing.assert_close(_flat(state).double(), _flat(state_ref), rtol=0, atol=tolerance)


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_the_streamer_splits_too_and_carries_its_state(split_calls, family):
    layer, reference = _twins(family, api.SPLIT_SEQUENCE_MIN_H, torch.float64)
    x = torch.randn(30, 6, dtype=torch.float64)
    streamer = layer.streamer(batch_size=1)
    parts = [streamer.run(x[:12].numpy()), streamer.run(x[12:].numpy())]
    with torch.no_grad():
        y_ref, _ = reference(x[None])
    assert len(split_calls) == 2
    np.testing.assert_allclose(np.concatenate(parts), y_ref[0].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_narrow_layers_one_thread_and_batches_keep_the_one_thread_loop(split_calls, family, monkeypatch):
    """Below SPLIT_SEQUENCE_MIN_H, on one thread, while another split sequence runs, or where the team
    is not usable, the same call runs the one-thread loop, with the same bits."""
    layer, _ = _twins(family, api.SPLIT_SEQUENCE_MIN_H, torch.float32)
    x = torch.randn(1, 9, 6)
    with torch.no_grad():
        split = layer(x)[0]
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one_thread = layer(x)[0]
        finally:
            torch.set_num_threads(threads)
        with api._SPLIT_RUNNING:     # another thread's split sequence running
            while_running = layer(x)[0]
        monkeypatch.setattr(region, "usable", lambda: False)
        unusable = layer(x)[0]
        narrow = LAYERS[family](6, api.SPLIT_SEQUENCE_MIN_H - 16, batch_first=True).eval()(x)
    assert split_calls == [threads]
    torch.testing.assert_close(one_thread, split, rtol=0, atol=0)
    torch.testing.assert_close(unusable, split, rtol=0, atol=0)
    torch.testing.assert_close(while_running, split, rtol=0, atol=0)
    assert narrow[0].shape == (1, 9, api.SPLIT_SEQUENCE_MIN_H - 16)


def _child(queue):
    queue.put(region.usable())


def test_a_forked_child_does_not_use_the_team():
    """libgomp's team does not survive a fork: a child must run the one-thread loop."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert not child.is_alive()
    assert queue.get(timeout=5) is False
