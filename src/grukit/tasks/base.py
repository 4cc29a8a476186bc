"""What every task object shares: the ``cell=`` name of its recurrent layer and saving to a folder.

A task (``Forecaster`` here; text or sequence classifiers later) wraps a
:class:`grukit.models.Sequential` with the data handling the task needs (scalers, vocabularies,
windowing). Its folder holds the model's own files, written by ``Sequential.save``
(``config.json`` + ``model.safetensors``), and ``task.json``: the task's class, its config and
its fitted state (a scaler, a vocabulary, ...). ``task.json`` is written last and atomically, so a
folder without it is an incomplete save and loading it raises DataError.

A subclass defines ``config`` (a dataclass with ``to_dict``/``from_dict``), ``state_dict()``
(JSON-ready fitted state) and ``load_state(state)``; ``save``/``load`` come from here. Configs
derive from :class:`ConfigRecord`, which checks every config's keywords (a misspelled one is a
:class:`ConfigKeywordError` naming the closest valid one) and its ``seed`` (an int in [0, 2**32)).

``task.json`` records the sha256 of the weights saved with it; loading checks that the task file,
``config.json`` and ``model.safetensors`` belong to one save (the recurrent layer the config
describes, and that checksum), so files of different runs are never combined silently.

Example::

    layer = recurrent_layer("mgu", 32)          # grukit.layers.MGU(32)
    forecaster.save("runs/airline")             # config.json, model.safetensors, task.json
    Forecaster.load("runs/airline")             # predicts identically
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any

from grukit import layers
from grukit.data._files import atomic_write_text
from grukit.errors import ConfigError, ConfigKeywordError, DataError, GrukitError
from grukit.models import CONFIG_FILE, WEIGHTS_FILE, Sequential, weights_checksum
from grukit.models import load as load_model

TASK_FILE = "task.json"
TASK_FORMAT_VERSION = 1
TASK_KEYS = ("task", "format_version", "config", "state")

# numpy's legacy seeding and scikit-learn's random_state take [0, 2**32); torch takes more, so the
# narrowest range is checked once here rather than failing deep inside fit
SEED_LIMIT = 2 ** 32


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


def check_seed(seed, where: str, allow_none: bool = False) -> int | None:
    """``seed`` as an int in [0, 2**32) (None passes where ``allow_none``); else ConfigError naming ``where``."""
    if seed is None and allow_none:
        return None
    # a plain int only: a numpy integer would stop task.json from being written (json cannot encode it)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        accepted = "an int in [0, 2**32 - 1] or None (fresh entropy)" if allow_none else "an int in [0, 2**32 - 1]"
        raise ConfigError(f"{where}: seed={seed!r} is not valid; expected {accepted} (= [0, {SEED_LIMIT - 1}], "
                          "the range numpy and scikit-learn accept), e.g. seed=0; int(seed) converts a numpy integer")
    return seed


def unknown_names_message(owner: str, unknown: list[str], valid: list[str], what: str = "keyword") -> str:
    """"owner: unknown keyword 'lookbak' (did you mean 'lookback'?); valid keywords: ..."."""
    names = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), valid, n=1)
        names.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(names) > 1 else ""
    return f"{owner}: unknown {what}{plural} {', '.join(names)}; valid {what}s: {', '.join(valid)}"


class ConfigRecord:
    """Base of the tasks' config dataclasses: ``to_dict`` / ``from_dict``, and the checks every config
    shares (its keywords, its ``seed``), made before the dataclass's ``__init__`` runs."""

    def __new__(cls, *args, **kwargs):
        # the dataclass's own TypeError for a misspelled keyword names neither the closest valid one nor the rest
        if dataclasses.is_dataclass(cls):
            valid = [f.name for f in dataclasses.fields(cls) if f.init]
            unknown = [name for name in kwargs if name not in valid]
            if unknown:
                raise ConfigKeywordError(unknown_names_message(cls.__name__, unknown, valid))
        if "seed" in kwargs:
            check_seed(kwargs["seed"], cls.__name__)
        return super().__new__(cls)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.from_dict: expected a dict of options, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [name for name in data if name not in valid]
        if unknown:
            raise ConfigKeywordError(unknown_names_message(cls.__name__, unknown, valid, "field")
                                     + " (saved by a newer grukit, or edited?)")
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
        each file atomically, ``task.json`` last (with the weights' sha256, so that load can tell
        whether the files belong together)."""
        model = self.require_fitted("save")
        directory = Path(model.save(directory))
        record = {"task": type(self).__name__, "format_version": TASK_FORMAT_VERSION,
                  "config": self.config.to_dict(), "state": self.state_dict(),
                  "weights_sha256": weights_checksum(directory)}
        atomic_write_text(directory / TASK_FILE, json.dumps(record, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Task":
        """Restore a task written by :meth:`save`; it predicts identically. A damaged or edited
        ``task.json``, or one beside the model of another save, raises DataError naming the files."""
        directory = Path(directory)
        path = directory / TASK_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing; {directory} is not a complete saved {cls.__name__} (save one "
                            "with .save(directory); an interrupted save leaves no task.json)")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path} is not valid JSON ({error}); the file is corrupt: save the task again") from error
        again = f"fit the {cls.__name__} again and save it with .save(directory), or restore the folder from a backup"
        if not isinstance(record, dict) or not set(TASK_KEYS) <= set(record):
            found = sorted(record) if isinstance(record, dict) else f"a JSON {type(record).__name__}"
            raise DataError(f"{path} is not a saved task: expected a JSON object with the keys {list(TASK_KEYS)}, "
                            f"found {found}; the file is damaged or was edited: {again}")
        kind = record["task"]
        if kind != cls.__name__:
            if not _is_task_name(kind):
                raise DataError(f"{path} holds task {kind!r}, which is not a grukit task: the file is damaged or "
                                f"was edited; {again}")
            raise DataError(f"{path} holds a {kind!r}, not a {cls.__name__}; load it with {kind}.load(directory)")
        if record["format_version"] != TASK_FORMAT_VERSION:
            raise DataError(f"{path} has format_version {record['format_version']!r}; this grukit reads version "
                            f"{TASK_FORMAT_VERSION} (a newer grukit wrote it: upgrade grukit, or {again})")
        try:
            task = cls.from_config(record["config"])
        except (GrukitError, TypeError, ValueError, KeyError, AttributeError) as error:
            raise DataError(f"{path}: its 'config' is not a valid {cls.__name__} config ({error}); the file was "
                            f"edited, damaged or written by another grukit version: {again}") from error
        task.model = load_model(directory)   # names both files where the weights do not fit the config
        _check_model_matches(task, path, directory, record.get("weights_sha256"), again)
        try:
            task.load_state(record["state"])
        except (GrukitError, TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
            raise DataError(f"{path}: its 'state' is not what a fitted {cls.__name__} saves ({type(error).__name__}: "
                            f"{error}); the file was edited, damaged or written by another grukit version: "
                            f"{again}") from error
        return task


def _is_task_name(kind) -> bool:
    """Whether ``kind`` names a task class of grukit.tasks (imported on first use)."""
    import grukit.tasks as tasks

    if not isinstance(kind, str) or kind not in getattr(tasks, "__all__", ()):
        return False
    found = getattr(tasks, kind)
    return isinstance(found, type) and issubclass(found, Task)


def _describe_recurrent(model) -> list[str]:
    """"GRU(8)", "Bidirectional(LSTM(16))", ... for each recurrent layer of ``model``'s stack."""
    found = []
    for layer in getattr(model, "layers", ()):
        inner = layer.layer if isinstance(layer, layers.Bidirectional) else layer
        if isinstance(inner, layers.Recurrent):
            name = f"{type(inner).__name__}({inner.units})"
            found.append(f"Bidirectional({name})" if inner is not layer else name)
    return found


