"""minGRU kernels: a sequential scan h_t = (1 - z_t) h_{t-1} + z_t h~_t (no recurrent weights).

gx (T, B, 2H) holds Linear_z(x) and Linear_h(x); z = sigmoid(gx_z), h~ = cand(gx_h) with
cand the identity or the paper's g (x + 1/2 for x >= 0, sigmoid(x) below). Backward is the
reverse-time adjoint; it recomputes z and h~ from gx (which the caller keeps anyway) and
reads the previous states from the workspace.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import (HALF, JIT, ONE, copy_vector, fma, gx_row, gx_shape, output_grad, project_frame,
                     project_sequence, project_stored, run_forward, run_rows, run_step, sigmoid, time_index, zero_tail)
from .region import team_rows


# --- the per-row passes --------------------------------------------------------------
# Each takes one row's 1-D views and is specialised by candidate (and, forward, training):
# the use_g test inside the j loop kept LLVM from vectorising it (as in gru.py). The g
# variants compute sigmoid(x) for every x and then select, so that branch does not stop
# the vectoriser either (the selected values are the same). They stay calls: inlined
# (inline="always"), the backward pass did not vectorise.


@njit(**JIT)
def _g(x):
    """The paper's g: x + 1/2 for x >= 0, sigmoid(x) below."""
    sx = sigmoid(x)
    return x + HALF if x >= 0 else sx


