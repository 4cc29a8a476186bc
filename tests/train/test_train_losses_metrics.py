"""Losses against torch.nn.functional, a hand transcription of Keras's formulas (numpy) and live
keras.losses (torch backend); metrics against direct scikit-learn calls; label validation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from grukit.errors import ConfigError, DataError
from grukit.train.losses import get_loss, reduce_weighted
from grukit.train.metrics import get_metric

EPS = 1e-7
rng = np.random.default_rng(0)


def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is not on the torch backend")
    return keras


def keras_numpy(name, y, p):
    """Literal numpy transcription of Keras 3's loss functions (per sample, reduced over the last axis)."""
    if name == "mse":
        return np.mean((y - p) ** 2, axis=-1)
    if name == "mae":
        return np.mean(np.abs(y - p), axis=-1)
    if name == "huber":
        e = np.abs(p - y)
        return np.mean(np.where(e <= 1.0, 0.5 * e ** 2, e - 0.5), axis=-1)
    if name == "binary_crossentropy":
        q = np.clip(p, EPS, 1 - EPS)
        return np.mean(-y * np.log(q) - (1 - y) * np.log(1 - q), axis=-1)
    if name == "categorical_crossentropy":
        q = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
        return -np.sum(y * np.log(q), axis=-1)
    if name == "sparse_categorical_crossentropy":
        q = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
        return -np.log(np.take_along_axis(q, y[..., None].astype(int), -1)[..., 0])
    raise KeyError(name)


def make_case(name, n=16, k=4):
    if name in ("mse", "mae", "huber"):
        return rng.normal(size=(n, k)) * 2, rng.normal(size=(n, k)) * 2
    if name == "binary_crossentropy":
        p = rng.uniform(size=(n, 1))
        p[0, 0], p[1, 0] = 0.0, 1.0  # exercises the clipping
        return rng.integers(0, 2, size=(n, 1)).astype(float), p
    probs = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(0, k, size=n)
    if name == "categorical_crossentropy":
        return np.eye(k)[labels], probs
    return labels, probs


