"""Keras 3 recurrent layers <-> grukit layers: weight layouts, live layers and saved files.

Keras stores weights input-major, ``kernel`` (H_in, G * H) and ``recurrent_kernel`` (H, G * H),
with the gate blocks side by side in columns; grukit stores them PyTorch-style, (G * H, H_in)
and (G * H, H), gate blocks in rows. Gate orders (grukit's letters, see
:data:`grukit.nn.cells.LAYOUTS`; Keras calls the GRU candidate ``h`` and the LSTM cell input ``c``):

==========  ===============  =====================================  ===================================
Keras       Keras columns    Keras bias                             grukit layer
==========  ===============  =====================================  ===================================
GRU         z, r, n          (2, 3H) [input; recurrent] if          GRU(reset_after=True), rows r, z, n,
                             reset_after=True                       bias_ih = bias[0], bias_hh = bias[1]
GRU         z, r, n          (3H,) if reset_after=False             GRU(reset_after=False), one ``bias``
LSTM        i, f, g, o       (4H,)                                  LSTM, bias_ih = bias, bias_hh = 0
SimpleRNN   h                (H,)                                   RNN(nonlinearity=tanh/relu),
                                                                    bias_ih = bias, bias_hh = 0
==========  ===============  =====================================  ===================================

Going back, the Keras bias of an LSTM or SimpleRNN is ``bias_ih + bias_hh``. ``use_bias=False``
is ``bias=False``. Every permutation goes through :func:`grukit.nn.convert.gates.reorder_gates`.

What carries over and what does not:

* Activations: GRU and LSTM carry ``activation`` and ``recurrent_activation`` both ways, for every
  name in :data:`grukit.nn.cells.ACTIVATIONS` (Keras 3's built-ins: tanh, sigmoid, hard_sigmoid,
  relu, ...); SimpleRNN ``"tanh"`` or ``"relu"`` (grukit's ``nonlinearity``). A custom function
  or another name raises ConfigError, because the same weights would compute a different function.
* ``dropout``, ``recurrent_dropout``, ``stateful``, ``unroll``, ``unit_forget_bias`` and the
  initializers change training or batching, not the function of the weights; they are ignored.
  ``return_sequences`` and ``return_state`` choose outputs: grukit always returns
  ``(output, h_n)``; Keras's last output is ``output[:, -1]`` (unmasked) or ``h_n[-1]``.
* ``Bidirectional(merge_mode="concat")`` is ``bidirectional=True``; grukit concatenates the two
  directions, so other merge modes raise ConfigError.
* Keras is batch-major, so layers come back with ``batch_first=True`` unless you pass
  ``batch_first=False``.

Masking (verified against Keras 3.15): a Keras mask that is True for the first ``lengths[i]`` steps
of sequence ``i`` (post-padding, e.g. ``Masking`` over zero padding) is grukit's ``lengths=``. The
valid outputs and the final states agree. At padded positions grukit outputs zeros, whereas a
unidirectional Keras layer (``zero_output_for_mask=False``, the default) repeats the last valid
output there; ``Bidirectional`` switches its layers to ``zero_output_for_mask=True`` and outputs
zeros like grukit. Masks with holes or pre-padding have no ``lengths=`` equivalent.

``go_backwards=True`` (verified against Keras 3.15): Keras runs the sequence from its last step to
its first and returns the output sequence in that processing order (not re-reversed). The grukit
layer from :func:`from_keras` is the same cell running forwards, so reproduce Keras with
``output, h_n = layer(x.flip(1))``: ``output`` equals Keras's sequence position by position and
``h_n`` its final state. With a post-padding mask, reverse each sequence inside its length instead of
flipping the whole batch, run with ``lengths=``, and note that Keras then puts
``T - lengths[i]`` zero outputs (the skipped padding, processed first) *before* the valid outputs. If
you want the backward half of a bidirectional network, use ``Bidirectional`` and ``bidirectional=True``,
which handle all of this. :func:`from_keras` on a go_backwards layer warns.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, DataError, ShapeError
from ..cells import ACTIVATIONS
from ..recurrent import GRU, LSTM, RNN, RecurrentLayer
from .gates import reorder_gates

#: Column gate order of each Keras layer, in grukit's gate letters.
KERAS_GATE_ORDERS: dict[str, str] = {"GRU": "zrn", "LSTM": "ifgo", "SimpleRNN": "h"}
_GATE_COUNTS = {len(order): kind for kind, order in KERAS_GATE_ORDERS.items()}
_SUPPORTED = ("keras.layers.GRU, LSTM, SimpleRNN (or keras.layers.RNN of a GRUCell, LSTMCell or "
              "SimpleRNNCell) or a Bidirectional wrapper of one")
_DETERMINED_BY_WEIGHTS = ("input_size", "hidden_size", "num_layers", "bidirectional", "bias",
                          "reset_after", "nonlinearity", "proj_size", "activation", "recurrent_activation")


@dataclass
class KerasRecurrentWeights:
    """One Keras recurrent layer as found in a live layer or a saved file.

    ``arrays`` holds one ``[kernel, recurrent_kernel(, bias)]`` list per direction, in Keras layout.
    Reading never fails for options grukit cannot compute (activations, merge modes):
    ``unsupported``/``check_supported()`` say why, and ``to_layer`` raises ConfigError.
    Fields that the source does not record are None: a bare ``.weights.h5`` has no config, so
    ``activation`` is unknown (``to_layer`` assumes tanh; pass ``nonlinearity="relu"`` for a relu
    SimpleRNN) and ``reset_after`` of a GRU without bias is unknown (assumed True, Keras's default).
    """

    name: str
    kind: str                      # "GRU", "LSTM" or "SimpleRNN"
    units: int
    input_size: int
    use_bias: bool
    reset_after: bool | None       # GRU only; None when it cannot be known
    activation: str | None         # None when not recorded
    recurrent_activation: str | None
    go_backwards: bool
    bidirectional: bool
    merge_mode: str | None
    arrays: list[list[np.ndarray]]
    config: dict | None = None     # the Keras layer config (the Bidirectional one if wrapped)
    source: str = ""               # where it came from, for messages
    path: str = ""                 # the h5 group of the layer, for files
    unsupported: str | None = None  # why grukit cannot compute this layer, if it cannot

    def check_supported(self) -> None:
        """Raise ConfigError if grukit's layer would not compute what this Keras layer computes."""
        if self.unsupported:
            raise ConfigError(self.unsupported)
        _check_activations(self.kind, self.name, self.activation, self.recurrent_activation)

    @property
    def num_parameters(self) -> int:
        return sum(int(a.size) for direction in self.arrays for a in direction)

    def to_layer(self, **layer_kwargs) -> RecurrentLayer:
        """The grukit layer with these weights (batch_first=True unless given)."""
        return _build_layer(self, layer_kwargs)


# -- Keras arrays <-> grukit parameters --------------------------------------------------------

def _grukit_mode(kind: str, reset_after: bool, nonlinearity: str) -> str:
    if kind == "GRU":
        return "GRU" if reset_after else "GRU_RESET_BEFORE"
    if kind == "LSTM":
        return "LSTM"
    return f"RNN_{nonlinearity.upper()}"


def keras_arrays_to_parameters(kind: str, arrays: list[np.ndarray], reset_after: bool = True
                               ) -> dict[str, np.ndarray]:
    """One direction's Keras ``[kernel, recurrent_kernel(, bias)]`` as grukit parameters
    ``{"weight_ih", "weight_hh", and "bias_ih"/"bias_hh" or "bias"}`` (numpy, grukit layout)."""
    keras_order = KERAS_GATE_ORDERS[kind]
    grukit_order = _grukit_gates(kind)
    kernel, recurrent = arrays[0], arrays[1]
    params = {"weight_ih": reorder_gates(np.asarray(kernel), keras_order, grukit_order, axis=1).T,
              "weight_hh": reorder_gates(np.asarray(recurrent), keras_order, grukit_order, axis=1).T}
    if len(arrays) > 2:
        bias = np.asarray(arrays[2])
        if kind == "GRU" and reset_after:
            params["bias_ih"] = reorder_gates(bias[0], keras_order, grukit_order)
            params["bias_hh"] = reorder_gates(bias[1], keras_order, grukit_order)
        elif kind == "GRU":
            params["bias"] = reorder_gates(bias, keras_order, grukit_order)
        else:  # Keras has one bias where torch has two redundant ones
            params["bias_ih"] = reorder_gates(bias, keras_order, grukit_order)
            params["bias_hh"] = np.zeros_like(params["bias_ih"])
    return params


def _grukit_gates(kind: str) -> str:
    from ..cells import LAYOUTS
    return "".join(LAYOUTS[_grukit_mode(kind, True, "tanh")].gates)


def _keras_kind(layer: RecurrentLayer) -> str:
    if layer.mode in ("GRU", "GRU_RESET_BEFORE"):
        return "GRU"
    if layer.mode == "LSTM":
        if layer.proj_size:
            raise ConfigError(f"LSTM(proj_size={layer.proj_size}) has no Keras equivalent: keras.layers.LSTM "
                              "has no output projection; use proj_size=0")
        return "LSTM"
    if layer.mode in ("RNN_TANH", "RNN_RELU"):
        return "SimpleRNN"
    raise ConfigError(f"{type(layer).__name__} (mode {layer.mode}) has no Keras layer: Keras 3 ships GRU, "
                      "LSTM and SimpleRNN only; export it to ONNX instead")


def keras_weights(layer: RecurrentLayer, layer_index: int = 0, direction: int = 0) -> list[np.ndarray]:
    """The Keras ``[kernel, recurrent_kernel(, bias)]`` of one layer and direction of a grukit layer,
    ready for ``keras_layer.set_weights(...)`` (direction 1 is a Bidirectional's ``backward_layer``).

    Example::

        gru = grukit.nn.GRU(8, 16, batch_first=True)
        keras.layers.GRU(16, return_sequences=True)  # build, then .set_weights(keras_weights(gru))
    """
    kind = _keras_kind(layer)
    if not 0 <= layer_index < layer.num_layers:
        raise ConfigError(f"keras_weights(layer_index={layer_index}): expected 0 <= layer_index < "
                          f"num_layers={layer.num_layers}")
    if direction not in range(layer.num_directions):
        raise ConfigError(f"keras_weights(direction={direction}): expected 0"
                          f"{' or 1' if layer.bidirectional else ' (the layer is unidirectional)'}")
    suffix = f"_l{layer_index}" + ("_reverse" if direction else "")

    def get(name: str) -> np.ndarray | None:
        param = getattr(layer, name + suffix, None)
        return None if param is None else param.detach().cpu().numpy()

    keras_order, grukit_order = KERAS_GATE_ORDERS[kind], _grukit_gates(kind)
    arrays = [reorder_gates(get("weight_ih").T, grukit_order, keras_order, axis=1),
              reorder_gates(get("weight_hh").T, grukit_order, keras_order, axis=1)]
    if layer.bias:
        if layer.mode == "GRU":
            arrays.append(np.stack([reorder_gates(get("bias_ih"), grukit_order, keras_order),
                                    reorder_gates(get("bias_hh"), grukit_order, keras_order)]))
        elif layer.mode == "GRU_RESET_BEFORE" or getattr(layer, "single_bias", False):   # Keras's one bias
            arrays.append(reorder_gates(get("bias"), grukit_order, keras_order))
        else:
            arrays.append(reorder_gates(get("bias_ih") + get("bias_hh"), grukit_order, keras_order))
    return [np.ascontiguousarray(a) for a in arrays]


def to_keras(layer: RecurrentLayer, **keras_kwargs):
    """A live, built Keras layer with the weights of a one-layer grukit GRU, LSTM or RNN.

    Bidirectional grukit layers become ``Bidirectional(..., merge_mode="concat")``. The Keras layer
    returns sequences unless ``return_sequences=False`` is given; other ``keras_kwargs`` go to the
    Keras constructor. Needs keras (imported here, not by grukit).
    """
    kind = _keras_kind(layer)
    if layer.num_layers != 1:
        raise ConfigError(f"to_keras: the layer has num_layers={layer.num_layers}, but a Keras recurrent layer "
                          "has one; build one Keras layer per grukit layer with keras_weights(layer, "
                          "layer_index=k)")
    try:
        import keras
    except ImportError as error:
        raise ConfigError("to_keras needs keras: pip install keras (or use keras_weights, which "
                          "returns numpy arrays)") from error
    options: dict[str, Any] = {"units": layer.hidden_size, "use_bias": layer.bias, "return_sequences": True}
    if kind == "GRU":
        options["reset_after"] = layer.mode == "GRU"
    if kind == "SimpleRNN":
        options["activation"] = layer.nonlinearity
    else:
        options["activation"] = layer.layout.activation
        options["recurrent_activation"] = layer.layout.recurrent_activation
    options.update(keras_kwargs)
    keras_layer = getattr(keras.layers, kind)(**options)
    if layer.bidirectional:
        keras_layer = keras.layers.Bidirectional(keras_layer, merge_mode="concat")
    keras_layer.build((None, None, layer.input_size))
    if layer.bidirectional:
        keras_layer.forward_layer.set_weights(keras_weights(layer, 0, 0))
        keras_layer.backward_layer.set_weights(keras_weights(layer, 0, 1))
    else:
        keras_layer.set_weights(keras_weights(layer, 0, 0))
    return keras_layer


# -- describing and checking a Keras layer ------------------------------------------------------

def _activation_name(value) -> str | None:
    """A Keras activation (function, string or serialized dict) as its registered name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("config")
        return str(inner) if isinstance(inner, str) else str(value.get("class_name", value))
    return getattr(value, "__name__", repr(value))


def _check_activations(kind: str, name: str, activation: str | None, recurrent_activation: str | None) -> None:
    if kind == "SimpleRNN":
        if activation is not None and activation not in ("tanh", "relu"):
            raise ConfigError(f"Keras SimpleRNN layer '{name}' has activation={activation!r}, but grukit's RNN "
                              "computes tanh or relu; the same weights would give other outputs. Build the Keras "
                              "layer with activation='tanh' (Keras's default) or 'relu' and retrain")
        return
    for argument, value in (("activation", activation), ("recurrent_activation", recurrent_activation)):
        if value is not None and value not in ACTIVATIONS:
            raise ConfigError(f"Keras {kind} layer '{name}' has {argument}={value!r}, which grukit does not "
                              f"compute (it knows {', '.join(sorted(ACTIVATIONS))}); the same weights would give "
                              f"other outputs. Build the Keras layer with one of those and retrain")


def _expected_shapes(kind: str, units: int, input_size: int, reset_after: bool | None) -> list[tuple[int, ...]]:
    width = len(KERAS_GATE_ORDERS[kind]) * units
    bias = (2, width) if kind == "GRU" and reset_after is not False else (width,)
    return [(input_size, width), (units, width), bias]


_ROLES = ("kernel", "recurrent_kernel", "bias")


def _describe(kind: str | None, arrays: list, info: dict, where: str, error: type, fix: str
              ) -> dict:
    """Check one direction's arrays against what is known (``info``: units, use_bias, reset_after,
    activation, recurrent_activation, go_backwards, name; None = unknown) and fill in the rest."""
    name = info["name"]
    if len(arrays) < 2:
        missing = _ROLES[len(arrays)]
        raise error(f"{where}: layer '{name}' has no {missing} (weight {len(arrays)}); {fix}")
    kernel, recurrent = arrays[0], arrays[1]
    for index, array in enumerate(arrays[:2]):
        if array.ndim != 2:
            raise error(f"{where}: the {_ROLES[index]} (weight {index}) of layer '{name}' has shape "
                        f"{array.shape}, expected a matrix; {fix}")
    units = recurrent.shape[0]
    if kind is None:  # a bare weights file: the gate count is the recurrent kernel's width / units
        gates = recurrent.shape[1] // units if units and recurrent.shape[1] % units == 0 else 0
        if gates not in _GATE_COUNTS:
            raise error(f"{where}: the recurrent_kernel (weight 1) of layer '{name}' has shape {recurrent.shape}; "
                        f"expected (H, H), (H, 3H) or (H, 4H) for SimpleRNN, GRU or LSTM; {fix}")
        kind = _GATE_COUNTS[gates]
    if info.get("units") is not None and info["units"] != units:
        raise error(f"{where}: the recurrent_kernel (weight 1) of {kind} layer '{name}' has shape "
                    f"{recurrent.shape}, but the layer has units={info['units']}; {fix}")
    use_bias = info.get("use_bias")
    if use_bias is None:
        use_bias = len(arrays) > 2
    elif use_bias and len(arrays) < 3:
        raise error(f"{where}: {kind} layer '{name}' has use_bias=True but no bias (weight 2); {fix}")
    reset_after = info.get("reset_after") if kind == "GRU" else None
    if kind == "GRU" and reset_after is None and use_bias:
        reset_after = np.asarray(arrays[2]).ndim == 2
    expected = _expected_shapes(kind, units, kernel.shape[0], reset_after)
    for index, array in enumerate(arrays[:3 if use_bias else 2]):
        if tuple(array.shape) != expected[index]:
            raise error(f"{where}: the {_ROLES[index]} (weight {index}) of {kind} layer '{name}' has shape "
                        f"{tuple(array.shape)}, expected {expected[index]} for {units} units and "
                        f"{kernel.shape[0]} inputs; {fix}")
    if len(arrays) > (3 if use_bias else 2):
        raise error(f"{where}: {kind} layer '{name}' has {len(arrays)} weights, expected "
                    f"{3 if use_bias else 2}; {fix}")
    return {"kind": kind, "units": units, "input_size": kernel.shape[0], "use_bias": use_bias,
            "reset_after": reset_after, "activation": info.get("activation"),
            "recurrent_activation": info.get("recurrent_activation"),
            "go_backwards": bool(info.get("go_backwards"))}


def _combine(name: str, directions: list[dict], arrays: list[list[np.ndarray]], merge_mode: str | None,
             config: dict | None, source: str, path: str = "") -> KerasRecurrentWeights:
    first = directions[0]
    unsupported = None
    if len(directions) == 2:
        keys = ("kind", "units", "input_size", "use_bias", "reset_after", "activation", "recurrent_activation")
        different = [k for k in keys if directions[0][k] != directions[1][k]]
        if merge_mode != "concat":
            unsupported = (f"Bidirectional layer '{name}' has merge_mode={merge_mode!r}, but grukit's "
                           "bidirectional layers concatenate the two directions (merge_mode='concat'); "
                           "re-wrap the same layer with merge_mode='concat' in Keras (the weights do not "
                           "change), convert that, and merge grukit's halves output[..., :H] and "
                           "output[..., H:] yourself")
        elif different:
            unsupported = (f"Bidirectional layer '{name}': the forward and backward layers differ in "
                           f"{', '.join(different)}; grukit's bidirectional layer uses one configuration "
                           "for both directions")
        elif first["go_backwards"] or not directions[1]["go_backwards"]:
            unsupported = (f"Bidirectional layer '{name}' wraps a layer with go_backwards=True, so its "
                           "'forward' half runs backwards; grukit cannot express that. Wrap a layer "
                           "with go_backwards=False")
    return KerasRecurrentWeights(
        name=name, kind=first["kind"], units=first["units"], input_size=first["input_size"],
        use_bias=first["use_bias"], reset_after=first["reset_after"], activation=first["activation"],
        recurrent_activation=first["recurrent_activation"], unsupported=unsupported,
        go_backwards=first["go_backwards"] and len(directions) == 1, bidirectional=len(directions) == 2,
        merge_mode=merge_mode if len(directions) == 2 else None, arrays=arrays, config=config,
        source=source, path=path)


def _build_layer(spec: KerasRecurrentWeights, layer_kwargs: dict) -> RecurrentLayer:
    spec.check_supported()
    known: dict[str, Any] = {"input_size": spec.input_size, "hidden_size": spec.units, "num_layers": 1,
                             "bidirectional": spec.bidirectional, "bias": spec.use_bias}
    if spec.kind == "GRU":
        known["reset_after"] = spec.reset_after
    if spec.kind == "SimpleRNN":
        known["nonlinearity"] = spec.activation
    else:
        known["activation"] = spec.activation
        known["recurrent_activation"] = spec.recurrent_activation
    options = dict(known)
    for key in _DETERMINED_BY_WEIGHTS:
        if key not in layer_kwargs:
            continue
        value = layer_kwargs[key]
        if key not in known or (known[key] is not None and known[key] != value):
            raise ConfigError(f"{key}={value!r} contradicts Keras {spec.kind} layer '{spec.name}' "
                              f"({'it has no such option' if key not in known else f'which has {key}={known[key]!r}'}); "
                              f"drop {key}= and let the weights decide")
        options[key] = value
    if options.get("reset_after") is None and spec.kind == "GRU":
        options["reset_after"] = True  # Keras's default; bare files without bias cannot tell
    if spec.kind == "SimpleRNN" and options.get("nonlinearity") is None:
        options["nonlinearity"] = "tanh"
    for key in ("activation", "recurrent_activation"):   # None: not recorded, the layer's default
        if key in options and options[key] is None:
            del options[key]
    options["batch_first"] = True
    options.update({k: v for k, v in layer_kwargs.items() if k not in _DETERMINED_BY_WEIGHTS})
    cls = {"GRU": GRU, "LSTM": LSTM, "SimpleRNN": RNN}[spec.kind]
    layer = cls(**options)
    if spec.go_backwards:
        warnings.warn(f"Keras {spec.kind} layer '{spec.name}' has go_backwards=True: it reads the sequence "
                      "last step first and returns its outputs in that order. The grukit layer returned has "
                      "the same weights and runs forwards; call it on x.flip(1) to reproduce Keras (see "
                      "grukit.nn.convert.keras for masked batches)", UserWarning, stacklevel=3)
    reset_after = options.get("reset_after", True)
    with torch.no_grad():
        for direction, arrays in enumerate(spec.arrays):
            suffix = "_l0" + ("_reverse" if direction else "")
            params = keras_arrays_to_parameters(spec.kind, arrays, reset_after)
            if getattr(layer, "single_bias", False) and "bias_ih" in params:   # Keras's one bias as it is
                params["bias"] = params.pop("bias_ih")
                del params["bias_hh"]
            for name, value in params.items():
                getattr(layer, name + suffix).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return layer


# -- live Keras layers --------------------------------------------------------------------------

def _class_names(obj) -> list[str]:
    return [cls.__name__ for cls in type(obj).__mro__]


def _live_kind(keras_layer) -> str | None:
    """GRU / LSTM / SimpleRNN for those layers and for keras.layers.RNN wrapping their cells."""
    names = _class_names(getattr(keras_layer, "cell", None))
    return next((kind for kind in KERAS_GATE_ORDERS if kind + "Cell" in names), None)


def _live_info(keras_layer) -> dict:
    cell = keras_layer.cell  # the options live on the cell; go_backwards on the layer
    return {"name": getattr(keras_layer, "name", type(keras_layer).__name__),
            "units": getattr(cell, "units", None),
            "use_bias": getattr(cell, "use_bias", None),
            "reset_after": getattr(cell, "reset_after", None),
            "activation": _activation_name(getattr(cell, "activation", None)),
            "recurrent_activation": _activation_name(getattr(cell, "recurrent_activation", None)),
            "go_backwards": getattr(keras_layer, "go_backwards", False)}


def describe_keras_layer(keras_layer) -> KerasRecurrentWeights:
    """The weights and options of a live Keras GRU/LSTM/SimpleRNN or Bidirectional layer."""
    if "Bidirectional" in _class_names(keras_layer):
        parts = [keras_layer.forward_layer, keras_layer.backward_layer]
        merge_mode = getattr(keras_layer, "merge_mode", None)
    else:
        parts, merge_mode = [keras_layer], None
    name = getattr(keras_layer, "name", type(keras_layer).__name__)
    directions, arrays = [], []
    for part in parts:
        kind = _live_kind(part)
        if kind is None:
            raise ConfigError(f"from_keras expects {_SUPPORTED}, got {type(part).__name__} ('{name}'); for a "
                              "model pass model.get_layer(name), or save it and use from_keras_file")
        weights = [np.asarray(w) for w in part.get_weights()]
        if not weights:
            raise ConfigError(f"Keras {kind} layer '{name}' has no weights yet: build it first, by calling it "
                              "on an input or with layer.build((None, None, input_size))")
        directions.append(_describe(kind, weights, _live_info(part), f"Keras layer '{name}'", ShapeError,
                                    "rebuild the Keras layer"))
        arrays.append(weights)
    return _combine(name, directions, arrays, merge_mode, None, f"live Keras layer '{name}'")


def from_keras(keras_layer, **layer_kwargs) -> RecurrentLayer:
    """The grukit layer computing what a live Keras GRU, LSTM, SimpleRNN or Bidirectional does.

    ``layer_kwargs`` go to the grukit constructor (e.g. ``kernel="reference"``, ``dtype=``);
    ``batch_first`` defaults to True like Keras. Options the weights determine (sizes, bias,
    reset_after, bidirectional) may be repeated but not contradicted. Raises ConfigError for
    activations grukit does not compute and for merge modes other than "concat"; warns for
    ``go_backwards=True`` (see the module docstring: run the result on ``x.flip(1)``).

    Example::

        keras_gru = keras.layers.GRU(64, return_sequences=True)   # built and trained
        gru = from_keras(keras_gru)
        output, h_n = gru(torch.as_tensor(x))                    # output == keras_gru(x)
    """
    return describe_keras_layer(keras_layer).to_layer(**layer_kwargs)


# -- files --------------------------------------------------------------------------------------

_FILE_FIX = ("the file is incomplete or was not written by Keras 3; re-save the model with "
             "model.save('model.keras') or model.save_weights('model.weights.h5')")


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_layers(config: Any, found: dict[str, dict]) -> dict[str, dict]:
    """Every layer config in a (nested) model config, by layer name."""
    if isinstance(config, dict):
        inner = config.get("config")
        if "class_name" in config and isinstance(inner, dict) and "name" in inner:
            found.setdefault(inner["name"], config)
        for value in config.values():
            _config_layers(value, found)
    elif isinstance(config, list):
        for value in config:
            _config_layers(value, found)
    return found


def _open_weights(path: Path):
    """(h5py.File, config dict or None) for a .keras archive or a .weights.h5 file."""
    import h5py

    if not path.exists():
        raise DataError(f"{path}: no such file; check the path (expected a .keras archive or a .weights.h5 file)")
    config = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if "model.weights.h5" not in names:
                    raise DataError(f"{path}: this zip archive has no 'model.weights.h5' (it holds {names[:5]}), "
                                    f"so it is not a Keras 3 .keras file; {_FILE_FIX}")
                if "config.json" in names:
                    config = json.loads(archive.read("config.json"))
                data = archive.read("model.weights.h5")
        except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as error:
            raise DataError(f"{path}: the .keras archive is damaged ({error}); {_FILE_FIX}") from error
        source = io.BytesIO(data)
    else:
        source = str(path)
    try:
        return h5py.File(source, "r"), config
    except OSError as error:
        raise DataError(f"{path}: not an HDF5 file nor a .keras archive ({error}); expected a file written by "
                        "Keras 3's model.save('model.keras') or model.save_weights('model.weights.h5')") from error


def _group_name(group) -> str:
    vars_group = group.get("vars")
    if vars_group is not None and "name" in vars_group.attrs:
        return _decode(vars_group.attrs["name"])
    return group.name.rsplit("/", 1)[-1]


def _read_vars(file_label: str, group, layer_name: str) -> list[np.ndarray]:
    """Arrays ``0, 1, ...`` of ``<group>/cell/vars``, in order; a gap is a missing weight."""
    import h5py

    vars_group = group.get("cell/vars")
    if not isinstance(vars_group, h5py.Group):
        raise DataError(f"{file_label}: layer '{layer_name}' has no weight group '{group.name}/cell/vars'; {_FILE_FIX}")
    keys = sorted((k for k in vars_group.keys() if k.isdigit()), key=int)
    for expected, key in enumerate(keys):
        if int(key) != expected:
            raise DataError(f"{file_label}: layer '{layer_name}' is missing weight '{vars_group.name}/{expected}' "
                            f"({_ROLES[expected] if expected < 3 else 'weight'}); {_FILE_FIX}")
    arrays = []
    for key in keys:
        item = vars_group[key]
        if not isinstance(item, h5py.Dataset):
            raise DataError(f"{file_label}: '{item.name}' of layer '{layer_name}' is not an array; {_FILE_FIX}")
        arrays.append(np.asarray(item[()]))
    return arrays


def _file_info(name: str, config: dict | None) -> dict:
    outer = (config or {}).get("config", {})
    cell = outer.get("cell", {}).get("config", outer) if isinstance(outer.get("cell"), dict) else outer
    return {"name": name, "units": cell.get("units"), "use_bias": cell.get("use_bias"),
            "reset_after": cell.get("reset_after"), "activation": _activation_name(cell.get("activation")),
            "recurrent_activation": _activation_name(cell.get("recurrent_activation")),
            "go_backwards": outer.get("go_backwards", False)}


def _config_kind(config: dict | None) -> str | None:
    """The kind a layer config describes (keras.layers.RNN counts by its cell), "" if not one of ours."""
    if config is None or "class_name" not in config:
        return None
    kind = config["class_name"]
    if kind == "RNN":
        kind = str((config.get("config", {}).get("cell") or {}).get("class_name", "")).removesuffix("Cell")
    return kind if kind in KERAS_GATE_ORDERS else ""


def _find_layers(file_label: str, group, configs: dict[str, dict], found: list) -> None:
    import h5py

    for key in group.keys():
        child = group[key]
        if not isinstance(child, h5py.Group) or key == "vars":
            continue
        name = _group_name(child)
        if isinstance(child.get("cell"), h5py.Group):
            config = configs.get(name)
            parts = [(child, config)]
            merge_mode = None
        elif isinstance(child.get("forward_layer"), h5py.Group) and isinstance(child.get("backward_layer"), h5py.Group):
            wrapper = configs.get(name)
            inner = (wrapper or {}).get("config", {})
            parts = [(child["forward_layer"], inner.get("layer")), (child["backward_layer"], inner.get("backward_layer"))]
            config, merge_mode = wrapper, inner.get("merge_mode", "concat")
            if wrapper is None:  # bare weights: both halves of a Keras 3 Bidirectional, backward reversed
                parts = [(child["forward_layer"], None), (child["backward_layer"], {"config": {"go_backwards": True}})]
        else:
            _find_layers(file_label, child, configs, found)
            continue
        if not all(isinstance(part.get("cell"), h5py.Group) for part, _ in parts):
            continue  # e.g. a Bidirectional of a custom layer
        kinds = [_config_kind(part_config) for _, part_config in parts]
        if "" in kinds:
            continue  # a layer with a cell grukit does not map (ConvLSTM, custom cells)
        directions, arrays = [], []
        for (part, part_config), kind in zip(parts, kinds):
            part_name = _group_name(part) if len(parts) == 2 else name
            part_arrays = _read_vars(file_label, part, part_name)
            info = _file_info(part_name, part_config)
            directions.append(_describe(kind, part_arrays, info, f"{file_label}, '{part.name}'", DataError, _FILE_FIX))
            arrays.append(part_arrays)
        found.append(_combine(name, directions, arrays, merge_mode, config, file_label, child.name))


def read_keras_weights(path: str | Path) -> list[KerasRecurrentWeights]:
    """The Keras GRU, LSTM, SimpleRNN and Bidirectional layers saved in a file, in the file's
    (alphabetical, by class) group order.

    Reads a ``.keras`` archive (a zip of ``config.json`` and ``model.weights.h5``) or a bare
    ``.weights.h5`` with h5py only; Keras is not needed. Keras 3 stores a layer's weights at
    ``layers/<class>_<n>/cell/vars/0`` (kernel), ``/1`` (recurrent_kernel) and ``/2`` (bias), with
    ``layers/<class>_<n>/vars`` carrying the layer's name; a Bidirectional has
    ``forward_layer/cell/vars/...`` and ``backward_layer/cell/vars/...``; nested models nest
    ``layers/...`` groups.

    Without ``config.json`` (a bare ``.weights.h5``), the kind, units and bias are inferred from the
    shapes: the recurrent kernel (H, H) / (H, 3H) / (H, 4H) means SimpleRNN / GRU / LSTM, and a GRU
    bias (2, 3H) means reset_after=True, (3H,) reset_after=False. What cannot be inferred: the
    activations (tanh is assumed; pass ``nonlinearity="relu"`` for a relu SimpleRNN), reset_after of a
    GRU without bias (True is assumed), whether a 3-gate layer is really a Keras GRU rather than a
    custom 3-gate cell, and whether a bias was deleted from the file (the layer reads as use_bias=False).

    Layers of other kinds (Dense, ConvLSTM, custom cells named in the config) are skipped. Layers
    grukit cannot compute (activations, merge modes) are returned with ``unsupported`` set, and
    ``to_layer`` / :func:`from_keras_file` raise ConfigError for them, so one such layer does not
    stop you reading the others. Raises DataError naming the file, the weight and the fix for
    missing, mis-shaped or unreadable weights.
    """
    path = Path(path)
    handle, config = _open_weights(path)
    configs = _config_layers(config, {}) if config is not None else {}
    found: list[KerasRecurrentWeights] = []
    with handle:
        _find_layers(str(path), handle, configs, found)
    return found


def from_keras_file(path: str | Path, layer_name: str | None = None, **layer_kwargs) -> RecurrentLayer:
    """The grukit layer for one recurrent layer of a saved Keras model (``.keras`` or ``.weights.h5``).

    ``layer_name`` is the Keras layer name (``layer.name``, e.g. "gru" or your own), required when
    the file holds several recurrent layers. ``layer_kwargs`` as in :func:`from_keras`. See
    :func:`read_keras_weights` for what a bare ``.weights.h5`` cannot tell.

    Example::

        gru = from_keras_file("model.keras", layer_name="encoder")
    """
    layers = read_keras_weights(path)
    if not layers:
        raise DataError(f"{path}: no GRU, LSTM, SimpleRNN or Bidirectional layer in this Keras file; "
                        "check that it is the model you meant")
    names = [layer.name for layer in layers]
    if layer_name is None:
        if len(layers) > 1:
            raise ConfigError(f"from_keras_file: {path} holds {len(layers)} recurrent layers {names}; pass "
                              "layer_name= one of them")
        return layers[0].to_layer(**layer_kwargs)
    matches = [layer for layer in layers if layer_name in (layer.name, layer.path, layer.path.rsplit("/", 1)[-1])]
    if not matches:
        raise ConfigError(f"from_keras_file(layer_name={layer_name!r}): {path} has no such recurrent layer; "
                          f"it has {names}")
    return matches[0].to_layer(**layer_kwargs)


__all__ = ["KERAS_GATE_ORDERS", "KerasRecurrentWeights", "keras_arrays_to_parameters", "keras_weights",
           "to_keras", "describe_keras_layer", "from_keras", "read_keras_weights", "from_keras_file"]
