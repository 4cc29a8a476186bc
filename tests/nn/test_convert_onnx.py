"""ONNX weight layouts against ONNX Runtime's GRU, LSTM and RNN operators."""

import itertools

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError, ShapeError
from grukit.nn.convert import load_onnx_weights, onnx_operator, onnx_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

I, H, T, N = 3, 5, 6, 4


def build(kind, bidirectional, bias=True):
    options = {"bidirectional": bidirectional, "bias": bias, "dtype": torch.float32}
    if kind == "gru":
        return gnn.GRU(I, H, **options)
    if kind == "gru_reset_before":
        return gnn.GRU(I, H, reset_after=False, **options)
    if kind == "lstm":
        return gnn.LSTM(I, H, **options)
    return gnn.RNN(I, H, nonlinearity=kind.split("_")[1], **options)


def run_onnx_runtime(layer, x, lengths, h0):
    """One ONNX node with grukit's weights, run by ONNX Runtime."""
    op_type, attributes = onnx_operator(layer)
    weights = onnx_weights(layer)
    D = layer.num_directions
    inputs = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op_type == "LSTM" else [])
    node = helper.make_node(op_type, inputs, outputs, **attributes)
    initializers = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in weights.items()]
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I]),
                        helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [N]),
                        helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [D, N, H])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * (4 if name == "Y" else 3)) for name in outputs], initializers)
    # an explicit IR version: newer onnx releases write one that ONNX Runtime may not read yet
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"X": x, "sequence_lens": lengths.astype(np.int32), "initial_h": h0})
    Y = result[0]  # (T, D, N, H) -> (T, N, D * H) like grukit
    return Y.transpose(0, 2, 1, 3).reshape(T, N, D * H), result[1]


KINDS = ["gru", "gru_reset_before", "lstm", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("kind,bidirectional,padded", list(itertools.product(KINDS, [False, True], [False, True])))
def test_matches_onnx_runtime(kind, bidirectional, padded):
    layer = build(kind, bidirectional)
    x = np.random.default_rng(0).normal(size=(T, N, I)).astype(np.float32)
    lengths = np.array([T, 2, 1, 4]) if padded else np.full(N, T)
    D = layer.num_directions
    h0 = np.random.default_rng(1).normal(size=(D, N, H)).astype(np.float32)
    expected_y, expected_h = run_onnx_runtime(layer, x, lengths, h0)
    state0 = torch.from_numpy(h0)
    if kind == "lstm":
        state0 = (state0, torch.zeros(D, N, H))
    with torch.no_grad():
        y, state = layer(torch.from_numpy(x), state0, lengths=torch.from_numpy(lengths))
    h = state[0] if isinstance(state, tuple) else state
    np.testing.assert_allclose(y.numpy(), expected_y, atol=1e-5, rtol=0)
    np.testing.assert_allclose(h.numpy(), expected_h, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_weights_round_trip(kind):
    source = build(kind, bidirectional=True)
    target = build(kind, bidirectional=True)
    load_onnx_weights(target, 0, **onnx_weights(source))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, atol=1e-7, rtol=0)


def test_cells_without_onnx_operator():
    for layer in (gnn.MGU(I, H), gnn.MinGRU(I, H), gnn.LSTM(I, H, proj_size=2)):
        with pytest.raises(ConfigError):
            onnx_weights(layer)


def test_direction_mismatch():
    weights = onnx_weights(build("gru", bidirectional=True))
    with pytest.raises(ShapeError, match="directions"):
        load_onnx_weights(build("gru", bidirectional=False), 0, **weights)
