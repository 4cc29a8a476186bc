"""The weights the kernels copy start on a cache line (buffers.ALIGNMENT): 64-byte vector loads of a
row that straddles two lines made the batch-of-one loops 15-20% slower (common.py)."""

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import buffers, common


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (384, 128), (7, 3, 11)])
def test_aligned_arrays_start_on_a_cache_line_and_hold_the_values(dtype, shape):
    source = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    for _ in range(20):   # numpy's own addresses vary with the allocation: 16-byte steps
        out = buffers.aligned_copy(source)
        assert out.ctypes.data % buffers.ALIGNMENT == 0 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, source)
        assert buffers.aligned_empty(shape, dtype).ctypes.data % buffers.ALIGNMENT == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_aligned_matrices_and_the_transposed_weights(dtype):
    w = np.random.default_rng(1).standard_normal((384, 128)).astype(dtype)
    for rows, cols in ((1, 1), (5, 3), (128, 384)):
        m = common.aligned_matrix(rows, cols, w)
        assert m.shape == (rows, cols) and m.dtype == dtype and m.ctypes.data % buffers.ALIGNMENT == 0
    packed = common.pack_transposed(w)
    assert packed.ctypes.data % buffers.ALIGNMENT == 0
    np.testing.assert_array_equal(packed, w.T)


@pytest.mark.parametrize("cell", [gnn.GRU, gnn.LSTM, gnn.RNN])
def test_a_streamers_weights_start_on_a_cache_line_and_give_the_layers_numbers(cell):
    torch.manual_seed(0)
    layer = cell(16, 32, num_layers=2)
    streamer = layer.streamer()
    for weights in streamer._weights:
        for name in ("input_t", "w_ih", "w_hh"):
            assert getattr(weights, name).ctypes.data % buffers.ALIGNMENT == 0, name
    x = torch.randn(40, 1, 16)
    with torch.no_grad():
        expected = layer(x)[0][:, 0].numpy()
    np.testing.assert_array_equal(streamer.run(x[:, 0].numpy()), expected)
