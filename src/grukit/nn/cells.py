"""The cell equations, in one place.

Every recurrent cell in grukit is described by two things:

* a :class:`CellLayout`: which gates exist, which of them have input weights, recurrent
  weights and biases, and in which row order those blocks are stored;
* a step function: given the input-side pre-activations of one time step ``gx`` and
  the previous state, it returns the next state.

``gx`` always holds one block of ``hidden_size`` columns per gate, in ``layout.gates``
order, and already contains the input projection ``x @ W_ih^T`` (for gates listed in
``input_gates``; zero for the others) plus every bias that sits outside the recurrent
term (``bias_ih`` or the merged ``bias``). This is what lets the layers compute the input
projection for all time steps in one GEMM before the loop.

Equations (``*`` is elementwise, ``@`` a matrix product, weights stored PyTorch-style as
``(rows, cols) = (gates * H, inputs)``):

GRU, ``reset_after=True`` (PyTorch, cuDNN, Keras default; gates r, z, n)::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

GRU, ``reset_after=False`` (Cho et al. 2014; Chung et al. 2014)::

    n  = tanh(W_in x + W_hn (r * h) + b_n)       # one merged bias per gate, as in Keras

    The tutorial form ``h' = (1 - u) * h + u * n`` is the same model with u = 1 - z
    (negate the update gate's weights and bias); grukit calls 1 - z the write strength.

LSTM (PyTorch; gates i, f, g, o; optional projection W_hr)::

    i = sigmoid(.), f = sigmoid(.), g = tanh(.), o = sigmoid(.)
    c' = f * c + i * g;  h' = o * tanh(c');  h' = W_hr h' if proj_size > 0

SimpleRNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act tanh or relu.

MGU (Zhou et al. 2016; gates f, n)::

    f  = sigmoid(W_f x + U_f h + b_f)
    n  = tanh(W_n x + U_n (f * h) + b_n)
    h' = (1 - f) * h + f * n

    Heck and Salem (2017): MGU1 f = sigmoid(U_f h + b_f); MGU2 f = sigmoid(U_f h);
    MGU3 f = sigmoid(b_f).

minGRU (Feng et al. 2024; gates z, h; no recurrent weights)::

    z  = sigmoid(Linear_z(x));  h~ = Linear_h(x);  h' = (1 - z) * h + z * h~

Activations (an extension over torch.nn, Keras's ``activation`` / ``recurrent_activation``): in
the equations above ``tanh`` stands for the layout's ``activation`` (GRU's n, LSTM's g and
tanh(c'), the SimpleRNN's act, MGU's n) and ``sigmoid`` for its ``recurrent_activation`` (GRU's
r and z, LSTM's i, f and o, MGU's f). Any name in :data:`ACTIVATIONS` works on the reference
loop; the fused kernels compute only each mode's defaults (tanh and sigmoid; relu for RNN_RELU).

Recurrent dropout (Keras's ``recurrent_dropout``, also an extension): a mask ``m`` of shape
``(B, G_rec * H_h)``, one block per recurrent gate in ``layout.recurrent_gates`` order, sampled
once per sequence and fixed over its time steps. Each gate's recurrent product reads its own
masked copy of the previous state, ``W_hg h`` becomes ``W_hg (m_g * h)``, exactly where Keras 3
puts it: GRU reset_after ``n = tanh(W_in x + b_in + r * (W_hn (m_n * h) + b_hn))``; GRU
reset_before ``n = tanh(W_in x + W_hn (r * m_n * h) + b_n)``; LSTM every gate; MGU
``n = tanh(W_n x + U_n (f * m_n * h) + b_n)``. The carried state (``z * h``, ``f * c``) is never
masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional

from ..errors import ConfigError
from . import bfloat16

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Activation = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: Keras's activation names and their torch functions (Keras 3 definitions).
ACTIVATIONS: dict[str, Activation] = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "hard_sigmoid": functional.hardsigmoid,  # Keras 3: relu6(x + 3) / 6 (Keras 2 had 0.2 x + 0.5)
    "relu": torch.relu, "relu6": functional.relu6, "linear": _identity, "elu": functional.elu,
    "selu": functional.selu, "gelu": functional.gelu, "softsign": functional.softsign,
    "softplus": functional.softplus, "silu": functional.silu, "swish": functional.silu,
    "hard_silu": functional.hardswish,
}


def activation_function(name: str, argument: str = "activation") -> Activation:
    """The torch function for a Keras activation name; ConfigError naming ``argument`` if unknown."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"{argument}={name!r} is not an activation grukit's cells know; use one of "
                          f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class CellLayout:
    """Where each gate lives in the parameter blocks of one layer and direction.

    ``biases`` lists the bias vectors as ``(name, gates)``. ``bias_hh`` is the only bias
    kept inside the recurrent term (GRU with reset_after=True needs it there, for
    LSTM and SimpleRNN it is PyTorch's redundant second bias); ``bias_ih`` and ``bias``
    (the single merged bias of cells whose two biases would be redundant) go into ``gx``.
    """

    mode: str
    gates: tuple[str, ...]
    input_gates: tuple[str, ...]
    recurrent_gates: tuple[str, ...]
    biases: tuple[tuple[str, tuple[str, ...]], ...]
    has_cell_state: bool = False
    activation: str = "tanh"               # candidate / cell input and LSTM's output squashing
    recurrent_activation: str = "sigmoid"  # the gates

    @property
    def activation_functions(self) -> tuple[Activation, Activation]:
        """(activation, recurrent_activation) as torch functions."""
        return ACTIVATIONS[self.activation], ACTIVATIONS[self.recurrent_activation]

    @property
    def has_default_activations(self) -> bool:
        """True when the activations are the mode's own, the only ones the fused kernels compute."""
        default = LAYOUTS[self.mode]
        return (self.activation, self.recurrent_activation) == (default.activation, default.recurrent_activation)

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    def gate_index(self, gate: str) -> int:
        return self.gates.index(gate)

    def bias_gates(self, name: str) -> tuple[str, ...]:
        for bias_name, gates in self.biases:
            if bias_name == name:
                return gates
        return ()


