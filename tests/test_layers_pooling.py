"""GlobalMaxPooling1D and GlobalAveragePooling1D against Keras 3: the numbers with and without a mask,
whole masked text models with the same weights, summary shapes and parameter counts; gradients reach
only valid steps; configs round-trip."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from grukit import layers as L
from grukit.errors import ConfigError, ShapeError
from grukit.models import Sequential, load

keras = pytest.importorskip("keras")
import keras_weights  # noqa: E402  (tests/keras_weights.py, after the skip: it needs Keras's converter)

POOLINGS = {"max": (L.GlobalMaxPooling1D, "GlobalMaxPooling1D"),
            "average": (L.GlobalAveragePooling1D, "GlobalAveragePooling1D")}
# one row each: holes, post-padding, pre-padding, a single valid step, all valid
MASK = np.array([[1, 0, 1, 1, 0, 1, 0],
                 [1, 1, 1, 1, 0, 0, 0],
                 [0, 0, 0, 1, 1, 1, 1],
                 [0, 0, 0, 0, 0, 1, 0],
                 [1, 1, 1, 1, 1, 1, 1]], dtype=bool)


def ours(kind, **options):
    return POOLINGS[kind][0](**options)


def theirs(kind, **options):
    return getattr(keras.layers, POOLINGS[kind][1])(**options)


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def inputs(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("kind,keepdims,data_format,layout",
                         list(itertools.product(POOLINGS, [False, True], ["channels_last", "channels_first"],
                                                ["batch", "one sequence", "one step", "non-contiguous"])))
def test_unmasked_pooling_equals_keras(kind, keepdims, data_format, layout):
    shape = {"batch": (4, 7, 5), "one sequence": (1, 7, 5), "one step": (3, 1, 5), "non-contiguous": (4, 7, 5)}[layout]
    x = inputs(shape)
    tensor = torch.from_numpy(x)
    if layout == "non-contiguous":  # the same values, read through a transposed view
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).transpose(1, 2)
        assert not tensor.is_contiguous()
    if data_format == "channels_first":
        x, tensor = x.transpose(0, 2, 1).copy(), tensor.transpose(1, 2)
    expected = numpy(theirs(kind, keepdims=keepdims, data_format=data_format)(x))
    got, mask = ours(kind, keepdims=keepdims, data_format=data_format)(tensor)
    assert mask is None and tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("keepdims,data_format", list(itertools.product([False, True],
                                                                        ["channels_last", "channels_first"])))
def test_masked_average_equals_keras(keepdims, data_format):
    """Keras 3's GlobalAveragePooling1D honours the mask: the mean over valid steps only."""
    x = inputs((5, 7, 3))
    x[~MASK] = 1e3  # padding that would move any mean it took part in
    if data_format == "channels_first":
        x = x.transpose(0, 2, 1).copy()
    expected = numpy(theirs("average", keepdims=keepdims, data_format=data_format)(x, mask=MASK))
    got, out_mask = ours("average", keepdims=keepdims, data_format=data_format)(torch.from_numpy(x),
                                                                                  torch.from_numpy(MASK))
    assert out_mask is None
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("keepdims,data_format", list(itertools.product([False, True],
                                                                        ["channels_last", "channels_first"])))
def test_masked_max_equals_keras_over_each_rows_valid_steps(keepdims, data_format):
    """Keras 3's GlobalMaxPooling1D ignores a mask (it cannot be passed one); grukit's takes the maximum
    over the valid steps, which is Keras's maximum of each row cut to its valid steps."""
    x = inputs((5, 7, 3))
    x[~MASK] = 1e3  # padding that would win every maximum it took part in
    steps_axis = 1 if data_format == "channels_last" else 2
    if data_format == "channels_first":
        x = x.transpose(0, 2, 1).copy()
    layer = theirs("max", keepdims=keepdims, data_format=data_format)
    expected = np.concatenate([numpy(layer(np.compress(MASK[row], x[row:row + 1], axis=steps_axis)))
                               for row in range(len(x))])
    got, out_mask = ours("max", keepdims=keepdims, data_format=data_format)(torch.from_numpy(x),
                                                                              torch.from_numpy(MASK))
    assert out_mask is None
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)
    padded = ~MASK.all(axis=1)
    assert (numpy(layer(x))[padded] == 1e3).all()  # unmasked, as Keras computes it, the padding wins


@pytest.mark.parametrize("kind", POOLINGS)
def test_fully_masked_rows_give_zero(kind):
    x = inputs((2, 4, 3)) - 10  # every valid value negative: 0 is not any of them
    mask = torch.tensor([[False] * 4, [True, True, False, False]])
    got, _ = ours(kind)(torch.from_numpy(x), mask)
    assert (got[0] == 0).all() and (got[1] < 0).all()
    if kind == "average":  # Keras divides 0 by 0 there
        assert np.isnan(numpy(theirs(kind)(x, mask=mask.numpy()))[0]).all()


