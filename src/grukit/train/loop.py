"""The training loop behind Keras-style ``fit`` / ``evaluate`` / ``predict``, for any torch module.

One training step is exactly::

    optimizer.zero_grad()
    y_pred = forward(model, xs)                       # default: model(*xs), first element if a tuple
    loss = sum(w_i * loss_fn(y_true, y_pred)_i) / N   # Keras's sum_over_batch_size (w_i = 1 without weights)
    loss.backward(); optimizer.step()

so a hand-written torch loop over the same batches gives the same weights. The epoch's ``loss`` in
the logs is the batch losses averaged with the batch sizes as weights (Keras's running mean);
metrics are computed once per epoch over all of its predictions (see :mod:`grukit.train.metrics`).
Validation (``val_loss``, ``val_<metric>``) runs in ``eval()`` mode without gradients at each
epoch's end.

Randomness: ``seed`` fixes the batch order of every epoch (see :mod:`grukit.train.batches`) and,
through ``torch.manual_seed(epoch_seed(seed, epoch))`` inside a forked RNG, the dropout of every
epoch; the global torch RNG is left as it was. Two runs with the same seed and initial weights are
identical, and a run resumed at epoch k equals an uninterrupted one. Without a seed one is drawn
from the global torch RNG.

A NaN or infinite loss (or gradient) stops training with :class:`grukit.errors.TrainingError`
naming the epoch and batch; the failing step is not applied, so the weights are those after the
last good step, and callbacks never see the failed epoch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, TrainingError, user_stacklevel
from ..nn import bfloat16
from . import distributed as distributed_module
from .batches import ArrayData, batch_indices, check_batch_size, epoch_seed, prepare, sequence_lengths
from .callbacks import Callback, CallbackList, History, ProgressLogger
from .losses import Loss, get_loss, reduce_weighted
from .metrics import Metric, get_metrics
from .optimizers import ExistingOptimizer, get_optimizer

Forward = Callable[[torch.nn.Module, tuple], torch.Tensor]


def default_forward(model: torch.nn.Module, xs: tuple) -> torch.Tensor:
    """``model(*xs)``; when the model returns a tuple (``(y, mask)``, ``(output, h_n)``), its first element."""
    out = model(*xs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returned {type(out).__name__}; fit needs a tensor of predictions (pass "
                          "forward=lambda model, xs: ... to pick it)")
    return out


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for parameter in model.parameters():
        if isinstance(parameter, torch.nn.parameter.UninitializedParameter):
            continue
        return parameter.device, (parameter.dtype if parameter.is_floating_point() else None)
    return torch.device("cpu"), None


def _to_model(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.to(device) if tensor.device != device else tensor


def _resolve_optimizer(optimizer, model: torch.nn.Module, first_batch: ArrayData, forward: Forward):
    spec = get_optimizer(optimizer)
    if isinstance(spec, ExistingOptimizer):
        return spec.optimizer
    needs_build = not any(True for _ in model.parameters()) or any(
        isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())
    if needs_build:  # lazily built modules (grukit.layers, torch Lazy*) make their weights on a first call
        with torch.no_grad(), _mode(model, training=False):
            forward(model, first_batch.inputs)
    return spec.create([p for p in model.parameters() if p.requires_grad])


@contextlib.contextmanager
def _mode(model: torch.nn.Module, training: bool):
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def _finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def _grads_finite(parameters: Sequence[torch.nn.Parameter]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    # A NaN or infinity anywhere makes the sum non-finite. One float32 pass over the gradients: half
    # the time of their norm (0.19 against 0.43 ms for the tutorial IMDB model's 1.5M weights), and
    # it overflows only for gradients near 1e32 where the norm's squares overflow near 1e19.
    return math.isfinite(float(sum(g.sum() for g in grads)))


class _Collector:
    """Keeps an epoch's predictions and targets (in batch order) for the metrics."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.preds, self.targets = enabled, [], []

    def add(self, loss: Loss, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        if self.enabled:
            self.preds.append(loss.probabilities(y_pred.detach()).float().cpu().numpy())
            self.targets.append(y_true.detach().cpu().numpy())

    def gather(self) -> None:
        """Every process's predictions, in rank order (distributed training)."""
        if self.enabled:
            self.preds = distributed_module.gather_arrays(self.preds)
            self.targets = distributed_module.gather_arrays(self.targets)

    def compute(self, metrics: Sequence[Metric], prefix: str = "") -> dict[str, float]:
        if not self.enabled or not self.preds:
            return {}
        y_pred, y_true = np.concatenate(self.preds), np.concatenate(self.targets)
        return {prefix + m.name: m(y_true, y_pred) for m in metrics}


def _run_eval(model, data: ArrayData, loss: Loss, metrics: Sequence[Metric], batch_size: int, forward: Forward,
              prefix: str = "") -> dict[str, float]:
    device, dtype = _model_device_dtype(model)
    collector = _Collector(bool(metrics))
    total, count = 0.0, 0
    with torch.no_grad(), _mode(model, training=False):
        for index in batch_indices(len(data), batch_size, shuffle=False):
            batch = data.take(index)
            xs = tuple(_to_model(t, device, dtype) for t in batch.inputs)
            y_pred = forward(model, xs)
            y_true = _to_model(batch.y, device, None)
            per_sample = loss(y_true, y_pred)
            weight = None if batch.sample_weight is None else batch.sample_weight.to(device)
            value = float(reduce_weighted(per_sample, weight))
            n = len(index)
            total, count = total + value * n, count + n
            collector.add(loss, y_pred, y_true)
    return {prefix + "loss": total / count, **collector.compute(metrics, prefix)}


def _check_fit_arguments(epochs, initial_epoch, validation_split, verbose) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0 (the index of the last epoch), got {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ConfigError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
    if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
        raise ConfigError(f"validation_split must lie in [0, 1) (the fraction of samples held out from the end), "
                          f"got {validation_split!r}")
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (one line per epoch), got {verbose!r}")


PRECISIONS = ("float32", "mixed_bfloat16")


def check_precision(precision: str, caller: str = "fit") -> None:
    """A ConfigError unless ``precision`` is one of :data:`PRECISIONS` (fit's, and every task's)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{caller}(precision={precision!r}): use 'float32', or 'mixed_bfloat16' to train "
                          "grukit's recurrent layers in their bfloat16 mode (fast only on CPUs with BF16 units)")


def _precision(precision: str):
    """The context for the model's forward passes: ``"mixed_bfloat16"`` (Keras's policy name) runs
    grukit's recurrent layers in their bfloat16 mode (grukit.nn.bfloat16: bfloat16 products, float32
    accumulation, outputs and weights); torch's layers around them stay float32."""
    check_precision(precision)
    return bfloat16.mode(precision == "mixed_bfloat16")


