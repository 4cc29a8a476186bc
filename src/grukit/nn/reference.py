"""Pure-torch time loops: the oracle for every fused kernel, and the path on any device.

One call runs one layer in one direction over a time-major sequence. The input-side
pre-activations ``gx`` of all time steps are computed by the caller in one GEMM
(see :mod:`grukit.nn.cells` for what ``gx`` holds), so the loop only adds the
recurrent part. Autograd records the loop, which makes this slow but obviously right.

Padding semantics (shared with the fused kernels): with ``lengths``, sequence b is
valid for steps ``t < lengths[b]``. Steps past the end keep the state unchanged and
produce a zero output; in the reverse direction the loop therefore starts, for each
sequence, at its last valid step. This is exactly PackedSequence semantics.

Two extensions run only here (the fused kernels compute neither): a ``layout`` whose
activations differ from the mode's defaults, and a recurrent-dropout ``recurrent_mask``
(B, G_rec * H_h) that every step of the sequence reuses (see :mod:`grukit.nn.cells`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import bfloat16
from .cells import (LAYOUTS, CellLayout, State, gru_step, lstm_step, mgu_step, mingru_candidate, mingru_step,
                    rnn_step)


@dataclass(frozen=True)
class DirectionWeights:
    """The recurrent-side parameters of one layer and direction (input side is already in gx)."""

    weight_hh: torch.Tensor | None
    bias_hh: torch.Tensor | None = None
    weight_hr: torch.Tensor | None = None  # LSTM projection


def step(mode: str, gx_t: torch.Tensor, state: State, weights: DirectionWeights,
         candidate: str = "identity", layout: CellLayout | None = None,
         recurrent_mask: torch.Tensor | None = None) -> State:
    """Advance one time step of any cell. gx_t: (B, G*H).

    layout: the layer's layout, for its activations (None: the mode's defaults);
    recurrent_mask: (B, G_rec * H_h) recurrent-dropout mask or None (no dropout).
    """
    if mode not in LAYOUTS:
        raise ValueError(f"unknown cell mode {mode!r}; expected one of {sorted(LAYOUTS)}")
    if mode == "MINGRU":
        return mingru_step(gx_t, state, candidate)
    activation, recurrent_activation = (layout or LAYOUTS[mode]).activation_functions
    if mode in ("RNN_TANH", "RNN_RELU"):
        return rnn_step(gx_t, state, weights.weight_hh, weights.bias_hh, activation, recurrent_mask)
    gated = {"activation": activation, "recurrent_activation": recurrent_activation,
             "recurrent_mask": recurrent_mask}
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        reset_after = mode == "GRU"
        return gru_step(gx_t, state, weights.weight_hh, weights.bias_hh if reset_after else None,
                        reset_after, **gated)
    if mode == "LSTM":
        return lstm_step(gx_t, state, weights.weight_hh, weights.bias_hh, weights.weight_hr, **gated)
    return mgu_step(gx_t, state, weights.weight_hh, mode, **gated)


def _output_of(state: State) -> torch.Tensor:
    return state[0] if isinstance(state, tuple) else state


def _select(mask: torch.Tensor, new: State, old: State) -> State:
    if isinstance(new, tuple):
        return tuple(torch.where(mask, n, o) for n, o in zip(new, old))
    return torch.where(mask, new, old)


def run_direction(mode: str, gx: torch.Tensor, state0: State, weights: DirectionWeights,
                  lengths: torch.Tensor | None = None, reverse: bool = False,
                  candidate: str = "identity", layout: CellLayout | None = None,
                  recurrent_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
    """Run one layer and direction over time.

    gx: (T, B, G*H) input-side pre-activations; state0: (B, H) or (h0, c0) for LSTM;
    lengths: (B,) int64 with 1 <= lengths <= T, or None for full length;
    layout: the layer's layout (its activations), None for the mode's defaults;
    recurrent_mask: (B, G_rec * H_h), the recurrent-dropout mask of each sequence, the same
    at every step (Keras's recurrent_dropout), or None.
    Returns the outputs (T, B, H_out), zero past each length, and the final state.
    """
    T = gx.shape[0]
    if bfloat16.enabled() and weights.weight_hh is not None:   # grad W_hh: the steps' sum, rounded once
        weights = replace(weights, weight_hh=bfloat16.RoundedGradient.apply(weights.weight_hh))
    state = state0
    outputs: list[torch.Tensor] = [None] * T  # type: ignore[list-item]
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        new_state = step(mode, gx[t], state, weights, candidate, layout, recurrent_mask)
        if lengths is None:
            state = new_state
            outputs[t] = _output_of(state)
        else:
            valid = (t < lengths).unsqueeze(1)
            state = _select(valid, new_state, state)
            out = _output_of(new_state)
            outputs[t] = torch.where(valid, out, torch.zeros_like(out))
    return torch.stack(outputs, 0), state


def mingru_parallel_scan(gx: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor | None = None,
                         reverse: bool = False, candidate: str = "identity"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """minGRU over all steps at once: h_t = a_t * h_{t-1} + b_t with a = 1 - z, b = z * h~.

    Solved in log space (Feng et al. 2024, Heinsen 2023): with log A_t = sum_{k<=t} log a_k,
    h_t = exp(log A_t) * (h0 + sum_k b_k / A_k). The sum runs through logcumsumexp on the
    positive and negative parts of b separately, so h~ may take any sign and nothing
    overflows for long sequences. Same arguments and results as run_direction("MINGRU", ...).
    """
    if reverse:
        gx = _reverse_valid(gx, lengths)
    gx_z, gx_h = gx.chunk(2, dim=-1)
    log_a = -torch.nn.functional.softplus(gx_z)          # log(1 - sigmoid(k))
    log_z = -torch.nn.functional.softplus(-gx_z)         # log(sigmoid(k))
    b_tilde = mingru_candidate(gx_h, candidate)
    if lengths is not None:
        T = gx.shape[0]
        valid = (torch.arange(T, device=gx.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)
        log_a = torch.where(valid, log_a, torch.zeros_like(log_a))   # a = 1: state carried
        b_tilde = torch.where(valid, b_tilde, torch.zeros_like(b_tilde))
    log_a_cum = torch.cumsum(log_a, dim=0)
    # log|b_k| - log A_k, with log(0) where b_k has the other sign (or is zero).
    # log of a safe |b|: zeros (padding, exact zeros) would give inf * 0 = NaN in backward.
    nonzero = b_tilde != 0
    log_abs_b = log_z + torch.log(torch.where(nonzero, b_tilde.abs(), torch.ones_like(b_tilde)))
    # A huge finite negative stands for log(0): true -inf would make logcumsumexp's backward
    # compute exp(-inf - -inf) = NaN before the first entry of a sign; exp(-1e30) is exactly 0.
    # float16's range ends at 65504: a quarter of its lowest value (exp of it is 0 there too), so
    # that subtracting log_a_cum cannot reach -inf.
    lowest = -1e30 if log_abs_b.dtype in (torch.float32, torch.float64) else torch.finfo(log_abs_b.dtype).min / 4
    log_zero = torch.full_like(log_abs_b, lowest)
    scaled_pos = torch.where(b_tilde > 0, log_abs_b, log_zero) - log_a_cum
    scaled_neg = torch.where(b_tilde < 0, log_abs_b, log_zero) - log_a_cum
    pos = torch.exp(torch.logcumsumexp(scaled_pos, dim=0) + log_a_cum)
    neg = torch.exp(torch.logcumsumexp(scaled_neg, dim=0) + log_a_cum)
    h = pos - neg + torch.exp(log_a_cum) * h0.unsqueeze(0)
    if lengths is not None:
        last = (lengths - 1).clamp(min=0).view(1, -1, 1).expand(1, -1, h.shape[-1])
        h_n = h.gather(0, last).squeeze(0)
        h = torch.where(valid, h, torch.zeros_like(h))
    else:
        h_n = h[-1]
    if reverse:
        h = _reverse_valid(h, lengths)
    return h, h_n


def _reverse_valid(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence within its valid steps; padding stays at the end."""
    if lengths is None:
        return seq.flip(0)
    T = seq.shape[0]
    t = torch.arange(T, device=seq.device).unsqueeze(1)
    src = torch.where(t < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - t, t)
    return seq.gather(0, src.unsqueeze(-1).expand_as(seq))


__all__ = ["DirectionWeights", "step", "run_direction", "mingru_parallel_scan"]
