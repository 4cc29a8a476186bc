"""SimpleRNN kernels: h' = act(gx + W_hh h + b_hh) with act tanh or relu.

Shapes: gx (T, B, H), h0 (B, H), w (H, H), w_t = w.T packed, bias_hh (H,) (zeros when
absent). The workspace keeps h' (the activation output) and the previous h.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import JIT, ONE, ZERO, axpy_matvec, run_forward, run_rows, run_step, tanh, zero_tail


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, bhh, lengths, reverse, relu, training,
              out, h_n, ws_g, ws_h):
    H = h0.shape[1]
    h = np.empty(H, dtype=h0.dtype)
    gh = np.empty(H, dtype=h0.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        h[:] = h0[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            g = gx[t, b]
            o = out[t, b]
            if training:
                ws_h[t, b, :] = h
            gh[:] = 0
            axpy_matvec(h, w_t, 0, 0, H, gh)
            for j in range(H):
                pre = (g[j] + gh[j]) + bhh[j]
                if relu:
                    hj = pre if (pre > 0 or pre != pre) else ZERO  # NaN passes, like torch.relu
                else:
                    hj = tanh(pre)
                h[j] = hj
                o[j] = hj
            if training:
                ws_g[t, b, :] = h
        zero_tail(out, b, L)
        if training:
            zero_tail(ws_g, b, L)
            zero_tail(ws_h, b, L)
        h_n[b] = h


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, relu, grad_out, grad_h_n, ws_g, dgx, dh0):
    H = grad_out.shape[2]
    dh = np.empty(H, dtype=dgx.dtype)
    for b in range(b0, b1):
        L = lengths[b]
        dh[:] = grad_h_n[b]
        zero_tail(dgx, b, L)
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            go = grad_out[t, b]
            hs = ws_g[t, b]
            dg = dgx[t, b]
            for j in range(H):
                d = dh[j] + go[j]
                if relu:
                    dg[j] = d if hs[j] > 0 else ZERO
                else:
                    dg[j] = d * (ONE - hs[j] * hs[j])
            dh[:] = 0
            axpy_matvec(dg, w, 0, 0, H, dh)
        dh0[b] = dh



def step(gx_t, h, w_t, bhh, relu):
    """One inference step: gx_t (B, H), h (B, H) -> h'."""
    return run_step(_fwd_rows, gx_t, (h,), (w_t, bhh), (relu,), 2)[0]


def forward(gx, h0, w_t, bhh, lengths, reverse, relu, training):
    T, B, H = gx.shape
    out, (h_n,), ws = run_forward(_fwd_rows, gx, (h0,), (w_t, bhh), lengths, reverse, (relu,),
                                  training, (H, H), T * B * H * H)
    return out, h_n, ws


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, relu):
    ws_g, ws_h = ws
    T, B, H = grad_out.shape
    dt = grad_out.dtype
    dgx = np.empty((T, B, H), dt)
    dh0 = np.empty((B, H), dt)
    args = (w, lengths, reverse, relu, grad_out, grad_h_n, ws_g, dgx, dh0)
    run_rows(_bwd_rows, B, T * B * H * H, args)
    return dgx, dh0, [(0, H, dgx, ws_h)], dgx
