"""MGU kernels, all four variants (gates f, n; see :mod:`grukit.nn.cells`).

MGU, MGU1 and MGU2 differ only in what the caller put into gx, so one kernel serves them:
w (2H, H) rows U_f, U_n. MGU3 has no U_f (f = sigmoid(gx_f)): w (H, H) is U_n alone.
``has_uf`` tells which. The workspace keeps f, n, the previous h and f * h (what the U_n
rows of the weight gradient multiply). No bias_hh: every MGU bias is already in gx.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import JIT, ONE, axpy_matvec, run_forward, run_rows, run_step, sigmoid, tanh, zero_tail


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, lengths, reverse, has_uf, training,
              out, h_n, ws_g, ws_h, ws_x):
    H = h0.shape[1]
    cn = H if has_uf else 0
    h = np.empty(H, dtype=h0.dtype)
    gf = np.empty(H, dtype=h0.dtype)
    gn = np.empty(H, dtype=h0.dtype)
    fh = np.empty(H, dtype=h0.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        h[:] = h0[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            g = gx[t, b]
            o = out[t, b]
            if training:
                ws_h[t, b, :] = h
            if has_uf:
                gf[:] = 0
                axpy_matvec(h, w_t, 0, 0, H, gf)
                for j in range(H):
                    f = sigmoid(g[j] + gf[j])
                    gf[j] = f
                    fh[j] = f * h[j]
            else:
                for j in range(H):
                    f = sigmoid(g[j])
                    gf[j] = f
                    fh[j] = f * h[j]
            gn[:] = 0
            axpy_matvec(fh, w_t, 0, cn, H, gn)
            for j in range(H):
                f = gf[j]
                n = tanh(g[H + j] + gn[j])
                hj = (ONE - f) * h[j] + f * n
                h[j] = hj
                o[j] = hj
                if training:
                    ws_g[t, b, j] = f
                    ws_g[t, b, H + j] = n
                    ws_x[t, b, j] = fh[j]
        zero_tail(out, b, L)
        if training:
            zero_tail(ws_g, b, L)
            zero_tail(ws_h, b, L)
            zero_tail(ws_x, b, L)
        h_n[b] = h


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, has_uf, grad_out, grad_h_n, ws_g, ws_h, dgx, dh0):
    H = grad_out.shape[2]
    rn = H if has_uf else 0
    dh = np.empty(H, dtype=dgx.dtype)
    d_fh = np.empty(H, dtype=dgx.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        dh[:] = grad_h_n[b]
        zero_tail(dgx, b, L)
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            go = grad_out[t, b]
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            dg = dgx[t, b]
            for j in range(H):
                d = dh[j] + go[j]
                f = gs[j]
                n = gs[H + j]
                dg[H + j] = d * f * (ONE - n * n)
                dg[j] = d * (n - hp[j])          # df, completed below
                dh[j] = d * (ONE - f)
            d_fh[:] = 0
            axpy_matvec(dg[H:], w, rn, 0, H, d_fh)
            for j in range(H):
                f = gs[j]
                dg[j] = (dg[j] + d_fh[j] * hp[j]) * f * (ONE - f)
                dh[j] += d_fh[j] * f
            if has_uf:
                axpy_matvec(dg[:H], w, 0, 0, H, dh)
        dh0[b] = dh



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
