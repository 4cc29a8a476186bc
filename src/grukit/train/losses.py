"""Keras's losses, per sample, so that sample and class weights apply as in Keras.

Every loss is called as Keras calls it, ``loss(y_true, y_pred)``, and returns one value per sample,
shape ``(N,)``: Keras's per-element loss (reduced over the last axis) averaged over any remaining
non-batch axes (time steps). The training loop reduces these as Keras's default
``"sum_over_batch_size"`` does: ``sum(w_i * loss_i) / N`` (a mean over the batch of weighted
per-sample losses, not divided by the sum of the weights).

Formulas (``eps = 1e-7``, Keras's ``backend.epsilon()``; probabilities unless ``from_logits=True``):

=================================  ==========================================================
``mse`` / ``mean_squared_error``    ``mean((y - p)**2, axis=-1)``
``mae`` / ``mean_absolute_error``   ``mean(|y - p|, axis=-1)``
``huber`` (delta 1)                 ``mean(0.5 e**2 if |e| <= d else d |e| - 0.5 d**2, axis=-1)``
``binary_crossentropy``             ``p = clip(p, eps, 1 - eps)``; ``mean(-y log p - (1 - y) log(1 - p), axis=-1)``
``categorical_crossentropy``        ``p = clip(p / sum(p, -1), eps, 1 - eps)``; ``-sum(y log p, axis=-1)``
``sparse_categorical_crossentropy`` the same with ``y`` one-hot encoded from integer labels
=================================  ==========================================================

Labels are validated on every batch (cheap comparisons on the batch already in memory) and a bad
batch raises :class:`grukit.errors.DataError` naming the fix.

Example::

    loss = get_loss("binary_crossentropy")
    per_sample = loss(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.9], [0.2]]))   # shape (2,)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, ShapeError

EPSILON = 1e-7


def _mean_over_sample_axes(values: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,): the mean over every non-batch axis (Keras's sum_over_batch_size per sample)."""
    if values.dim() == 0:
        raise ShapeError("a loss returned a scalar; per-sample losses of shape (N, ...) are needed so that "
                         "sample and class weights can apply")
    return values.reshape(values.shape[0], -1).mean(dim=1) if values.dim() > 1 else values


