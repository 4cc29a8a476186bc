"""SimpleRNN kernels: h' = act(gx + W_hh h + b_hh) with act tanh or relu.

Shapes: gx (T, B, H), h0 (B, H), w (H, H), w_t = w.T packed, bias_hh (H,) (zeros when
absent). The workspace keeps h' (the activation output) and the previous h. The per-step
recurrent products are BLAS GEMMs over the block's rows (common.gemm).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import (JIT, ONE, ZERO, gemm_add, gemm_packed, max_length, pack_weight_for,
                     project_frame, run_forward, run_rows, run_step, tanh, time_index, zero_tail)


# --- the per-row forward passes ------------------------------------------------------
# Each takes one row's 1-D views and is specialised by activation and training, as in
# gru.py; the training variants keep h_{t-1} and h in the workspace rows within the pass
# instead of two 3-D slice copies per row. Here the gain is small (a few percent on the
# tanh forward, none on relu): the relu / tanh test inside the j loop had not stopped the
# vectoriser, so the backward loop stays as it is (split the same way, it ran no faster).


@njit(**JIT)
def _relu(x):
    """relu with NaN passing through, like torch.relu."""
    return x if (x > 0 or x != x) else ZERO


@njit(**JIT)
def _tanh_row(g, gh, bhh, h, o, H):
    """h = o = tanh(gx + W_hh h + b_hh) for one row."""
    for j in range(H):
        hj = tanh((g[j] + gh[j]) + bhh[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _relu_row(g, gh, bhh, h, o, H):
    """h = o = relu(gx + W_hh h + b_hh) for one row."""
    for j in range(H):
        hj = _relu((g[j] + gh[j]) + bhh[j])
        h[j] = hj
        o[j] = hj


@njit(**JIT)
def _tanh_row_training(g, gh, bhh, h, o, H, wg, wh):
    """As _tanh_row, keeping h_{t-1} in wh and h in wg."""
    for j in range(H):
        wh[j] = h[j]
        hj = tanh((g[j] + gh[j]) + bhh[j])
        h[j] = hj
        o[j] = hj
        wg[j] = hj


@njit(**JIT)
def _relu_row_training(g, gh, bhh, h, o, H, wg, wh):
    """As _relu_row, keeping h_{t-1} in wh and h in wg."""
    for j in range(H):
        wh[j] = h[j]
        hj = _relu((g[j] + gh[j]) + bhh[j])
        h[j] = hj
        o[j] = hj
        wg[j] = hj


@njit(**JIT)
def _fwd_rows(b0, b1, gx, h0, w_t, bhh, lengths, reverse, relu, training,
              out, h_n, ws_g, ws_h):
    H = h0.shape[1]
    R = b1 - b0
    hb = h0[b0:b1].copy()
    gh = np.empty((R, H), h0.dtype)
    p_t = pack_weight_for(w_t, R)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
        if training:
            zero_tail(ws_g, b, lengths[b])
            zero_tail(ws_h, b, lengths[b])
    for s in range(max_length(lengths, b0, b1)):
        gemm_packed(hb, w_t, p_t, gh)
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            if relu and training:
                _relu_row_training(gx[t, b], gh[i], bhh, hb[i], out[t, b], H,
                                   ws_g[t, b], ws_h[t, b])
            elif relu:
                _relu_row(gx[t, b], gh[i], bhh, hb[i], out[t, b], H)
            elif training:
                _tanh_row_training(gx[t, b], gh[i], bhh, hb[i], out[t, b], H,
                                   ws_g[t, b], ws_h[t, b])
            else:
                _tanh_row(gx[t, b], gh[i], bhh, hb[i], out[t, b], H)
    h_n[b0:b1] = hb


@njit(**JIT)
def _bwd_rows(b0, b1, w, lengths, reverse, relu, grad_out, grad_h_n, ws_g, dgx, dh0):
    H = grad_out.shape[2]
    R = b1 - b0
    dh = grad_h_n[b0:b1].copy()
    dgb = np.zeros((R, H), dgx.dtype)
    acc = np.empty((R, H), dgx.dtype)
    p_w = pack_weight_for(w, R)
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
            hs = ws_g[t, b]
            dg = dgx[t, b]
            for j in range(H):
                d = dh[i, j] + go[j]
                if relu:
                    dg[j] = d if hs[j] > 0 else ZERO
                else:
                    dg[j] = d * (ONE - hs[j] * hs[j])
                dgb[i, j] = dg[j]
            dh[i, :] = 0
        gemm_add(dgb, w, p_w, acc, dh)          # rows past their end: dgb = 0, dh carried
    dh0[b0:b1] = dh

@njit(**JIT)
def frame(x, w_in_t, b_in, w_t, bhh, relu, h, gx, out, ones):
    """One streaming frame: x (B, I) -> the state updated in place. gx (1, B, H) and
    out (1, B, H) are scratch, ones is (B,) int64 ones: the frame is a one-step sequence."""
    project_frame(x, w_in_t, b_in, gx)
    _fwd_rows(0, h.shape[0], gx, h, w_t, bhh, ones, False, relu, False, out, h, out, out)


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
