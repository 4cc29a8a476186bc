"""Keras-style layers and Sequential against Keras 3 itself: shapes, parameter counts, and the
numbers of whole models with the same weights (masking included); save and load."""

import json

import numpy as np
import pytest
import torch

from grukit import layers as L
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.models import Sequential, load

keras = pytest.importorskip("keras")
import keras_weights  # noqa: E402  (tests/keras_weights.py, after the skip: it needs Keras's converter)


def tutorial_models():
    """(name, grukit model, Keras model) for the tutorials' architectures and a few more."""
    K = keras.layers
    return [
        ("sentiment", [L.Input((200,)), L.Embedding(10_000, 128), L.GRU(128), L.Dense(1, activation="sigmoid")],
         [K.Input((200,)), K.Embedding(10_000, 128), K.GRU(128), K.Dense(1, activation="sigmoid")]),
        ("small sentiment", [L.Input((100,)), L.Embedding(5000, 64), L.GRU(64), L.Dense(1, activation="sigmoid")],
         [K.Input((100,)), K.Embedding(5000, 64), K.GRU(64), K.Dense(1, activation="sigmoid")]),
        ("forecasting", [L.Input((50, 10)), L.GRU(64), L.Dense(1)], [K.Input((50, 10)), K.GRU(64), K.Dense(1)]),
        ("comparison", [L.Input((30, 4)), L.SimpleRNN(32, return_sequences=True), L.LSTM(32, return_sequences=True),
                        L.GRU(32, reset_after=False), L.Dense(3, activation="softmax")],
         [K.Input((30, 4)), K.SimpleRNN(32, return_sequences=True), K.LSTM(32, return_sequences=True),
          K.GRU(32, reset_after=False), K.Dense(3, activation="softmax")]),
        ("bidirectional", [L.Input((40,)), L.Embedding(1000, 16, mask_zero=True),
                           L.Bidirectional(L.GRU(8, return_sequences=True)),
                           L.Bidirectional(L.LSTM(8), merge_mode="sum"), L.Dropout(0.5), L.Dense(1)],
         [K.Input((40,)), K.Embedding(1000, 16, mask_zero=True), K.Bidirectional(K.GRU(8, return_sequences=True)),
          K.Bidirectional(K.LSTM(8), merge_mode="sum"), K.Dropout(0.5), K.Dense(1)]),
        ("time distributed", [L.Input((12, 3)), L.GRU(16, return_sequences=True), L.TimeDistributed(L.Dense(2))],
         [K.Input((12, 3)), K.GRU(16, return_sequences=True), K.TimeDistributed(K.Dense(2))]),
        ("sequence autoencoder", [L.Input((12, 3)), L.GRU(8), L.RepeatVector(12), L.GRU(8, return_sequences=True),
                                  L.TimeDistributed(L.Dense(3))],
         [K.Input((12, 3)), K.GRU(8), K.RepeatVector(12), K.GRU(8, return_sequences=True),
          K.TimeDistributed(K.Dense(3))]),
    ]


@pytest.mark.parametrize("name,ours,theirs", tutorial_models(), ids=[m[0] for m in tutorial_models()])
def test_summary_shapes_and_parameter_counts_equal_keras(name, ours, theirs):
    model = Sequential(ours)
    reference = keras.Sequential(theirs)
    text = model.summary(print_fn=lambda _: None)
    keras_layers = [layer for layer in reference.layers]
    assert len(model.layers) == len(keras_layers)
    for mine, other in zip(model.layers, keras_layers):
        assert mine.count_params() == other.count_params(), mine.name
        assert tuple(mine.output_shape) == tuple(other.output.shape), mine.name
        assert f"{mine.count_params():,}" in text
    assert model.count_params() == reference.count_params()
    assert f"Total params: {reference.count_params():,}" in text


def test_tutorial_sentiment_model_has_keras_parameter_count():
    model = Sequential([L.Input((200,)), L.Embedding(10_000, 128), L.GRU(128), L.Dense(1, activation="sigmoid")])
    assert model.count_params() == 1_280_000 + 99_072 + 129


def copy_keras_weights(model, reference):
    """Put a Keras model's weights into the grukit model of the same architecture."""
    keras_weights.copy_keras_weights(model.layers, reference.layers)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "SimpleRNN"])