def _check_model_matches(task: Task, path: Path, directory: Path, weights_sha256, again: str) -> None:
    """DataError unless the model loaded from ``directory`` is the one ``path`` (task.json) was saved with:
    the recurrent layers its config describes, and (files saved since the record has it) the same weights."""
    config = task.config
    cell, units = getattr(config, "cell", None), getattr(config, "units", None)
    if cell is not None and units is not None:
        expected = f"{cell_class(cell).__name__}({units})"
        if getattr(config, "bidirectional", False):
            expected = f"Bidirectional({expected})"
        found = _describe_recurrent(task.model)
        if not found or any(name != expected for name in found):
            raise DataError(f"{path} describes a {type(task).__name__} with {expected}, but the model in "
                            f"{directory / CONFIG_FILE} and {directory / WEIGHTS_FILE} has "
                            f"{', '.join(found) or 'no recurrent layer'}: the task file and the model come from "
                            f"different saves; put the three files of one save together, or {again}")
    if weights_sha256 is not None and weights_sha256 != weights_checksum(directory):
        raise DataError(f"{path} was saved with other weights than {directory / WEIGHTS_FILE} (the sha256 it records "
                        "differs): the task file (its scaler, vocabulary, classes ...) and the model come from "
                        f"different saves; put the three files of one save together, or {again}")


__all__ = ["Task", "ConfigRecord", "ConfigKeywordError", "CELLS", "cell_class", "recurrent_layer", "check_seed",
           "TASK_FILE", "SEED_LIMIT"]