@njit(**JIT)
def _scan_identity(g, h, o, H):
    """One step of one row with h~ = gx_h: h = o = (1 - z) h + z h~."""
    for j in range(H):
        z = sigmoid(g[j])
        hj = fma(z, g[H + j], (ONE - z) * h[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _scan_g(g, h, o, H):
    """As _scan_identity with h~ = g(gx_h)."""
    for j in range(H):
        z = sigmoid(g[j])
        hj = fma(z, _g(g[H + j]), (ONE - z) * h[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _scan_identity_training(g, h, o, wh, H):
    """As _scan_identity, keeping h_{t-1} in wh."""
    for j in range(H):
        wh[j] = h[j]
        z = sigmoid(g[j])
        hj = fma(z, g[H + j], (ONE - z) * h[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _scan_g_training(g, h, o, wh, H):
    """As _scan_g, keeping h_{t-1} in wh."""
    for j in range(H):
        wh[j] = h[j]
        z = sigmoid(g[j])
        hj = fma(z, _g(g[H + j]), (ONE - z) * h[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _fwd_rows(b0, b1, gx, gidx, h0, lengths, reverse, use_g, training, out, h_n, ws_h):
    H = h0.shape[1]
    h = np.empty(H, dtype=h0.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        copy_vector(h, h0[b])
        for s in range(L):
            t = L - 1 - s if reverse else s
            if use_g and training:
                _scan_g_training(gx_row(gx, gidx, t, b), h, out[t, b], ws_h[t, b], H)
            elif use_g:
                _scan_g(gx_row(gx, gidx, t, b), h, out[t, b], H)
            elif training:
                _scan_identity_training(gx_row(gx, gidx, t, b), h, out[t, b], ws_h[t, b], H)
            else:
                _scan_identity(gx_row(gx, gidx, t, b), h, out[t, b], H)
        zero_tail(out, b, L)
        if training:
            zero_tail(ws_h, b, L)
        copy_vector(h_n[b], h)


@njit(**JIT)
def _bwd_identity(go, g, hp, dg, dh, H):
    """One step back through one row with h~ = gx_h: the dgx row, dh = d (1 - z)."""
    for j in range(H):
        d = dh[j] + go[j]
        z = sigmoid(g[j])
        dg[H + j] = d * z
        dg[j] = d * (g[H + j] - hp[j]) * z * (ONE - z)
        dh[j] = d * (ONE - z)


@njit(**JIT)
def _bwd_g(go, g, hp, dg, dh, H):
    """As _bwd_identity with h~ = g(gx_h): g' = sigmoid' below 0, 1 from 0 up."""
    for j in range(H):
        d = dh[j] + go[j]
        z = sigmoid(g[j])
        x = g[H + j]
        sx = sigmoid(x)
        below = x < 0
        dg[H + j] = d * z * (sx * (ONE - sx)) if below else d * z
        ht = sx if below else x + HALF
        dg[j] = d * (ht - hp[j]) * z * (ONE - z)
        dh[j] = d * (ONE - z)


@njit(**JIT)
def _bwd_rows(b0, b1, gx, lengths, reverse, use_g, grad_out, grad_bf, grad_h_n, ws_h, dgx, dh0):
    H = grad_out.shape[2]
    dh = np.empty(H, dtype=dgx.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        copy_vector(dh, grad_h_n[b])
        zero_tail(dgx, b, L)
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            if use_g:
                _bwd_g(output_grad(grad_out, t, b, grad_bf), gx[t, b], ws_h[t, b], dgx[t, b], dh, H)
            else:
                _bwd_identity(output_grad(grad_out, t, b, grad_bf), gx[t, b], ws_h[t, b], dgx[t, b], dh, H)
        copy_vector(dh0[b], dh)


# The scan costs ~20 flops per element instead of ~2H per element of a matrix cell.
_WORK_PER_ELEMENT = 40


@njit(**JIT)
def frame(x, w_in, input_transposed, input_panels, b_in, use_g, h, gx, out):
    """One streaming frame (streaming.Streamer): x (B, I) or (I,), w_in = W_ih^T (I, 2H) with
    ``input_transposed`` (its frame_panels ``input_panels``), else W_ih as stored (common.stored_matvec
    says which); the state h (B, H) is updated in place. gx (1, B, 2H) and out (B, H) are scratch. The
    step is stored_sequence's."""
    project_frame(x, w_in, input_transposed, input_panels, b_in, gx)
    _stored_step(gx[0], use_g, h, out)


@njit(**JIT)
def _stored_step(g, use_g, h, o):
    """One step: g (B, 2H) the step's input side; h (B, H) updated in place and copied to o."""
    H = h.shape[1]
    for i in range(h.shape[0]):
        if use_g:
            _scan_g(g[i], h[i], o[i], H)
        else:
            _scan_identity(g[i], h[i], o[i], H)


@njit(**JIT)
def stored_frame(x, w_ih, b_in, use_g, h):
    """One frame on the input weights as stored, read in place (``layer.step()``): x (B, I),
    w_ih (2H, I), b_in (2H,); the state h (B, H) is updated in place."""
    B, H = h.shape
    g = np.empty((B, 2 * H), h.dtype)
    project_stored(x, w_ih, b_in, g)
    _stored_step(g, use_g, h, np.empty((B, H), h.dtype))


@njit(**JIT)
def stored_sequence(x, w_ih, b_in, use_g, reverse, h, out):
    """A whole sequence in one call: x (T, B, I) C-contiguous, out (T, B, H); the state h (B, H)
    is updated in place."""
    T = x.shape[0]
    g = project_sequence(x, w_ih, b_in)
    for s in range(T):
        t = time_index(s, T, reverse)
        _stored_step(g[t], use_g, h, out[t])


# The blocks of a batch started from compiled code (common.run_rows, region.team_rows).
@njit(**JIT)
def _fwd_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows, bounds, blas_limit, args)


def step(gx_t, h, use_g):
    """One inference step: gx_t (B, 2H), h (B, H) -> h'."""
    return run_step(_fwd_rows, gx_t, (h,), (), (use_g,), 1)[0]


def forward(gx, h0, lengths, reverse, use_g, training, gx_index=None):
    T, B, G = gx_shape(gx, gx_index)
    H = h0.shape[1]
    out, (h_n,), ws = run_forward(_fwd_rows, gx, (h0,), (), lengths, reverse, (use_g,), training,
                                  (H,), T * B * H * _WORK_PER_ELEMENT, gx_index, _fwd_in_team)
    return out, h_n, ws


def backward(ws, gx, grad_out, grad_h_n, lengths, reverse, use_g, grad_bf=False):
    (ws_h,) = ws
    T, B, H = ws_h.shape
    dt = grad_out.dtype
    dgx = np.empty((T, B, 2 * H), dt)
    dh0 = np.empty((B, H), dt)
    args = (gx, lengths, reverse, use_g, grad_out, grad_bf, grad_h_n, ws_h, dgx, dh0)
    run_rows(_bwd_rows, B, T * B * H * _WORK_PER_ELEMENT, args, in_team=_bwd_in_team)
    return dgx, dh0, [], None
