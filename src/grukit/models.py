"""Keras-style models: ``Sequential`` and the functional ``Model``, with compile / fit / evaluate /
predict / summary / save.

A tutorial's model is written as it is written there::

    model = Sequential([Input(shape=(200,)), Embedding(10_000, 128), GRU(128), Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=3, batch_size=32, validation_split=0.2)

or, for graphs that are not a stack (several inputs, shared layers), functionally::

    text, numbers = Input((40,)), Input((40, 3))
    embedded = Embedding(1000, 16)(text)
    joined = Concatenate()([embedded, numbers])                          # (None, 40, 19)
    features = Bidirectional(GRU(8, return_sequences=True))(joined)
    model = Model(inputs=[text, numbers], outputs=Dense(1)(Bidirectional(GRU(8))(features)))
    model(ids, series)                                                   # one tensor per Input

The model is a torch module (``model(x)`` returns the predictions, masks flow between layers
inside), so it also trains in a plain PyTorch loop; fit and friends delegate to grukit.train.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .data._files import atomic_write_bytes, atomic_write_text
from .errors import ConfigError, DataError, ShapeError
from .layers import (Bidirectional, Embedding, Input, Layer, Recurrent, SymbolicTensor, deserialize,
                     serialize)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def _snake(name: str) -> str:
    """Keras's default layer names: SimpleRNN -> simple_rnn, GRU -> gru, TimeDistributed -> time_distributed."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Model(nn.Module):
    """What Sequential and Model share: parameter counts, the summary table, training (delegated
    to grukit.train) and saving."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.compiled: dict[str, Any] | None = None
        self.stop_training = False

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _render_summary(self, rows: list[tuple[str, ...]], print_fn,
                        headers: tuple[str, ...] = ("Layer (type)", "Output Shape", "Param #")) -> str:
        """Keras's table: one row per layer, the parameter count right-aligned in the third column."""
        widths = [max(len(header), *(len(row[i]) for row in rows)) + 2 for i, header in enumerate(headers)]
        rule = "─" * sum(widths)

        def line(cells):
            return "".join(cell.rjust(w - 2) + "  " if i == 2 else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(cells, widths)))

        lines = [f'Model: "{self.name}"', rule, line(headers), rule] + [line(row) for row in rows]
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = self.count_params()
        lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(line.rstrip() for line in lines)
        print_fn(text)
        return text

    # -- training (delegated to grukit.train) ----------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics: Iterable[str] | None = None) -> None:
        """Choose the optimizer (name or spec), loss (name or callable) and metrics (names)."""
        from .train import losses, optimizers  # noqa: F401  (train sits left of models)
        if loss is None:
            raise ConfigError("compile(loss=...) is required, e.g. 'binary_crossentropy' or 'mse'")
        self.compiled = {"optimizer": optimizers.get_optimizer(optimizer), "loss": loss,
                         "metrics": list(metrics or [])}
        self._optimizer = None

    def _require_compiled(self, what: str) -> dict[str, Any]:
        if self.compiled is None:
            raise ConfigError(f"call model.compile(optimizer=..., loss=...) before {what}()")
        return self.compiled

    def _torch_optimizer(self):
        if getattr(self, "_optimizer", None) is None:
            self._optimizer = self.compiled["optimizer"].create(
                [p for p in self.parameters() if p.requires_grad])
        return self._optimizer

    def _prepare(self, x) -> None:
        if not self.built:
            first = x[0] if isinstance(x, (tuple, list)) else x
            self.build((None, *np.shape(first)[1:]))

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, **options):
        """Train; options as grukit.train.fit (validation_split, validation_data, shuffle, class_weight,
        callbacks, verbose, seed, initial_epoch, bucket_by_length, ...). Returns a History."""
        from .train import loop
        compiled = self._require_compiled("fit")
        self._prepare(x)
        return loop.fit(self, x, y, loss=compiled["loss"], optimizer=self._torch_optimizer(),
                        metrics=compiled["metrics"], epochs=epochs, batch_size=batch_size, **options)

    def evaluate(self, x, y, batch_size: int = 32, **options) -> dict[str, float]:
        from .train import loop
        compiled = self._require_compiled("evaluate")
        self._prepare(x)
        return loop.evaluate(self, x, y, loss=compiled["loss"], metrics=compiled["metrics"],
                             batch_size=batch_size, **options)

    def predict(self, x, batch_size: int = 32, **options):
        """Keras's predict: an array, or for a model ending in a ``return_state=True`` layer the list
        ``[output, *states]``."""
        from .train import loop
        self._prepare(x)
        if self._returns_state() and "forward" not in options:
            options["forward"] = lambda model, xs: list(model(*xs))
        return loop.predict(self, x, batch_size=batch_size, **options)

    def _returns_state(self) -> bool:
        return False

    # -- saving ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``, each atomically; the config
        records the weights' sha256 so a truncated or tampered weights file is detected on load."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        weights = save(state)
        atomic_write_bytes(directory / WEIGHTS_FILE, weights)
        config = {**self.get_config(), "weights_sha256": hashlib.sha256(weights).hexdigest()}
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))
        return directory