def test_masked_text_model_matches_keras(cell, padding):
    """Embedding(mask_zero) -> recurrent -> Dense on zero-padded token ids, Keras's default pre-padding
    included: the same weights give the same predictions."""
    K = keras.layers
    reference = keras.Sequential([K.Input((12,)), K.Embedding(50, 6, mask_zero=True), getattr(K, cell)(5),
                                  K.Dense(1, activation="sigmoid")])
    model = Sequential([L.Input((12,)), L.Embedding(50, 6, mask_zero=True), getattr(L, cell)(5),
                        L.Dense(1, activation="sigmoid")])
    model.build()
    copy_keras_weights(model, reference)
    rng = np.random.default_rng(0)
    lengths = [12, 7, 1, 4]
    ids = np.zeros((4, 12), dtype=np.int64)
    for row, length in enumerate(lengths):
        tokens = rng.integers(1, 50, size=length)
        ids[row, 12 - length:] = tokens if padding == "pre" else 0
        if padding == "post":
            ids[row, :length] = tokens
    expected = np.asarray(reference.predict(ids, verbose=0))
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_batch_shorter_than_its_padding_matches_keras_and_runs_only_its_longest_steps(padding):
    """Every row ends before T: the layers run only up to the longest valid length, and the stack
    (sequences out, bidirectional, go_backwards) still gives Keras's predictions."""
    K = keras.layers
    reference = keras.Sequential([K.Input((12,)), K.Embedding(50, 6, mask_zero=True), K.GRU(4, return_sequences=True),
                                  K.Bidirectional(K.LSTM(3, return_sequences=True)), K.GRU(3, go_backwards=True),
                                  K.Dense(1)])
    model = Sequential([L.Input((12,)), L.Embedding(50, 6, mask_zero=True), L.GRU(4, return_sequences=True),
                        L.Bidirectional(L.LSTM(3, return_sequences=True)), L.GRU(3, go_backwards=True), L.Dense(1)])
    model.build()
    copy_keras_weights(model, reference)
    rng = np.random.default_rng(4)
    ids = np.zeros((4, 12), dtype=np.int64)
    for row, length in enumerate([7, 1, 4, 5]):
        tokens = rng.integers(1, 50, size=length)
        if padding == "pre":
            ids[row, 12 - length:] = tokens
        else:
            ids[row, :length] = tokens
    steps_run = []
    hook = model.layers[1].recurrent.register_forward_pre_hook(lambda module, args: steps_run.append(args[0].shape[1]))
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).numpy()
    hook.remove()
    assert steps_run == [7]
    np.testing.assert_allclose(got, np.asarray(reference.predict(ids, verbose=0)), atol=1e-5, rtol=0)


def test_bidirectional_stack_matches_keras():
    name, ours, theirs = tutorial_models()[4]
    model, reference = Sequential(ours), keras.Sequential(theirs)
    model.build()
    copy_keras_weights(model, reference)
    ids = np.random.default_rng(1).integers(1, 1000, size=(3, 40))
    ids[1, 25:] = 0
    ids[2, :30] = 0
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, np.asarray(reference.predict(ids, verbose=0)), atol=1e-5, rtol=0)


