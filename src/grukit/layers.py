"""Keras-style layers: the vocabulary of GRU tutorials, built over grukit.nn.

Each layer is a torch module that builds itself when it first learns its input shape, as in
Keras, and passes a mask along: ``forward(x, mask) -> (y, mask)``. The recurrent layers are thin
builders over :mod:`grukit.nn` (the fused kernels run underneath); nothing here re-implements a
cell. Parameter counts equal Keras's: GRU with both ``reset_after`` values, and LSTM and SimpleRNN
with one bias per gate.

Masking: a mask from ``Embedding(mask_zero=True)`` or ``Masking`` marks valid steps. Recurrent
layers skip masked steps (the state is carried over them), so pre-padding, post-padding and holes
all work; outputs at masked steps are zero (Keras's Bidirectional behaviour; a plain Keras layer
repeats the last output there), and ``return_sequences=False`` returns each sequence's last valid
output. ``GlobalMaxPooling1D`` and ``GlobalAveragePooling1D`` reduce over the valid steps only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import nn as gnn
from .nn.cells import ACTIVATIONS, activation_function as cell_activation
from .errors import ConfigError, DataError, ShapeError

Shape = tuple  # (None, ...) with None for the batch dimension

# the cells' activations (Keras names), None for linear as in Keras, and softmax for Dense
_ACTIVATIONS = {None: ACTIVATIONS["linear"], **ACTIVATIONS, "softmax": lambda x: torch.softmax(x, dim=-1)}


def activation_function(name: str | None):
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation={name!r} is not known; use one of "
                          f"{sorted(k for k in _ACTIVATIONS if k)} or None")
    return _ACTIVATIONS[name]


class Layer(nn.Module):
    """Base class: lazy build from the input shape, a Keras name, a config and a mask."""

    _counters: dict[str, int] = {}

    def __init__(self, name: str | None = None, trainable: bool = True) -> None:
        super().__init__()
        self.name = name
        self.built = False
        self.trainable = trainable
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None

    def __init_subclass__(cls, **kwargs):
        # Keras: a layer whose build() was called directly is built, so that the next call keeps its
        # weights instead of building them anew.
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:
            cls.build = _marks_built(cls.__dict__["build"])

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Keras: ``layer.trainable = False`` freezes the layer's weights, also after it was built."""
        self._trainable = bool(value)
        if self.built:
            for parameter in self.parameters():
                parameter.requires_grad_(self._trainable)

    # subclasses implement these three
    def build(self, input_shape: Shape) -> None:
        pass

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def call(self, x: torch.Tensor, mask: torch.Tensor | None):
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable}

    # machinery
    def ensure_built(self, input_shape: Shape) -> Shape:
        if not self.built:
            self.build(tuple(input_shape))
            if not self.built:   # a layer without a build() of its own
                self._finish_build(tuple(input_shape))
        return self.output_shape

    def _finish_build(self, input_shape: Shape) -> None:
        """What follows every build: the shapes, the trainable flag and the training mode (a layer
        switched to eval() before its lazy build must not create its parts in training mode)."""
        self.input_shape = tuple(input_shape)
        self.built = True
        if not self._trainable:   # (a trainable wrapper leaves a frozen inner layer frozen)
            for parameter in self.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)
        self.output_shape = self.compute_output_shape(self.input_shape)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        self.ensure_built((None, *x.shape[1:]))
        return self.call(x, mask)

    def __call__(self, x, *args, **kwargs):
        """On tensors, run the layer (``forward``). On a :class:`SymbolicTensor` (an ``Input`` or
        another layer's symbolic output), or a list of them, build the layer for that shape and
        return its symbolic output: the functional API of :class:`grukit.models.Model`."""
        if _is_symbolic(x):
            return self._call_symbolic(x)
        return super().__call__(x, *args, **kwargs)

    def _call_symbolic(self, inputs) -> "SymbolicTensor":
        if getattr(self, "return_state", False):
            raise ConfigError(f"{type(self).__name__}(return_state=True) in a functional Model is not "
                              "supported yet; return the sequence or the last output instead")
        many = isinstance(inputs, (list, tuple))
        shape = [t.batch_shape for t in inputs] if many else inputs.batch_shape
        try:
            output_shape = self.ensure_built(shape) if not self.built else self.compute_output_shape(shape)
        except ShapeError as error:
            raise ShapeError(f"layer {self.name or type(self).__name__!r}: {error}") from error
        return SymbolicTensor(output_shape, self, tuple(inputs) if many else (inputs,), many)

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def class_name(self) -> str:
        return type(self).__name__


