"""torch.nn.GRU / LSTM / RNN <-> grukit layers. The parameter names and layouts are identical,
so conversion is a state_dict copy; these helpers also carry the constructor options over."""

from __future__ import annotations

from dataclasses import replace

import torch

from ...errors import ConfigError
from ..cells import LAYOUTS
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


def twin_problem(layer: RecurrentLayer) -> str | None:
    """Why ``layer`` has no torch.nn twin that computes the same function, or None."""
    if layer.mode not in ("GRU", "LSTM", "RNN_TANH", "RNN_RELU"):
        return (f"{type(layer).__name__} in mode {layer.mode} has no torch.nn twin: torch.nn.GRU only puts the "
                "reset gate after the recurrent matrix (reset_after=True), and MGU/MinGRU do not exist in torch.nn")
    if replace(layer.layout, biases=LAYOUTS[layer.mode].biases) != LAYOUTS[layer.mode]:
        return (f"{type(layer).__name__} with a non-default activation or recurrent_activation has no torch.nn "
                "twin (torch.nn's cells have fixed activations)")
    return None


def _twin_name(name: str) -> str:
    """A single-bias layer's ``bias_l0...`` is the twin's ``bias_ih_l0...`` (its bias_hh is zero)."""
    return "bias_ih_" + name[len("bias_"):] if name.startswith("bias_l") else name


def _twin_parameters(layer: RecurrentLayer, module: torch.nn.RNNBase) -> dict[str, torch.Tensor]:
    """The twin's parameters by name, the layer's own tensors: with single_bias=True (Keras's one
    LSTM / SimpleRNN bias) the bias is the twin's bias_ih and its bias_hh is zero, the same sums."""
    ours = {_twin_name(name): value for name, value in layer.named_parameters()}
    parameters = {}
    for name in module._flat_weights_names:
        if name in ours:
            parameters[name] = ours[name]
        else:   # the zero bias_hh, shaped after bias_ih: zeros_like(the twin's own) would record its
            like = ours[name.replace("bias_hh", "bias_ih")]   # random initialisation under a tracer
            parameters[name] = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    return parameters


def _module(layer: RecurrentLayer) -> torch.nn.RNNBase:
    problem = twin_problem(layer)
    if problem is not None:
        raise ConfigError(problem + "; export its weights to ONNX or Keras instead (grukit.nn.convert)")
    options = {name: getattr(layer, name) for name in _COMMON}
    reference = next(iter(layer.parameters()))
    factory = {"device": reference.device, "dtype": reference.dtype}
    if layer.mode == "GRU":
        return torch.nn.GRU(**options, **factory)
    if layer.mode == "LSTM":
        return torch.nn.LSTM(**options, proj_size=layer.proj_size, **factory)
    return torch.nn.RNN(**options, nonlinearity=layer.nonlinearity, **factory)


def to_torch(layer: RecurrentLayer) -> torch.nn.RNNBase:
    """The torch.nn twin of a grukit GRU (reset_after=True), LSTM or RNN, with a copy of its weights
    (a single-bias layer's bias becomes bias_ih, with bias_hh zero)."""
    module = _module(layer)
    with torch.no_grad():
        for name, value in _twin_parameters(layer, module).items():
            getattr(module, name).copy_(value)
    return module


def sharing_twin(layer: RecurrentLayer) -> torch.nn.RNNBase:
    """The torch.nn twin whose parameters are the layer's own (the same tensors, not copies): what
    the layer runs while torch.jit.trace or torch.onnx.export records it, so the record holds
    torch's GRU/LSTM/RNN operator on the layer's parameters."""
    module = _module(layer)
    for name, value in _twin_parameters(layer, module).items():   # RNNBase.__setattr__ keeps its
        if isinstance(value, torch.nn.Parameter):                   # flat weight list in step
            setattr(module, name, value)
        else:
            delattr(module, name)                 # the zero bias_hh of a single-bias layer: a plain tensor
            setattr(module, name, value)
    module.train(layer.training)
    return module


__all__ = ["from_torch", "sharing_twin", "to_torch", "twin_problem"]