def test_sequence_autoencoder_with_repeat_vector_matches_keras():
    name, ours, theirs = tutorial_models()[-1]
    model, reference = Sequential(ours), keras.Sequential(theirs)
    model.build()
    copy_keras_weights(model, reference)
    x = np.random.default_rng(3).normal(size=(4, 12, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(reference.predict(x, verbose=0)), atol=1e-5, rtol=0)
    with pytest.raises(ShapeError, match="return_sequences=False"):
        Sequential([L.Input((12, 3)), L.GRU(8, return_sequences=True), L.RepeatVector(4)]).build()
    with pytest.raises(ConfigError, match="RepeatVector"):
        L.RepeatVector(0)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_return_sequences_and_go_backwards_match_keras(cell):
    K = keras.layers
    reference = keras.Sequential([K.Input((9, 3)), getattr(K, cell)(4, return_sequences=True, go_backwards=True),
                                  getattr(K, cell)(4, go_backwards=True)])
    model = Sequential([L.Input((9, 3)), getattr(L, cell)(4, return_sequences=True, go_backwards=True),
                        getattr(L, cell)(4, go_backwards=True)])
    model.build()
    with pytest.warns(UserWarning):
        copy_keras_weights(model, reference)
    x = np.random.default_rng(2).normal(size=(2, 9, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(reference.predict(x, verbose=0)), atol=1e-5, rtol=0)


def test_save_and_load_predict_identically(tmp_path):
    model = Sequential([L.Input((20,)), L.Embedding(300, 8, mask_zero=True), L.Bidirectional(L.GRU(6)),
                        L.Dense(2, activation="softmax")])
    x = torch.randint(0, 300, (5, 20))
    model.eval()
    expected = model(x)
    model.save(tmp_path / "m")
    restored = load(tmp_path / "m")
    torch.testing.assert_close(restored(x), expected, atol=0, rtol=0)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [layer["class_name"] for layer in config["layers"]] == ["Embedding", "Bidirectional", "Dense"]


def test_tampered_or_truncated_weights_are_detected_and_previous_save_survives(tmp_path):
    model = Sequential([L.Input((5, 2)), L.GRU(3), L.Dense(1)])
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated or changed"):
        load(tmp_path / "m")
    weights.write_bytes(good)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load(tmp_path / "m")
    with pytest.raises(DataError, match="missing"):
        load(tmp_path / "nothing-here")


def test_save_does_not_leave_temporary_files(tmp_path):
    model = Sequential([L.Input((5, 2)), L.GRU(3)])
    model.save(tmp_path)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_bad_model_definitions():
    with pytest.raises(ConfigError, match="Input"):
        Sequential([L.GRU(3)]).summary(print_fn=lambda _: None)
    with pytest.raises(ConfigError, match="recurrent_dropout"):
        L.GRU(3, recurrent_dropout=1.2)
    with pytest.raises(ConfigError, match="recurrent_dropout"):
        L.MinGRU(3, recurrent_dropout=0.2)
    with pytest.raises(ConfigError, match="activation"):
        L.GRU(3, activation="softmax")
    with pytest.raises(ConfigError, match="recurrent_activation"):
        L.SimpleRNN(3, recurrent_activation="hard_sigmoid")
    with pytest.raises(ShapeError, match="time_steps"):
        Sequential([L.Input((5,)), L.GRU(3)]).build()
    model = Sequential([L.Input((10,)), L.Embedding(20, 4), L.GRU(3)])
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 19\]"):
        model(torch.tensor([[1, 2, 25, 0, 0, 0, 0, 0, 0, 0]]))


def test_layer_names_follow_keras():
    model = Sequential([L.Input((5, 2)), L.GRU(3, return_sequences=True), L.GRU(3), L.Dense(1)])
    assert [layer.name for layer in model.layers] == ["gru", "gru_1", "dense"]
    assert L.SimpleRNN(2).class_name() == "SimpleRNN"
    model = Sequential([L.Input((5, 2)), L.SimpleRNN(3, return_sequences=True), L.TimeDistributed(L.Dense(1))])
    assert [layer.name for layer in model.layers] == ["simple_rnn", "time_distributed"]


def test_frozen_pretrained_embedding():
    matrix = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    model = Sequential([L.Input((6,)), L.Embedding(30, 4, weights=matrix, trainable=False), L.GRU(2)])
    model.build()
    embedding = model.layers[0].embedding.weight
    assert not embedding.requires_grad
    np.testing.assert_array_equal(embedding.detach().numpy(), matrix)
    summary = model.summary(print_fn=lambda _: None)
    assert "Non-trainable params: 120" in summary


def test_stateful_layer_keeps_its_state_through_a_fully_padded_chunk():
    """A row that is all padding in a chunk has nothing to process: its state and output stay those of
    the chunk before, as Keras 3 on JAX gives (on its torch backend Keras returns zeros there); grukit
    zeroed them. The first chunk against Keras."""
    rng = np.random.default_rng(6)
    first, second = rng.integers(1, 9, (3, 4)), rng.integers(1, 9, (3, 4))
    second[1] = 0
    ours = Sequential([L.Input((4,)), L.Embedding(9, 3, mask_zero=True), L.GRU(5, stateful=True)])
    theirs = keras.Sequential([keras.Input((4,), batch_size=3), keras.layers.Embedding(9, 3, mask_zero=True),
                               keras.layers.GRU(5, stateful=True)])
    ours.build()
    keras_weights.copy_keras_weights(ours.layers, theirs.layers)
    ours.eval()
    with torch.no_grad():
        before = ours(torch.from_numpy(first)).numpy()
        np.testing.assert_allclose(before, keras.ops.convert_to_numpy(theirs(first)), atol=1e-5, rtol=0)
        after = ours(torch.from_numpy(second)).numpy()
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(ours.layers[1].states[0, 1].numpy(), before[1])
    assert not np.allclose(after[[0, 2]], before[[0, 2]])


def test_a_layer_switched_to_eval_before_its_lazy_build_drops_nothing():
    x = torch.randn(4, 7, 5)
    model = Sequential([L.GRU(6, recurrent_dropout=0.3), L.Dense(1)])   # built on its first call
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
    assert not model.layers[0].recurrent.training


def test_an_explicit_build_keeps_the_weights():
    layer = L.GRU(6)
    layer.build((None, 7, 5))
    assert layer.built and layer.output_shape == (None, 6)
    weight = layer.recurrent.weight_ih_l0.detach().clone()
    with torch.no_grad():
        layer(torch.randn(2, 7, 5))
    assert torch.equal(weight, layer.recurrent.weight_ih_l0)


def test_two_dimensional_input_to_a_recurrent_model_is_refused():
    """grukit.nn takes 2-D input as one unbatched sequence: a model given (samples, features)
    mixed its rows into one sequence and returned one prediction."""
    model = Sequential([L.Input((7, 5)), L.GRU(4), L.Dense(1)])
    with pytest.raises(ShapeError, match=r"\(batch, time_steps, features\).*\(samples, time_steps, 1\)"):
        model.predict(np.zeros((3, 5), np.float32))
    with pytest.raises(ShapeError, match="return_sequences=True"):
        Sequential([L.Input((7, 5)), L.GRU(4), L.TimeDistributed(L.Dense(2))])


def test_variable_length_input_before_an_embedding_or_masking():
    for first, shape, make in ((L.Embedding(10, 4, mask_zero=True), (None,), lambda t: np.ones((2, t), np.int64)),
                               (L.Masking(), (None, 3), lambda t: np.ones((2, t, 3), np.float32))):
        model = Sequential([L.Input(shape), first, L.GRU(3), L.Dense(1)])
        for steps in (6, 9):
            assert model.predict(make(steps), verbose=0).shape == (2, 1)


def test_trainable_false_after_build_freezes_the_layer():
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 20, (16, 5)), rng.normal(size=(16, 1)).astype(np.float32)
    model = Sequential([L.Input((5,)), L.Embedding(20, 4), L.GRU(3, trainable=True), L.Dense(1, trainable=True)])
    model.build()
    model.layers[0].trainable = False
    model.compile("adam", "mse")
    before = model.layers[0].embedding.weight.detach().clone()
    model.fit(x, y, epochs=1, verbose=0)
    assert torch.equal(before, model.layers[0].embedding.weight)
    assert "Non-trainable params: 80" in model.summary(print_fn=lambda _: None)
    frozen = Sequential([L.Input((5, 2)), L.Bidirectional(L.GRU(3), trainable=False)])
    frozen.build()
    assert not any(p.requires_grad for p in frozen.parameters())
    inner = Sequential([L.Input((5, 2)), L.Bidirectional(L.GRU(3, trainable=False)),
                        L.Dense(2)])
    inner.build()
    assert not any(p.requires_grad for p in inner.layers[0].parameters())
    assert all(p.requires_grad for p in inner.layers[1].parameters())


