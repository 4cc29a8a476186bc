"""Weight layouts: torch.nn, Keras 3 and ONNX. Every gate re-ordering in grukit lives here."""

from .gates import flip_update_gate, reorder_gates
from .onnx import load_onnx_weights, onnx_operator, onnx_weights
from .torch_layout import from_torch, to_torch

__all__ = ["reorder_gates", "flip_update_gate", "from_torch", "to_torch", "onnx_operator", "onnx_weights", "load_onnx_weights"]