def _validation_set(validation_data) -> ArrayData:
    if isinstance(validation_data, ArrayData):
        return validation_data
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ConfigError("validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight_val)")
    return prepare(*validation_data)


def fit(model: torch.nn.Module, x, y=None, *, loss, optimizer, metrics: Iterable = (), epochs: int = 1,
        batch_size: int = 32, validation_split: float = 0.0, validation_data=None, shuffle: bool = True,
        class_weight: dict | None = None, sample_weight=None, callbacks: Iterable[Callback] = (), verbose: int = 1,
        seed: int | None = None, initial_epoch: int = 0, bucket_by_length: bool = False,
        forward: Forward | None = None, history: History | dict | None = None,
        distributed: bool = False, precision: str = "float32") -> History:
    """Train ``model`` on ``(x, y)`` from epoch ``initial_epoch`` up to (not including) ``epochs``.

    ``loss``: a name or callable (:func:`grukit.train.losses.get_loss`); ``optimizer``: a name, a spec
    (created over the model's trainable parameters, after building a lazy model on one batch) or a
    ready ``torch.optim.Optimizer`` (kept across calls: pass the same one to continue training);
    ``metrics``: names or callables. ``history``: a History (or its ``.history`` dict) to extend
    when resuming. ``distributed=True``: data-parallel training across the processes of a torchrun
    launch (see :mod:`grukit.train.distributed`). ``precision="mixed_bfloat16"``: grukit's recurrent
    layers train (and validate) in their bfloat16 mode (:func:`_precision`). Returns the History;
    ``history.optimizer`` is the torch optimizer used.
    """
    _check_fit_arguments(epochs, initial_epoch, validation_split, verbose)
    precision_scope = _precision(precision)
    if precision == "mixed_bfloat16" and bfloat16.BACKEND != "torch":
        # as Keras warns of mixed_float16 on a GPU without float16 units
        warnings.warn("precision='mixed_bfloat16' on a CPU without BF16 units (AVX-512 BF16 or AMX): grukit's "
                      "bfloat16 mode gives the numbers it gives on such a CPU but trains slower than float32 "
                      "here; train with precision='float32' for speed (README: bfloat16 mode)",
                      stacklevel=user_stacklevel())
    batch_size = check_batch_size(batch_size)
    forward = forward or default_forward
    loss_fn = get_loss(loss)
    metric_list = get_metrics(metrics, loss_fn)
    data = prepare(x, y, sample_weight, class_weight)
    validation = None
    if validation_data is not None:
        validation = _validation_set(validation_data)
    elif validation_split > 0:
        data, validation = data.split_last(float(validation_split))
        if class_weight is not None:  # Keras weighs only the training part by class
            validation = ArrayData(validation.inputs, validation.y, None)
    lengths = sequence_lengths(data.inputs[0]) if bucket_by_length else None

    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    rank, world_size = distributed_module.ensure_process_group() if distributed else (0, 1)
    if distributed:
        seed = distributed_module.broadcast_seed(seed)
        if rank != 0:
            verbose = 0
            callbacks = [c for c in callbacks if not getattr(c, "main_process_only", False)]
    torch_optimizer = _resolve_optimizer(optimizer, model, data.take(slice(0, min(len(data), 2))), forward)
    if distributed and forward is not default_forward:
        # a custom forward runs inside DDP's forward, on the model itself (see distributed.wrap)
        train_module = distributed_module.wrap(model, forward)
        train_forward = default_forward
    else:
        train_module = distributed_module.wrap(model) if distributed else model
        train_forward = forward
    trainable = [p for group in torch_optimizer.param_groups for p in group["params"]]
    device, dtype = _model_device_dtype(model)

    if isinstance(history, History):
        record = history
    else:
        record = History(history)
    record.optimizer = torch_optimizer
    steps = math.ceil(len(data) / batch_size)
    params = {"epochs": int(epochs), "steps": steps, "verbose": verbose, "batch_size": batch_size,
              "samples": len(data), "initial_epoch": int(initial_epoch)}
    record.params = params
    all_callbacks = list(callbacks)
    if verbose:
        all_callbacks.insert(0, ProgressLogger(verbose))
    callback_list = CallbackList(all_callbacks, model, torch_optimizer, record, params, metric_list)
    model.stop_training = False

    try:
        callback_list.call("on_train_begin", {})
        with _mode(model, training=True), torch.random.fork_rng(devices=[]), precision_scope:
            for epoch in range(int(initial_epoch), int(epochs)):
                torch.manual_seed(epoch_seed(seed, epoch))
                generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
                model.train()
                callback_list.call("on_epoch_begin", epoch, {})
                collector = _Collector(bool(metric_list))
                total, count = 0.0, 0
                for batch_number, index in enumerate(batch_indices(len(data), batch_size, shuffle=shuffle,
                                                                   generator=generator, lengths=lengths)):
                    local = distributed_module.local_slice(index, rank, world_size) if distributed else index
                    # a process whose share is empty still joins DDP's gradient exchange, with zero weight
                    share = len(local) / len(index)
                    batch = data.take(local if len(local) else index[:1])
                    xs = tuple(_to_model(t, device, dtype) for t in batch.inputs)
                    y_true = _to_model(batch.y, device, None)
                    torch_optimizer.zero_grad(set_to_none=True)
                    y_pred = train_forward(train_module, xs)
                    per_sample = loss_fn(y_true, y_pred)
                    weight = None if batch.sample_weight is None else batch.sample_weight.to(device)
                    value = reduce_weighted(per_sample, weight)
                    if distributed:  # DDP averages over processes: scale to the global batch's mean
                        objective = value * (share * world_size)
                        value = torch.tensor(distributed_module.sum_across(value.item() * share), dtype=torch.float64)
                    else:
                        objective = value
                    if not _finite(value):
                        raise TrainingError(
                            f"the loss became {value.item()} at epoch {epoch + 1}, batch {batch_number + 1} of "
                            f"{steps}; training stopped and that step was not applied (the weights are those "
                            "after the last good step). Lower the learning rate, clip gradients "
                            "(global_clipnorm=1.0), scale the inputs, or check the data for extreme values")
                    objective.backward()
                    if not _grads_finite(trainable):
                        torch_optimizer.zero_grad(set_to_none=True)
                        raise TrainingError(
                            f"the gradients became NaN or infinite at epoch {epoch + 1}, batch {batch_number + 1} "
                            f"of {steps} (loss {value.item():.6g}); training stopped and that step was not applied. "
                            "Lower the learning rate, clip gradients (global_clipnorm=1.0) or scale the inputs")
                    torch_optimizer.step()
                    n = len(index)
                    total, count = total + value.item() * n, count + n
                    if len(local):
                        collector.add(loss_fn, y_pred, y_true)
                    callback_list.call("on_batch_end", batch_number, {"loss": total / count, "size": n})
                    if getattr(model, "stop_training", False):
                        break
                if distributed:
                    collector.gather()
                logs: dict[str, Any] = {"loss": total / count, **collector.compute(metric_list)}
                if validation is not None:
                    logs.update(_run_eval(model, validation, loss_fn, metric_list, batch_size, forward, "val_"))
                callback_list.call("on_epoch_end", epoch, logs)
                record.record(epoch, logs)
                if getattr(model, "stop_training", False):
                    break
        callback_list.call("on_train_end", {})
    finally:
        callback_list.close()
    return record


