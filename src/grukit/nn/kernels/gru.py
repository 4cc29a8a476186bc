"""GRU kernels, both reset placements (gates r, z, n; see :mod:`grukit.nn.cells`).

reset_after=True (mode "GRU"): n = tanh(gx_n + r * (W_hn h + b_hn)); the workspace keeps
the pre-reset term W_hn h + b_hn. reset_after=False ("GRU_RESET_BEFORE"):
n = tanh(gx_n + W_hn (r * h)) and no bias_hh; the workspace keeps r * h, which is what the
candidate rows of grad W_hh multiply.

Shapes: gx (T, B, 3H) C-contiguous, h0 (B, H), w (3H, H) rows r, z, n as stored,
w_t = w.T packed (H, 3H), bias_hh (3H,) (zeros when absent), lengths int64 (B,).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import JIT, ONE, axpy_matvec, run_forward, run_rows, run_step, sigmoid, tanh, zero_tail


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, bhh, lengths, reverse, reset_after, training,
              out, h_n, ws_g, ws_h, ws_x):
    H = h0.shape[1]
    h = np.empty(H, dtype=h0.dtype)
    gh = np.empty(3 * H, dtype=h0.dtype)
    rh = np.empty(H, dtype=h0.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        h[:] = h0[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            g = gx[t, b]
            o = out[t, b]
            if training:
                ws_h[t, b, :] = h
            if reset_after:
                gh[:] = 0
                axpy_matvec(h, w_t, 0, 0, 3 * H, gh)
                for j in range(H):
                    r = sigmoid(g[j] + (gh[j] + bhh[j]))
                    z = sigmoid(g[H + j] + (gh[H + j] + bhh[H + j]))
                    ghn = gh[2 * H + j] + bhh[2 * H + j]
                    n = tanh(g[2 * H + j] + r * ghn)
                    hj = (ONE - z) * n + z * h[j]
                    h[j] = hj
                    o[j] = hj
                    if training:
                        ws_g[t, b, j] = r
                        ws_g[t, b, H + j] = z
                        ws_g[t, b, 2 * H + j] = n
                        ws_g[t, b, 3 * H + j] = ghn
            else:
                gh[:] = 0
                axpy_matvec(h, w_t, 0, 0, 2 * H, gh)
                for j in range(H):
                    r = sigmoid(g[j] + gh[j])
                    gh[j] = r
                    rh[j] = r * h[j]
                gn = gh[2 * H:]
                gn[:] = 0
                axpy_matvec(rh, w_t, 0, 2 * H, H, gn)
                for j in range(H):
                    r = gh[j]
                    z = sigmoid(g[H + j] + gh[H + j])
                    n = tanh(g[2 * H + j] + gn[j])
                    hj = (ONE - z) * n + z * h[j]
                    h[j] = hj
                    o[j] = hj
                    if training:
                        ws_g[t, b, j] = r
                        ws_g[t, b, H + j] = z
                        ws_g[t, b, 2 * H + j] = n
                        ws_x[t, b, j] = rh[j]
        zero_tail(out, b, L)
        if training:
            zero_tail(ws_g, b, L)
            zero_tail(ws_h, b, L)
            if not reset_after:
                zero_tail(ws_x, b, L)
        h_n[b] = h


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, reset_after, grad_out, grad_h_n, ws_g, ws_h,
              dgx, dgh, dh0):
    H = grad_out.shape[2]
    dh = np.empty(H, dtype=dgx.dtype)
    dhp = np.empty(H, dtype=dgx.dtype)
    d_rh = np.empty(H, dtype=dgx.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        dh[:] = grad_h_n[b]
        zero_tail(dgx, b, L)
        if reset_after:
            zero_tail(dgh, b, L)
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            go = grad_out[t, b]
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            dg = dgx[t, b]
            if reset_after:
                dr_ = dgh[t, b]
                for j in range(H):
                    d = dh[j] + go[j]
                    r = gs[j]
                    z = gs[H + j]
                    n = gs[2 * H + j]
                    dn = d * (ONE - z) * (ONE - n * n)
                    dr = dn * gs[3 * H + j] * r * (ONE - r)
                    dz = d * (hp[j] - n) * z * (ONE - z)
                    dg[j] = dr
                    dg[H + j] = dz
                    dg[2 * H + j] = dn
                    dr_[j] = dr
                    dr_[H + j] = dz
                    dr_[2 * H + j] = dn * r
                    dhp[j] = d * z
                axpy_matvec(dr_, w, 0, 0, H, dhp)
            else:
                for j in range(H):
                    d = dh[j] + go[j]
                    z = gs[H + j]
                    n = gs[2 * H + j]
                    dg[2 * H + j] = d * (ONE - z) * (ONE - n * n)
                    dg[H + j] = d * (hp[j] - n) * z * (ONE - z)
                    dhp[j] = d * z
                d_rh[:] = 0
                axpy_matvec(dg[2 * H:], w, 2 * H, 0, H, d_rh)
                for j in range(H):
                    r = gs[j]
                    dg[j] = d_rh[j] * hp[j] * r * (ONE - r)
                    dhp[j] += d_rh[j] * r
                axpy_matvec(dg[:2 * H], w, 0, 0, H, dhp)
            dh[:] = dhp
        dh0[b] = dh



def step(gx_t, h, w_t, bhh, reset_after):
    """One inference step: gx_t (B, 3H), h (B, H) -> h'."""
    return run_step(_fwd_rows, gx_t, (h,), (w_t, bhh), (reset_after,), 3)[0]


def forward(gx, h0, w_t, bhh, lengths, reverse, reset_after, training):
    """Returns out (T, B, H), h_n (B, H) and the workspace (None when not training)."""
    T, B, G = gx.shape
    H = h0.shape[1]
    widths = (4 * H, H, H) if reset_after else (3 * H, H, H)
    out, (h_n,), ws = run_forward(_fwd_rows, gx, (h0,), (w_t, bhh), lengths, reverse,
                                  (reset_after,), training, widths, T * B * G * H)
    return out, h_n, ws


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, reset_after):
    """Returns grad_gx (T, B, 3H), grad_h0 (B, H), the weight-gradient terms and the
    bias-gradient source (see :func:`grukit.nn.kernels.api.weight_grads`)."""
    ws_g, ws_h, ws_x = ws
    T, B, H = grad_out.shape
    dt = grad_out.dtype
    dgx = np.empty((T, B, 3 * H), dt)
    dgh = np.empty((T, B, 3 * H), dt) if reset_after else dgx
    dh0 = np.empty((B, H), dt)
    args = (w, lengths, reverse, reset_after, grad_out, grad_h_n, ws_g, ws_h, dgx, dgh, dh0)
    run_rows(_bwd_rows, B, 2 * T * B * 3 * H * H, args)
    if reset_after:
        return dgx, dh0, [(0, 3 * H, dgh, ws_h)], dgh
    return dgx, dh0, [(0, 2 * H, dgx[..., :2 * H], ws_h), (2 * H, 3 * H, dgx[..., 2 * H:], ws_x)], None