@pytest.mark.parametrize("kind,padding", [("max", "post"), ("average", "post"), ("average", "pre")])
def test_masked_text_model_matches_keras(kind, padding):
    """Embedding(mask_zero) -> GRU(return_sequences) -> pooling -> Dense with the same weights. For max,
    post-padding only: there Keras's GRU repeats the last valid output at padded steps, so its unmasked
    maximum is the maximum over the valid steps (with pre-padding its leading outputs are zeros)."""
    K = keras.layers
    rng = np.random.default_rng(0)
    ids = np.zeros((4, 10), dtype=np.int64)
    for row, length in enumerate([10, 6, 1, 3]):
        tokens = rng.integers(1, 40, size=length)
        if padding == "post":
            ids[row, :length] = tokens
        else:
            ids[row, 10 - length:] = tokens
    model = Sequential([L.Input((10,)), L.Embedding(40, 6, mask_zero=True), L.GRU(5, return_sequences=True),
                        ours(kind), L.Dense(1, activation="sigmoid")])
    model.build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = keras.Sequential([K.Input((10,)), K.Embedding(40, 6, mask_zero=True),
                                      K.GRU(5, return_sequences=True), theirs(kind), K.Dense(1, activation="sigmoid")])
        keras_weights.copy_keras_weights(model.layers, reference.layers)
        expected = np.asarray(reference.predict(ids, verbose=0))
    # Keras says which of its two layers drops the mask
    assert any("does not support masking" in str(w.message) for w in caught) == (kind == "max")
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:.*GlobalMaxPooling1D.*does not support masking")
@pytest.mark.parametrize("keepdims", [False, True])
def test_summary_shapes_parameter_counts_and_names_equal_keras(keepdims):
    K = keras.layers
    keras.backend.clear_session()  # Keras numbers its default names per session
    model = Sequential([L.Input((12,)), L.Embedding(100, 8, mask_zero=True), L.GRU(6, return_sequences=True),
                        L.GlobalMaxPooling1D(keepdims=keepdims), L.Dense(1)])
    stacked = Sequential([L.Input((12, 4)), L.GlobalAveragePooling1D(keepdims=keepdims)])
    reference = keras.Sequential([K.Input((12,)), K.Embedding(100, 8, mask_zero=True), K.GRU(6, return_sequences=True),
                                  K.GlobalMaxPooling1D(keepdims=keepdims), K.Dense(1)])
    reference_stacked = keras.Sequential([K.Input((12, 4)), K.GlobalAveragePooling1D(keepdims=keepdims)])
    for mine, other in ((model, reference), (stacked, reference_stacked)):
        text = mine.summary(print_fn=lambda _: None)
        assert [layer.name for layer in mine.layers] == [layer.name for layer in other.layers]
        for layer, keras_layer in zip(mine.layers, other.layers):
            assert layer.count_params() == keras_layer.count_params(), layer.name
            assert tuple(layer.output_shape) == tuple(keras_layer.output.shape), layer.name
        assert mine.count_params() == other.count_params()
        assert f"Total params: {other.count_params():,}" in text
    assert "global_max_pooling1d (GlobalMaxPooling1D)" in model.summary(print_fn=lambda _: None)
    assert str((None, 1, 6) if keepdims else (None, 6)) in model.summary(print_fn=lambda _: None)


@pytest.mark.parametrize("kind", POOLINGS)
def test_gradient_reaches_only_valid_steps(kind):
    x = torch.from_numpy(inputs((5, 7, 3))).double().requires_grad_()
    mask = torch.from_numpy(MASK)
    got, _ = ours(kind)(x, mask)
    got.sum().backward()
    grad = x.grad
    assert (grad[~mask] == 0).all(), "padded steps must get no gradient"
    counts = mask.sum(dim=1, keepdim=True).double()
    if kind == "average":
        torch.testing.assert_close(grad, (mask / counts).unsqueeze(-1).expand_as(x), rtol=0, atol=1e-15)
    else:  # one step per row and feature, the valid one holding the maximum
        assert (grad.sum(dim=1) == 1).all() and ((grad == 0) | (grad == 1)).all()
        winners = grad.argmax(dim=1)
        assert mask.gather(1, winners).all()
        torch.testing.assert_close(x.detach().gather(1, winners.unsqueeze(1)).squeeze(1), got.detach())
    empty = torch.zeros(1, 4, 3, dtype=torch.float64, requires_grad=True)
    ours(kind)(empty, torch.zeros(1, 4, dtype=torch.bool))[0].sum().backward()
    assert (empty.grad == 0).all()  # a fully masked row: zero, and no NaN


def test_serialize_deserialize_and_saved_model_round_trip(tmp_path):
    for layer in (L.GlobalMaxPooling1D(keepdims=True, name="pool"),
                  L.GlobalAveragePooling1D(data_format="channels_first")):
        copy = L.deserialize(L.serialize(layer))
        assert type(copy) is type(layer) and copy.get_config() == layer.get_config()
    model = Sequential([L.Input((9,)), L.Embedding(30, 4, mask_zero=True), L.GRU(5, return_sequences=True),
                        L.GlobalAveragePooling1D(), L.Dense(2, activation="softmax")])
    ids = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14, 15]])
    model.eval()
    restored = load(model.save(tmp_path / "pooled"))
    restored.eval()
    assert isinstance(restored.layers[2], L.GlobalAveragePooling1D)
    with torch.no_grad():
        torch.testing.assert_close(restored(ids), model(ids), rtol=0, atol=0)


def test_bad_options_and_shapes():
    with pytest.raises(ConfigError, match=r"GlobalMaxPooling1D\(data_format='channels_middle'\): expected one of"):
        L.GlobalMaxPooling1D(data_format="channels_middle")
    with pytest.raises(ConfigError, match=r"keepdims=1\): expected True or False"):
        L.GlobalAveragePooling1D(keepdims=1)
    with pytest.raises(ShapeError, match=r"expects \(batch, steps, features\), got \(None, 6\).*return_sequences=True"):
        Sequential([L.Input((12, 4)), L.GRU(6), L.GlobalMaxPooling1D()]).build()
    with pytest.raises(ShapeError, match=r"mask has shape \(2, 5\), expected \(batch, steps\) = \(2, 7\)"):
        L.GlobalAveragePooling1D()(torch.zeros(2, 7, 3), torch.ones(2, 5, dtype=torch.bool))