def _marks_built(build):
    @functools.wraps(build)
    def built(self, input_shape):
        if self.__dict__.get("_building"):   # a subclass's build calling its parent's
            return build(self, input_shape)
        self.__dict__["_building"] = True
        try:
            build(self, input_shape)
        finally:
            self.__dict__["_building"] = False
        self._finish_build(input_shape)
    return built


# ---- initializers (Keras's defaults, on grukit's PyTorch-style (rows, cols) = (out, in) shapes) ----

def glorot_uniform_(weight: torch.Tensor) -> None:
    fan_out, fan_in = weight.shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -limit, limit)


def initialize(weight: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        if name == "glorot_uniform":
            glorot_uniform_(weight)
        elif name == "orthogonal":
            nn.init.orthogonal_(weight)
        elif name == "zeros":
            weight.zero_()
        elif name == "ones":
            weight.fill_(1.0)
        elif name == "uniform":  # Keras's Embedding default: U(-0.05, 0.05)
            nn.init.uniform_(weight, -0.05, 0.05)
        elif name == "he_normal":
            nn.init.kaiming_normal_(weight)
        elif name == "torch":
            pass  # keep torch.nn's default
        else:
            raise ConfigError(f"initializer {name!r} is not known; use glorot_uniform, orthogonal, zeros, "
                              "ones, uniform, he_normal or torch")


class SymbolicTensor:
    """A placeholder for a batch of data in a functional model: its ``batch_shape`` (None for the
    batch dimension), the ``layer`` that makes it and that layer's ``inbound`` symbolic inputs
    (``many``: the layer takes them as one list, as Concatenate does). Calling a layer on one
    returns the next; :class:`grukit.models.Model` runs the graph between Inputs and outputs."""

    def __init__(self, batch_shape: tuple, layer: "Layer | None" = None, inbound: tuple = (),
                 many: bool = False) -> None:
        self.batch_shape = tuple(batch_shape)
        self.layer = layer
        self.inbound = inbound
        self.many = many


def _is_symbolic(x) -> bool:
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(t, SymbolicTensor) for t in x)
    return isinstance(x, SymbolicTensor)


class Input(SymbolicTensor):
    """The input shape of a model without the batch dimension, e.g. ``Input(shape=(200,))`` for
    token ids or ``Input(shape=(50, 10))`` for (time_steps, features). First in a Sequential
    model, or the start of a functional one: ``x = Input((50, 10)); y = GRU(64)(x)``."""

    def __init__(self, shape: tuple, dtype: str = "float32", name: str | None = None) -> None:
        super().__init__((None, *shape))
        self.shape = tuple(shape)
        self.dtype = dtype
        self.name = name

    def get_config(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "name": self.name}