@pytest.mark.parametrize("make", [
    lambda K: K.GRU(6, return_state=True),
    lambda K: K.LSTM(6, return_state=True),
    lambda K: K.Bidirectional(K.LSTM(6, return_state=True)),
    lambda K: K.Bidirectional(K.GRU(6, return_state=True, return_sequences=True), merge_mode="sum"),
], ids=["GRU", "LSTM", "Bidirectional LSTM", "Bidirectional GRU sum"])
def test_return_state_has_keras_s_layout_in_calls_and_predict(make):
    """States of (batch, units) each, the forward direction's first: [output, h(, c)(, h_b(, c_b))];
    they were torch's (directions, batch, units), and predict dropped them."""
    x = np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32)
    ours = Sequential([L.Input((7, 5)), make(L)])
    theirs = keras.Sequential([keras.Input((7, 5)), make(keras.layers)])
    ours.build()
    keras_weights.copy_keras_weights(ours.layers, theirs.layers)
    got, want = ours.predict(x), theirs.predict(x, verbose=0)
    assert isinstance(got, list) and [g.shape for g in got] == [np.shape(w) for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "SimpleRNN"])
def test_go_backwards_sequences_of_masked_batches_match_keras(cell):
    """Keras returns a go_backwards layer's sequence in reversed time order, zero at masked steps, and
    passes the input's mask on; grukit put each sequence's valid steps first."""
    ids = np.array([[3, 4, 5, 0, 0], [0, 0, 6, 7, 8], [1, 0, 2, 0, 3], [4, 5, 6, 7, 8]])
    for stacked in (False, True):
        def build(K, source):
            layers = [K.Input((5,)), K.Embedding(9, 3, mask_zero=True),
                      getattr(source, cell)(4, return_sequences=True, go_backwards=True)]
            return layers + ([getattr(source, cell)(3)] if stacked else [])
        ours, theirs = Sequential(build(L, L)), keras.Sequential(build(keras.layers, keras.layers))
        ours.build()
        keras_weights.copy_keras_weights(ours.layers, theirs.layers)
        np.testing.assert_allclose(ours.predict(ids), theirs.predict(ids, verbose=0), atol=1e-5, rtol=0)
