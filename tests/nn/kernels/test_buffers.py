"""The kernels' kept large arrays: reused only when nothing else holds them, bounded, releasable."""

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import buffers

SHAPE = (300, 1000)      # 1.2 MB of float32: above MIN_BYTES


@pytest.fixture(autouse=True)
def _empty_pool():
    buffers.release()
    yield
    buffers.release()


def test_a_free_array_is_reused_and_a_held_one_never():
    first = buffers.empty(SHAPE, np.float32)
    address = first.ctypes.data
    second = buffers.empty(SHAPE, np.float32)
    assert second.ctypes.data != address                    # the caller still holds the first
    del first
    assert buffers.empty(SHAPE, np.float32).ctypes.data == address
    view = buffers.empty(SHAPE, np.float32)[5:9]             # held by a numpy view
    tensor = torch.from_numpy(buffers.empty(SHAPE, np.float32))   # held by a tensor
    fresh = buffers.empty(SHAPE, np.float32)
    held = {second.ctypes.data, view.base.ctypes.data, tensor.data_ptr()}
    assert len(held) == 3 and fresh.ctypes.data not in held
    assert buffers.empty(SHAPE, np.float64).dtype == np.float64     # dtype is part of the key
    assert buffers.empty((1000, 300), np.float32).shape == (1000, 300)


def test_the_smallest_free_array_with_room_serves_any_shape():
    large = buffers.empty((600, 1000), np.float32)
    small = buffers.empty(SHAPE, np.float32)
    addresses = large.ctypes.data, small.ctypes.data
    del large, small
    fewer_steps = buffers.empty((250, 1000), np.float32)        # fits both: the smaller serves it
    assert fewer_steps.ctypes.data == addresses[1] and fewer_steps.shape == (250, 1000)
    assert fewer_steps.flags.c_contiguous
    more_steps = buffers.empty((500, 1000), np.float32)         # only the larger has room
    assert more_steps.ctypes.data == addresses[0] and more_steps.shape == (500, 1000)
    fresh = buffers.empty((200, 1000), np.float32)               # both held through the views
    assert fresh.ctypes.data not in addresses
    assert buffers.empty((700, 1000), np.float32).ctypes.data not in addresses   # none has room


def test_small_arrays_are_not_kept_and_the_total_stays_under_the_limit(monkeypatch):
    buffers.empty((10, 10), np.float32)
    assert buffers.kept_bytes() == 0
    monkeypatch.setattr(buffers, "LIMIT_BYTES", 3 * 1_200_000)
    held = [buffers.empty(SHAPE, np.float32) for _ in range(5)]   # only three fit
    assert buffers.kept_bytes() == 3 * 1_200_000
    del held
    other = buffers.empty((2000, 300), np.float32)             # no room in any: free ones make room
    assert buffers.kept_bytes() == 2_400_000 and other.nbytes == 2_400_000
    del other
    buffers.release()
    assert buffers.kept_bytes() == 0


def test_training_twice_through_reused_buffers_gives_the_same_gradients():
    torch.manual_seed(0)
    layer = gnn.LSTM(16, 64, batch_first=True)
    x = torch.randn(8, 200, 16)
    grads = []
    for _ in range(3):       # the 2nd and 3rd steps run on kept workspaces full of old values
        layer.zero_grad()
        layer(x)[0].square().mean().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    assert buffers.kept_bytes() > 0
    for later in grads[1:]:
        for a, b in zip(later, grads[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kept_view_starts_on_a_cache_line(dtype):
    """New arrays and reused ones, of any size that fits: numpy's own large arrays start 16 bytes in."""
    first = buffers.empty((300, 1000), dtype)
    address = first.ctypes.data
    assert address % buffers.ALIGNMENT == 0 and first.flags.c_contiguous
    del first
    again = buffers.empty((299, 999), dtype)     # the same kept array, reused
    assert again.ctypes.data == address
    held = [buffers.empty((n, 777), dtype) for n in (100, 211, 333)]
    assert all(a.ctypes.data % buffers.ALIGNMENT == 0 for a in held + [again])