class Embedding(Layer):
    """Token ids (N, T) -> vectors (N, T, output_dim). ``mask_zero=True`` makes id 0 padding;
    ``weights`` loads a pretrained (input_dim, output_dim) matrix, ``trainable=False`` freezes it."""

    def __init__(self, input_dim: int, output_dim: int, mask_zero: bool = False, weights=None,
                 embeddings_initializer: str = "uniform", trainable: bool = True, name: str | None = None):
        super().__init__(name, trainable)
        self.input_dim, self.output_dim, self.mask_zero = input_dim, output_dim, mask_zero
        self.embeddings_initializer = embeddings_initializer
        self.pretrained = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if self.pretrained is not None and tuple(self.pretrained.shape) != (input_dim, output_dim):
            raise ShapeError(f"Embedding(weights=...) has shape {tuple(self.pretrained.shape)}, expected "
                             f"(input_dim, output_dim) = ({input_dim}, {output_dim})")

    def build(self, input_shape):
        self.embedding = nn.Embedding(self.input_dim, self.output_dim)
        if self.pretrained is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(self.pretrained)
        else:
            initialize(self.embedding.weight, self.embeddings_initializer)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def call(self, x, mask):
        x, out_mask = self.token_ids(x, mask)
        return self.embedding(x), out_mask

    def token_ids(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The checked ids as int64 and the mask this layer passes on."""
        if x.is_floating_point():
            if not torch.equal(x, x.round()):
                raise DataError("Embedding: inputs must be integer token ids, got non-integer floats")
            x = x.long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.input_dim):
            raise DataError(f"Embedding: token ids must lie in [0, {self.input_dim - 1}], got ids from "
                            f"{int(x.min())} to {int(x.max())}; build the vocabulary with at most "
                            f"{self.input_dim} entries or raise input_dim")
        return x.long(), ((x != 0) if self.mask_zero else mask)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "mask_zero": self.mask_zero, "embeddings_initializer": self.embeddings_initializer}


class Masking(Layer):
    """Marks time steps whose features all equal ``mask_value`` as padding."""

    def __init__(self, mask_value: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.mask_value = mask_value

    def call(self, x, mask):
        step_mask = (x != self.mask_value).any(dim=-1)
        return x * step_mask.unsqueeze(-1).to(x.dtype), step_mask

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


class Dense(Layer):
    """``activation(x @ W + b)`` on the last dimension (so it also applies per time step)."""

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, trainable: bool = True):
        super().__init__(name, trainable)
        activation_function(activation)
        self.units, self.activation, self.use_bias = units, activation, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape):
        self.linear = nn.Linear(input_shape[-1], self.units, bias=self.use_bias)
        initialize(self.linear.weight, self.kernel_initializer)
        if self.use_bias:
            initialize(self.linear.bias, self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def call(self, x, mask):
        return activation_function(self.activation)(self.linear(x)), mask

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Dropout(Layer):
    def __init__(self, rate: float, name: str | None = None):
        super().__init__(name)
        if not 0 <= rate < 1:
            raise ConfigError(f"Dropout(rate={rate!r}): expected a probability in [0, 1)")
        self.rate = rate

    def call(self, x, mask):
        return nn.functional.dropout(x, self.rate, self.training), mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class RepeatVector(Layer):
    """Keras's RepeatVector: ``(N, F) -> (N, n, F)``, the input repeated ``n`` times along a new time axis
    (the bridge between a sequence autoencoder's encoder state and its decoder).

    Example::

        RepeatVector(3)(torch.ones(2, 5))[0].shape      # (2, 3, 5)
    """

    def __init__(self, n: int, name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"RepeatVector(n={n!r}): expected an int >= 1 (the number of time steps)")
        self.n = n

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ShapeError(f"RepeatVector expects (batch, features), got {input_shape}; put it after a "
                             "recurrent layer with return_sequences=False")
        return (input_shape[0], self.n, input_shape[1])

    def call(self, x, mask):
        return x.unsqueeze(1).repeat(1, self.n, 1), None

    def get_config(self):
        return {**super().get_config(), "n": self.n}


_DATA_FORMATS = ("channels_last", "channels_first")


class _GlobalPooling1D(Layer):
    """Shared by GlobalMaxPooling1D and GlobalAveragePooling1D: shapes, options, the mask."""

    def __init__(self, data_format: str = "channels_last", keepdims: bool = False, name: str | None = None):
        super().__init__(name)
        label = type(self).__name__
        if data_format not in _DATA_FORMATS:
            raise ConfigError(f"{label}(data_format={data_format!r}): expected one of {_DATA_FORMATS} "
                              "(steps before features, or features before steps)")
        if not isinstance(keepdims, bool):
            raise ConfigError(f"{label}(keepdims={keepdims!r}): expected True or False")
        self.data_format, self.keepdims = data_format, keepdims

    @property
    def steps_axis(self) -> int:
        return 1 if self.data_format == "channels_last" else 2

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{type(self).__name__} expects (batch, steps, features), got {tuple(input_shape)}; "
                             "put it after a recurrent layer with return_sequences=True (or an Embedding)")
        batch, features = input_shape[0], input_shape[3 - self.steps_axis]
        if not self.keepdims:
            return (batch, features)
        return (batch, 1, features) if self.data_format == "channels_last" else (batch, features, 1)

    def call(self, x, mask):
        if mask is None:
            return self.pool(x, None), None
        steps = x.shape[self.steps_axis]
        if tuple(mask.shape) != (x.shape[0], steps):
            raise ShapeError(f"{type(self).__name__}: the mask has shape {tuple(mask.shape)}, expected (batch, steps) "
                             f"= ({x.shape[0]}, {steps}) for an input of shape {tuple(x.shape)}")
        return self.pool(x, mask.to(torch.bool).unsqueeze(3 - self.steps_axis)), None

    def pool(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Reduce ``x`` over the steps axis; ``valid`` is the mask broadcastable to ``x`` (or None)."""
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalMaxPooling1D(_GlobalPooling1D):
    """Keras's GlobalMaxPooling1D: ``(N, T, F) -> (N, F)``, the largest value of each feature over the
    time steps (``keepdims=True``: ``(N, 1, F)``; ``data_format="channels_first"`` reads ``(N, F, T)``).
    No parameters; the output carries no mask.

    Masking: with a mask (from ``Embedding(mask_zero=True)``, ``Masking`` or a recurrent layer with
    ``return_sequences=True``) the maximum is taken over the valid steps only, so a padded step never
    wins, and a fully masked sequence gives 0. Keras 3's layer ignores the mask (it warns and takes
    every step): there, after a recurrent layer and post-padding, the padded steps repeat the last
    valid output, so its maximum is the same; grukit's recurrent layers output zeros at masked steps,
    which would win wherever every valid value of a feature is negative, hence the mask here.
    Without a mask the two agree exactly. The gradient reaches only the step that holds each maximum.

    Example::

        ids = torch.tensor([[5, 2, 0, 0]])                                     # post-padded
        h, mask = GRU(8, return_sequences=True)(*Embedding(10, 4, mask_zero=True)(ids))
        GlobalMaxPooling1D()(h, mask)[0].shape                                 # (1, 8), steps 0-1 only
    """

    def pool(self, x, valid):
        if valid is None:
            return x.amax(dim=self.steps_axis, keepdim=self.keepdims)
        largest = x.masked_fill(~valid, -math.inf).amax(dim=self.steps_axis, keepdim=self.keepdims)
        any_valid = valid.any(dim=self.steps_axis, keepdim=self.keepdims)
        return torch.where(any_valid, largest, torch.zeros((), dtype=x.dtype, device=x.device))


class GlobalAveragePooling1D(_GlobalPooling1D):
    """Keras's GlobalAveragePooling1D: ``(N, T, F) -> (N, F)``, the mean of each feature over the time
    steps (``keepdims=True``: ``(N, 1, F)``; ``data_format="channels_first"`` reads ``(N, F, T)``).
    No parameters; the output carries no mask.

    Masking, as in Keras 3: with a mask the mean is over the valid steps only (sum of the valid
    steps / their count), so padding neither adds to the sum nor to the count. A fully masked
    sequence gives 0 (Keras divides 0 by 0 and returns NaN there). Each valid step receives
    ``1 / count`` of the gradient, padded steps none.

    Example::

        x = torch.tensor([[[1.0], [3.0], [0.0]]])
        GlobalAveragePooling1D()(x, torch.tensor([[True, True, False]]))[0]    # tensor([[2.]])
    """

    def pool(self, x, valid):
        if valid is None:
            return x.mean(dim=self.steps_axis, keepdim=self.keepdims)
        total = x.masked_fill(~valid, 0.0).sum(dim=self.steps_axis, keepdim=self.keepdims)
        count = valid.sum(dim=self.steps_axis, keepdim=self.keepdims).clamp(min=1)
        return total / count.to(x.dtype)


class TimeDistributed(Layer):
    """Applies ``layer`` to every time step of (N, T, ...) independently."""

    def __init__(self, layer: Layer, name: str | None = None):
        super().__init__(name)
        self.layer = layer

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise ShapeError(f"TimeDistributed expects input of shape (batch, time_steps, ...), got "
                             f"{tuple(input_shape)}; give the layer before it return_sequences=True")
        self.layer.ensure_built((None, *input_shape[2:]))

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *inner[1:])

    def call(self, x, mask):
        N, T = x.shape[:2]
        y, _ = self.layer(x.reshape(N * T, *x.shape[2:]), None)
        return y.reshape(N, T, *y.shape[1:]), mask

    def get_config(self):
        return {**super().get_config(), "layer": serialize(self.layer)}


# ---- recurrent layers -----------------------------------------------------------------------

@dataclass(frozen=True)
class _CellChoice:
    module: type
    activations: bool = True         # takes activation= (and recurrent_activation= if gated)
    gated: bool = True               # has gates, hence a recurrent_activation
    recurrent_dropout: bool = True   # has recurrent weights to drop from


class Recurrent(Layer):
    """Shared machinery of GRU, LSTM, SimpleRNN, MGU and MinGRU (Keras arguments).

    ``activation`` (default "tanh"; None means linear, as in Keras) and ``recurrent_activation``
    (default "sigmoid", the gates) take Keras's names, e.g. "relu", "hard_sigmoid" (Keras 3's
    relu6(x + 3) / 6), "softsign", "elu", "linear"; non-default choices run on the reference loop.
    ``recurrent_dropout`` drops units of the previous state inside the recurrent products, with
    one mask per sequence and gate fixed over the time steps, in training only (Keras's
    semantics; training then runs the reference loop, inference the fused kernels).
    """

    cell: _CellChoice

    def __init__(self, units: int, activation: str | None = "tanh", recurrent_activation: str = "sigmoid",
                 use_bias: bool = True, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, kernel_initializer: str = "glorot_uniform",
                 recurrent_initializer: str = "orthogonal", bias_initializer: str = "zeros",
                 kernel: str = "auto", name: str | None = None, trainable: bool = True, **cell_options):
        super().__init__(name, trainable)
        activation = "linear" if activation is None else activation
        label = type(self).__name__
        self._check_cell_options(label, activation, recurrent_activation, recurrent_dropout)
        if not 0 <= dropout < 1:
            raise ConfigError(f"{label}(dropout={dropout!r}): expected a probability in [0, 1)")
        self.units, self.activation, self.recurrent_activation = units, activation, recurrent_activation
        self.use_bias, self.return_sequences, self.return_state = use_bias, return_sequences, return_state
        self.go_backwards, self.stateful, self.dropout = go_backwards, stateful, dropout
        self.recurrent_dropout = recurrent_dropout
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer
        self.bias_initializer, self.kernel = bias_initializer, kernel
        self.cell_options = cell_options
        self.bidirectional = False
        self.states = None

    def _check_cell_options(self, label: str, activation, recurrent_activation, recurrent_dropout) -> None:
        cell = self.cell
        if activation != "tanh" and not cell.activations:
            raise ConfigError(f"{label}(activation={activation!r}): this cell's equations fix their "
                              "nonlinearities; leave activation='tanh' or use GRU, LSTM, SimpleRNN or MGU")
        if recurrent_activation != "sigmoid" and not (cell.activations and cell.gated):
            raise ConfigError(f"{label}(recurrent_activation={recurrent_activation!r}): this cell has no "
                              "gates with a choosable activation; leave recurrent_activation='sigmoid'")
        cell_activation(activation, f"{label}(activation=...)")
        cell_activation(recurrent_activation, f"{label}(recurrent_activation=...)")
        if (not isinstance(recurrent_dropout, (int, float)) or isinstance(recurrent_dropout, bool)
                or not 0 <= recurrent_dropout < 1):
            raise ConfigError(f"{label}(recurrent_dropout={recurrent_dropout!r}): expected a probability in [0, 1)")
        if recurrent_dropout and not cell.recurrent_dropout:
            raise ConfigError(f"{label}(recurrent_dropout={recurrent_dropout!r}): this cell has no recurrent "
                              "weights to drop from; use dropout= on the inputs or a Dropout layer")

    def nn_options(self) -> dict[str, Any]:
        """Constructor arguments of the grukit.nn layer beyond sizes and direction."""
        options = dict(self.cell_options)
        if self.cell.recurrent_dropout:
            options["recurrent_dropout"] = self.recurrent_dropout
        if self.cell.activations and self.cell.gated:
            options.update(activation=self.activation, recurrent_activation=self.recurrent_activation)
        return options

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{type(self).__name__} expects input of shape (batch, time_steps, features), "
                             f"got {input_shape}; reshape a 2-D series to (samples, time_steps, 1)")
        self.recurrent = self.cell.module(input_shape[-1], self.units, bias=self.use_bias, batch_first=True,
                                          bidirectional=self.bidirectional, kernel=self.kernel,
                                          **self.nn_options())
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for name, parameter in self.recurrent.named_parameters():
            if name.startswith("weight_ih"):
                initialize(parameter, self.kernel_initializer)
            elif name.startswith("weight_hh"):
                initialize(parameter, self.recurrent_initializer)
            else:
                initialize(parameter, self.bias_initializer)

    def compute_output_shape(self, input_shape):
        features = self.units * (2 if self.bidirectional else 1)
        return (input_shape[0], input_shape[1], features) if self.return_sequences else (input_shape[0], features)

    def reset_states(self) -> None:
        self.states = None

    def call(self, x, mask):
        if x.dim() != 3:   # grukit.nn would take 2-D input as one unbatched sequence
            raise ShapeError(f"{type(self).__name__} expects input of shape (batch, time_steps, features), "
                             f"got {tuple(x.shape)}; reshape a 2-D series to (samples, time_steps, 1)")
        if self.dropout and self.training:  # Keras: one dropout mask per sequence, shared by all steps
            keep = torch.empty(x.shape[0], 1, x.shape[-1], device=x.device).bernoulli_(1 - self.dropout)
            x = x * keep / (1 - self.dropout)
        return self._run(x, mask, None)

    def call_embedded(self, tokens: torch.Tensor, embedding: "Embedding", mask: torch.Tensor | None = None):
        """``self.call(*embedding.call(tokens, mask))`` without looking the vectors up: the first
        projection runs once per distinct token (``grukit.nn``'s ``embedding=``; 3.6x fewer rows on an
        IMDB batch). The models call this where an Embedding feeds a recurrent layer directly."""
        tokens, mask = embedding.token_ids(tokens, mask)
        self.ensure_built((None, *tokens.shape[1:], embedding.output_dim))
        if self.dropout and self.training:  # each sequence drops its own features: look them up
            return self.call(embedding.embedding(tokens), mask)
        return self._run(tokens, mask, embedding.embedding.weight)

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, embedding: torch.Tensor | None):
        """x: (N, T, F) vectors, or (N, T) token ids into ``embedding``."""
        N, T = x.shape[:2]
        order, lengths = _valid_first_order(mask, N, T, x.device, self.go_backwards)
        steps = T if lengths is None else max(1, int(lengths.max()))
        # Steps after every sequence's end change nothing: run only up to the longest (with
        # bucket_by_length, most batches end well before T).
        if order is not None:
            x = select_steps(x, order[:, :steps]) if embedding is None else x.gather(1, order[:, :steps])
        elif steps < T:
            x = x[:, :steps]
        hx = self.states if (self.stateful and self.states is not None) else None
        output, state = self.recurrent(x, hx, lengths=lengths.clamp(min=1) if lengths is not None else None,
                                       **({} if embedding is None else {"embedding": embedding}))
        if self.return_sequences and steps < T:
            output = nn.functional.pad(output, (0, 0, 0, T - steps))
        if lengths is not None and (lengths == 0).any():  # fully masked rows: nothing to process
            empty = lengths == 0
            output = output.masked_fill(empty.view(N, 1, 1), 0.0)
            if hx is None:
                state = _map(state, lambda s: s.masked_fill(empty.view(1, N, 1), 0.0))
            else:   # a stateful layer's carried state passes a chunk of padding unchanged (Keras)
                state = _map2(state, hx, lambda s, carried: torch.where(empty.view(1, N, 1), carried, s))
        if self.stateful:
            self.states = _map(state, lambda s: s.detach())
        h_n = state[0] if isinstance(state, tuple) else state
        if self.return_sequences:
            if self.go_backwards and mask is not None:
                # Keras: output t belongs to input step T-1-t; a masked step repeats the last output
                # (zero before the first valid step); the input's mask is passed on as it is
                seen = mask.flip(1).to(torch.int64).cumsum(1)   # valid steps processed by each t
                result = select_steps(output, (seen - 1).clamp(min=0)) * (seen > 0).unsqueeze(-1).to(output.dtype)
                out_mask = mask
            elif self.go_backwards:  # Keras returns the sequence in processing order
                result, out_mask = output, None
            elif order is not None:  # back to the original positions; masked steps stay zero
                restored = select_steps(output, order.argsort(dim=1))
                result, out_mask = restored * mask.unsqueeze(-1).to(output.dtype), mask
            else:
                result, out_mask = output, mask
        else:
            result = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]
            out_mask = None
        if self.return_state:   # Keras's layout: h (and c) of (N, units) each, the forward direction's first
            parts = _as_list(state)
            return (result, *[part[d] for d in range(parts[0].shape[0]) for part in parts]), out_mask
        return result, out_mask

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "stateful": self.stateful, "dropout": self.dropout,
                "recurrent_activation": self.recurrent_activation, "recurrent_dropout": self.recurrent_dropout,
                "kernel_initializer": self.kernel_initializer,
                "recurrent_initializer": self.recurrent_initializer,
                "bias_initializer": self.bias_initializer, "kernel": self.kernel, **self.cell_options}