def evaluate(model: torch.nn.Module, x, y=None, *, loss, metrics: Iterable = (), batch_size: int = 32,
             sample_weight=None, verbose: int = 0, forward: Forward | None = None,
             precision: str = "float32") -> dict[str, float]:
    """``{"loss": ..., <metric>: ...}`` over ``(x, y)`` in eval mode, without gradients; the loss is
    the batch losses averaged with batch sizes as weights (Keras's evaluate). ``precision`` as for fit."""
    batch_size = check_batch_size(batch_size)
    loss_fn = get_loss(loss)
    data = prepare(x, y, sample_weight)
    with _precision(precision):
        result = _run_eval(model, data, loss_fn, get_metrics(metrics, loss_fn), batch_size,
                           forward or default_forward)
    if verbose:
        print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()), flush=True)
    return result


def predict(model: torch.nn.Module, x, *, batch_size: int = 32, forward: Forward | None = None,
            return_tensor: bool | None = None, verbose: int = 0, precision: str = "float32"):
    """The model's outputs for ``x`` in batches, eval mode, no gradients. A numpy array when ``x`` is
    numpy (Keras), a CPU tensor when ``x`` is a torch tensor; ``return_tensor`` forces either. A list of
    them when ``forward`` returns a list (a Keras-style model ending in ``return_state=True``).
    ``precision`` as for fit."""
    batch_size = check_batch_size(batch_size)
    precision_scope = _precision(precision)
    forward = forward or default_forward
    data = prepare(x, need_y=False)
    if return_tensor is None:
        first = x[0] if isinstance(x, (tuple, list)) else x
        return_tensor = isinstance(first, torch.Tensor)
    device, dtype = _model_device_dtype(model)
    outputs = []
    with torch.no_grad(), _mode(model, training=False), precision_scope:
        for index in batch_indices(len(data), batch_size, shuffle=False):
            xs = tuple(_to_model(t[index], device, dtype) for t in data.inputs)
            out = forward(model, xs)   # a tensor, or a list of them (a Keras model's output and states)
            outputs.append([t.detach().cpu() for t in out] if isinstance(out, (tuple, list)) else out.detach().cpu())
    several = isinstance(outputs[0], list)
    results = [torch.cat(parts) for parts in zip(*outputs)] if several else [torch.cat(outputs)]
    if verbose:
        print(f"predict: {len(data)} samples, output shape{'s' if several else ''} "
              f"{', '.join(str(tuple(r.shape)) for r in results)}", flush=True)
    results = results if return_tensor else [r.numpy() for r in results]
    return results if several else results[0]


__all__ = ["fit", "evaluate", "predict", "default_forward", "check_precision", "PRECISIONS"]
