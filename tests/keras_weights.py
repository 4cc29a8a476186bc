"""Test helper: Keras 3 weights into grukit.layers, through grukit.nn.convert (Keras is the oracle)."""

import numpy as np
import torch

from grukit import layers as L
from grukit.nn.convert import from_keras


def load_recurrent_from_keras(target: "L.Recurrent", other) -> None:
    """A Keras recurrent layer's (or Bidirectional's) weights into a grukit recurrent layer; Keras's
    one bias of LSTM/SimpleRNN becomes grukit's single bias (bias_ih + bias_hh of the conversion)."""
    if hasattr(other, "forward_layer"):  # any merge mode: convert the two directions separately
        converted = dict(from_keras(other.forward_layer).state_dict())
        converted.update({f"{k}_reverse": v for k, v in from_keras(other.backward_layer).state_dict().items()})
    else:
        converted = from_keras(other).state_dict()
    single = target.recurrent.single_bias
    state = {}
    for key, value in converted.items():
        if single and key.startswith("bias_ih"):
            state["bias" + key[7:]] = value + converted["bias_hh" + key[7:]]
        elif not (single and key.startswith("bias_hh")):
            state[key] = value
    target.recurrent.load_state_dict(state)


def copy_keras_weights(grukit_layers, keras_layers) -> None:
    """Layer by layer (same order): Embedding, Dense, recurrent layers and their wrappers."""
    for mine, other in zip(grukit_layers, keras_layers):
        target = mine.layer if isinstance(mine, (L.Bidirectional, L.TimeDistributed)) else mine
        if isinstance(target, L.Embedding):
            target.embedding.weight.data.copy_(torch.from_numpy(np.asarray(other.get_weights()[0])))
        elif isinstance(target, L.Dense):
            inner = other.layer if hasattr(other, "layer") and not hasattr(other, "forward_layer") else other
            kernel, bias = inner.get_weights()
            target.linear.weight.data.copy_(torch.from_numpy(kernel.T.copy()))
            target.linear.bias.data.copy_(torch.from_numpy(bias))
        elif isinstance(target, L.Recurrent):
            load_recurrent_from_keras(target, other)