class Loss:
    """A named per-sample loss. ``kind`` ("regression", "binary", "categorical", "sparse") tells the
    metrics how to read the predictions (which accuracy, where the class axis is)."""

    name = "loss"
    kind = "regression"
    from_logits = False

    def __call__(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        y_true = self.align(y_true, y_pred)
        return _mean_over_sample_axes(self.elementwise(y_true, y_pred))

    # subclasses implement this: per-element loss reduced over the last axis as Keras does
    def elementwise(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def align(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        """Bring y_true to y_pred's shape where Keras would (a trailing axis of 1 added or removed);
        any other mismatch raises instead of broadcasting silently."""
        y_true = _same_rank(self.name, y_true, y_pred)
        if not y_true.is_floating_point() or y_true.dtype != y_pred.dtype:
            y_true = y_true.to(y_pred.dtype)
        return y_true

    def probabilities(self, y_pred: torch.Tensor) -> torch.Tensor:
        """Predictions as probabilities (for metrics); identity unless from_logits."""
        return y_pred

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


def _same_rank(name: str, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    if y_true.shape == y_pred.shape:
        return y_true
    if y_pred.dim() == y_true.dim() + 1 and y_pred.shape[-1] == 1 and y_pred.shape[:-1] == y_true.shape:
        return y_true.unsqueeze(-1)
    if y_true.dim() == y_pred.dim() + 1 and y_true.shape[-1] == 1 and y_true.shape[:-1] == y_pred.shape:
        return y_true.squeeze(-1)
    raise DataError(
        f"{name}: targets y have shape {tuple(y_true.shape)} but the model predicts shape "
        f"{tuple(y_pred.shape)}; they would broadcast to a wrong loss. Reshape y to "
        f"{tuple(y_pred.shape)} or change the model's last layer to output {tuple(y_true.shape[1:])} per sample")


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def elementwise(self, y_true, y_pred):
        return torch.mean((y_true - y_pred) ** 2, dim=-1) if y_pred.dim() > 1 else (y_true - y_pred) ** 2


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def elementwise(self, y_true, y_pred):
        return torch.mean(torch.abs(y_true - y_pred), dim=-1) if y_pred.dim() > 1 else torch.abs(y_true - y_pred)


class Huber(Loss):
    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise ConfigError(f"Huber(delta=...) must be positive, got {delta}")
        self.delta = float(delta)

    def elementwise(self, y_true, y_pred):
        error = torch.abs(y_pred - y_true)
        quadratic = 0.5 * error ** 2
        linear = self.delta * error - 0.5 * self.delta ** 2
        values = torch.where(error <= self.delta, quadratic, linear)
        return values.mean(dim=-1) if y_pred.dim() > 1 else values

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


class _Crossentropy(Loss):
    """Probabilities by default (Keras's from_logits=False); logits with from_logits=True."""

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def probabilities(self, y_pred):
        return torch.softmax(y_pred, dim=-1) if self.from_logits else y_pred

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class BinaryCrossentropy(_Crossentropy):
    name = "binary_crossentropy"
    kind = "binary"

    def align(self, y_true, y_pred):
        y_true = super().align(y_true, y_pred)
        if y_true.numel() and (bool((y_true < 0).any()) or bool((y_true > 1).any()) or bool(y_true.isnan().any())):
            raise DataError(
                f"binary_crossentropy: labels must lie in [0, 1], got values from {float(y_true.min()):g} to "
                f"{float(y_true.max()):g}; map the classes to 0 and 1, or use sparse_categorical_crossentropy "
                "for integer labels of more than two classes")
        return y_true

    def elementwise(self, y_true, y_pred):
        if self.from_logits:
            values = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
        else:
            p = torch.clamp(y_pred, EPSILON, 1.0 - EPSILON)
            values = -y_true * torch.log(p) - (1.0 - y_true) * torch.log(1.0 - p)
        return values.mean(dim=-1) if y_pred.dim() > 1 else values

    def probabilities(self, y_pred):
        return torch.sigmoid(y_pred) if self.from_logits else y_pred


def _log_probabilities(y_pred: torch.Tensor, from_logits: bool) -> torch.Tensor:
    if from_logits:
        return torch.log_softmax(y_pred, dim=-1)
    p = y_pred / torch.sum(y_pred, dim=-1, keepdim=True)
    return torch.log(torch.clamp(p, EPSILON, 1.0 - EPSILON))


class CategoricalCrossentropy(_Crossentropy):
    name = "categorical_crossentropy"
    kind = "categorical"

    def align(self, y_true, y_pred):
        if y_true.shape != y_pred.shape:
            hint = (" (the targets look like integer class ids: use loss='sparse_categorical_crossentropy' "
                    "or one-hot encode y)" if y_true.shape in (y_pred.shape[:-1], (*y_pred.shape[:-1], 1)) else "")
            raise DataError(f"categorical_crossentropy: one-hot targets y have shape {tuple(y_true.shape)} but the "
                            f"model predicts shape {tuple(y_pred.shape)}; they must be equal{hint}")
        return y_true.to(y_pred.dtype)

    def elementwise(self, y_true, y_pred):
        return -torch.sum(y_true * _log_probabilities(y_pred, self.from_logits), dim=-1)


class SparseCategoricalCrossentropy(_Crossentropy):
    name = "sparse_categorical_crossentropy"
    kind = "sparse"

    def align(self, y_true, y_pred):
        if y_true.shape == (*y_pred.shape[:-1], 1) and y_pred.dim() > 1:
            y_true = y_true.squeeze(-1)
        if y_true.shape != y_pred.shape[:-1]:
            raise DataError(
                f"sparse_categorical_crossentropy: integer targets y have shape {tuple(y_true.shape)} but the "
                f"model predicts shape {tuple(y_pred.shape)} (classes on the last axis), so y should have shape "
                f"{tuple(y_pred.shape[:-1])}; for one-hot targets use loss='categorical_crossentropy'")
        if y_true.is_floating_point():
            if not bool(torch.equal(y_true, torch.round(y_true))):
                raise DataError("sparse_categorical_crossentropy: targets must be integer class ids, got "
                                "non-integer values; for probabilities or one-hot targets use "
                                "loss='categorical_crossentropy' (or binary_crossentropy for one output)")
        classes = y_pred.shape[-1]
        if y_true.numel():
            low, high = int(y_true.min()), int(y_true.max())
            if low < 0 or high >= classes:
                raise DataError(
                    f"sparse_categorical_crossentropy: class ids must lie in [0, {classes - 1}] for a model with "
                    f"{classes} outputs, got ids from {low} to {high}; give the last layer {high + 1} units "
                    "or re-encode the labels to 0..n_classes-1")
        return y_true.long()

    def elementwise(self, y_true, y_pred):
        log_p = _log_probabilities(y_pred, self.from_logits)
        return -torch.gather(log_p, -1, y_true.unsqueeze(-1)).squeeze(-1)


class CustomLoss(Loss):
    """A user callable ``fn(y_true, y_pred)`` returning per-sample (or per-element) losses."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, y_true, y_pred):
        if y_true.is_floating_point() and y_pred.is_floating_point() and y_true.dtype != y_pred.dtype:
            y_true = y_true.to(y_pred.dtype)
        values = self.fn(y_true, y_pred)
        if not isinstance(values, torch.Tensor):
            raise ConfigError(f"loss function {self.name!r} returned {type(values).__name__}; it must return a "
                              "torch tensor of per-sample losses, shape (N,)")
        if values.dim() == 0:
            raise ConfigError(f"loss function {self.name!r} returned a scalar; return per-sample losses of "
                              "shape (N,) (reduction='none') so that sample and class weights can apply")
        if values.shape[0] != y_pred.shape[0]:
            raise ShapeError(f"loss function {self.name!r} returned shape {tuple(values.shape)} for a batch of "
                             f"{y_pred.shape[0]}; the first axis must be the batch")
        return _mean_over_sample_axes(values)


_BY_NAME: dict[str, Callable[[], Loss]] = {
    "mse": MeanSquaredError, "meansquarederror": MeanSquaredError,
    "mae": MeanAbsoluteError, "meanabsoluteerror": MeanAbsoluteError,
    "huber": Huber, "huberloss": Huber,
    "binarycrossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categoricalcrossentropy": CategoricalCrossentropy, "cce": CategoricalCrossentropy,
    "sparsecategoricalcrossentropy": SparseCategoricalCrossentropy,
}

LOSS_NAMES = ("mse", "mean_squared_error", "mae", "mean_absolute_error", "huber", "binary_crossentropy",
              "categorical_crossentropy", "sparse_categorical_crossentropy")


def get_loss(identifier: str | Loss | Callable) -> Loss:
    """A :class:`Loss` from a Keras name or alias (case and underscores ignored, so "MeanSquaredError"
    works), a Loss instance, or a callable ``fn(y_true, y_pred) -> (N,)`` losses."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower().replace("_", "")
        if key not in _BY_NAME:
            raise ConfigError(f"loss={identifier!r} is not known; use one of {', '.join(LOSS_NAMES)} "
                              "or pass a callable fn(y_true, y_pred) returning per-sample losses")
        return _BY_NAME[key]()
    if callable(identifier):
        return CustomLoss(identifier)
    raise ConfigError(f"loss must be a name such as 'mse' or a callable, got {type(identifier).__name__}")


def reduce_weighted(per_sample: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Keras's "sum_over_batch_size": ``sum(w_i * loss_i) / N``."""
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.to(per_sample.dtype)).sum() / per_sample.shape[0]


__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "Huber", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "CustomLoss", "get_loss",
           "reduce_weighted", "LOSS_NAMES", "EPSILON"]