def _valid_first_order(mask, N, T, device, backwards: bool):
    """Time indices that put each sequence's valid steps first (reversed if ``backwards``).

    Returns (order (N, T) or None, lengths (N,) or None). None/None means "run as is".
    """
    if mask is None:
        if not backwards:
            return None, None
        return torch.arange(T - 1, -1, -1, device=device).expand(N, T), None
    mask = mask.to(torch.bool)
    lengths = mask.sum(dim=1).cpu()
    steps = torch.arange(T, device=device)
    is_prefix = bool((mask == steps_below(lengths, T, device)).all())
    if is_prefix and not backwards:
        return None, lengths
    # stable sort puts valid steps first in their original order
    key = (~mask).to(torch.int64) * T + steps.unsqueeze(0)
    order = key.argsort(dim=1)
    if backwards:  # reverse within the valid part
        idx = steps.unsqueeze(0)
        length = lengths.to(device).unsqueeze(1)
        within = torch.where(idx < length, length - 1 - idx, idx)
        order = order.gather(1, within)
    return order, lengths


def select_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[n, index[n, s]]`` for x (N, T, F) and index (N, S): one row gather over the flattened
    (N * T, F) view. ``x.gather(1, index expanded over F)`` gives the same values but reads an
    index per element: on a tutorial IMDB batch alone it took 1.6 ms against 0.1 ms for this, and
    a whole training step of that model 0.7 ms longer (median of 150 paired batches)."""
    N, T, F = x.shape
    rows = (index + torch.arange(N, device=index.device).unsqueeze(1) * T).reshape(-1)
    return x.reshape(N * T, F).index_select(0, rows).view(N, index.shape[1], F)


def steps_below(lengths: torch.Tensor, T: int, device) -> torch.Tensor:
    """The (N, T) prefix mask of the first lengths[i] steps."""
    return torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


def _map(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _map2(state, other, fn):
    return tuple(fn(s, o) for s, o in zip(state, other)) if isinstance(state, tuple) else fn(state, other)


def _as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


class GRU(Recurrent):
    """Keras's GRU: ``GRU(64)``, ``reset_after=True`` by default (set False for Cho et al.'s form)."""

    cell = _CellChoice(gnn.GRU)

    def __init__(self, units: int, reset_after: bool = True, **kwargs):
        super().__init__(units, reset_after=reset_after, **kwargs)


class LSTM(Recurrent):
    """Keras's LSTM (one bias per gate, ``unit_forget_bias=True`` sets the forget bias to 1)."""

    cell = _CellChoice(gnn.LSTM)

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs):
        self.unit_forget_bias = unit_forget_bias
        super().__init__(units, **kwargs)

    def nn_options(self):
        return {**super().nn_options(), "single_bias": True}

    def initialize_weights(self):
        super().initialize_weights()
        if self.unit_forget_bias and self.use_bias:
            with torch.no_grad():
                for name, parameter in self.recurrent.named_parameters():
                    if name.startswith("bias"):
                        parameter[self.units:2 * self.units] = 1.0

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class SimpleRNN(Recurrent):
    """Keras's SimpleRNN (one bias; ``activation`` tanh by default, relu and the others of
    :data:`grukit.nn.cells.ACTIVATIONS` too)."""

    cell = _CellChoice(gnn.RNN, gated=False)

    def nn_options(self):
        return {**super().nn_options(), "nonlinearity": self.activation, "single_bias": True}


