"""torch.onnx.export (the TorchScript exporter), torch.jit.trace and torch.export on models holding
grukit layers.

A tracer records torch ops and cannot see into the compiled kernels, so a traced call runs on the
layer's torch.nn twin with the layer's own parameters, and the record holds torch's GRU / LSTM / RNN
operator. Oracles: ONNX Runtime running the exported graph on another batch size and sequence length
than the traced ones, against the grukit layer itself; the traced module reading the layer's
parameters (an in-place change shows in its output); torch.export's program on another batch size.
ONNX Runtime is needed for the ONNX tests only."""

import io
import warnings

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError
from grukit.nn.convert import to_torch

try:
    import onnx
    import onnxruntime as ort
except ImportError:   # the ONNX tests skip; torch.jit.trace and torch.export do not need it
    onnx = ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="needs onnx and onnxruntime (pip install -e '.[test]')")


class Model(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.recurrent = layer
        self.head = torch.nn.Linear(layer.hidden_size * layer.num_directions, 2)

    def forward(self, x):
        return self.head(self.recurrent(x)[0][:, -1])


def _export(module, x):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}})
    return buffer.getvalue()


LAYERS = {
    "gru": lambda: gnn.GRU(6, 8, batch_first=True),
    "gru_2_layers_bidirectional": lambda: gnn.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True),
    "lstm": lambda: gnn.LSTM(6, 8, batch_first=True),
    "rnn_relu": lambda: gnn.RNN(6, 8, nonlinearity="relu", batch_first=True),
    "lstm_single_bias": lambda: gnn.LSTM(6, 8, single_bias=True, batch_first=True),   # Keras's one bias
}
OPERATORS = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}


@needs_onnx
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_exported_model_runs_the_onnx_operator_for_any_batch_and_length(name):
    torch.manual_seed(0)
    model = Model(LAYERS[name]()).eval()
    graph = _export(model, torch.randn(2, 5, 6))
    assert OPERATORS[name.split("_")[0]] in {node.op_type for node in onnx.load_from_string(graph).graph.node}
    x = torch.randn(3, 11, 6)
    got = ort.InferenceSession(graph).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@needs_onnx
def test_a_layer_alone_exports_too():
    """The exporter passes every forward argument's default positionally (it once failed on the
    keyword-only embedding=)."""
    torch.manual_seed(0)
    layer = gnn.GRU(6, 8, batch_first=True).eval()
    graph = _export(layer, torch.randn(2, 5, 6))
    x = torch.randn(4, 7, 6)
    output, h_n = ort.InferenceSession(graph).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want_output, want_h = layer(x)
    np.testing.assert_allclose(output, want_output.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, want_h.numpy(), rtol=0, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "SimpleRNN"])
