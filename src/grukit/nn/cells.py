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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


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
    "RNN_RELU": CellLayout("RNN_RELU", ("h",), ("h",), ("h",), _two_biases(("h",))),
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


def gru_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None, reset_after: bool) -> torch.Tensor:
    """One GRU step. gx: (B, 3H) rows r, z, n; weight_hh: (3H, H)."""
    H = h.shape[-1]
    gx_r, gx_z, gx_n = _split(gx, 3)
    if reset_after:
        gh = h @ weight_hh.t()
        if bias_hh is not None:
            gh = gh + bias_hh
        gh_r, gh_z, gh_n = _split(gh, 3)
        r = torch.sigmoid(gx_r + gh_r)
        z = torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
    else:
        gh_rz = h @ weight_hh[: 2 * H].t()
        gh_r, gh_z = _split(gh_rz, 2)
        r = torch.sigmoid(gx_r + gh_r)
        z = torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + (r * h) @ weight_hh[2 * H:].t())
    return (1 - z) * n + z * h


def lstm_step(gx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_hh: torch.Tensor,
              bias_hh: torch.Tensor | None, weight_hr: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. gx: (B, 4H) rows i, f, g, o; state (h, c); h has proj_size columns if projected."""
    h, c = state
    gates = gx + h @ weight_hh.t()
    if bias_hh is not None:
        gates = gates + bias_hh
    i, f, g, o = _split(gates, 4)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    if weight_hr is not None:
        h_next = h_next @ weight_hr.t()
    return h_next, c_next


def rnn_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None, nonlinearity: str) -> torch.Tensor:
    """One SimpleRNN step with tanh or relu."""
    pre = gx + h @ weight_hh.t()
    if bias_hh is not None:
        pre = pre + bias_hh
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def mgu_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, variant: str) -> torch.Tensor:
    """One MGU step (any variant). gx: (B, 2H) rows f, n; weight_hh rows per LAYOUTS[variant]."""
    H = h.shape[-1]
    gx_f, gx_n = _split(gx, 2)
    if variant == "MGU3":
        f = torch.sigmoid(gx_f)
        weight_n = weight_hh
    else:
        f = torch.sigmoid(gx_f + h @ weight_hh[:H].t())
        weight_n = weight_hh[H:]
    n = torch.tanh(gx_n + (f * h) @ weight_n.t())
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

__all__ = ["CellLayout", "LAYOUTS", "gru_step", "lstm_step", "rnn_step", "mgu_step",
           "mingru_step", "mingru_candidate", "State"]
