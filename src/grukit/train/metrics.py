"""Epoch metrics computed by scikit-learn over all of an epoch's predictions (not batch averages).

Names in logs are the names given (``"accuracy"``, and ``"val_accuracy"`` for validation data).
How predictions are read depends on the loss, as in Keras:

* binary (``binary_crossentropy``, or any loss with one output unit): class = ``p > 0.5``;
* categorical (one-hot ``y``): class = ``argmax`` of both;
* sparse (integer ``y``): class = ``argmax(p)`` against ``y``.

``precision``, ``recall`` and ``f1`` are sklearn's binary scores for binary outputs and the macro
average over classes otherwise (``zero_division=0``). ``auc`` is ROC-AUC (one-vs-rest macro for
several classes); it is undefined when the labels hold one class only (sklearn raises, Keras reports
0): grukit returns NaN and warns once per metric (per fit); as ``val_auc`` that means the validation
set holds one class. ``mape`` is in percent, as Keras reports it (sklearn's fraction times 100).
Sequence outputs ``(N, T, ...)`` are scored per element.

Example::

    metric = get_metric("accuracy", get_loss("sparse_categorical_crossentropy"))
    metric(y_true, y_prob)   # numpy arrays -> float
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from sklearn import metrics as skm

from ..errors import ConfigError, user_stacklevel
from .losses import Loss


class Metric:
    """``metric(y_true, y_pred) -> float`` on numpy arrays; ``direction`` is "up" or "down"."""

    def __init__(self, name: str, fn: Callable[[np.ndarray, np.ndarray], float], direction: str) -> None:
        self.name, self.fn, self.direction = name, fn, direction

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.fn(np.asarray(y_true), np.asarray(y_pred)))

    def __repr__(self) -> str:
        return f"Metric({self.name!r})"


def _kind(loss: Loss, y_true: np.ndarray, y_pred: np.ndarray) -> str:
    """binary / categorical / sparse, from the loss and, for other losses, from shapes as Keras 3 does."""
    if loss.kind in ("binary", "categorical", "sparse"):
        return loss.kind
    if y_pred.ndim == 1 or y_pred.shape[-1] == 1:
        return "binary"
    if y_true.ndim < y_pred.ndim or y_true.shape[-1] == 1:
        return "sparse"
    return "categorical"


def _labels(loss: Loss, y_true: np.ndarray, y_pred: np.ndarray):
    """(true classes, predicted classes, probabilities, kind), flattened over every sample axis."""
    kind = _kind(loss, y_true, y_pred)
    if kind == "binary":
        prob = y_pred.reshape(-1)
        truth = np.round(y_true.reshape(-1)).astype(np.int64)
        return truth, (prob > 0.5).astype(np.int64), prob, kind
    classes = y_pred.shape[-1]
    prob = y_pred.reshape(-1, classes)
    if kind == "categorical":
        truth = np.argmax(y_true.reshape(-1, classes), axis=-1)
    else:
        truth = y_true.reshape(-1).astype(np.int64)
    return truth, np.argmax(prob, axis=-1), prob, kind


def _one_class_warning(truth: np.ndarray) -> str:
    held = f"all {truth.size} are class {truth.reshape(-1)[0].item()!r}" if truth.size else "there are none"
    return (f"auc (ROC-AUC) is undefined when the labels hold one class only ({held}); it is logged as NaN. "
            "As val_auc this means the validation set holds one class: pass validation_data split with "
            "stratification (sklearn's train_test_split(x, y, stratify=y)), shuffle the data before "
            "validation_split (it holds out the last samples), or hold out more samples")


def _classification(name: str, loss: Loss) -> Callable:
    warned = False  # one warning per metric (per fit), not one per epoch

    def compute(y_true, y_pred):
        nonlocal warned
        truth, predicted, prob, kind = _labels(loss, y_true, y_pred)
        if name == "accuracy":
            return skm.accuracy_score(truth, predicted)
        if name in ("precision", "recall", "f1"):
            score = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
            if kind == "binary":
                return score(truth, predicted, average="binary", zero_division=0)
            return score(truth, predicted, average="macro", labels=np.arange(prob.shape[1]), zero_division=0)
        # auc
        if len(np.unique(truth)) < 2:  # deliberately NaN: 0 (Keras) would read as a real, terrible score
            if not warned:
                warned = True
                warnings.warn(_one_class_warning(truth), UserWarning, stacklevel=user_stacklevel())
            return math.nan
        if kind == "binary":
            return skm.roc_auc_score(truth, prob)
        present = np.unique(truth)
        if len(present) < prob.shape[1]:  # sklearn's ovr needs every class present; score those present
            return float(np.mean([skm.roc_auc_score(truth == c, prob[:, c]) for c in present]))
        return skm.roc_auc_score(truth, prob, multi_class="ovr", average="macro")
    return compute


def _regression(name: str) -> Callable:
    def compute(y_true, y_pred):
        t, p = y_true.reshape(-1), y_pred.reshape(-1)  # shapes were matched by the loss already
        if name == "mae":
            return skm.mean_absolute_error(t, p)
        if name == "rmse":
            return skm.root_mean_squared_error(t, p)
        if name == "smape":
            return smape(t, p)
        return 100.0 * skm.mean_absolute_percentage_error(t, p)
    return compute


_CLASSIFICATION = {"accuracy": "accuracy", "acc": "accuracy", "precision": "precision", "recall": "recall",
                   "f1": "f1", "f1_score": "f1", "auc": "auc", "roc_auc": "auc"}
_REGRESSION = {"mae": "mae", "mean_absolute_error": "mae", "rmse": "rmse", "root_mean_squared_error": "rmse",
               "mape": "mape", "mean_absolute_percentage_error": "mape",
               "smape": "smape", "symmetric_mean_absolute_percentage_error": "smape"}
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "auc", "mae", "rmse", "mape", "smape")


def get_metric(identifier: str | Metric | Callable, loss: Loss) -> Metric:
    """A :class:`Metric` from a name (logged under that name), a Metric, or a callable
    ``fn(y_true, y_pred) -> float`` on numpy arrays (logged under its ``__name__``, direction "up"
    unless it has a ``direction`` attribute)."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _CLASSIFICATION:
            return Metric(identifier, _classification(_CLASSIFICATION[key], loss), "up")
        if key in _REGRESSION:
            return Metric(identifier, _regression(_REGRESSION[key]), "down")
        raise ConfigError(f"metric {identifier!r} is not known; use one of {', '.join(METRIC_NAMES)} or a "
                          "callable fn(y_true, y_pred) -> float")
    if callable(identifier):
        name = getattr(identifier, "__name__", type(identifier).__name__)
        return Metric(name, identifier, getattr(identifier, "direction", "up"))
    raise ConfigError(f"metrics must be names or callables, got {type(identifier).__name__}")