def test_keras_style_model_with_an_embedding_exports(cell):
    """grukit.layers models run Embedding -> recurrent layer through embedding= (the distinct-token
    path); the traced call looks the tokens up instead, and LSTM / SimpleRNN carry Keras's single bias."""
    from grukit import layers
    from grukit.models import Sequential
    torch.manual_seed(0)
    model = Sequential([layers.Input((9,), dtype="int64"), layers.Embedding(50, 6), getattr(layers, cell)(8),
                        layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    ids = np.random.default_rng(0).integers(0, 50, size=(4, 9))
    model.predict(ids, verbose=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(ids),), buffer, dynamo=False, input_names=["ids"],
                          dynamic_axes={"ids": {0: "batch"}})
    more = np.random.default_rng(1).integers(0, 50, size=(7, 9))
    got = ort.InferenceSession(buffer.getvalue()).run(None, {"ids": more})[0]
    np.testing.assert_allclose(got, model.predict(more, verbose=0), rtol=0, atol=1e-5)


def test_traced_module_reads_the_layers_own_parameters():
    torch.manual_seed(0)
    model = Model(gnn.GRU(6, 8, batch_first=True)).eval()
    x = torch.randn(2, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-6)
        model.recurrent.weight_hh_l0.mul_(0.5)   # in place: the traced module sees it too
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("layer", [gnn.MGU(6, 8), gnn.MinGRU(6, 8), gnn.GRU(6, 8, reset_after=False),
                                   gnn.LSTM(6, 8, activation="relu")], ids=["mgu", "mingru", "reset_before", "relu"])
def test_a_layer_without_a_torch_twin_is_refused_with_the_alternative(layer):
    with pytest.raises(ConfigError, match="no torch.nn twin.*grukit.nn.convert"):
        _export(layer.eval(), torch.randn(5, 2, 6))
    with pytest.raises(ConfigError, match="no torch.nn twin"):
        to_torch(layer)


def test_to_torch_of_a_single_bias_layer_puts_the_bias_in_bias_ih():
    torch.manual_seed(0)
    layer = gnn.LSTM(6, 8, single_bias=True, num_layers=2, bidirectional=True)
    twin = to_torch(layer)
    x = torch.randn(5, 3, 6)
    torch.testing.assert_close(twin(x)[0], layer(x)[0], rtol=0, atol=1e-6)
    assert torch.equal(twin.bias_ih_l1_reverse, layer.bias_l1_reverse) and not twin.bias_hh_l1_reverse.any()


def test_lengths_in_a_traced_call_are_refused():
    layer = gnn.GRU(6, 8)
    with pytest.raises(ConfigError, match="PackedSequence"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(lambda x: layer(x, lengths=torch.tensor([5, 3]))[0], (torch.randn(5, 2, 6),))


@pytest.mark.parametrize("make", [lambda: gnn.GRU(6, 8, batch_first=True), lambda: gnn.LSTM(6, 8, num_layers=2)],
                         ids=["gru", "lstm_2_layers"])
def test_torch_export_program_runs_the_layer_for_another_batch_size(make):
    """As for torch.nn.GRU, the batch size may vary in the exported program (torch.export specialises
    torch's RNN operators on the sequence length)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(make()).eval()
    batch_axis = 0 if model[0].batch_first else 1
    program = torch.export.export(model, (torch.randn(2, 5, 6) if batch_axis == 0 else torch.randn(5, 2, 6),),
                                  dynamic_shapes=({batch_axis: torch.export.Dim("batch")},))
    x = torch.randn(4, 5, 6) if batch_axis == 0 else torch.randn(5, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x)[0], model(x)[0], rtol=0, atol=1e-6)


class _Step(torch.nn.Module):
    """One streaming step as a module: (x_t, h) -> (y_t, h)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x_t, h):
        return self.layer.step(x_t, h)


@needs_onnx
@pytest.mark.parametrize("batch_first", [False, True])
def test_a_streaming_step_exports_and_runs_frame_by_frame(batch_first):
    """layer.step traced: a one-step ONNX GRU whose state carries from frame to frame in ONNX
    Runtime, giving the layer's own outputs over the whole sequence."""
    torch.manual_seed(0)
    layer = gnn.GRU(6, 8, num_layers=2, batch_first=batch_first).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Step(layer), (torch.randn(1, 6), torch.zeros(2, 1, 8)), buffer, dynamo=False,
                          input_names=["x_t", "h"], output_names=["y_t", "h_next"])
    session = ort.InferenceSession(buffer.getvalue())
    frames = torch.randn(10, 1, 6)
    h, outputs = np.zeros((2, 1, 8), np.float32), []
    for frame in frames:
        y_t, h = session.run(None, {"x_t": frame.numpy(), "h": h})
        outputs.append(y_t)
    with torch.no_grad():
        want = layer(frames.transpose(0, 1) if batch_first else frames)[0]
    if batch_first:
        want = want.transpose(0, 1)   # (T, 1, H), as the frames were stacked
    np.testing.assert_allclose(np.stack(outputs), want.numpy(), rtol=0, atol=1e-5)


def test_a_traced_step_of_a_layer_without_a_twin_is_refused():
    with pytest.raises(ConfigError, match="no torch.nn twin"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_Step(gnn.MGU(6, 8).eval()), (torch.randn(1, 6), torch.zeros(1, 1, 8)))