NAMES = ["mse", "mae", "huber", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"]


@pytest.mark.parametrize("name", NAMES)
def test_loss_equals_keras_transcription_and_live_keras(name):
    y, p = make_case(name)
    ours = get_loss(name)(torch.tensor(y), torch.tensor(p)).numpy()
    np.testing.assert_allclose(ours, keras_numpy(name, y, p), rtol=1e-10, atol=1e-12)
    keras = _keras()
    function = {"huber": lambda a, b: keras.losses.Huber(reduction=None)(a, b)}.get(
        name, getattr(keras.losses, name if name not in ("mse", "mae") else
                      {"mse": "mean_squared_error", "mae": "mean_absolute_error"}[name]))
    theirs = np.asarray(function(y.astype("float32"), p.astype("float32")))
    np.testing.assert_allclose(get_loss(name)(torch.tensor(y, dtype=torch.float32),
                                              torch.tensor(p, dtype=torch.float32)).numpy(), theirs, atol=1e-6)


@pytest.mark.parametrize("name, reference", [
    ("mse", lambda y, p: F.mse_loss(p, y, reduction="none").mean(-1)),
    ("mae", lambda y, p: F.l1_loss(p, y, reduction="none").mean(-1)),
    ("huber", lambda y, p: F.huber_loss(p, y, reduction="none", delta=1.0).mean(-1)),
    ("binary_crossentropy", lambda y, p: F.binary_cross_entropy(p.clamp(EPS, 1 - EPS), y, reduction="none").mean(-1)),
    ("categorical_crossentropy", lambda y, p: -(y * torch.log(p.clamp(EPS, 1 - EPS))).sum(-1)),
    ("sparse_categorical_crossentropy", lambda y, p: F.nll_loss(torch.log(p.clamp(EPS, 1 - EPS)), y, reduction="none")),
])
def test_loss_equals_torch_functional(name, reference):
    y, p = make_case(name)
    y_t = torch.tensor(y) if name != "sparse_categorical_crossentropy" else torch.tensor(y).long()
    torch.testing.assert_close(get_loss(name)(y_t, torch.tensor(p)), reference(y_t, torch.tensor(p)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alias, canonical", [("mean_squared_error", "mse"), ("MeanSquaredError", "mse"),
                                              ("mean_absolute_error", "mae"), ("Huber", "huber")])
def test_aliases(alias, canonical):
    y, p = make_case(canonical)
    torch.testing.assert_close(get_loss(alias)(torch.tensor(y), torch.tensor(p)),
                               get_loss(canonical)(torch.tensor(y), torch.tensor(p)))


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_from_logits_equals_probabilities(name):
    from grukit.train.losses import BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy
    cls = {"binary_crossentropy": BinaryCrossentropy, "categorical_crossentropy": CategoricalCrossentropy,
           "sparse_categorical_crossentropy": SparseCategoricalCrossentropy}[name]
    y, _ = make_case(name)
    logits = torch.tensor(rng.normal(size=(16, 1 if name == "binary_crossentropy" else 4)))
    probs = torch.sigmoid(logits) if name == "binary_crossentropy" else torch.softmax(logits, -1)
    y_t = torch.tensor(y)
    torch.testing.assert_close(cls(from_logits=True)(y_t, logits), cls()(y_t, probs), rtol=1e-6, atol=1e-7)


def test_sequence_outputs_average_over_time():
    y, p = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(get_loss("mse")(y, p), ((y - p) ** 2).mean(dim=(1, 2)))


def test_weighted_reduction_is_keras_sum_over_batch_size():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weights = torch.tensor([0.5, 2.0, 0.0, 1.0])
    assert reduce_weighted(per_sample, weights).item() == pytest.approx((0.5 + 4 + 0 + 4) / 4)
    keras = _keras()
    theirs = keras.losses.MeanSquaredError()(np.array([[1.0], [2.0], [3.0], [4.0]]) ** 0.5, np.zeros((4, 1)),
                                             sample_weight=weights.numpy())
    assert float(theirs) == pytest.approx(reduce_weighted(per_sample, weights).item(), abs=1e-6)


@pytest.mark.parametrize("y_shape, p_shape", [((8,), (8, 1)), ((8, 1), (8,)), ((8, 5), (8, 5, 1))])
def test_regression_aligns_a_trailing_unit_axis_like_keras(y_shape, p_shape):
    y, p = torch.randn(y_shape), torch.randn(p_shape)
    expected = ((y.reshape(p.shape) - p) ** 2).reshape(8, -1).mean(1)
    torch.testing.assert_close(get_loss("mse")(y, p), expected)


@pytest.mark.parametrize("name, y, p, fragment", [
    ("mse", torch.randn(8), torch.randn(8, 3), "broadcast"),
    ("mse", torch.randn(8, 1), torch.randn(1, 8), "broadcast"),
    ("binary_crossentropy", torch.tensor([[0.0], [2.0]]), torch.tensor([[0.5], [0.5]]), "[0, 1]"),
    ("binary_crossentropy", torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.5], [0.5]]), "map the classes"),
    ("sparse_categorical_crossentropy", torch.tensor([0, 3]), torch.full((2, 3), 1 / 3), "[0, 2]"),
    ("sparse_categorical_crossentropy", torch.tensor([0.5, 1.0]), torch.full((2, 3), 1 / 3), "integer class ids"),
    ("sparse_categorical_crossentropy", torch.tensor([-1, 1]), torch.full((2, 3), 1 / 3), "re-encode"),
    ("sparse_categorical_crossentropy", torch.eye(3)[[0, 1]], torch.full((2, 3), 1 / 3), "categorical_crossentropy"),
    ("categorical_crossentropy", torch.tensor([0, 2]), torch.full((2, 3), 1 / 3), "sparse_categorical_crossentropy"),
    ("categorical_crossentropy", torch.eye(4)[[0, 2]], torch.full((2, 3), 1 / 3), "must be equal"),
])
def test_bad_labels_raise_data_error_naming_the_fix(name, y, p, fragment):
    with pytest.raises(DataError) as error:
        get_loss(name)(y, p)
    assert fragment in str(error.value)