def _fits(shape: tuple, expected: tuple) -> bool:
    """shape matches expected, where a None (Input(shape=(None, ...)): variable length) takes any size."""
    return len(shape) == len(expected) and all(e is None or e == d for d, e in zip(shape, expected))


class Sequential(_Model):
    """A linear stack of grukit.layers; ``Input(shape=...)`` first (or call ``build``)."""

    def __init__(self, layers: Iterable[Layer | Input] | None = None, name: str = "sequential") -> None:
        super().__init__(name)
        self.input_spec: Input | None = None
        self.stack = nn.ModuleList()
        for layer in layers or ():
            self.add(layer)

    @property
    def layers(self) -> list[Layer]:
        return list(self.stack)

    def add(self, layer: Layer | Input) -> None:
        if isinstance(layer, Input):
            if len(self.stack) or self.input_spec is not None:
                raise ConfigError("Input(...) must come first in a Sequential model, and only once")
            self.input_spec = layer
            return
        if not isinstance(layer, Layer):
            raise ConfigError(f"Sequential takes grukit.layers layers, got {type(layer).__name__}; wrap torch "
                              "modules in your own torch.nn.Module instead")
        if layer.name is None:
            layer.name = _unique_name(_snake(type(layer).__name__), {existing.name for existing in self.stack})
        self.stack.append(layer)
        if self.input_spec is not None:  # as in Keras: with a known input shape, build as layers arrive
            self.build()

    # -- building ------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return bool(self.stack) and all(layer.built for layer in self.stack)

    def build(self, input_shape: tuple | None = None) -> None:
        """Create every layer's weights for inputs of ``input_shape`` (batch dimension first, may be None)."""
        if input_shape is None:
            if self.input_spec is None:
                raise ConfigError("the model does not know its input shape yet; start it with "
                                  "Input(shape=...) or call model.build((None, time_steps, features))")
            input_shape = (None, *self.input_spec.shape)
        if not self.stack:
            raise ConfigError("the Sequential model has no layers; add some first")
        shape = tuple(input_shape)
        for index, layer in enumerate(self.stack):
            if isinstance(layer, Recurrent) and layer.return_state and index < len(self.stack) - 1:
                raise ConfigError(f"layer {layer.name!r} has return_state=True inside a Sequential model; "
                                  "only the last layer may return its states")
            try:
                shape = layer.ensure_built(shape)
            except ShapeError as error:
                raise ShapeError(f"layer {layer.name!r} ({type(layer).__name__}): {error}") from error

    def _returns_state(self) -> bool:
        last = self.stack[-1] if self.stack else None
        last = last.layer if isinstance(last, Bidirectional) else last
        return isinstance(last, Recurrent) and last.return_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.built:
            self.build((None, *x.shape[1:]))
        expected = self.stack[0].input_shape
        if not _fits(tuple(x.shape[1:]), tuple(expected[1:])) and not isinstance(self.stack[0], Recurrent):
            raise ShapeError(f"model {self.name!r} was built for inputs of shape {expected}, got "
                             f"{tuple(x.shape)}; pad or reshape the data to the same shape")
        mask, index = None, 0
        while index < len(self.stack):
            layer = self.stack[index]
            following = self.stack[index + 1] if index + 1 < len(self.stack) else None
            if _reads_embedded_tokens(layer, following):
                x, mask = following.call_embedded(x, layer, mask)
                index += 2
            else:
                x, mask = layer(x, mask)
                index += 1
        return x

    def summary(self, print_fn=print) -> str:
        """Print (and return) layers, output shapes and parameter counts, like Keras's summary()."""
        if not self.built:
            self.build()
        rows = [(f"{layer.name} ({type(layer).__name__})", str(layer.output_shape), f"{layer.count_params():,}")
                for layer in self.stack]
        return self._render_summary(rows, print_fn)

    # -- saving ----------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        if not self.built:
            self.build()
        return {"format_version": FORMAT_VERSION, "class_name": "Sequential", "name": self.name,
                "input_shape": list(self.stack[0].input_shape[1:]),
                "input": self.input_spec.get_config() if self.input_spec else None,
                "layers": [serialize(layer) for layer in self.stack]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Sequential":
        layers: list[Any] = []
        if config.get("input"):
            spec = config["input"]
            layers.append(Input(tuple(spec["shape"]), spec.get("dtype", "float32"), spec.get("name")))
        layers += [deserialize(spec) for spec in config["layers"]]
        model = cls(layers, name=config.get("name", "sequential"))
        model.build((None, *config["input_shape"]))
        return model


class Model(_Model):
    """A functional model: the layers between ``inputs`` and ``outputs``, as in ``keras.Model``.

    inputs: one ``Input`` or a list; outputs: the symbolic tensor (or list) that calling layers on
    them returned. ``model(x1, x2, ...)`` takes one tensor per Input, in order, with shapes
    ``(N, *Input.shape)``, and returns one tensor per output (a tuple if several). Masks flow
    along the edges as in Sequential; ``Concatenate`` joins them. Layers called more than once
    share their weights. Example::

        text, numbers = Input((40,)), Input((40, 3))
        joined = Concatenate()([Embedding(1000, 16)(text), numbers])
        model = Model([text, numbers], Dense(1)(Bidirectional(GRU(8))(joined)))
    """

    def __init__(self, inputs, outputs, name: str = "functional") -> None:
        super().__init__(name)
        self.inputs: list[Input] = _as_list(inputs)
        self.outputs: list[SymbolicTensor] = _as_list(outputs)
        if not self.inputs or not all(isinstance(t, Input) for t in self.inputs):
            raise ConfigError("Model(inputs=...) takes Input(shape=...) objects (one or a list), got "
                              f"{[type(t).__name__ for t in self.inputs]}")
        if not self.outputs or not all(isinstance(t, SymbolicTensor) for t in self.outputs):
            raise ConfigError("Model(outputs=...) takes what calling layers on the inputs returned, e.g. "
                              "outputs=Dense(1)(GRU(8)(inputs)); got "
                              f"{[type(t).__name__ for t in self.outputs]}")
        self.nodes = _graph_order(self.inputs, self.outputs)
        # recurrent node -> the Embedding node it alone reads: run together (call_embedded)
        self.embedded_inputs = _embedded_inputs(self.nodes, self.outputs)
        self.stack = nn.ModuleList()
        taken: set = set()
        for spec in self.inputs:
            spec.name = spec.name or _unique_name("input_layer", taken)
            taken.add(spec.name)
        for node in self.nodes:
            if not any(layer is node.layer for layer in self.stack):
                node.layer.name = node.layer.name or _unique_name(_snake(type(node.layer).__name__), taken)
                taken.add(node.layer.name)
                self.stack.append(node.layer)

    @property
    def layers(self) -> list[Layer]:
        return list(self.stack)

    @property
    def built(self) -> bool:
        return True  # every layer was built when it was called on its symbolic input

    def forward(self, *xs: torch.Tensor):
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        names = [spec.name for spec in self.inputs]
        if len(xs) != len(self.inputs):
            raise ShapeError(f"model {self.name!r} takes {len(self.inputs)} inputs {names}, got {len(xs)} "
                             "tensors; pass one tensor per Input, in the order of Model(inputs=...)")
        values: dict[int, tuple] = {}
        for spec, x in zip(self.inputs, xs):
            expected = spec.shape
            if x.dim() != len(expected) + 1 or any(e is not None and e != g for e, g in zip(expected, x.shape[1:])):
                raise ShapeError(f"model {self.name!r}: input {spec.name!r} expects shape (batch, *{expected}), got "
                                 f"{tuple(x.shape)}; pad or reshape the data")
            values[id(spec)] = (x, None)
        skipped = {id(e) for e in self.embedded_inputs.values()}
        for node in self.nodes:
            if id(node) in skipped:
                continue
            embedded = self.embedded_inputs.get(id(node))
            if embedded is not None:
                tokens, mask = values[id(embedded.inbound[0])]
                values[id(node)] = node.layer.call_embedded(tokens, embedded.layer, mask)
                continue
            args = [values[id(parent)] for parent in node.inbound]
            if node.many:
                values[id(node)] = node.layer([a for a, _ in args], [m for _, m in args])
            else:
                values[id(node)] = node.layer(*args[0])
        results = tuple(values[id(output)][0] for output in self.outputs)
        return results[0] if len(results) == 1 else results

    def _source_name(self, tensor: SymbolicTensor) -> str:
        return tensor.name if isinstance(tensor, Input) else tensor.layer.name

    def summary(self, print_fn=print) -> str:
        """Keras's functional summary: the InputLayers, then each layer with what it is connected to."""
        rows = [(f"{spec.name} (InputLayer)", str(spec.batch_shape), "0", "-") for spec in self.inputs]
        shown: list[Layer] = []
        for node in self.nodes:
            if any(layer is node.layer for layer in shown):
                continue
            shown.append(node.layer)
            rows.append((f"{node.layer.name} ({type(node.layer).__name__})", str(node.batch_shape),
                         f"{node.layer.count_params():,}", ", ".join(self._source_name(t) for t in node.inbound)))
        return self._render_summary(rows, print_fn, ("Layer (type)", "Output Shape", "Param #", "Connected to"))

    # -- saving ----------------------------------------------------------------------------
    def _reference(self, tensor: SymbolicTensor) -> list:
        """How the config names a tensor: ["input", i] or ["node", j]."""
        for i, spec in enumerate(self.inputs):
            if tensor is spec:
                return ["input", i]
        return ["node", next(j for j, node in enumerate(self.nodes) if node is tensor)]

    def get_config(self) -> dict[str, Any]:
        layers = self.layers
        return {"format_version": FORMAT_VERSION, "class_name": "Model", "name": self.name,
                "inputs": [spec.get_config() for spec in self.inputs],
                "layers": [serialize(layer) for layer in layers],
                "nodes": [{"layer": next(i for i, layer in enumerate(layers) if layer is node.layer),
                           "inbound": [self._reference(t) for t in node.inbound], "many": node.many}
                          for node in self.nodes],
                "outputs": [self._reference(t) for t in self.outputs]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Model":
        inputs = [Input(tuple(spec["shape"]), spec.get("dtype", "float32"), spec.get("name"))
                  for spec in config["inputs"]]
        layers = [deserialize(spec) for spec in config["layers"]]
        nodes: list[SymbolicTensor] = []

        def resolve(reference):
            kind, index = reference
            return inputs[index] if kind == "input" else nodes[index]

        for node in config["nodes"]:
            inbound = [resolve(reference) for reference in node["inbound"]]
            nodes.append(layers[node["layer"]](inbound if node["many"] else inbound[0]))
        outputs = [resolve(reference) for reference in config["outputs"]]
        return cls(inputs, outputs if len(outputs) > 1 else outputs[0], name=config.get("name", "functional"))

def load(directory: str | os.PathLike) -> "Sequential | Model":
    """Restore a model written by ``Sequential.save`` or ``Model.save``; it predicts identically."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError(f"{path} is missing; {directory} is not a complete grukit model directory "
                            "(save one with model.save(directory))")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{config_path} is not valid JSON ({error}); the file is corrupt, restore it from a "
                        "backup or save the model again") from error
    expected = config.get("weights_sha256")
    if expected and _sha256(weights_path) != expected:
        raise DataError(f"{weights_path} does not match the checksum recorded in {config_path}: the weights "
                        "file was truncated or changed after saving; restore it or save the model again")
    model = (Model if config.get("class_name") == "Model" else Sequential).from_config(config)
    try:
        state = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"{weights_path} could not be read as safetensors ({error})") from error
    from .train.state import load_model_state   # (train sits left of models)

    load_model_state(model, state, weights_path,
                     fix=f"it does not belong with {config_path}: put the two files of one save together, or "
                         "save the model again")
    model.eval()
    return model


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _reads_embedded_tokens(layer: Layer, following: Layer | None) -> bool:
    """Whether ``following`` runs on ``layer``'s token ids directly (call_embedded): an Embedding
    feeding a recurrent layer, whose first projection then runs once per distinct token."""
    return isinstance(layer, Embedding) and isinstance(following, (Recurrent, Bidirectional))


def _embedded_inputs(nodes: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> dict[int, SymbolicTensor]:
    """id(recurrent node) -> its Embedding node, where that node is read by this one node only."""
    readers: dict[int, list[SymbolicTensor]] = {}
    for node in nodes:
        for parent in node.inbound:
            readers.setdefault(id(parent), []).append(node)
    pairs = {}
    for node in nodes:
        if node.many or len(node.inbound) != 1:
            continue
        parent = node.inbound[0]
        if (parent.layer is not None and _reads_embedded_tokens(parent.layer, node.layer)
                and len(readers[id(parent)]) == 1 and not any(parent is out for out in outputs)):
            pairs[id(node)] = parent
    return pairs


def _graph_order(inputs: list[Input], outputs: list[SymbolicTensor]) -> list[SymbolicTensor]:
    """The layer outputs between inputs and outputs, each after everything it reads."""
    order: list[SymbolicTensor] = []
    done: set[int] = set()

    def visit(tensor: SymbolicTensor) -> None:
        if id(tensor) in done:
            return
        if tensor.layer is None:
            if not any(tensor is spec for spec in inputs):
                raise ConfigError("an output of the Model depends on an Input that is not in Model(inputs=...); "
                                  "list every Input the outputs are computed from")
        else:
            for parent in tensor.inbound:
                visit(parent)
            order.append(tensor)
        done.add(id(tensor))

    for output in outputs:
        visit(output)
    return order


def _unique_name(base: str, taken: set) -> str:
    """Keras's naming: base, base_1, base_2, ... whichever is free."""
    return base if base not in taken else next(
        f"{base}_{i}" for i in range(1, len(taken) + 2) if f"{base}_{i}" not in taken)


def weights_checksum(directory: str | os.PathLike) -> str:
    """The sha256 of a saved model's weights: the one its ``config.json`` records (written by save and
    checked against the file by :func:`load`), else, for a config saved before it had one, the file's."""
    directory = Path(directory)
    try:
        recorded = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded or _sha256(directory / WEIGHTS_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["Sequential", "Model", "load", "weights_checksum"]
