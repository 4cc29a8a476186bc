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

from .common import JIT, copy_vector, part_bounds, rows_product


@njit(**JIT)
def share_buffers(H, gates, thread, team_size, bhh, h, states):
    """A thread's share of the units and its local arrays: (u0, u1, local_g, local_b, products), local_b
    its bias rows (gather_rows), products (gates, 1, U) for share_products; the share of the state h
    (1, H) copied into states[0] (the state before the first step). ``gates`` typed (np.int64), not a
    literal: a literal compiles this once per value (tests/nn/kernels/test_cache_determinism.py)."""
    u0, u1 = part_bounds(H, thread, team_size)
    U = u1 - u0
    local_b = np.empty(gates * U, h.dtype)
    gather_rows(bhh, u0, u1, H, gates, local_b)
    copy_vector(states[0, 0, u0:u1], h[0, u0:u1])
    return u0, u1, np.empty(gates * U, h.dtype), local_b, np.empty((gates, 1, U), h.dtype)


@njit(**JIT)
def share_step(g_row, w, transposed, states, s, u0, u1, products, local_g):
    """Step s's products and input side of the share (share_products, gather_rows) from the state
    before it, states[s % 2]; returns the share of states[(s + 1) % 2], the state after it, holding
    the share of the state before (the gate pass updates it in place)."""
    before = states[s % 2]
    after = states[(s + 1) % 2, 0, u0:u1]
    share_products(before, w, transposed, u0, u1, products)
    gather_rows(g_row, u0, u1, before.shape[1], products.shape[0], local_g)
    copy_vector(after, before[0, u0:u1])
    return after


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


__all__ = ["gather_rows", "share_buffers", "share_products", "share_step"]
