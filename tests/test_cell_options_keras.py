"""grukit.layers' activation, recurrent_activation and recurrent_dropout against Keras 3 itself.

Weights go through a Keras twin with the default activations (grukit.nn.convert reads only the
layouts), then the same numbers must come out in float32. For recurrent_dropout in training,
Keras's cell is handed the same fixed masks grukit's layer is (Keras's RNG cannot be shared)."""

import numpy as np
import pytest
import torch

from grukit import layers as L
from grukit.models import Sequential, load

keras = pytest.importorskip("keras")
from keras_weights import load_recurrent_from_keras  # noqa: E402  (tests/keras_weights.py)
K = keras.layers

N, T, F, UNITS = 4, 7, 3, 5
ATOL = 1e-5


def matched_pair(cell, **options):
    """A built Keras layer with ``options``, and the grukit layer with the same options and weights."""
    keras_layer = getattr(K, cell)(UNITS, return_sequences=True, **options)
    keras_layer.build((None, T, F))
    rng = np.random.default_rng(0)
    keras_layer.set_weights([0.5 * rng.normal(size=w.shape).astype(np.float32) for w in keras_layer.get_weights()])
    twin = getattr(K, cell)(UNITS, return_sequences=True, **{k: v for k, v in options.items() if k == "reset_after"})
    twin.build((None, T, F))
    twin.set_weights(keras_layer.get_weights())
    ours = getattr(L, cell)(UNITS, return_sequences=True, **options)
    ours.ensure_built((None, T, F))
    load_recurrent_from_keras(ours, twin)
    return keras_layer, ours


def run_keras(layer, x, **kwargs):
    return keras.ops.convert_to_numpy(layer(x, **kwargs))


def inputs(seed=1):
    return (1.5 * np.random.default_rng(seed).normal(size=(N, T, F))).astype(np.float32)


def assert_inference_matches(keras_layer, ours):
    """Inference (no dropout) gives Keras's numbers, and the parameter counts are Keras's."""
    x = inputs()
    ours.eval()
    with torch.no_grad():
        got, _ = ours(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), run_keras(keras_layer, x, training=False), atol=ATOL, rtol=0)
    assert ours.count_params() == keras_layer.count_params()


ACTIVATION_PAIRS = [("relu", "hard_sigmoid"), ("softsign", "sigmoid"), ("linear", "hard_sigmoid"),
                    ("elu", "tanh"), ("sigmoid", "softplus")]


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("activation,recurrent_activation", ACTIVATION_PAIRS)
def test_gru_activations_match_keras(activation, recurrent_activation, reset_after):
    keras_layer, ours = matched_pair("GRU", activation=activation, recurrent_activation=recurrent_activation,
                                     reset_after=reset_after)
    assert_inference_matches(keras_layer, ours)


@pytest.mark.parametrize("activation,recurrent_activation", ACTIVATION_PAIRS)
def test_lstm_activations_match_keras(activation, recurrent_activation):
    keras_layer, ours = matched_pair("LSTM", activation=activation, recurrent_activation=recurrent_activation)
    assert_inference_matches(keras_layer, ours)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softsign", "hard_sigmoid", "linear", "selu"])
def test_simple_rnn_activations_match_keras(activation):
    keras_layer, ours = matched_pair("SimpleRNN", activation=activation)
    assert_inference_matches(keras_layer, ours)


def test_activation_none_is_linear_as_in_keras():
    assert L.GRU(3, activation=None).activation == "linear"
    assert L.SimpleRNN(3).activation == "tanh"


# ---- recurrent_dropout ------------------------------------------------------------------------

CELLS = [("GRU", {"reset_after": True}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("SimpleRNN", {})]
RATE = 0.3


def inject_masks(keras_layer, ours, seed=2):
    """The same fixed masks for Keras's cell (a list, one per gate, Keras's gate order z, r, h for GRU
    and i, f, c, o for LSTM; one tensor for SimpleRNN) and for grukit's layer (gate blocks in
    grukit's order r, z, n / i, f, g, o)."""
    gates = {"GRUCell": 3, "LSTMCell": 4}.get(type(keras_layer.cell).__name__, 1)
    rng = np.random.default_rng(seed)
    blocks = [torch.from_numpy((rng.random((N, UNITS)) > RATE).astype(np.float32) / (1 - RATE))
              for _ in range(gates)]
    keras_layer.cell.get_recurrent_dropout_mask = lambda h_tm1: blocks if gates > 1 else blocks[0]
    ours_order = [blocks[1], blocks[0], blocks[2]] if gates == 3 else blocks  # Keras z, r, h -> r, z, n
    ours.recurrent.recurrent_dropout_mask = lambda batch_size, like: torch.cat(ours_order, dim=1)


@pytest.mark.parametrize("cell,options", CELLS, ids=[f"{c}{o}" for c, o in CELLS])
def test_recurrent_dropout_in_training_matches_keras_with_the_same_masks(cell, options):
    keras_layer, ours = matched_pair(cell, recurrent_dropout=RATE, **options)
    inject_masks(keras_layer, ours)
    x = inputs()
    ours.train()
    got, _ = ours(torch.from_numpy(x))
    expected = run_keras(keras_layer, x, training=True)
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=ATOL, rtol=0)
    assert not np.allclose(expected, run_keras(keras_layer, x, training=False), atol=1e-3), "masks matter"
    got.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())


@pytest.mark.parametrize("cell,options", CELLS, ids=[f"{c}{o}" for c, o in CELLS])
def test_recurrent_dropout_in_inference_is_keras_without_dropout(cell, options):
    assert_inference_matches(*matched_pair(cell, recurrent_dropout=RATE, **options))


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_recurrent_dropout_with_a_padding_mask_matches_keras(cell):
    """Masked (pre-padded) steps, return_sequences=False, with the same masks."""
    keras_layer, ours = matched_pair(cell, recurrent_dropout=RATE)
    keras_layer.return_sequences = False
    ours.return_sequences = False
    inject_masks(keras_layer, ours)
    x = inputs()
    valid = np.ones((N, T), dtype=bool)
    valid[1, :3] = False
    valid[2, :6] = False
    ours.train()
    got, _ = ours(torch.from_numpy(x), torch.from_numpy(valid))
    expected = run_keras(keras_layer, x, mask=torch.from_numpy(valid), training=True)
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=ATOL, rtol=0)


def test_model_with_cell_options_saves_and_loads(tmp_path):
    model = Sequential([L.Input((T, F)), L.GRU(4, activation="relu", recurrent_activation="hard_sigmoid",
                                               recurrent_dropout=0.2, return_sequences=True),
                        L.LSTM(3, recurrent_dropout=0.1), L.Dense(1)])
    reference = keras.Sequential([K.Input((T, F)), K.GRU(4, activation="relu", recurrent_activation="hard_sigmoid",
                                                         recurrent_dropout=0.2, return_sequences=True),
                                  K.LSTM(3, recurrent_dropout=0.1), K.Dense(1)])
    assert model.count_params() == reference.count_params()
    x = torch.from_numpy(inputs())
    model.train()
    model(x).sum().backward()  # trains (reference loop) with masks
    model.eval()
    expected = model(x)
    model.save(tmp_path / "m")
    restored = load(tmp_path / "m")
    torch.testing.assert_close(restored(x), expected, atol=0, rtol=0)
    gru = restored.layers[0]
    assert (gru.activation, gru.recurrent_activation, gru.recurrent_dropout) == ("relu", "hard_sigmoid", 0.2)
    assert restored.layers[0].recurrent.recurrent_dropout == 0.2