def _two_biases(gates: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return (("bias_ih", gates), ("bias_hh", gates))


_GRU = ("r", "z", "n")
_LSTM = ("i", "f", "g", "o")
_MGU = ("f", "n")

LAYOUTS: dict[str, CellLayout] = {
    "RNN_TANH": CellLayout("RNN_TANH", ("h",), ("h",), ("h",), _two_biases(("h",))),
    "RNN_RELU": CellLayout("RNN_RELU", ("h",), ("h",), ("h",), _two_biases(("h",)), activation="relu"),
    "LSTM": CellLayout("LSTM", _LSTM, _LSTM, _LSTM, _two_biases(_LSTM), has_cell_state=True),
    "GRU": CellLayout("GRU", _GRU, _GRU, _GRU, _two_biases(_GRU)),
    "GRU_RESET_BEFORE": CellLayout("GRU_RESET_BEFORE", _GRU, _GRU, _GRU, (("bias", _GRU),)),
    "MGU": CellLayout("MGU", _MGU, _MGU, _MGU, (("bias", _MGU),)),
    "MGU1": CellLayout("MGU1", _MGU, ("n",), _MGU, (("bias", _MGU),)),
    "MGU2": CellLayout("MGU2", _MGU, ("n",), _MGU, (("bias", ("n",)),)),
    "MGU3": CellLayout("MGU3", _MGU, ("n",), ("n",), (("bias", _MGU),)),
    "MINGRU": CellLayout("MINGRU", ("z", "h"), ("z", "h"), (), (("bias_ih", ("z", "h")),)),
}


def _split(t: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    return t.chunk(parts, dim=-1)


def recurrent_products(h: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``h @ weight^T``: (B, H_h) x (G*H, H_h) -> (B, G*H), one block of H columns per gate.

    With a recurrent-dropout ``mask`` (B, G*H_h), gate block g reads its own masked state:
    ``(mask_g * h) @ W_g^T`` (Keras's ``h_tm1_z``, ``h_tm1_r``, ``h_tm1_h``).
    """
    if bfloat16.enabled():   # bfloat16 operands and result, as the fused kernels compute it
        if mask is None:
            return bfloat16.RecurrentProduct.apply(h, weight)
        width = h.shape[1]
        blocks = mask.split(width, dim=-1)
        return torch.cat([bfloat16.RecurrentProduct.apply(h * m, w)
                          for m, w in zip(blocks, weight.split(weight.shape[0] // len(blocks)))], dim=-1)
    if mask is None:
        return h @ weight.t()
    batch, width = h.shape
    gates = mask.shape[-1] // width
    masked = h.unsqueeze(1) * mask.view(batch, gates, width)              # (B, G, H_h)
    per_gate = weight.view(gates, weight.shape[0] // gates, width)        # (G, H, H_h)
    return torch.einsum("bgi,goi->bgo", masked, per_gate).reshape(batch, -1)


def _mask_blocks(mask: torch.Tensor | None, start: int, stop: int, width: int) -> torch.Tensor | None:
    """Gate blocks start..stop (exclusive) of a (B, G*width) mask, or None without a mask."""
    return None if mask is None else mask[:, start * width: stop * width]


def gru_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None, reset_after: bool, activation: Activation = torch.tanh,
             recurrent_activation: Activation = torch.sigmoid,
             recurrent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One GRU step. gx: (B, 3H) rows r, z, n; weight_hh: (3H, H); recurrent_mask: (B, 3H) or None."""
    H = h.shape[-1]
    gx_r, gx_z, gx_n = _split(gx, 3)
    if reset_after:
        gh = recurrent_products(h, weight_hh, recurrent_mask)
        if bias_hh is not None:
            gh = gh + bias_hh
        gh_r, gh_z, gh_n = _split(gh, 3)
        r = recurrent_activation(gx_r + gh_r)
        z = recurrent_activation(gx_z + gh_z)
        n = activation(gx_n + r * gh_n)
    else:
        gh_rz = recurrent_products(h, weight_hh[: 2 * H], _mask_blocks(recurrent_mask, 0, 2, H))
        gh_r, gh_z = _split(gh_rz, 2)
        r = recurrent_activation(gx_r + gh_r)
        z = recurrent_activation(gx_z + gh_z)
        n = activation(gx_n + recurrent_products(r * h, weight_hh[2 * H:], _mask_blocks(recurrent_mask, 2, 3, H)))
    return (1 - z) * n + z * h


def lstm_step(gx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_hh: torch.Tensor,
              bias_hh: torch.Tensor | None, weight_hr: torch.Tensor | None,
              activation: Activation = torch.tanh, recurrent_activation: Activation = torch.sigmoid,
              recurrent_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. gx: (B, 4H) rows i, f, g, o; state (h, c); h has proj_size columns if projected;
    recurrent_mask: (B, 4 * h.shape[-1]) or None."""
    h, c = state
    gates = gx + recurrent_products(h, weight_hh, recurrent_mask)
    if bias_hh is not None:
        gates = gates + bias_hh
    i, f, g, o = _split(gates, 4)
    c_next = recurrent_activation(f) * c + recurrent_activation(i) * activation(g)
    h_next = recurrent_activation(o) * activation(c_next)
    if weight_hr is not None:
        h_next = h_next @ weight_hr.t()
    return h_next, c_next


def rnn_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None, nonlinearity: str | Activation,
             recurrent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One SimpleRNN step; nonlinearity is a name in ACTIVATIONS ("tanh", "relu", ...) or a function."""
    pre = gx + recurrent_products(h, weight_hh, recurrent_mask)
    if bias_hh is not None:
        pre = pre + bias_hh
    act = activation_function(nonlinearity, "nonlinearity") if isinstance(nonlinearity, str) else nonlinearity
    return act(pre)


def mgu_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, variant: str,
             activation: Activation = torch.tanh, recurrent_activation: Activation = torch.sigmoid,
             recurrent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One MGU step (any variant). gx: (B, 2H) rows f, n; weight_hh rows per LAYOUTS[variant];
    recurrent_mask: one H block per recurrent gate (f, n; only n for MGU3) or None."""
    H = h.shape[-1]
    gx_f, gx_n = _split(gx, 2)
    if variant == "MGU3":
        f = recurrent_activation(gx_f)
        weight_n, mask_n = weight_hh, recurrent_mask
    else:
        f = recurrent_activation(gx_f + recurrent_products(h, weight_hh[:H], _mask_blocks(recurrent_mask, 0, 1, H)))
        weight_n, mask_n = weight_hh[H:], _mask_blocks(recurrent_mask, 1, 2, H)
    n = activation(gx_n + recurrent_products(f * h, weight_n, mask_n))
    return (1 - f) * h + f * n


def mingru_candidate(pre: torch.Tensor, candidate: str) -> torch.Tensor:
    """minGRU's candidate h~: the identity, or the paper's positive map g (log-space version)."""
    if candidate == "identity":
        return pre
    return torch.where(pre >= 0, pre + 0.5, torch.sigmoid(pre))


def mingru_step(gx: torch.Tensor, h: torch.Tensor, candidate: str = "identity") -> torch.Tensor:
    """One minGRU step. gx: (B, 2H) rows z, h~ (already Linear_z(x), Linear_h(x))."""
    gx_z, gx_h = _split(gx, 2)
    z = torch.sigmoid(gx_z)
    return (1 - z) * h + z * mingru_candidate(gx_h, candidate)


StepFunction = Callable[..., State]

__all__ = ["CellLayout", "LAYOUTS", "ACTIVATIONS", "activation_function", "recurrent_products", "gru_step",
           "lstm_step", "rnn_step", "mgu_step", "mingru_step", "mingru_candidate", "State"]
