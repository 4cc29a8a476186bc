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

from .common import (JIT, ONE, matmul_acc, max_length, run_forward, run_rows, run_step, sigmoid,
                     tanh, time_index, zero_tail)


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, bhh, lengths, reverse, reset_after, training,
              out, h_n, ws_g, ws_h, ws_x):
    H = h0.shape[1]
    R = b1 - b0
    hb = h0[b0:b1].copy()
    gh = np.zeros((R, 3 * H), h0.dtype)
    rh = np.zeros((R, H), h0.dtype)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
        if training:
            zero_tail(ws_g, b, lengths[b])
            zero_tail(ws_h, b, lengths[b])
            if not reset_after:
                zero_tail(ws_x, b, lengths[b])
    for s in range(max_length(lengths, b0, b1)):
        gh[:] = 0
        if reset_after:
            matmul_acc(hb, w_t, 0, 0, 3 * H, gh)
        else:
            matmul_acc(hb, w_t, 0, 0, 2 * H, gh)
            for i in range(R):
                t = time_index(s, lengths[b0 + i], reverse)
                if t < 0:
                    continue
                g = gx[t, b0 + i]
                for j in range(H):
                    r = sigmoid(g[j] + gh[i, j])
                    gh[i, j] = r
                    rh[i, j] = r * hb[i, j]
            matmul_acc(rh, w_t, 0, 2 * H, H, gh[:, 2 * H:])
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            g = gx[t, b]
            o = out[t, b]
            h = hb[i]
            gr = gh[i]
            if training:
                ws_h[t, b, :] = h
            if reset_after:
                for j in range(H):
                    r = sigmoid(g[j] + (gr[j] + bhh[j]))
                    z = sigmoid(g[H + j] + (gr[H + j] + bhh[H + j]))
                    ghn = gr[2 * H + j] + bhh[2 * H + j]
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
                for j in range(H):
                    z = sigmoid(g[H + j] + gr[H + j])
                    n = tanh(g[2 * H + j] + gr[2 * H + j])
                    hj = (ONE - z) * n + z * h[j]
                    h[j] = hj
                    o[j] = hj
                    if training:
                        ws_g[t, b, j] = gr[j]
                        ws_g[t, b, H + j] = z
                        ws_g[t, b, 2 * H + j] = n
                        ws_x[t, b, j] = rh[i, j]
    h_n[b0:b1] = hb


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, reset_after, grad_out, grad_h_n, ws_g, ws_h,
              dgx, dgh, dh0):
    H = grad_out.shape[2]
    R = b1 - b0
    dh = grad_h_n[b0:b1].copy()
    dhp = np.empty((R, H), dgx.dtype)
    dgb = np.zeros((R, 3 * H), dgx.dtype)   # this step's recurrent-side grads, all rows
    d_rh = np.empty((R, H), dgx.dtype)
    for b in range(b0, b1):
        zero_tail(dgx, b, lengths[b])
        if reset_after:
            zero_tail(dgh, b, lengths[b])
    for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:            # past this sequence's end: state carried, nothing flows
                dgb[i, :] = 0
                dhp[i, :] = dh[i]
                continue
            go = grad_out[t, b]
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            dg = dgx[t, b]
            gb = dgb[i]
            if reset_after:
                dr_ = dgh[t, b]
                for j in range(H):
                    d = dh[i, j] + go[j]
                    r = gs[j]
                    z = gs[H + j]
                    n = gs[2 * H + j]
                    dn = d * (ONE - z) * (ONE - n * n)
                    dr = dn * gs[3 * H + j] * r * (ONE - r)
                    dz = d * (hp[j] - n) * z * (ONE - z)
                    dg[j] = dr
                    dg[H + j] = dz
                    dg[2 * H + j] = dn
                    gb[j] = dr_[j] = dr
                    gb[H + j] = dr_[H + j] = dz
                    gb[2 * H + j] = dr_[2 * H + j] = dn * r
                    dhp[i, j] = d * z
            else:
                for j in range(H):
                    d = dh[i, j] + go[j]
                    z = gs[H + j]
                    n = gs[2 * H + j]
                    dg[2 * H + j] = gb[2 * H + j] = d * (ONE - z) * (ONE - n * n)
                    dg[H + j] = gb[H + j] = d * (hp[j] - n) * z * (ONE - z)
                    dhp[i, j] = d * z
        if reset_after:
            matmul_acc(dgb, w, 0, 0, H, dhp)
        else:
            d_rh[:] = 0
            matmul_acc(dgb[:, 2 * H:], w, 2 * H, 0, H, d_rh)
            for i in range(R):
                b = b0 + i
                t = time_index(s, lengths[b], reverse)
                if t < 0:
                    continue
                gs = ws_g[t, b]
                hp = ws_h[t, b]
                dg = dgx[t, b]
                for j in range(H):
                    r = gs[j]
                    dg[j] = dgb[i, j] = d_rh[i, j] * hp[j] * r * (ONE - r)
                    dhp[i, j] += d_rh[i, j] * r
            matmul_acc(dgb[:, :2 * H], w, 0, 0, H, dhp)
        dh[:] = dhp
    dh0[b0:b1] = dh


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