def get_metrics(identifiers, loss: Loss) -> list[Metric]:
    if isinstance(identifiers, (str, Metric)) or callable(identifiers):
        identifiers = [identifiers]
    found = [get_metric(m, loss) for m in identifiers or ()]
    names = [m.name for m in found]
    duplicates = sorted({n for n in names if names.count(n) > 1} | ({"loss"} & set(names)))
    if duplicates:
        raise ConfigError(f"metric names must be unique and differ from 'loss', got {duplicates} twice or reserved")
    return found


def direction_of(name: str, metrics: list[Metric] = ()) -> str | None:
    """"up", "down" or None (unknown) for a log key such as "val_accuracy"."""
    base = name.removeprefix("val_")
    if base == "loss" or base.endswith("_loss"):
        return "down"
    for metric in metrics:
        if metric.name == base:
            return metric.direction
    key = base.lower()
    if key in _CLASSIFICATION:
        return "up"
    if key in _REGRESSION or key == "learning_rate":
        return "down"
    return None


def smape(y_true, y_pred) -> float:
    """Symmetric mean absolute percentage error in percent, the M3/M4 competitions' form (Hyndman &
    Koehler 2006): ``100 / n * sum(2 |y - p| / (|y| + |p|))``, from 0 (perfect) to 200. A term whose
    actual and forecast are both 0 counts as 0 (a perfect forecast), not as 0 / 0. Registered as
    ``"smape"``; it needs nothing but the forecasts (MASE, which needs the training series, is
    ``grukit.data.timeseries.mase``).

    Example::

        smape([100.0, 200.0], [110.0, 180.0])   # 100 / 2 * (20 / 210 + 40 / 380) = 10.03
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    denominator = np.abs(t) + np.abs(p)
    terms = np.divide(2.0 * np.abs(t - p), denominator, out=np.zeros_like(t), where=denominator > 0)
    return float(100.0 * terms.mean())


__all__ = ["Metric", "get_metric", "get_metrics", "direction_of", "METRIC_NAMES", "smape"]
