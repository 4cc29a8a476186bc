"""Weight layouts: torch.nn, Keras 3 and ONNX. Every gate re-ordering in grukit lives here."""

from .gates import flip_update_gate, reorder_gates
from .keras import (KERAS_GATE_ORDERS, KerasRecurrentWeights, describe_keras_layer, from_keras,
                    from_keras_file, keras_weights, read_keras_weights, to_keras)
from .onnx import load_onnx_weights, onnx_operator, onnx_weights
from .torch_layout import from_torch, to_torch

__all__ = ["reorder_gates", "flip_update_gate", "from_torch", "to_torch",
           "from_keras", "to_keras", "keras_weights", "from_keras_file", "read_keras_weights",
           "describe_keras_layer", "KerasRecurrentWeights", "KERAS_GATE_ORDERS",
           "onnx_operator", "onnx_weights", "load_onnx_weights"]
