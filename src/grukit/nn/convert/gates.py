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


__all__ = ["reorder_gates"]
