"""torch.nn.GRU / LSTM / RNN <-> grukit layers. The parameter names and layouts are identical,
so conversion is a state_dict copy; these helpers also carry the constructor options over."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..recurrent import GRU, LSTM, RNN, RecurrentLayer

_COMMON = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


def from_torch(module: torch.nn.RNNBase, **layer_kwargs) -> RecurrentLayer:
    """A grukit layer with the options and weights of a torch.nn.GRU, LSTM or RNN.

    ``layer_kwargs`` (e.g. ``kernel="reference"``) are passed to the grukit constructor.
    """
    options = {name: getattr(module, name) for name in _COMMON}
    reference = next(iter(module.parameters()))
    factory = {"device": reference.device, "dtype": reference.dtype}
    if isinstance(module, torch.nn.GRU):
        layer = GRU(**options, **factory, **layer_kwargs)
    elif isinstance(module, torch.nn.LSTM):
        layer = LSTM(**options, proj_size=module.proj_size, **factory, **layer_kwargs)
    elif isinstance(module, torch.nn.RNN):
        layer = RNN(**options, nonlinearity=module.nonlinearity, **factory, **layer_kwargs)
    else:
        raise ConfigError(f"from_torch expects torch.nn.GRU, LSTM or RNN, got {type(module).__name__}")
    layer.load_state_dict(module.state_dict())
    return layer


def to_torch(layer: RecurrentLayer) -> torch.nn.RNNBase:
    """The torch.nn twin of a grukit GRU (reset_after=True), LSTM or RNN, with the same weights."""
    options = {name: getattr(layer, name) for name in _COMMON}
    reference = next(iter(layer.parameters()))
    factory = {"device": reference.device, "dtype": reference.dtype}
    if layer.mode == "GRU":
        module = torch.nn.GRU(**options, **factory)
    elif layer.mode == "LSTM":
        module = torch.nn.LSTM(**options, proj_size=layer.proj_size, **factory)
    elif layer.mode in ("RNN_TANH", "RNN_RELU"):
        module = torch.nn.RNN(**options, nonlinearity=layer.nonlinearity, **factory)
    else:
        raise ConfigError(f"{type(layer).__name__} in mode {layer.mode} has no torch.nn twin: torch.nn.GRU "
                          "only puts the reset gate after the recurrent matrix (reset_after=True), and "
                          "MGU/MinGRU do not exist in torch.nn; export to ONNX or Keras instead")
    module.load_state_dict(layer.state_dict())
    return module


__all__ = ["from_torch", "to_torch"]
