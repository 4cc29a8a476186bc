"""Checkpoints on disk: model weights and whole training states, written atomically.

Every file is written to a temporary file in the same directory, flushed to disk, and moved over the
target with ``os.replace``: a crash leaves either the old file or the new one, never half of one.

A training state is one safetensors file: the model's ``state_dict`` under ``model/<key>``, the
optimizer's tensors under ``optimizer/<param index>/<name>``, and in the metadata (JSON) the epoch
count, the History, the optimizer's ``param_groups`` and its non-tensor state. Loading checks the
file whole before touching the model or the optimizer, so a truncated or foreign file raises
:class:`grukit.errors.DataError` and changes nothing.

Example::

    save_training_state("run/state.safetensors", model, optimizer, epoch=2, history=history.history)
    state = load_training_state("run/state.safetensors", model, optimizer)
    fit(model, x, y, ..., optimizer=optimizer, initial_epoch=state.epoch, epochs=3, history=state.history)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from ..data._files import atomic_write_bytes  # one atomic write for every file grukit saves
from ..errors import DataError

FORMAT = "grukit.training_state"
FORMAT_VERSION = 1


def _own_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def save_weights(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """The model's state_dict as a safetensors file, atomically."""
    return atomic_write_bytes(path, safetensors_save(_own_tensors(model.state_dict()),
                                                     metadata={"format": "grukit.weights"}))


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        tensors = safetensors_load(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_size]).get("__metadata__", {}) or {}
    except Exception as error:
        raise DataError(f"{what} {str(path)!r} is truncated or not a safetensors file ({error}); use an earlier "
                        "checkpoint or retrain") from error
    return tensors, metadata


def load_weights(path: str | os.PathLike, model: torch.nn.Module) -> None:
    tensors, _ = _read_safetensors(Path(path), "weights file")
    load_model_state(model, tensors, path)


_REBUILD = "load it into the model it was saved from (build the model with the same layers first)"


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path, fix: str = _REBUILD) -> None:
    """model.load_state_dict(tensors), after checking that the names and shapes fit: a DataError naming
    ``path`` (where the tensors came from) and ``fix`` rather than torch's size-mismatch RuntimeError."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        raise DataError(f"{str(path)!r} does not fit this model: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}, wrong shapes {wrong[:5]}; {fix}")
    model.load_state_dict(tensors)


@dataclass
class TrainingState:
    """What :func:`load_training_state` returns: the number of completed epochs and the History."""

    epoch: int
    history: dict[str, list] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _json_value(value):
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        return {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_json_value(v) for v in value]}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_training_state(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        epoch: int, history: dict[str, list] | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write model weights, optimizer state, the number of completed epochs and the History atomically."""
    tensors = {f"model/{k}": v for k, v in _own_tensors(model.state_dict()).items()}
    optimizer_meta: dict[str, Any] | None = None
    if optimizer is not None:
        state_dict = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state_dict["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{index}/{name}"] = value.detach().to("cpu").contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        groups = []
        for group_index, group in enumerate(state_dict["param_groups"]):
            plain = {}
            for name, value in group.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer_group/{group_index}/{name}"] = value.detach().to("cpu").contiguous().clone()
                    plain[name] = {"__tensor__": f"optimizer_group/{group_index}/{name}"}
                else:
                    plain[name] = value
            groups.append(plain)
        optimizer_meta = {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars,
                          "indices": sorted(str(i) for i in state_dict["state"])}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "epoch": str(int(epoch)),
                "history": json.dumps(_json_value(history or {})),
                "optimizer": json.dumps(_json_value(optimizer_meta)),
                "extra": json.dumps(_json_value(extra or {}))}
    return atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def load_training_state(path: str | os.PathLike, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer | None = None) -> TrainingState:
    """Restore model weights and optimizer state in place; return the epoch count and the History."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path, "training state")
    if metadata.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a grukit training state (format {metadata.get('format')!r}); "
                        "for plain weights use load_weights")
    try:
        epoch = int(metadata["epoch"])
        history = _from_json(json.loads(metadata["history"]))
        optimizer_meta = _from_json(json.loads(metadata["optimizer"]))
        extra = _from_json(json.loads(metadata.get("extra", "{}")))
    except (KeyError, ValueError) as error:
        raise DataError(f"training state {str(path)!r} has damaged metadata ({error}); use an earlier "
                        "checkpoint") from error
    model_tensors = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optimizer_state = None
    if optimizer is not None:
        if optimizer_meta is None:
            raise DataError(f"training state {str(path)!r} holds no optimizer state; pass optimizer=None")
        if optimizer_meta["class"] != type(optimizer).__name__:
            raise DataError(f"training state {str(path)!r} holds {optimizer_meta['class']} state, but the optimizer "
                            f"is {type(optimizer).__name__}; resume with the same optimizer")
        state: dict[int, dict[str, Any]] = {int(i): {} for i in optimizer_meta["indices"]}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state[int(index)][name] = value
        for index, values in optimizer_meta["scalars"].items():
            state[int(index)].update(values)
        groups = []
        for group in optimizer_meta["param_groups"]:
            groups.append({name: tensors[value["__tensor__"]] if isinstance(value, dict) and "__tensor__" in value
                           else value for name, value in group.items()})
        current = optimizer.state_dict()["param_groups"]
        if [len(g["params"]) for g in current] != [len(g["params"]) for g in groups]:
            raise DataError(f"training state {str(path)!r} was saved for an optimizer over a different set of "
                            "parameters; build the same model and optimizer before resuming")
        optimizer_state = {"state": state, "param_groups": groups}
    load_model_state(model, model_tensors, path)  # checks shapes before changing anything
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return TrainingState(epoch=epoch, history=history, extra=extra)


__all__ = ["atomic_write_bytes", "save_weights", "load_weights", "save_training_state", "load_training_state",
           "load_model_state", "TrainingState"]
