"""Keras 3 <-> grukit: float32 parity against live Keras layers (torch backend), round trips,
saved files, bad files and parameter counts."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend before this module", allow_module_level=True)

h5py = pytest.importorskip("h5py")

from grukit.errors import ConfigError, DataError  # noqa: E402
from grukit.nn import GRU, LSTM, MGU, RNN  # noqa: E402
from grukit.nn.convert.keras import (  # noqa: E402
    from_keras, from_keras_file, keras_weights, read_keras_weights, to_keras,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

ATOL = 1e-5
N, T, I, H = 3, 6, 4, 5

# (Keras class, Keras options) for every cell grukit maps
CELLS = {
    "gru_reset_after": ("GRU", {"reset_after": True}),
    "gru_reset_before": ("GRU", {"reset_after": False}),
    "lstm": ("LSTM", {}),
    "rnn_tanh": ("SimpleRNN", {"activation": "tanh"}),
    "rnn_relu": ("SimpleRNN", {"activation": "relu"}),
}


def numpy(value) -> np.ndarray:
    return keras.ops.convert_to_numpy(value)


def keras_layer(cell: str, **options):
    kind, defaults = CELLS[cell]
    return getattr(keras.layers, kind)(H, **{**defaults, **options})


def randomize(layer, seed: int = 0):
    """Build and fill every weight (biases included: Keras initializes them to zero)."""
    rng = np.random.default_rng(seed)
    layer.build((None, None, I))
    parts = [layer.forward_layer, layer.backward_layer] if hasattr(layer, "forward_layer") else [layer]
    for part in parts:
        part.set_weights([rng.normal(0.0, 0.4, w.shape).astype("float32") for w in part.get_weights()])
    return layer


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N, T, I)).astype("float32")


def run_grukit(layer, x: np.ndarray, lengths=None):
    with torch.no_grad():
        output, state = layer(torch.from_numpy(np.ascontiguousarray(x)), lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    return output.numpy(), [s[-1].numpy() for s in states]  # last row: the last layer / backward half


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)


# -- parity with live layers ------------------------------------------------------------------

@pytest.mark.parametrize("cell,return_sequences,go_backwards,use_bias",
                         list(itertools.product(CELLS, [True, False], [False, True], [True, False])))
def test_parity_with_keras(cell, return_sequences, go_backwards, use_bias):
    layer = randomize(keras_layer(cell, return_sequences=return_sequences, return_state=True,
                                  go_backwards=go_backwards, use_bias=use_bias))
    x = inputs()
    keras_output, *keras_states = (numpy(v) for v in layer(x))
    if go_backwards:
        with pytest.warns(UserWarning, match="go_backwards"):
            ours = from_keras(layer)
        # Keras reads x last step first and returns outputs in that processing order
        output, states = run_grukit(ours, x[:, ::-1])
    else:
        ours = from_keras(layer)
        output, states = run_grukit(ours, x)
    assert ours.bias is use_bias
    close(output if return_sequences else output[:, -1], keras_output)
    assert len(states) == len(keras_states)  # LSTM: h and c
    for state, keras_state in zip(states, keras_states):
        close(state, keras_state)


@pytest.mark.parametrize("cell,use_bias", list(itertools.product(CELLS, [True, False])))
def test_bidirectional_concat_parity(cell, use_bias):
    layer = randomize(keras.layers.Bidirectional(
        keras_layer(cell, return_sequences=True, return_state=True, use_bias=use_bias), merge_mode="concat"))
    x = inputs()
    keras_output, *keras_states = (numpy(v) for v in layer(x))
    ours = from_keras(layer)
    assert ours.bidirectional and ours.batch_first
    with torch.no_grad():
        output, state = ours(torch.from_numpy(x))
    close(output.numpy(), keras_output)
    # Keras returns forward states then backward states; grukit stacks them as (2, N, H)
    states = state if isinstance(state, tuple) else (state,)
    ours_states = [s[d].numpy() for d in range(2) for s in states]
    assert len(ours_states) == len(keras_states)
    for mine, theirs in zip(ours_states, keras_states):
        close(mine, theirs)


POST_PADDED_LENGTHS = [T, 3, 1]


def post_padding_mask() -> np.ndarray:
    return np.arange(T)[None, :] < np.array(POST_PADDED_LENGTHS)[:, None]


@pytest.mark.parametrize("cell", list(CELLS))
def test_mask_is_lengths(cell):
    """Valid outputs and final states agree; at padded steps Keras (zero_output_for_mask=False)
    repeats the last valid output, grukit outputs zeros (documented in the module)."""
    layer = randomize(keras_layer(cell, return_sequences=True, return_state=True))
    x, mask = inputs(), post_padding_mask()
    keras_output, *keras_states = (numpy(v) for v in layer(x, mask=mask))
    output, states = run_grukit(from_keras(layer), x, lengths=torch.tensor(POST_PADDED_LENGTHS))
    for i, length in enumerate(POST_PADDED_LENGTHS):
        close(output[i, :length], keras_output[i, :length])
        assert np.all(output[i, length:] == 0)
        close(keras_output[i, length:], np.broadcast_to(keras_output[i, length - 1], keras_output[i, length:].shape))
    for state, keras_state in zip(states, keras_states):
        close(state, keras_state)


@pytest.mark.parametrize("cell", ["gru_reset_after", "lstm"])
def test_masking_layer_is_lengths(cell):
    x = inputs()
    x[~post_padding_mask()] = 0.0
    model = keras.Sequential([keras.Input((T, I)), keras.layers.Masking(0.0),
                              keras_layer(cell, return_sequences=True, name="recurrent")])
    randomize(model.get_layer("recurrent"))
    keras_output = numpy(model(x))
    output, _ = run_grukit(from_keras(model.get_layer("recurrent")), x, lengths=torch.tensor(POST_PADDED_LENGTHS))
    for i, length in enumerate(POST_PADDED_LENGTHS):
        close(output[i, :length], keras_output[i, :length])


@pytest.mark.parametrize("cell", ["gru_reset_before", "lstm", "rnn_tanh"])
def test_mask_with_go_backwards(cell):
    """Keras skips the padding first (zero outputs), then reads the valid steps backwards: grukit on
    each sequence reversed inside its length, with lengths=."""
    layer = randomize(keras_layer(cell, return_sequences=True, return_state=True, go_backwards=True))
    x, mask = inputs(), post_padding_mask()
    keras_output, *keras_states = (numpy(v) for v in layer(x, mask=mask))
    reversed_inside = x.copy()
    for i, length in enumerate(POST_PADDED_LENGTHS):
        reversed_inside[i, :length] = x[i, :length][::-1]
    with pytest.warns(UserWarning, match="go_backwards"):
        ours = from_keras(layer)
    output, states = run_grukit(ours, reversed_inside, lengths=torch.tensor(POST_PADDED_LENGTHS))
    for i, length in enumerate(POST_PADDED_LENGTHS):
        assert np.all(keras_output[i, : T - length] == 0)
        close(output[i, :length], keras_output[i, T - length:])
    for state, keras_state in zip(states, keras_states):
        close(state, keras_state)


@pytest.mark.parametrize("cell", ["gru_reset_after", "lstm"])
def test_bidirectional_mask_is_lengths(cell):
    """Bidirectional sets zero_output_for_mask=True: the whole output matches, zeros included."""
    layer = randomize(keras.layers.Bidirectional(keras_layer(cell, return_sequences=True)))
    x, mask = inputs(), post_padding_mask()
    keras_output = numpy(layer(x, mask=mask))
    output, _ = run_grukit(from_keras(layer), x, lengths=torch.tensor(POST_PADDED_LENGTHS))
    close(output, keras_output)


# -- round trips -------------------------------------------------------------------------------

def grukit_layer(cell: str, bidirectional: bool = False, bias: bool = True):
    torch.manual_seed(0)
    if cell.startswith("gru"):
        layer = GRU(I, H, batch_first=True, bidirectional=bidirectional, bias=bias,
                    reset_after=cell == "gru_reset_after")
    elif cell == "lstm":
        layer = LSTM(I, H, batch_first=True, bidirectional=bidirectional, bias=bias)
    else:
        layer = RNN(I, H, batch_first=True, bidirectional=bidirectional, bias=bias, nonlinearity=cell[4:])
    if bias and cell in ("lstm", "rnn_tanh", "rnn_relu"):  # Keras has one bias: only bias_ih survives
        with torch.no_grad():
            for name, param in layer.named_parameters():
                if name.startswith("bias_hh"):
                    param.zero_()
    return layer


@pytest.mark.parametrize("cell,bidirectional,bias", list(itertools.product(CELLS, [False, True], [True, False])))
def test_round_trip_grukit_keras_grukit(cell, bidirectional, bias):
    layer = grukit_layer(cell, bidirectional, bias)
    keras_layer_ = to_keras(layer)
    back = from_keras(keras_layer_)
    assert type(back) is type(layer)
    assert dict(back.named_parameters()).keys() == dict(layer.named_parameters()).keys()
    for (name, mine), theirs in zip(layer.named_parameters(), back.parameters()):
        assert torch.equal(mine, theirs), name
    x = inputs()
    close(run_grukit(layer, x)[0], numpy(keras_layer_(x)))


@pytest.mark.parametrize("cell", list(CELLS))
def test_round_trip_keras_grukit_keras(cell):
    layer = randomize(keras_layer(cell))
    for mine, theirs in zip(keras_weights(from_keras(layer)), layer.get_weights()):
        assert mine.shape == theirs.shape and np.array_equal(mine, theirs)


@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh"])
def test_two_torch_biases_fold_into_keras_bias(cell):
    layer = grukit_layer(cell)
    with torch.no_grad():
        layer.bias_hh_l0.uniform_(-1, 1)
    keras_layer_ = keras_layer(cell, return_sequences=True)
    keras_layer_.build((None, None, I))
    keras_layer_.set_weights(keras_weights(layer))
    x = inputs()
    close(run_grukit(layer, x)[0], numpy(keras_layer_(x)))
    back = from_keras(keras_layer_)
    assert torch.equal(back.bias_hh_l0, torch.zeros(4 * H if cell == "lstm" else H))


@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh"])
def test_single_bias_layers_convert_both_ways(cell):
    """LSTM and SimpleRNN with Keras's one bias (single_bias=True, as grukit.layers builds them):
    keras_weights and to_keras failed on the missing bias pair."""
    torch.manual_seed(0)
    make = LSTM if cell == "lstm" else RNN
    layer = make(I, H, batch_first=True, single_bias=True)
    with torch.no_grad():
        layer.bias_l0.uniform_(-1, 1)
    keras_layer_ = keras_layer(cell, return_sequences=True)
    keras_layer_.build((None, None, I))
    keras_layer_.set_weights(keras_weights(layer))
    x = inputs()
    close(run_grukit(layer, x)[0], numpy(keras_layer_(x)))
    close(run_grukit(layer, x)[0], numpy(to_keras(layer)(x)))
    back = from_keras(keras_layer_, single_bias=True)
    assert torch.equal(back.bias_l0, layer.bias_l0)
    close(run_grukit(back, x)[0], numpy(keras_layer_(x)))


def test_keras_weights_of_stacked_layer_and_reverse_direction():
    layer = GRU(I, H, num_layers=2, bidirectional=True, batch_first=True)
    kernel, recurrent, bias = keras_weights(layer, layer_index=1, direction=1)
    assert kernel.shape == (2 * H, 3 * H) and recurrent.shape == (H, 3 * H) and bias.shape == (2, 3 * H)
    # Keras column block z is grukit row block z (rows r, z, n)
    assert np.array_equal(kernel[:, :H], layer.weight_ih_l1_reverse.detach().numpy()[H:2 * H].T)
    with pytest.raises(ConfigError, match="layer_index"):
        keras_weights(layer, layer_index=2)
    with pytest.raises(ConfigError, match="num_layers"):
        to_keras(layer)


@pytest.mark.parametrize("reset_after,expected", [(True, 99_072), (False, 98_688)])
def test_parameter_counts_match_keras(reset_after, expected):
    ours = GRU(128, 128, reset_after=reset_after)
    theirs = keras.layers.GRU(128, reset_after=reset_after)
    theirs.build((None, None, 128))
    assert sum(p.numel() for p in ours.parameters()) == expected == theirs.count_params()
    assert to_keras(ours).count_params() == expected


# -- options grukit cannot compute --------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: keras.layers.GRU(H, activation="exponential"), "activation='exponential'"),
    (lambda: keras.layers.LSTM(H, recurrent_activation="mish"), "recurrent_activation='mish'"),
    (lambda: keras.layers.SimpleRNN(H, activation="sigmoid"), "activation='sigmoid'"),
    (lambda: keras.layers.Bidirectional(keras.layers.GRU(H), merge_mode="sum"), "concat"),
    (lambda: keras.layers.Dense(H), "GRU, LSTM, SimpleRNN"),
])
def test_unsupported_keras_options_raise(make, match):
    layer = make()
    layer.build((None, None, I) if not isinstance(layer, keras.layers.Dense) else (None, I))
    with pytest.raises(ConfigError, match=match) as error:
        from_keras(layer)
    assert "'" in str(error.value)  # names the layer


@pytest.mark.parametrize("cell", ["GRUCell", "LSTMCell", "SimpleRNNCell"])
def test_generic_rnn_of_a_builtin_cell(tmp_path, cell):
    layer = randomize(keras.layers.RNN(getattr(keras.layers, cell)(H), return_sequences=True, name="encoder"))
    x = inputs()
    close(run_grukit(from_keras(layer), x)[0], numpy(layer(x)))
    model = keras.Sequential([keras.Input((T, I)), layer])
    model.save(tmp_path / "rnn.keras")
    close(run_grukit(from_keras_file(tmp_path / "rnn.keras"), x)[0], numpy(model(x)))


def test_a_file_with_an_unsupported_layer_still_reads(tmp_path):
    inp = keras.Input((T, I))
    odd_gru = keras.layers.GRU(H, activation="exponential", return_sequences=True, name="odd_gru")(inp)
    model = keras.Model(inp, keras.layers.LSTM(H, name="plain")(odd_gru))
    model.save(tmp_path / "mixed.keras")
    by_name = {layer.name: layer for layer in read_keras_weights(tmp_path / "mixed.keras")}
    assert by_name["odd_gru"].activation == "exponential" and by_name["plain"].unsupported is None
    assert isinstance(from_keras_file(tmp_path / "mixed.keras", layer_name="plain"), LSTM)
    with pytest.raises(ConfigError, match="activation='exponential'"):
        from_keras_file(tmp_path / "mixed.keras", layer_name="odd_gru")


@pytest.mark.parametrize("cell,activation,recurrent_activation", [
    ("gru_reset_after", "relu", "hard_sigmoid"),
    ("gru_reset_before", "softsign", "sigmoid"),
    ("lstm", "elu", "hard_sigmoid"),
])
def test_activations_carry_over_both_ways(tmp_path, cell, activation, recurrent_activation):
    theirs = randomize(keras_layer(cell, activation=activation, recurrent_activation=recurrent_activation,
                                   return_sequences=True))
    x = inputs()
    ours = from_keras(theirs)
    assert (ours.layout.activation, ours.layout.recurrent_activation) == (activation, recurrent_activation)
    close(run_grukit(ours, x)[0], numpy(theirs(x)))
    back = to_keras(ours)
    assert (back.activation.__name__, back.recurrent_activation.__name__) == (activation, recurrent_activation)
    close(numpy(back(x)), numpy(theirs(x)))
    model = keras.Sequential([keras.Input((T, I)), theirs])      # and through a saved file
    model.save(tmp_path / "model.keras")
    close(run_grukit(from_keras_file(tmp_path / "model.keras"), x)[0], numpy(model(x)))


def test_unbuilt_layer_and_contradicting_kwargs_raise():
    with pytest.raises(ConfigError, match="build"):
        from_keras(keras.layers.GRU(H))
    layer = randomize(keras.layers.GRU(H))
    with pytest.raises(ConfigError, match="hidden_size"):
        from_keras(layer, hidden_size=H + 1)
    ours = from_keras(layer, hidden_size=H, batch_first=False, kernel="reference")
    assert not ours.batch_first and ours.kernel == "reference"


def test_layers_without_keras_twin_raise():
    with pytest.raises(ConfigError, match="ONNX"):
        keras_weights(MGU(I, H))
    with pytest.raises(ConfigError, match="proj_size"):
        keras_weights(LSTM(I, H, proj_size=2))


# -- files -------------------------------------------------------------------------------------

FILE_LAYERS = {
    "gru_reset_after": lambda: keras_layer("gru_reset_after", return_sequences=True, name="encoder"),
    "gru_reset_before": lambda: keras_layer("gru_reset_before", return_sequences=True, name="encoder"),
    "lstm": lambda: keras_layer("lstm", return_sequences=True, name="encoder"),
    "rnn_relu": lambda: keras_layer("rnn_relu", return_sequences=True, name="encoder"),
    "bidirectional_gru": lambda: keras.layers.Bidirectional(
        keras_layer("gru_reset_after", return_sequences=True), name="encoder"),
}


def saved_model(tmp_path, make, suffix: str):
    model = keras.Sequential([keras.Input((T, I)), make()])
    randomize(model.get_layer("encoder"), seed=3)
    path = tmp_path / f"model{suffix}"
    model.save(path) if suffix == ".keras" else model.save_weights(path)
    return model, path


@pytest.mark.parametrize("which,suffix", list(itertools.product(FILE_LAYERS, [".keras", ".weights.h5"])))
def test_from_keras_file_parity(tmp_path, which, suffix):
    model, path = saved_model(tmp_path, FILE_LAYERS[which], suffix)
    kwargs = {}
    if which == "rnn_relu" and suffix == ".weights.h5":
        kwargs["nonlinearity"] = "relu"  # a bare weights file does not record activations
    ours = from_keras_file(path, **kwargs)
    x = inputs()
    close(run_grukit(ours, x)[0], numpy(model(x)))
    (found,) = read_keras_weights(path)
    assert found.name == "encoder"
    assert (found.config is not None) == (suffix == ".keras")
    assert found.num_parameters == model.count_params()


def test_from_keras_file_chooses_among_layers(tmp_path):
    inp = keras.Input((T, I))
    hidden = keras.layers.LSTM(H, return_sequences=True, name="first")(inp)
    out = keras.layers.GRU(H, return_sequences=True, reset_after=False, name="second")(hidden)
    model = keras.Model(inp, keras.layers.Dense(2)(out))
    randomize(model.get_layer("second"), seed=4)
    model.save(tmp_path / "two.keras")
    assert {layer.name for layer in read_keras_weights(tmp_path / "two.keras")} == {"first", "second"}
    with pytest.raises(ConfigError, match="layer_name"):
        from_keras_file(tmp_path / "two.keras")
    with pytest.raises(ConfigError, match="'first', 'second'|'second', 'first'"):
        from_keras_file(tmp_path / "two.keras", layer_name="third")
    second = from_keras_file(tmp_path / "two.keras", layer_name="second")
    assert isinstance(second, GRU) and not second.reset_after
    x = np.random.default_rng(5).normal(size=(N, T, H)).astype("float32")
    close(run_grukit(second, x)[0], numpy(model.get_layer("second")(x)))


def test_reading_files_does_not_need_keras(tmp_path):
    _, path = saved_model(tmp_path, FILE_LAYERS["lstm"], ".keras")
    code = ("import sys; sys.modules['keras'] = None\n"
            "from grukit.nn.convert.keras import from_keras_file\n"
            f"layer = from_keras_file({str(path)!r})\n"
            "assert type(layer).__name__ == 'LSTM' and 'keras' not in [m.split('.')[0] for m in sys.modules "
            "if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def damaged_copy(tmp_path, edit) -> str:
    _, path = saved_model(tmp_path, FILE_LAYERS["gru_reset_after"], ".weights.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    return str(path)


def test_missing_weight_raises_data_error(tmp_path):
    path = damaged_copy(tmp_path, lambda f: f.__delitem__("layers/gru/cell/vars/0"))
    with pytest.raises(DataError) as error:
        from_keras_file(path)
    message = str(error.value)
    assert path in message and "vars/0" in message and "kernel" in message and "re-save" in message


def test_missing_bias_with_config_raises_data_error(tmp_path):
    _, path = saved_model(tmp_path, FILE_LAYERS["lstm"], ".keras")
    with zipfile.ZipFile(path) as archive:
        config, weights = archive.read("config.json"), archive.read("model.weights.h5")
    (tmp_path / "w.h5").write_bytes(weights)
    with h5py.File(tmp_path / "w.h5", "a") as f:
        del f["layers/lstm/cell/vars/2"]
    damaged = tmp_path / "damaged.keras"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("config.json", config)
        archive.writestr("model.weights.h5", (tmp_path / "w.h5").read_bytes())
    with pytest.raises(DataError, match="use_bias=True but no bias") as error:
        from_keras_file(damaged)
    assert str(damaged) in str(error.value)


def test_wrong_shape_raises_data_error(tmp_path):
    def edit(f):
        del f["layers/gru/cell/vars/1"]
        f["layers/gru/cell/vars/1"] = np.zeros((H, 2 * H), dtype="float32")

    path = damaged_copy(tmp_path, edit)
    with pytest.raises(DataError) as error:
        from_keras_file(path)
    message = str(error.value)
    assert path in message and "recurrent_kernel" in message and "(5, 10)" in message and "re-save" in message

    def edit_bias(f):
        del f["layers/gru/cell/vars/2"]
        f["layers/gru/cell/vars/2"] = np.zeros((2, 4 * H), dtype="float32")

    with pytest.raises(DataError, match=r"bias \(weight 2\).*\(2, 20\), expected \(2, 15\)"):
        from_keras_file(damaged_copy(tmp_path, edit_bias))


@pytest.mark.parametrize("content,match", [
    (b"\x89 definitely not hdf5" * 20, "not an HDF5 file"),
    (None, "no 'model.weights.h5'"),
])
def test_not_a_keras_file_raises_data_error(tmp_path, content, match):
    path = tmp_path / "model.keras"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as error:
        read_keras_weights(path)
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="no such file"):
        read_keras_weights(tmp_path / "absent.weights.h5")
