"""A recurrent layer's training call on the fused kernels with the decisions made once.

``layer(x)`` with gradients recorded goes through :meth:`RecurrentLayer.forward`'s general path: it
checks the input and the state, decides per direction between the fused kernels and the reference
loop (dispatch.choose_path), finds the input projection's weights and its form, and only then calls
the kernel; some 500 Python calls before the loop starts. After a training step's kernels have
left the caches cold, those cost 90-190 us of S3's LSTM step (2.0-2.5 ms on a Zen 5; paths
alternating in one process).

For the common call (a plain 3-D tensor; no hx, lengths or embedding; no autocast, bfloat16 mode,
tracing or check_finite; every direction on the fused kernels; weights that are registered
parameters) a :class:`TrainingPlan`, kept on the layer and made again when its configuration or
parameters change (:func:`kept_plan`'s key), holds what those decisions give and runs the same
kernel calls (kernels.function.fused_run_direction) in the same order: the same results, bit for bit.
Any other call, and any input the general path would reject, takes the general path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import bfloat16, dispatch
from .cells import CellLayout
from .reference import DirectionWeights

KEPT = "_kept_training_plan"   # the attribute in the layer's __dict__


class _Direction(NamedTuple):
    reverse: bool
    params: dict
    weights: DirectionWeights
    projection: tuple   # (weight_ih, outer bias or None): recurrent.single_projection


class TrainingPlan:
    """One layer's directions, their weights and input projections, for :meth:`run`."""

    def __init__(self, mode: str, layout: CellLayout, candidate: str, hidden_size: int,
                 layers: list[list[_Direction]]) -> None:
        from .kernels.function import fused_run_direction, input_rows   # the kernels import numba: not before
        from .recurrent import input_preactivations
        self.mode, self.layout, self.candidate, self.hidden_size = mode, layout, candidate, hidden_size
        self.layers = layers
        # looked up here, once: an import statement in run() costs a few us a call
        self._run_direction, self._input_rows, self._input_preactivations = (
            fused_run_direction, input_rows, input_preactivations)

    def run(self, layer, input: torch.Tensor):
        """(output, h_n) (LSTM: (output, (h_n, c_n))) as the general path gives them for ``input``."""
        fused_run_direction, input_rows, input_preactivations = (
            self._run_direction, self._input_rows, self._input_preactivations)
        x = input.transpose(0, 1) if layer.batch_first else input
        zeros = torch.zeros((x.shape[1], self.hidden_size), dtype=x.dtype, device=x.device)
        state0 = (zeros, zeros) if self.mode == "LSTM" else zeros   # read only: one tensor serves all
        finals = []
        layer_input = x
        last = len(self.layers) - 1
        for index, directions in enumerate(self.layers):
            outputs = []
            for direction in directions:
                gx = input_rows(self.mode, layer_input, direction.projection) or input_preactivations(
                    self.layout, layer_input, direction.params, self.hidden_size, fused=True)
                out, final = fused_run_direction(self.mode, gx, state0, direction.weights, None, direction.reverse,
                                                 self.candidate)
                outputs.append(out)
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if layer.dropout and layer.training and index < last:
                layer_input = nn.functional.dropout(layer_input, layer.dropout, training=True)
        if self.mode == "LSTM":
            final = tuple(torch.stack([f[i] for f in finals], 0) for i in range(2))
        else:
            final = torch.stack(finals, 0)
        return (layer_input.transpose(0, 1) if layer.batch_first else layer_input), final


def kept_plan(layer, input) -> TrainingPlan | None:
    """The layer's kept TrainingPlan for this call of ``layer(input)`` (no hx, lengths or embedding),
    made or made again as its key asks; None where the general path runs."""
    if (type(input) is not torch.Tensor or input.dim() != 3 or not torch.is_grad_enabled()
            or torch._C._get_tracing_state() is not None or torch.compiler.is_exporting()
            or torch.is_autocast_enabled("cpu") or bfloat16.enabled() or layer.check_finite):
        return None
    if input.shape[2] != layer.input_size or not input.is_floating_point() or 0 in input.shape:
        return None   # the general path says what is wrong
    params = layer._parameters.values()
    key = (layer.kernel, layer.training, layer.recurrent_dropout, input.dtype, input.device,
           *((id(p), p.dtype, p.device) for p in params))
    kept = layer.__dict__.get(KEPT)
    if kept is None or kept[0] != key:
        kept = layer.__dict__[KEPT] = (key, _make(layer, input))
    return kept[1]


def _make(layer, x: torch.Tensor) -> TrainingPlan | None:
    """A plan where every direction runs on the fused kernels with registered parameters in x's dtype
    and on its device, else None."""
    from .recurrent import single_projection
    if layer.kernel == "reference" or (layer.training and layer.recurrent_dropout):
        return None
    if not layer._fused_kernels_cover_every_layer():
        return None
    layers = []
    for index in range(layer.num_layers):
        directions = []
        for direction in range(layer.num_directions):
            params, weights = layer._direction_weights(index, direction)
            if dispatch.fused_unsupported_reason(layer.mode, x.dtype, x.device, weights, layer.layout) is not None:
                return None
            projection = single_projection(layer.layout, params)
            if any(t is not None and (t.dtype != x.dtype or t.device != x.device) for t in projection):
                return None
            directions.append(_Direction(direction == 1, params, weights, projection))
        layers.append(directions)
    if not layer._reads_parameters_only():   # weights computed on access (parametrized, pruned)
        return None
    return TrainingPlan(layer.mode, layer.layout, layer.candidate, layer.hidden_size, layers)


__all__ = ["KEPT", "TrainingPlan", "kept_plan"]