class MGU(Recurrent):
    """Minimal gated unit, ``variant`` "mgu", "mgu1", "mgu2" or "mgu3"."""

    cell = _CellChoice(gnn.MGU)

    def __init__(self, units: int, variant: str = "mgu", **kwargs):
        super().__init__(units, variant=variant, **kwargs)


class MinGRU(Recurrent):
    """minGRU (Feng et al. 2024); no recurrent weights."""

    cell = _CellChoice(gnn.MinGRU, activations=False, gated=False, recurrent_dropout=False)

    def __init__(self, units: int, candidate: str = "identity", **kwargs):
        super().__init__(units, candidate=candidate, **kwargs)


class Concatenate(Layer):
    """Joins a list of inputs along ``axis`` (the features by default): ``Concatenate()([a, b])``.
    Shapes must agree except on that axis. Step masks of (N, T, F) inputs combine as in Keras 3:
    a step is valid where any input marks it valid (an input without a mask marks every step)."""

    def __init__(self, axis: int = -1, name: str | None = None):
        super().__init__(name)
        self.axis = axis

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(shape) for shape in input_shapes]
        if len(shapes) < 2 or len({len(shape) for shape in shapes}) != 1:
            raise ShapeError(f"Concatenate takes a list of at least two inputs of the same rank, got shapes {shapes}")
        axis = self.axis % len(shapes[0])
        others = {shape[:axis] + shape[axis + 1:] for shape in shapes}
        if len(others) != 1 or axis == 0:
            raise ShapeError(f"Concatenate(axis={self.axis}): shapes {shapes} must agree on every axis but "
                             "the one joined (and the batch axis cannot be joined); reshape or pick the axis")
        return (*shapes[0][:axis], sum(shape[axis] for shape in shapes), *shapes[0][axis + 1:])

    def forward(self, xs, masks=None):
        self.ensure_built([(None, *x.shape[1:]) for x in xs])
        return self.call(xs, masks or [None] * len(xs))

    def call(self, xs, masks):
        result = torch.cat(list(xs), dim=self.axis)
        if any(mask is None for mask in masks) or result.dim() != 3 or self.axis % 3 != 2:
            return result, None  # an unmasked input makes every step valid
        mask = masks[0].to(torch.bool)
        for step_mask in masks[1:]:
            mask = mask | step_mask.to(torch.bool)
        return result, mask

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


