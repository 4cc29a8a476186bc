"""grukit layers <-> the weight layouts of the ONNX GRU, LSTM and RNN operators.

ONNX stores, per layer, ``W`` (D, G*H, H_in), ``R`` (D, G*H, H) and ``B`` (D, 2*G*H) = input biases
then recurrent biases, with D directions stacked forward first. Gate orders: GRU z, r, h with
``linear_before_reset`` = reset_after; LSTM i, o, f, c (peepholes ``P`` are not used by grukit and
must be zero); RNN one gate with activation Tanh or Relu. A multi-layer grukit layer is one ONNX
node per layer. Only numpy is needed; onnx itself is not imported here.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError, ShapeError
from ..recurrent import RecurrentLayer
from .gates import reorder_gates

# (grukit row order, ONNX row order) per mode
_ORDERS = {
    "GRU": ("rzn", "zrn"),
    "GRU_RESET_BEFORE": ("rzn", "zrn"),
    "LSTM": ("ifgo", "iofg"),
    "RNN_TANH": ("h", "h"),
    "RNN_RELU": ("h", "h"),
}
_OPERATORS = {"GRU": "GRU", "GRU_RESET_BEFORE": "GRU", "LSTM": "LSTM", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def onnx_operator(layer: RecurrentLayer) -> tuple[str, dict]:
    """The ONNX operator type and its attributes for each layer of ``layer``."""
    _check_supported(layer)
    attributes = {"hidden_size": layer.hidden_size,
                  "direction": "bidirectional" if layer.bidirectional else "forward"}
    if layer.mode.startswith("GRU"):
        attributes["linear_before_reset"] = int(layer.mode == "GRU")
    if layer.mode == "RNN_RELU":
        attributes["activations"] = ["Relu"] * layer.num_directions
    return _OPERATORS[layer.mode], attributes


def onnx_weights(layer: RecurrentLayer, layer_index: int = 0) -> dict[str, np.ndarray]:
    """W, R, B of one layer in ONNX layout (numpy, the layer's dtype)."""
    _check_supported(layer)
    ours, theirs = _ORDERS[layer.mode]
    W, R, B = [], [], []
    for direction in range(layer.num_directions):
        params = {k: (v.detach().cpu().numpy() if v is not None else None)
                  for k, v in layer._layer_parameters(layer_index, direction).items()}
        W.append(reorder_gates(params["weight_ih"], ours, theirs))
        R.append(reorder_gates(params["weight_hh"], ours, theirs))
        rows = params["weight_ih"].shape[0]
        input_bias = params["bias_ih"] if params["bias_ih"] is not None else params["bias"]
        zeros = np.zeros(rows, dtype=params["weight_ih"].dtype)
        input_bias = zeros if input_bias is None else input_bias
        recurrent_bias = zeros if params["bias_hh"] is None else params["bias_hh"]
        B.append(np.concatenate([reorder_gates(input_bias, ours, theirs),
                                 reorder_gates(recurrent_bias, ours, theirs)]))
    return {"W": np.stack(W), "R": np.stack(R), "B": np.stack(B)}


def load_onnx_weights(layer: RecurrentLayer, layer_index: int, W: np.ndarray, R: np.ndarray,
                      B: np.ndarray | None = None) -> None:
    """Copy ONNX W, R, B of one node into layer ``layer_index`` of a grukit layer (in place)."""
    _check_supported(layer)
    ours, theirs = _ORDERS[layer.mode]
    D = layer.num_directions
    if B is None:  # ONNX's default: all biases zero
        B = np.zeros((W.shape[0], 2 * W.shape[1]), dtype=W.dtype)
    for name, array in (("W", W), ("R", R), ("B", B)):
        if array.shape[0] != D:
            raise ShapeError(f"ONNX {name} has {array.shape[0]} directions, the layer has {D}; "
                             "build the layer with bidirectional matching the ONNX direction attribute")
    with torch.no_grad():
        for direction in range(D):
            params = layer._layer_parameters(layer_index, direction)
            _copy(params["weight_ih"], reorder_gates(W[direction], theirs, ours), "W")
            _copy(params["weight_hh"], reorder_gates(R[direction], theirs, ours), "R")
            half = B.shape[1] // 2
            input_bias = reorder_gates(B[direction][:half], theirs, ours)
            recurrent_bias = reorder_gates(B[direction][half:], theirs, ours)
            if params["bias_hh"] is not None:
                _copy(params["bias_ih"], input_bias, "B (input half)")
                _copy(params["bias_hh"], recurrent_bias, "B (recurrent half)")
            elif params["bias"] is not None:  # reset-before GRU: the two halves are one merged bias
                _copy(params["bias"], input_bias + recurrent_bias, "B")
            elif np.any(B):
                raise ConfigError("the ONNX node has non-zero biases B but the layer was built with "
                                  "bias=False; build it with bias=True")


def _copy(param: torch.Tensor, value: np.ndarray, label: str) -> None:
    if tuple(param.shape) != value.shape:
        raise ShapeError(f"ONNX {label} has shape {value.shape} per direction, the layer expects "
                         f"{tuple(param.shape)}; check hidden_size and input_size")
    param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _check_supported(layer: RecurrentLayer) -> None:
    if layer.mode not in _ORDERS:
        raise ConfigError(f"{type(layer).__name__} ({layer.mode}) has no ONNX operator; only GRU, LSTM "
                          "and RNN do. Export the whole model graph instead (a later grukit.export)")
    if layer.proj_size:
        raise ConfigError("ONNX LSTM has no projection; build the LSTM with proj_size=0 to export it")


__all__ = ["onnx_operator", "onnx_weights", "load_onnx_weights"]
