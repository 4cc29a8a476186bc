"""In-memory datasets for the training loop: conversion, checks, the validation split, batch order.

Conversion follows Keras: numpy float64 arrays become float32 (Keras's floatx), integer arrays
int64 (token ids, class ids), torch tensors keep their dtype. ``x`` may be one array or a tuple of
arrays (a model with several inputs is called as ``model(*xs)``).

Batch order of epoch ``e`` with seed ``s`` is drawn from ``torch.Generator().manual_seed(epoch_seed(s, e))``
so that an epoch's order depends on the seed and the epoch number only: a run resumed at epoch ``e``
sees the same batches as an uninterrupted one. Without bucketing the order is
``torch.randperm(n, generator=g)`` cut into consecutive batches of ``batch_size`` (the last may be
smaller), exactly what a hand-written loop does.

Bucketing (``bucket_by_length=True``): samples are shuffled, then stably sorted by their length (the
count of non-padding steps along axis 1: non-zero ids, or steps with any non-zero feature), cut into
batches of similar length, and the batch order is shuffled. Ties are broken by the shuffle, so the
batches differ between epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, DataError, ShapeError


def to_tensor(array, name: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach()
    try:
        result = np.asarray(array)
    except Exception as error:  # ragged lists and the like
        raise DataError(f"{name} could not be converted to an array ({error}); pad sequences to one length "
                        "(e.g. grukit.data pad_sequences) or pass a numpy array or torch tensor") from error
    if result.dtype == object:
        raise DataError(f"{name} holds objects of mixed shapes or types; pad sequences to one length and pass "
                        "a numeric numpy array or torch tensor")
    if result.dtype == np.float64 or result.dtype == np.float16:
        result = result.astype(np.float32)
    elif np.issubdtype(result.dtype, np.integer) or np.issubdtype(result.dtype, np.unsignedinteger):
        result = result.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(result))


def as_inputs(x) -> tuple[torch.Tensor, ...]:
    if x is None:
        raise DataError("x is None; pass the inputs as a numpy array, a torch tensor, or a tuple of them")
    items = tuple(x) if isinstance(x, (tuple, list)) and not _is_nested_numbers(x) else (x,)
    if not items:
        raise DataError("x is an empty tuple; pass at least one input array")
    return tuple(to_tensor(item, "x" if len(items) == 1 else f"x[{i}]") for i, item in enumerate(items))


def _is_nested_numbers(x) -> bool:
    """A plain (nested) list of numbers is one array, not several inputs."""
    first = x[0] if len(x) else None
    return isinstance(first, (int, float, np.number)) or (
        isinstance(first, (list, tuple)) and not any(isinstance(i, (np.ndarray, torch.Tensor)) for i in x))


@dataclass
class ArrayData:
    """Inputs, targets and per-sample weights with the same first dimension."""

    inputs: tuple[torch.Tensor, ...]
    y: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def take(self, index) -> "ArrayData":
        return ArrayData(tuple(t[index] for t in self.inputs),
                         None if self.y is None else self.y[index],
                         None if self.sample_weight is None else self.sample_weight[index])

    def split_last(self, fraction: float) -> tuple["ArrayData", "ArrayData"]:
        """Keras's validation_split: the last ``fraction`` of the samples (before any shuffling) are held
        out; the training part has ``floor(n * (1 - fraction))`` samples."""
        n = len(self)
        train_count = int(math.floor(n * (1.0 - fraction)))
        if train_count == 0:
            raise DataError(f"validation_split={fraction} of {n} samples leaves no training data; lower the "
                            "split or pass more samples")
        if train_count == n:
            raise DataError(f"validation_split={fraction} of {n} samples leaves no validation data; raise the "
                            "split or pass validation_data=(x_val, y_val)")
        return self.take(slice(0, train_count)), self.take(slice(train_count, n))


def class_weight_to_sample_weight(y: torch.Tensor, class_weight: dict) -> torch.Tensor:
    """Keras's rule: the class of a sample is ``y`` (integer labels or a 0/1 column, rounded) or
    ``argmax(y)`` for one-hot rows; classes missing from the dict weigh 1."""
    if not isinstance(class_weight, dict):
        raise ConfigError(f"class_weight must be a dict {{class_id: weight}}, got {type(class_weight).__name__}")
    labels = y
    if labels.dim() > 2:
        raise ConfigError(f"class_weight needs one class per sample, but y has shape {tuple(y.shape)}; pass "
                          "sample_weight of shape (N,) instead")
    if labels.dim() == 2:
        labels = labels.argmax(dim=-1) if labels.shape[-1] != 1 else labels.squeeze(-1)
    labels = torch.round(labels.double()).long() if labels.is_floating_point() else labels.long()
    weights = torch.ones(labels.shape[0], dtype=torch.float32)
    for key, value in class_weight.items():
        weights[labels == int(key)] = float(value)
    return weights


def prepare(x, y=None, sample_weight=None, class_weight=None, *, need_y: bool = True) -> ArrayData:
    """Convert and check: equal first dimensions, not empty, finite float inputs, weights of shape (N,)."""
    inputs = as_inputs(x)
    targets = None
    if y is not None:
        targets = to_tensor(y, "y")
    elif need_y:
        raise DataError("y is None; pass the targets (for a model without targets use predict)")
    weights = None
    if sample_weight is not None and class_weight is not None:
        raise ConfigError("pass sample_weight or class_weight, not both (as in Keras); fold the class "
                          "weights into sample_weight")
    if sample_weight is not None:
        weights = to_tensor(sample_weight, "sample_weight").to(torch.float32)
        if weights.dim() == 2 and weights.shape[1] == 1:
            weights = weights.squeeze(1)
        if weights.dim() != 1:
            raise ShapeError(f"sample_weight must have shape (N,), got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise DataError("sample_weight holds negative, NaN or infinite values; weights must be finite and >= 0")
    sizes = {("x" if len(inputs) == 1 else f"x[{i}]"): int(t.shape[0]) if t.dim() else None
             for i, t in enumerate(inputs)}
    if targets is not None:
        sizes["y"] = int(targets.shape[0]) if targets.dim() else None
    if weights is not None:
        sizes["sample_weight"] = int(weights.shape[0])
    if None in sizes.values():
        scalar = [k for k, v in sizes.items() if v is None]
        raise ShapeError(f"{', '.join(scalar)} is a scalar; arrays need the samples on their first axis")
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise DataError(f"x and y must hold the same number of samples on their first axis, but {listing}; "
                        "check that they were not sliced or shuffled separately")
    if next(iter(sizes.values())) == 0:
        raise DataError("the dataset is empty (0 samples); pass at least one sample")
    for name, tensor in zip(sizes, inputs):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{name} contains NaN or infinite values; clean or impute them before training")
    if targets is not None and targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        raise DataError("y contains NaN or infinite values; drop or impute those samples")
    if class_weight is not None and targets is not None:
        weights = class_weight_to_sample_weight(targets, class_weight)
    return ArrayData(inputs, targets, weights)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s generator (and of dropout in that epoch)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 63)


def sequence_lengths(x: torch.Tensor) -> torch.Tensor:
    """Non-padding steps per sample along axis 1: non-zero ids (N, T) or steps with a non-zero feature
    (N, T, F)."""
    if x.dim() < 2:
        raise ShapeError(f"bucket_by_length=True needs sequences (N, T) or (N, T, F) as the first input, got "
                         f"shape {tuple(x.shape)}")
    valid = x != 0
    if valid.dim() > 2:
        valid = valid.reshape(*valid.shape[:2], -1).any(dim=-1)
    return valid.sum(dim=1)


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                  lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The index tensors of one epoch's batches (see the module docstring for the order)."""
    if shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if lengths is None:
        return list(order.split(batch_size))
    by_length = order[torch.sort(lengths[order], stable=True).indices]
    batches = list(by_length.split(batch_size))
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


__all__ = ["ArrayData", "prepare", "as_inputs", "to_tensor", "class_weight_to_sample_weight", "epoch_seed",
           "sequence_lengths", "batch_indices", "check_batch_size"]
