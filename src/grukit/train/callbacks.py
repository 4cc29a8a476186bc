"""Keras's callbacks over any torch module.

The loop gives every callback ``self.model`` (the module), ``self.optimizer`` (the torch optimizer),
``self.history`` (the :class:`History` so far) and ``self.params`` (epochs, steps, verbose, ...),
then calls ``on_train_begin``, ``on_epoch_begin(epoch)``, ``on_batch_end(batch, logs)``,
``on_epoch_end(epoch, logs)`` and ``on_train_end``. Epochs count from 0 as in Keras (logs and file
names show ``epoch + 1``). A callback stops training by setting ``self.model.stop_training = True``.
Callbacks run in the order given and may add keys to ``logs`` (ReduceLROnPlateau and
LearningRateScheduler add ``learning_rate``); the History records the logs after all of them.

When a loss turns NaN or infinite the loop raises :class:`grukit.errors.TrainingError` before
``on_epoch_end``: no callback sees that epoch, so no checkpoint is written from it, and
``on_train_end`` is not called (EarlyStopping does not swap weights in after a failure).

Example::

    fit(model, x, y, loss="mse", optimizer="adam", epochs=50, validation_split=0.2,
        callbacks=[EarlyStopping(patience=3, restore_best_weights=True),
                   ModelCheckpoint("ckpt/epoch{epoch:02d}-{val_loss:.3f}.safetensors", save_best_only=True),
                   CSVLogger("run/log.csv")])
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from .metrics import direction_of
from .optimizers import get_learning_rate, set_learning_rate
from .state import save_training_state, save_weights


class Callback:
    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: "History | None" = None
        self.params: dict[str, Any] = {}
        self.metrics: list = []

    def set_context(self, model, optimizer, history, params, metrics=()) -> None:
        self.model, self.optimizer, self.history, self.params = model, optimizer, history, params
        self.metrics = list(metrics)

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


class History(Callback):
    """``history.history``: a dict of lists, one entry per epoch; ``history.epoch``: the epoch numbers
    (0-based). ``history.optimizer`` is the torch optimizer that trained the model (keep it to go on
    training with the same optimizer state)."""

    def __init__(self, history: dict[str, list] | None = None, epoch: list[int] | None = None) -> None:
        super().__init__()
        self.history: dict[str, list] = {k: list(v) for k, v in (history or {}).items()}
        self.epoch: list[int] = list(epoch) if epoch is not None else (
            list(range(len(next(iter(self.history.values()))))) if self.history else [])

    def record(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [None] * (len(self.epoch) - 1)).append(value)
        for key, values in self.history.items():  # keys missing this epoch stay aligned
            if len(values) < len(self.epoch):
                values.append(None)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class _Monitor(Callback):
    """Shared by EarlyStopping, ModelCheckpoint and ReduceLROnPlateau: Keras's improvement test."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"{type(self).__name__}(mode={mode!r}) must be 'auto', 'min' or 'max'")
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))
        self.direction: str | None = None

    def _resolve_direction(self) -> str:
        if self.direction is None:
            if self.mode != "auto":
                self.direction = "down" if self.mode == "min" else "up"
            else:
                self.direction = direction_of(self.monitor, self.metrics)
                if self.direction is None:
                    raise ConfigError(f"{type(self).__name__}(monitor={self.monitor!r}): cannot tell whether it "
                                      "should go up or down; pass mode='min' or mode='max'")
        return self.direction

    def improved(self, current: float, reference: float | None) -> bool:
        if current != current:   # NaN (val_auc on a one-class validation set) is never an improvement
            return False
        direction = self._resolve_direction()
        if reference is None:
            return True
        if direction == "down":
            return current + self.min_delta < reference  # Keras: (current - (-min_delta)) < reference
        return current - self.min_delta > reference

    def monitored(self, logs: dict | None) -> float | None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{type(self).__name__}: monitor={self.monitor!r} is not in the logs (available: "
                          f"{', '.join(sorted(logs or {}))}); nothing done this epoch", stacklevel=3)
            return None
        return float(value)


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs (Keras
    3 semantics, including ``baseline`` and ``start_from_epoch``). With ``restore_best_weights=True``
    the best epoch's weights are put back at the end of training (Keras 3 does this whether or not
    training stopped early)."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience, self.verbose, self.baseline = int(patience), verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best, self.best_epoch = 0, 0, None, 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self.monitored(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = _copy_state(self.model), epoch
        self.wait += 1
        if self.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = _copy_state(self.model)
            if self.baseline is None or self.improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch (or only when ``monitor`` improved, ``save_best_only=True``).

    ``filepath`` is formatted as Keras does: ``filepath.format(epoch=epoch + 1, **logs)``, e.g.
    ``"ckpt/model-{epoch:02d}-{val_loss:.2f}.safetensors"``. The model's own ``save(path)`` is used
    when it has one (``save_weights_only=False``); otherwise the ``state_dict`` is written as a
    safetensors file. Both are atomic, so a crash never leaves a half-written checkpoint.
    """

    main_process_only = True  # in distributed training only rank 0 writes files

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False, mode: str = "auto",
                 initial_value_threshold: float | None = None) -> None:
        super().__init__(monitor, mode)
        self.filepath = os.fspath(filepath)
        self.verbose, self.save_best_only, self.save_weights_only = verbose, save_best_only, save_weights_only
        self.best = initial_value_threshold
        self.saved: list[str] = []

    def path_for(self, epoch: int, logs: dict) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch and the logs "
                              f"{sorted(logs)} ({error!r}); use only those names, e.g. '{{epoch:02d}}'") from error

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self.monitored(logs)
            if current is None or not math.isfinite(current) or not self.improved(current, self.best):
                return
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to {current:.5f}, saving model")
            self.best = current
        self.save(self.path_for(epoch, logs))

    def save(self, path: str) -> None:
        save = getattr(self.model, "save", None)
        if callable(save) and not self.save_weights_only:
            save(path)
        else:
            save_weights(path, self.model)
        self.saved.append(path)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved (by more than
    ``min_delta``) for ``patience`` epochs; never below ``min_lr``; then wait ``cooldown`` epochs."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        if not 0 <= factor < 1:
            raise ConfigError(f"ReduceLROnPlateau(factor={factor}) must be in [0, 1): it multiplies the rate")
        super().__init__(monitor, mode, min_delta)
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = get_learning_rate(self.optimizer)
        current = self.monitored(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = get_learning_rate(self.optimizer)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    set_learning_rate(self.optimizer, new)
                    if self.verbose > 0:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:g}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """At the start of every epoch set the learning rate to ``schedule(epoch, lr)`` (or ``schedule(epoch)``)."""

    def __init__(self, schedule: Callable, verbose: int = 0) -> None:
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = get_learning_rate(self.optimizer)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:
            new = self.schedule(epoch)
        new = float(new)
        if not math.isfinite(new) or new < 0:
            raise ConfigError(f"LearningRateScheduler: schedule returned {new} at epoch {epoch}; it must return "
                              "a finite rate >= 0")
        set_learning_rate(self.optimizer, new)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new:g}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = get_learning_rate(self.optimizer)


def _append_line(path: Path, line: str) -> None:
    """One write of one whole line to a file opened O_APPEND: a crash never leaves half a line."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = line.encode("utf-8")
        written = os.write(descriptor, data)
        while written < len(data):  # a regular file takes it whole in practice; finish it if not
            written += os.write(descriptor, data[written:])
    finally:
        os.close(descriptor)


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch`` then the log keys in sorted order (Keras's layout)."""

    main_process_only = True  # in distributed training only rank 0 writes files

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.path, self.separator, self.append = Path(filename), separator, append
        self.keys: list[str] | None = None

    def on_train_begin(self, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = None
        if self.append and self.path.is_file() and self.path.stat().st_size:
            with open(self.path, newline="") as handle:
                header = next(csv.reader(handle, delimiter=self.separator), None)
            self.keys = header[1:] if header else None
        elif not self.append:
            self.path.write_text("")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator, lineterminator="\n")
        if self.keys is None:
            self.keys = sorted(logs)
            writer.writerow(["epoch", *self.keys])
        writer.writerow([epoch, *(logs.get(k, "NA") for k in self.keys)])
        _append_line(self.path, buffer.getvalue())


class JSONLLogger(Callback):
    """Append one JSON object per epoch (``{"epoch": e, **logs}``; NaN and infinities become null)."""

    main_process_only = True  # in distributed training only rank 0 writes files

    def __init__(self, filename: str | os.PathLike, append: bool = True) -> None:
        super().__init__()
        self.path, self.append = Path(filename), append

    def on_train_begin(self, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.append:
            self.path.write_text("")

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch}
        for key, value in (logs or {}).items():
            value = float(value) if isinstance(value, (int, float, np.floating, np.integer)) else value
            record[key] = value if not (isinstance(value, float) and not math.isfinite(value)) else None
        _append_line(self.path, json.dumps(record, allow_nan=False) + "\n")


class TrainingStateCheckpoint(Callback):
    """After every epoch write the whole training state (weights, optimizer, epoch count, History) to
    ``path`` atomically; resume with :func:`grukit.train.load_training_state` and
    ``fit(..., initial_epoch=state.epoch, history=state.history)``."""

    main_process_only = True  # in distributed training only rank 0 writes files

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        history = {k: list(v) for k, v in self.history.history.items()} if self.history else {}
        for key, value in (logs or {}).items():
            history.setdefault(key, [None] * (len(self.history.epoch) if self.history else 0)).append(value)
        save_training_state(self.path, self.model, self.optimizer, epoch + 1, history)


def _format_logs(logs: dict) -> str:
    parts = []
    for key, value in logs.items():
        if isinstance(value, float):
            parts.append(f"{key}: {value:.4g}" if key == "learning_rate" else f"{key}: {value:.4f}")
        else:
            parts.append(f"{key}: {value}")
    return " - ".join(parts)


class ProgressLogger(Callback):
    """verbose=1: a rich progress bar per epoch when stdout is a terminal, else one line per epoch;
    verbose=2: one line per epoch always; verbose=0: silent (the loop then leaves it out)."""

    def __init__(self, verbose: int = 1, stream=None) -> None:
        super().__init__()
        self.verbose, self.stream = verbose, stream
        self.progress = None

    def _interactive(self) -> bool:
        stream = self.stream or sys.stdout
        return self.verbose == 1 and hasattr(stream, "isatty") and stream.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_label = f"Epoch {epoch + 1}/{self.params.get('epochs')}"
        if self._interactive():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[logs]}"),
                                     console=Console(file=self.stream or sys.stdout), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.epoch_label, total=self.params.get("steps"), logs="")

    def on_batch_end(self, batch, logs=None):
        if self.progress is not None:
            shown = {k: v for k, v in (logs or {}).items() if k not in ("batch", "size")}
            self.progress.update(self.task, completed=batch + 1, logs=_format_logs(shown))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_epoch_end(self, epoch, logs=None):
        self.close()
        print(f"{self.epoch_label} - {self.params.get('steps')} steps - {_format_logs(logs or {})}",
              file=self.stream or sys.stdout, flush=True)


class CallbackList:
    def __init__(self, callbacks, model, optimizer, history, params, metrics=()) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"callbacks must be grukit.train.Callback instances, got {type(callback).__name__}")
            callback.set_context(model, optimizer, history, params, metrics)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def close(self) -> None:
        for callback in self.callbacks:
            if isinstance(callback, ProgressLogger):
                callback.close()


__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "LearningRateScheduler",
           "CSVLogger", "JSONLLogger", "TrainingStateCheckpoint", "ProgressLogger", "CallbackList"]