def test_unknown_loss_and_scalar_custom_loss():
    with pytest.raises(ConfigError, match="binary_crossentropy"):
        get_loss("hinge_loss_v9")
    with pytest.raises(ConfigError, match="per-sample"):
        get_loss(lambda y, p: ((y - p) ** 2).mean())(torch.randn(4, 1), torch.randn(4, 1))
    custom = get_loss(lambda y, p: ((y - p) ** 2).sum(-1))
    y, p = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(custom(y, p), ((y - p) ** 2).sum(-1))


# ---- metrics against direct sklearn calls ------------------------------------------------------

def binary_case(n=200):
    y = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    p = np.clip(y * 0.3 + rng.uniform(size=(n, 1)) * 0.7, 0, 1).astype(np.float32)
    return y, p


def multiclass_case(n=300, k=4):
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + np.eye(k)[labels] * 1.5
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, p.astype(np.float32)


@pytest.mark.parametrize("name, reference", [
    ("accuracy", lambda y, p: skm.accuracy_score(y.ravel(), (p.ravel() > 0.5).astype(int))),
    ("precision", lambda y, p: skm.precision_score(y.ravel(), (p.ravel() > 0.5).astype(int))),
    ("recall", lambda y, p: skm.recall_score(y.ravel(), (p.ravel() > 0.5).astype(int))),
    ("f1", lambda y, p: skm.f1_score(y.ravel(), (p.ravel() > 0.5).astype(int))),
    ("auc", lambda y, p: skm.roc_auc_score(y.ravel(), p.ravel())),
])
def test_binary_metrics_equal_sklearn(name, reference):
    y, p = binary_case()
    metric = get_metric(name, get_loss("binary_crossentropy"))
    assert metric(y, p) == pytest.approx(reference(y, p), abs=1e-12)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("name, reference", [
    ("accuracy", lambda t, p: skm.accuracy_score(t, p.argmax(-1))),
    ("precision", lambda t, p: skm.precision_score(t, p.argmax(-1), average="macro", zero_division=0)),
    ("recall", lambda t, p: skm.recall_score(t, p.argmax(-1), average="macro", zero_division=0)),
    ("f1", lambda t, p: skm.f1_score(t, p.argmax(-1), average="macro", zero_division=0)),
    ("auc", lambda t, p: skm.roc_auc_score(t, p, multi_class="ovr", average="macro")),
])
def test_multiclass_metrics_equal_sklearn(loss, name, reference):
    labels, p = multiclass_case()
    y = labels if loss.startswith("sparse") else np.eye(4)[labels]
    assert get_metric(name, get_loss(loss))(y, p) == pytest.approx(reference(labels, p), abs=1e-12)


@pytest.mark.parametrize("name, reference", [
    ("mae", lambda y, p: skm.mean_absolute_error(y.ravel(), p.ravel())),
    ("rmse", lambda y, p: math.sqrt(skm.mean_squared_error(y.ravel(), p.ravel()))),
    ("mape", lambda y, p: 100 * np.mean(np.abs(y - p) / np.abs(y))),
])
def test_regression_metrics_equal_sklearn(name, reference):
    y, p = rng.uniform(1, 5, size=(50, 2)), rng.uniform(1, 5, size=(50, 2))
    assert get_metric(name, get_loss("mse"))(y, p) == pytest.approx(reference(y, p), rel=1e-10)


def test_accuracy_kind_follows_the_loss_or_shapes_as_keras():
    labels, p = multiclass_case(50)
    assert get_metric("accuracy", get_loss("mse"))(labels, p) == pytest.approx(skm.accuracy_score(labels, p.argmax(-1)))
    y, q = binary_case(50)
    assert get_metric("accuracy", get_loss("mse"))(y, q) == pytest.approx(
        skm.accuracy_score(y.ravel(), q.ravel() > 0.5))


def test_auc_with_one_class_is_nan_and_unknown_metric_raises():
    assert math.isnan(get_metric("auc", get_loss("binary_crossentropy"))(np.ones((5, 1)), np.full((5, 1), 0.7)))
    with pytest.raises(ConfigError, match="accuracy"):
        get_metric("top7", get_loss("mse"))
