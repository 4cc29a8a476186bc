"""MGU kernels, all four variants (gates f, n; see :mod:`grukit.nn.cells`).

MGU, MGU1 and MGU2 differ only in what the caller put into gx, so one kernel serves them:
w (2H, H) rows U_f, U_n. MGU3 has no U_f (f = sigmoid(gx_f)): w (H, H) is U_n alone.
``has_uf`` tells which. The workspace keeps f, n, the previous h and f * h (what the U_n
rows of the weight gradient multiply). No bias_hh: every MGU bias is already in gx.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import (JIT, ONE, matmul_acc, max_length, run_forward, run_rows, run_step, sigmoid,
                     tanh, time_index, zero_tail)


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, lengths, reverse, has_uf, training,
              out, h_n, ws_g, ws_h, ws_x):
    H = h0.shape[1]
    R = b1 - b0
    cn = H if has_uf else 0
    hb = h0[b0:b1].copy()
    gf = np.zeros((R, H), h0.dtype)
    gn = np.zeros((R, H), h0.dtype)
    fh = np.zeros((R, H), h0.dtype)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
        if training:
            zero_tail(ws_g, b, lengths[b])
            zero_tail(ws_h, b, lengths[b])
            zero_tail(ws_x, b, lengths[b])
    for s in range(max_length(lengths, b0, b1)):
        if has_uf:
            gf[:] = 0
            matmul_acc(hb, w_t, 0, 0, H, gf)
        for i in range(R):
            t = time_index(s, lengths[b0 + i], reverse)
            if t < 0:
                continue
            g = gx[t, b0 + i]
            for j in range(H):
                f = sigmoid(g[j] + gf[i, j]) if has_uf else sigmoid(g[j])
                gf[i, j] = f
                fh[i, j] = f * hb[i, j]
        gn[:] = 0
        matmul_acc(fh, w_t, 0, cn, H, gn)
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            g = gx[t, b]
            o = out[t, b]
            h = hb[i]
            if training:
                ws_h[t, b, :] = h
            for j in range(H):
                f = gf[i, j]
                n = tanh(g[H + j] + gn[i, j])
                hj = (ONE - f) * h[j] + f * n
                h[j] = hj
                o[j] = hj
                if training:
                    ws_g[t, b, j] = f
                    ws_g[t, b, H + j] = n
                    ws_x[t, b, j] = fh[i, j]
    h_n[b0:b1] = hb


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, has_uf, grad_out, grad_h_n, ws_g, ws_h, dgx, dh0):
    H = grad_out.shape[2]
    R = b1 - b0
    rn = H if has_uf else 0
    dh = grad_h_n[b0:b1].copy()
    dgb = np.zeros((R, 2 * H), dgx.dtype)   # this step's (df, dn) pre-activation grads
    d_fh = np.empty((R, H), dgx.dtype)
    for b in range(b0, b1):
        zero_tail(dgx, b, lengths[b])
    for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:            # past this sequence's end: state carried
                dgb[i, :] = 0
                continue
            go = grad_out[t, b]
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            for j in range(H):
                d = dh[i, j] + go[j]
                f = gs[j]
                n = gs[H + j]
                dgb[i, H + j] = d * f * (ONE - n * n)
                dgb[i, j] = d * (n - hp[j])          # df, completed below
                dh[i, j] = d * (ONE - f)
        d_fh[:] = 0
        matmul_acc(dgb[:, H:], w, rn, 0, H, d_fh)
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            dg = dgx[t, b]
            for j in range(H):
                f = gs[j]
                dgb[i, j] = (dgb[i, j] + d_fh[i, j] * hp[j]) * f * (ONE - f)
                dh[i, j] += d_fh[i, j] * f
                dg[j] = dgb[i, j]
                dg[H + j] = dgb[i, H + j]
        if has_uf:
            matmul_acc(dgb[:, :H], w, 0, 0, H, dh)
    dh0[b0:b1] = dh


def step(gx_t, h, w_t, has_uf):
    """One inference step: gx_t (B, 2H), h (B, H) -> h'."""
    return run_step(_fwd_rows, gx_t, (h,), (w_t,), (has_uf,), 3)[0]


def forward(gx, h0, w_t, lengths, reverse, has_uf, training):
    T, B, G = gx.shape
    H = h0.shape[1]
    out, (h_n,), ws = run_forward(_fwd_rows, gx, (h0,), (w_t,), lengths, reverse, (has_uf,),
                                  training, (2 * H, H, H), T * B * w_t.shape[1] * H)
    return out, h_n, ws


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, has_uf):
    ws_g, ws_h, ws_x = ws
    T, B, H = grad_out.shape
    dt = grad_out.dtype
    dgx = np.empty((T, B, 2 * H), dt)
    dh0 = np.empty((B, H), dt)
    args = (w, lengths, reverse, has_uf, grad_out, grad_h_n, ws_g, ws_h, dgx, dh0)
    run_rows(_bwd_rows, B, T * B * w.shape[0] * H, args)
    if has_uf:
        terms = [(0, H, dgx[..., :H], ws_h), (H, 2 * H, dgx[..., H:], ws_x)]
    else:
        terms = [(0, H, dgx[..., H:], ws_x)]
    return dgx, dh0, terms, None
