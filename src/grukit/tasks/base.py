"""What every task object shares: the ``cell=`` name of its recurrent layer and saving to a folder.

A task (``Forecaster`` here; text or sequence classifiers later) wraps a
:class:`grukit.models.Sequential` with the data handling the task needs (scalers, vocabularies,
windowing). Its folder holds the model's own files, written by ``Sequential.save``
(``config.json`` + ``model.safetensors``), and ``task.json``: the task's class, its config and
its fitted state (a scaler, a vocabulary, ...). ``task.json`` is written last and atomically, so a
folder without it is an incomplete save and loading it raises DataError.

A subclass defines ``config`` (a dataclass with ``to_dict``/``from_dict``), ``state_dict()``
(JSON-ready fitted state) and ``load_state(state)``; ``save``/``load`` come from here.

Example::

    layer = recurrent_layer("mgu", 32)          # grukit.layers.MGU(32)
    forecaster.save("runs/airline")             # config.json, model.safetensors, task.json
    Forecaster.load("runs/airline")             # predicts identically
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from grukit import layers
from grukit.data._files import atomic_write_text
from grukit.errors import ConfigError, DataError
from grukit.models import Sequential
from grukit.models import load as load_model

TASK_FILE = "task.json"
TASK_FORMAT_VERSION = 1

# cell= names (lower case) -> the Keras-style layer class
CELLS: dict[str, type[layers.Recurrent]] = {
    "gru": layers.GRU, "lstm": layers.LSTM, "rnn": layers.SimpleRNN, "simplernn": layers.SimpleRNN,
    "mgu": layers.MGU, "mingru": layers.MinGRU,
}


def cell_class(cell: str) -> type[layers.Recurrent]:
    """The grukit.layers class for a ``cell=`` name: "gru", "lstm", "rnn" (or "simplernn"), "mgu", "mingru"."""
    key = str(cell).lower().replace("_", "").replace("-", "")
    if key not in CELLS:
        raise ConfigError(f"cell={cell!r} is not known; use one of 'gru', 'lstm', 'rnn', 'mgu', 'mingru'")
    return CELLS[key]


def recurrent_layer(cell: str, units: int, **options) -> layers.Recurrent:
    """``cell_class(cell)(units, **options)``, e.g. ``recurrent_layer("gru", 64)`` is ``GRU(64)``."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ConfigError(f"units= must be an int >= 1 (the recurrent layer's width), got {units!r}")
    return cell_class(cell)(units, **options)


class ConfigRecord:
    """``to_dict`` / ``from_dict`` of a task's config dataclass (unknown fields are a ConfigError)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)} (saved by a "
                              "newer grukit?)")
        return cls(**data)


class Task:
    """Base of the task objects: holds ``self.model`` (a Sequential, None before fit) and saves it
    with the task's config and state."""

    config: Any
    model: Sequential | None

    # subclasses implement these
    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Task":
        raise NotImplementedError

    # machinery
    def require_fitted(self, what: str) -> Sequential:
        if self.model is None:
            raise ConfigError(f"{type(self).__name__}.{what}() before fit(); call fit(...) first or load a "
                              f"saved one with {type(self).__name__}.load(directory)")
        return self.model

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the model (``config.json``, ``model.safetensors``) and ``task.json`` into ``directory``,
        each file atomically, ``task.json`` last."""
        model = self.require_fitted("save")
        directory = Path(model.save(directory))
        record = {"task": type(self).__name__, "format_version": TASK_FORMAT_VERSION,
                  "config": self.config.to_dict(), "state": self.state_dict()}
        atomic_write_text(directory / TASK_FILE, json.dumps(record, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Task":
        """Restore a task written by :meth:`save`; it predicts identically."""
        directory = Path(directory)
        path = directory / TASK_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing; {directory} is not a complete saved {cls.__name__} (save one "
                            "with .save(directory); an interrupted save leaves no task.json)")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path} is not valid JSON ({error}); the file is corrupt: save the task again") from error
        if record.get("task") != cls.__name__:
            raise DataError(f"{path} holds a {record.get('task')!r}, not a {cls.__name__}; load it with "
                            f"{record.get('task')}.load(directory)")
        if record.get("format_version") != TASK_FORMAT_VERSION:
            raise DataError(f"{path} has format_version {record.get('format_version')!r}; this grukit reads "
                            f"version {TASK_FORMAT_VERSION}")
        task = cls.from_config(record["config"])
        task.model = load_model(directory)
        task.load_state(record["state"])
        return task


__all__ = ["Task", "CELLS", "cell_class", "recurrent_layer", "TASK_FILE"]
