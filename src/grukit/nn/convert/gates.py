"""Gate re-ordering, the one primitive every weight-layout conversion is built from."""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError


def reorder_gates(array, from_order: str | tuple[str, ...], to_order: str | tuple[str, ...], axis: int = 0):
    """Permute the gate blocks of ``array`` along ``axis`` from one gate order to another.

    ``from_order`` and ``to_order`` name the gates, one letter each, e.g. ``"rzn"`` (PyTorch GRU)
    to ``"zrn"`` (Keras / ONNX GRU). Works on numpy arrays and torch tensors.
    """
    from_order, to_order = tuple(from_order), tuple(to_order)
    if sorted(from_order) != sorted(to_order):
        raise ShapeError(f"cannot reorder gates {from_order} into {to_order}: not the same gates")
    size = array.shape[axis]
    if size % len(from_order):
        raise ShapeError(f"axis {axis} has {size} entries, not a multiple of the {len(from_order)} gates "
                         f"{''.join(from_order)}; the weight does not belong to this cell type")
    hidden = size // len(from_order)
    blocks = {gate: _take(array, slice(i * hidden, (i + 1) * hidden), axis) for i, gate in enumerate(from_order)}
    pieces = [blocks[gate] for gate in to_order]
    if isinstance(array, np.ndarray):
        return np.concatenate(pieces, axis=axis)
    import torch
    return torch.cat(pieces, dim=axis)


def _take(array, index: slice, axis: int):
    selector = [slice(None)] * array.ndim
    selector[axis] = index
    return array[tuple(selector)]



def flip_update_gate(layer) -> None:
    """Switch a GRU between the two update-gate conventions, in place.

    grukit (like PyTorch, Keras, ONNX) writes ``h' = (1 - z) * n + z * h``: z is how much of the old
    state to keep. Many tutorials write ``h' = (1 - u) * h + u * n``: u is how much new information
    to write. The models are the same with u = 1 - z = sigmoid(-a) where z = sigmoid(a), so negating
    every weight and bias row of the update gate converts one into the other (applying it twice
    restores the layer). grukit calls 1 - z the *write strength* wherever it shows gates.
    """
    import torch

    if not layer.mode.startswith("GRU"):
        raise ShapeError(f"flip_update_gate applies to GRU layers, got {type(layer).__name__} ({layer.mode})")
    H = layer.hidden_size
    rows = slice(H, 2 * H)  # the z block in grukit's r, z, n order
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if not name.startswith("weight_hr"):
                param[rows] = -param[rows]


__all__ = ["reorder_gates", "flip_update_gate"]
