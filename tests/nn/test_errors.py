"""Bad input raises grukit.errors exceptions whose message names the problem and the fix."""

import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError, DataError, GrukitError, ShapeError, UnsupportedKernelConfig

I, H = 3, 4


@pytest.fixture
def gru():
    return gnn.GRU(I, H, batch_first=True)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, I)])
def test_wrong_rank(gru, shape):
    with pytest.raises(ShapeError, match=r"3-D \(N, L, H_in\) or unbatched 2-D"):
        gru(torch.randn(shape))


def test_wrong_feature_size_names_both_sizes(gru):
    with pytest.raises(ShapeError, match=r"has 7 features.*input_size=3.*input_size=7"):
        gru(torch.randn(2, 5, 7))


def test_empty_batch_or_time(gru):
    with pytest.raises(ShapeError, match="empty"):
        gru(torch.randn(2, 0, I))


def test_integer_input(gru):
    with pytest.raises(ShapeError, match=r"floating point.*float\(\)"):
        gru(torch.ones(2, 5, I, dtype=torch.int64))


@pytest.mark.parametrize("call,what", [
    (lambda layer: layer(torch.randn(2, 5, I, dtype=torch.float64)), "input"),
    (lambda layer: layer(torch.randn(2, 5, I, dtype=torch.float16)), "input"),
    (lambda layer: layer(torch.randn(2, 5, I), torch.zeros(1, 2, H, dtype=torch.float64)), "h_0"),
    (lambda layer: layer.step(torch.randn(2, I, dtype=torch.float64)), "x_t"),
    (lambda layer: layer.step(torch.randn(2, I), torch.zeros(1, 2, H, dtype=torch.float64)), "h_0"),
    (lambda layer: layer(torch.zeros(2, 5, dtype=torch.long), embedding=torch.randn(9, I, dtype=torch.float64)),
     "embedding"),
])
def test_a_dtype_other_than_the_weights_names_both_and_the_fix(gru, call, what):
    """torch.nn.GRU refuses such input too (a ValueError); grukit's kernels would fail deep inside."""
    with pytest.raises(ConfigError, match=rf"{what} is torch\.float(64|16) but the layer's weights are "
                                          rf"torch\.float32; convert the {what} with \.to\(torch\.float32\)"):
        call(gru)


def test_lstm_cell_state_of_another_dtype():
    with pytest.raises(ConfigError, match="c_0 is torch.float64"):
        gnn.LSTM(I, H)(torch.randn(5, 2, I), (torch.zeros(1, 2, H), torch.zeros(1, 2, H, dtype=torch.float64)))


@pytest.mark.parametrize("h0_shape", [(1, 3, H), (2, 2, H), (1, 2, H + 1), (2, H)])
def test_h0_of_wrong_shape(gru, h0_shape):
    with pytest.raises(ShapeError, match=r"h_0 must have shape \(1, 2, 4\)"):
        gru(torch.randn(2, 5, I), torch.zeros(h0_shape))


def test_lstm_needs_a_state_tuple():
    lstm = gnn.LSTM(I, H)
    with pytest.raises(ShapeError, match=r"tuple \(h_0, c_0\)"):
        lstm(torch.randn(5, 2, I), torch.zeros(1, 2, H))
    with pytest.raises(ShapeError, match=r"c_0 must have shape"):
        lstm(torch.randn(5, 2, I), (torch.zeros(1, 2, H), torch.zeros(1, 2, H + 1)))


@pytest.mark.parametrize("lengths", [[6, 2], [0, 2], [-1, 3]])
def test_lengths_out_of_range(gru, lengths):
    with pytest.raises(DataError, match=r"lengths must lie in \[1, 5\]"):
        gru(torch.randn(2, 5, I), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("lengths", [torch.tensor([5]), torch.tensor([[5, 5]]), torch.tensor([5.0, 5.0])])
def test_lengths_of_wrong_shape_or_type(gru, lengths):
    with pytest.raises(ShapeError, match="one entry per sequence"):
        gru(torch.randn(2, 5, I), lengths=lengths)


def test_lengths_with_packed_sequence(gru):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, I), [5, 3], batch_first=True)
    with pytest.raises(ConfigError, match="one or the other"):
        gru(packed, lengths=torch.tensor([5, 3]))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_with_check_finite(value):
    gru = gnn.GRU(I, H, check_finite=True)
    x = torch.randn(5, 2, I)
    x[3, 1, 0] = value
    with pytest.raises(DataError, match="NaN or infinity"):
        gru(x)
    gnn.GRU(I, H)(x)  # without the check, no error (as torch.nn)


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden_size": 0}, "hidden_size"), ({"num_layers": 0}, "num_layers"), ({"dropout": 1.5}, "dropout"),
    ({"kernel": "gpu"}, "kernel='gpu'|kernel=.gpu."), ({"input_size": 2.5}, "input_size"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(ConfigError, match=match):
        gnn.GRU(**args)


def test_bad_variant_and_options():
    with pytest.raises(ConfigError, match="variant"):
        gnn.MGU(I, H, variant="mgu4")
    with pytest.raises(ConfigError, match="nonlinearity"):
        gnn.RNN(I, H, nonlinearity="softmax")  # any name of grukit.nn.cells.ACTIVATIONS is accepted
    with pytest.raises(ConfigError, match="recurrent_activation"):
        gnn.GRU(I, H, recurrent_activation="hard_tanh")
    with pytest.raises(ConfigError, match="recurrent_dropout"):
        gnn.LSTM(I, H, recurrent_dropout=1.0)
    with pytest.raises(ConfigError, match="proj_size"):
        gnn.LSTM(I, H, proj_size=H)
    with pytest.raises(ConfigError, match="candidate"):
        gnn.MinGRU(I, H, candidate="relu")


def test_step_of_bidirectional_layer():
    with pytest.raises(ConfigError, match="whole sequence"):
        gnn.GRU(I, H, bidirectional=True).step(torch.randn(2, I))


def test_fused_on_unsupported_configuration_raises():
    layer = gnn.LSTM(I, H, proj_size=2, kernel="fused")
    with pytest.raises(UnsupportedKernelConfig, match="kernel='auto'"):
        layer(torch.randn(5, 2, I))


def test_errors_are_grukit_and_builtin_types():
    """Users can catch either grukit's classes or the builtin ones they derive from."""
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, GrukitError)
    assert issubclass(UnsupportedKernelConfig, NotImplementedError)