_MERGE_MODES = ("concat", "sum", "mul", "ave")


class Bidirectional(Layer):
    """Runs ``layer`` forwards and backwards; merge_mode concat (default), sum, mul or ave."""

    def __init__(self, layer: Recurrent, merge_mode: str = "concat", name: str | None = None,
                 trainable: bool = True):
        super().__init__(name, trainable)
        if not isinstance(layer, Recurrent):
            raise ConfigError(f"Bidirectional wraps a recurrent layer, got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ConfigError(f"Bidirectional(merge_mode={merge_mode!r}): expected one of {_MERGE_MODES}")
        if layer.go_backwards or layer.stateful:
            raise ConfigError("Bidirectional: the wrapped layer must not set go_backwards or stateful")
        self.layer = layer
        self.merge_mode = merge_mode
        layer.bidirectional = True

    def build(self, input_shape):
        self.layer.ensure_built(input_shape)

    def compute_output_shape(self, input_shape):
        shape = self.layer.compute_output_shape(input_shape)
        if self.merge_mode == "concat":
            return shape
        return (*shape[:-1], shape[-1] // 2)

    def call(self, x, mask):
        return self._merge(*self.layer(x, mask))

    def call_embedded(self, tokens: torch.Tensor, embedding: Embedding, mask: torch.Tensor | None = None):
        """As :meth:`Recurrent.call_embedded`, both directions projected through the distinct tokens."""
        self.ensure_built((None, *tokens.shape[1:], embedding.output_dim))
        return self._merge(*self.layer.call_embedded(tokens, embedding, mask))

    def _merge(self, result, out_mask):
        if self.merge_mode == "concat":
            return result, out_mask
        sequence = result[0] if isinstance(result, tuple) else result
        forward, backward = sequence.chunk(2, dim=-1)
        merged = {"sum": forward + backward, "mul": forward * backward,
                  "ave": (forward + backward) / 2}[self.merge_mode]
        if isinstance(result, tuple):
            return (merged, *result[1:]), out_mask
        return merged, out_mask

    def get_config(self):
        return {**super().get_config(), "layer": serialize(self.layer), "merge_mode": self.merge_mode}


# ---- serialization ---------------------------------------------------------------------------

LAYER_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    Embedding, Masking, Dense, Dropout, RepeatVector, TimeDistributed, GRU, LSTM, SimpleRNN, MGU, MinGRU, Bidirectional,
    Concatenate, GlobalMaxPooling1D, GlobalAveragePooling1D)}


def serialize(layer: Layer) -> dict[str, Any]:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(spec: dict[str, Any]) -> Layer:
    try:
        cls = LAYER_CLASSES[spec["class_name"]]
    except KeyError as error:
        raise ConfigError(f"unknown layer class {spec.get('class_name')!r} in a saved config; known: "
                          f"{sorted(LAYER_CLASSES)}") from error
    config = dict(spec["config"])
    for key in ("layer",):
        if key in config:
            config[key] = deserialize(config[key])
    trainable = config.pop("trainable", True)
    layer = cls(**config)
    layer.trainable = trainable
    return layer


__all__ = ["Layer", "Input", "SymbolicTensor", "Concatenate", "Embedding", "Masking", "Dense", "Dropout",
           "RepeatVector", "TimeDistributed", "GlobalMaxPooling1D", "GlobalAveragePooling1D", "Recurrent",
           "GRU", "LSTM", "SimpleRNN", "MGU", "MinGRU", "Bidirectional", "serialize", "deserialize",
           "LAYER_CLASSES", "activation_function"]
