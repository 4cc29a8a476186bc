"""A batch of one's GRU sequence with its hidden units split over the threads (gru.split_sequence, on
region.run_in_team): the bits of the one-thread loop (gru.stored_sequence), and a wide layer's
``layer(x)`` and ``streamer.run`` on it against the float64 reference loop."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import api, common, gru, region

pytestmark = pytest.mark.skipif(not region.usable(), reason="needs torch's libgomp on x86 (region.usable)")


def _sequence(T, I, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, 1, I)).astype(dtype)
    weights = (rng.standard_normal((3 * H, I)) * 0.3, rng.standard_normal(3 * H) * 0.1,
               rng.standard_normal((3 * H, H)) * 0.2, rng.standard_normal(3 * H) * 0.1)
    h0 = rng.standard_normal((1, H)).astype(dtype)
    return x, [w.astype(dtype) for w in weights], h0


# H: whole and ragged parts of 16 units (H = 100 splits 48 + 52), one part narrower than 16 (H = 20
# on three threads: 0, 0 and 20 units), long sequences (a transposed copy of W_hh where W^T is the
# faster mat-vec), and every thread count up to three (more threads than the two cores).
@pytest.mark.parametrize("T,I,H,threads", [(37, 5, 64, 2), (40, 8, 100, 2), (12, 3, 256, 2), (9, 4, 20, 3),
                                            (33, 6, 128, 3), (5, 2, 48, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_bits_of_the_one_thread_loop(T, I, H, threads, dtype, reverse):
    x, (w_ih, b_in, w, bhh), h0 = _sequence(T, I, H, dtype)
    h_one, out_one = h0.copy(), np.empty((T, 1, H), dtype)
    common.flushing_subnormals(gru.stored_sequence, x, w_ih, b_in, w, bhh, True, reverse, h_one, out_one)
    h_split, out_split = h0.copy(), np.full((T, 1, H), np.nan, dtype)
    status = []   # as SequenceStack calls it: BLAS (the projection's GEMM) on one thread, subnormals flushed
    common.flushing_subnormals(lambda *args: status.append(gru.split_sequence(*args)),
                               x, w_ih, b_in, w, bhh, reverse, h_split, out_split, threads)
    assert status == [0]
    np.testing.assert_array_equal(out_split, out_one)
    np.testing.assert_array_equal(h_split, h_one)


@pytest.fixture
def split_calls(monkeypatch):
    calls = []
    real = gru.split_sequence
    monkeypatch.setattr(gru, "split_sequence", lambda *args: calls.append(args[-1]) or real(*args))
    return calls


def _twins(H, dtype):
    torch.manual_seed(3)
    layer = gnn.GRU(6, H, batch_first=True, dtype=dtype).eval()
    reference = gnn.GRU(6, H, batch_first=True, dtype=torch.float64, kernel="reference").eval()
    reference.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    return layer, reference


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_a_wide_layer_splits_its_batch_of_one_and_matches_the_reference(split_calls, dtype, tolerance):
    layer, reference = _twins(api.SPLIT_SEQUENCE_MIN_H, dtype)
    x = torch.randn(1, 20, 6, dtype=dtype)
    h0 = torch.randn(1, 1, api.SPLIT_SEQUENCE_MIN_H, dtype=dtype)
    with torch.no_grad():
        y, h_n = layer(x, h0)
        y_ref, h_ref = reference(x.double(), h0.double())
    assert split_calls == [torch.get_num_threads()]
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=tolerance)
    torch.testing.assert_close(h_n.double(), h_ref, rtol=0, atol=tolerance)


def test_the_streamer_splits_too_and_carries_its_state(split_calls):
    layer, reference = _twins(api.SPLIT_SEQUENCE_MIN_H, torch.float64)
    x = torch.randn(30, 6, dtype=torch.float64)
    streamer = layer.streamer(batch_size=1)
    parts = [streamer.run(x[:12].numpy()), streamer.run(x[12:].numpy())]
    with torch.no_grad():
        y_ref, _ = reference(x[None])
    assert len(split_calls) == 2
    np.testing.assert_allclose(np.concatenate(parts), y_ref[0].numpy(), rtol=0, atol=1e-12)


def test_narrow_layers_one_thread_and_batches_keep_the_one_thread_loop(split_calls, monkeypatch):
    """Below SPLIT_SEQUENCE_MIN_H, on one thread, or where the team is not usable, the same call runs
    the one-thread loop, with the same bits."""
    layer, _ = _twins(api.SPLIT_SEQUENCE_MIN_H, torch.float32)
    x = torch.randn(1, 9, 6)
    with torch.no_grad():
        split = layer(x)[0]
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one_thread = layer(x)[0]
        finally:
            torch.set_num_threads(threads)
        monkeypatch.setattr(region, "usable", lambda: False)
        unusable = layer(x)[0]
        narrow = gnn.GRU(6, api.SPLIT_SEQUENCE_MIN_H - 16, batch_first=True).eval()(x)
    assert split_calls == [threads]
    torch.testing.assert_close(one_thread, split, rtol=0, atol=0)
    torch.testing.assert_close(unusable, split, rtol=0, atol=0)
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
