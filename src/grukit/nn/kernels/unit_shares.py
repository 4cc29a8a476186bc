"""A batch of one's sequence with its hidden units shared out over threads (each family's
``split_sequence``): a thread's share of the units, and its rows of a step's products and input
side gathered into local arrays laid out as the family's gate pass reads a whole row (gate blocks
of the share's width U, one after another), so that the pass runs unchanged on them.

A thread reads only its units' rows of W_hh: on one thread a batch of one's step is bound by
reading W_hh from the core's cache; shared out, each core reads its part. The threads exchange
the new state at a barrier every step (region.barrier)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import JIT, copy_vector, rows_product


@njit(**JIT)
def unit_share(H, thread, team_size):
    """(u0, u1): thread's hidden units out of H, the bounds at multiples of 16 (whole vectors)."""
    u0 = (H * thread // team_size) // 16 * 16
    u1 = H if thread == team_size - 1 else (H * (thread + 1) // team_size) // 16 * 16
    return u0, u1


@njit(**JIT)
def gather_rows(vector, u0, u1, H, gates, local):
    """local[k U + j] = vector[k H + u0 + j] for each gate block k < gates (U = u1 - u0)."""
    U = u1 - u0
    for k in range(gates):
        copy_vector(local[k * U:(k + 1) * U], vector[k * H + u0:k * H + u1])


@njit(**JIT)
def share_products(state, w, transposed, u0, u1, products):
    """products[k] = state @ W[k H + u0:k H + u1].T for each gate block k: state (1, H), w as
    common.rows_product takes it, products (gates, 1, U) (C-contiguous per block: a column slice of
    one (1, gates U) array would not vectorise)."""
    H = state.shape[1]
    for k in range(products.shape[0]):
        rows_product(state, w, transposed, k * H + u0, k * H + u1, products[k])


__all__ = ["gather_rows", "share_products", "unit_share"]
