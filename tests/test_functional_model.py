"""The functional Model (Input, calling layers on symbolic tensors, Concatenate) against keras.Model:
summary shapes and parameter counts, the numbers of the same weights, save and load."""

import json

import numpy as np
import pytest
import torch

from grukit import layers as L
from grukit.errors import ConfigError, ShapeError
from grukit.models import Model, Sequential, load

keras = pytest.importorskip("keras")
from keras_weights import copy_keras_weights  # noqa: E402  (tests/keras_weights.py)
K = keras.layers

T = 12


def two_input_models():
    """Token ids and a numeric series, joined per step, through two stacked Bidirectional layers."""
    def build(lib, model_cls):
        text, numbers = lib.Input((T,)), lib.Input((T, 3))
        joined = lib.Concatenate()([lib.Embedding(50, 6, mask_zero=True)(text), numbers])
        features = lib.Bidirectional(lib.GRU(5, return_sequences=True))(joined)
        features = lib.Bidirectional(lib.LSTM(4), merge_mode="sum")(features)
        return model_cls(inputs=[text, numbers], outputs=lib.Dense(2, activation="softmax")(features))
    return build(L, Model), build(K, keras.Model)


def single_input_models():
    def build(lib, model_cls):
        inputs = lib.Input((T, 3))
        hidden = lib.GRU(6, return_sequences=True, reset_after=False)(inputs)
        return model_cls(inputs, lib.Dense(1)(lib.SimpleRNN(4)(hidden)))
    return build(L, Model), build(K, keras.Model)


def copy_weights(model, reference):
    """Keras's weights into the grukit model, layer by layer (same order, Keras's InputLayers skipped)."""
    others = [layer for layer in reference.layers if type(layer).__name__ != "InputLayer"]
    assert len(others) == len(model.layers)
    copy_keras_weights(model.layers, others)


def data(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(4, T))
    ids[1, 8:] = 0   # post-padding
    ids[2, :5] = 0   # pre-padding
    return ids, rng.normal(size=(4, T, 3)).astype(np.float32)


@pytest.mark.parametrize("pair", [two_input_models, single_input_models])
def test_summary_shapes_and_parameter_counts_equal_keras(pair):
    model, reference = pair()
    text = model.summary(print_fn=lambda _: None)
    others = [layer for layer in reference.layers if type(layer).__name__ != "InputLayer"]
    for mine, other in zip(model.layers, others):
        assert mine.count_params() == other.count_params(), mine.name
        assert tuple(mine.output_shape) == tuple(other.output.shape), mine.name
    assert model.count_params() == reference.count_params()
    assert f"Total params: {reference.count_params():,}" in text
    assert "input_layer (InputLayer)" in text


@pytest.mark.filterwarnings("ignore:.*go_backwards=True")  # from_keras on Keras's backward layers
def test_two_inputs_concatenated_and_stacked_bidirectional_match_keras():
    model, reference = two_input_models()
    copy_weights(model, reference)
    ids, series = data()
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids), torch.from_numpy(series)).numpy()
        as_list = model([torch.from_numpy(ids), torch.from_numpy(series)]).numpy()
    expected = keras.ops.convert_to_numpy(reference([ids, series], training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(as_list, got)


def test_single_input_matches_keras_and_sequential():
    model, reference = single_input_models()
    copy_weights(model, reference)
    _, series = data()
    with torch.no_grad():
        got = model(torch.from_numpy(series)).numpy()
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(reference(series)), atol=1e-5, rtol=0)
    stacked = Sequential([L.Input((T, 3)), L.GRU(6, return_sequences=True, reset_after=False), L.SimpleRNN(4),
                          L.Dense(1)])
    stacked.load_state_dict(model.state_dict())
    with torch.no_grad():
        np.testing.assert_array_equal(stacked(torch.from_numpy(series)).numpy(), got)


def test_save_and_load_round_trip(tmp_path):
    model, _ = two_input_models()
    ids, series = (torch.from_numpy(a) for a in data(1))
    model.eval()
    expected = model(ids, series)
    model.save(tmp_path / "m")
    restored = load(tmp_path / "m")
    assert isinstance(restored, Model)
    torch.testing.assert_close(restored(ids, series), expected, atol=0, rtol=0)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["class_name"] == "Model" and len(config["inputs"]) == 2


def test_shared_layer_and_several_outputs(tmp_path):
    first, second = L.Input((5, 2)), L.Input((5, 2))
    shared = L.GRU(3)
    a, b = shared(first), shared(second)
    model = Model([first, second], [L.Concatenate()([a, b]), a])
    assert len(model.layers) == 2 and model.count_params() == shared.count_params()
    x1, x2 = torch.randn(2, 5, 2), torch.randn(2, 5, 2)
    joined, only_a = model(x1, x2)
    torch.testing.assert_close(joined[:, :3], only_a)
    torch.testing.assert_close(joined[:, 3:], shared(x2)[0])
    model.save(tmp_path)
    restored = load(tmp_path)
    for got, want in zip(restored(x1, x2), (joined, only_a)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_functional_model_trains_with_fit():
    text, numbers = L.Input((T,)), L.Input((T, 3))
    joined = L.Concatenate()([L.Embedding(50, 4)(text), numbers])
    model = Model([text, numbers], L.Dense(1, activation="sigmoid")(L.GRU(4, recurrent_dropout=0.1)(joined)))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    ids, series = data()
    history = model.fit((ids, series), np.array([0, 1, 0, 1], dtype=np.float32).reshape(-1, 1), epochs=2,
                        batch_size=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_concatenate_masks_follow_keras_3():
    """Keras 3's Concatenate.compute_mask: a step is valid where any input is (ops.any)."""
    a, b = torch.randn(2, 4, 3), torch.randn(2, 4, 2)
    mask_a = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    mask_b = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    joined, mask = L.Concatenate()([a, b], [mask_a, mask_b])
    assert joined.shape == (2, 4, 5)
    torch.testing.assert_close(mask, mask_a | mask_b)
    expected = keras.layers.Concatenate().compute_mask([a, b], [mask_a, mask_b])
    np.testing.assert_array_equal(mask.numpy(), keras.ops.convert_to_numpy(expected))
    assert L.Concatenate()([a, b], [mask_a, None])[1] is None  # Keras: all ones


def test_functional_errors():
    inputs = L.Input((5, 2))
    other = L.Input((5, 2))
    with pytest.raises(ConfigError, match="not in Model"):
        Model(inputs, L.GRU(3)(other))
    with pytest.raises(ConfigError, match="inputs"):
        Model([L.GRU(3)], L.GRU(3)(inputs))
    with pytest.raises(ConfigError, match="return_state"):
        L.GRU(3, return_state=True)(inputs)
    with pytest.raises(ShapeError, match="agree"):
        L.Concatenate()([L.Input((5, 2)), L.Input((4, 2))])
    model = Model(inputs, L.GRU(3)(inputs))
    with pytest.raises(ShapeError, match="takes 1 inputs"):
        model(torch.randn(1, 5, 2), torch.randn(1, 5, 2))
    with pytest.raises(ShapeError, match="expects shape"):
        model(torch.randn(1, 5, 3))
