"""MGU kernels, all four variants (gates f, n; see :mod:`grukit.nn.cells`).

MGU, MGU1 and MGU2 differ only in what the caller put into gx, so one kernel serves them:
w (2H, H) rows U_f, U_n. MGU3 has no U_f (f = sigmoid(gx_f)): w (H, H) is U_n alone.
``has_uf`` tells which. The workspace keeps f, n, the previous h and f * h (what the U_n
rows of the weight gradient multiply). No bias_hh: every MGU bias is already in gx.
The per-step recurrent products are GEMMs over
the block's rows (common.gemm_packed; products.py says which).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import buffers
from .products import operand_pair
from .common import (JIT, ONE, copy_matrix, fma, gemm_add, gemm_packed, gx_block, gx_row, gx_shape, max_length,
                     no_operand, one_length, output_grad, project_frame, project_sequence, project_stored,
                     recurrent_operand, rows_product_on, run_forward, run_rows, run_step, sigmoid, stored_tiles_operand,
                     tanh, time_index, zero_tail)
from .region import team_rows


# --- the per-row update pass ---------------------------------------------------------
# One row's 1-D views, one function for inference and one for training: the training test
# and the 3-D workspace stores inside the j loop kept LLVM from vectorising it (as in
# gru.py). The backward loops stay inline: split the same way, they ran no faster. The f pass
# is one function, shared by the forward loop and the frame on stored weights.


@njit(**JIT)
def _forget(g, gf, h, fh, H, has_uf):
    """f = sigmoid(gx_f + U_f h) into gf (U_f h in gf on entry; without U_f, sigmoid(gx_f)),
    and f * h into fh: the operand of U_n."""
    for j in range(H):
        f = sigmoid(g[j] + gf[j]) if has_uf else sigmoid(g[j])
        gf[j] = f
        fh[j] = f * h[j]


@njit(**JIT)
def _update(g, gf, gn, h, o, H):
    """n = tanh(gx_n + U_n (f * h)), h = o = (1 - f) h + f n."""
    for j in range(H):
        f = gf[j]
        n = tanh(g[H + j] + gn[j])
        hj = fma(ONE - f, h[j], f * n)
        h[j] = hj
        o[j] = hj


@njit(inline="always", **JIT)
def _update_training(g, gf, gn, h, o, H, wg, wh, wx, fh):
    """As _update, keeping h_{t-1} in wh, (f, n) in wg and f * h_{t-1} in wx."""
    for j in range(H):
        wh[j] = h[j]
        wx[j] = fh[j]
    for j in range(H):
        f = gf[j]
        n = tanh(g[H + j] + gn[j])
        hj = fma(ONE - f, h[j], f * n)
        h[j] = hj
        o[j] = hj
        wg[j] = f
        wg[H + j] = n


# Sequences of one length: a step's rows as one block, each stage's row pass inlined by Numba into
# one loop over them (a call per row per step costs more than a row's arithmetic at small H; see
# lstm.py); the block's input rows are read (or projected) once per step.
_forget_inlined = njit(inline="always", **JIT)(_forget.py_func)
_update_inlined = njit(inline="always", **JIT)(_update.py_func)


@njit(**JIT)
def _block_step(g, gf, gn, hb, fh, w_nt, p_nt, has_uf, training, H, t, b0, out, ws_g, ws_h, ws_x):
    """After h @ U_f^T (in gf): the forget gates, (f * h) @ U_n^T and the updates of step t for the
    block of rows b0 <= b < b0 + len(hb) (the workspace is read only in training: else a stand-in)."""
    R = hb.shape[0]
    for i in range(R):
        _forget_inlined(g[i], gf[i], hb[i], fh[i], H, has_uf)
    gemm_packed(fh, w_nt, p_nt, gn)
    for i in range(R):
        b = b0 + i
        if training:
            _update_training(g[i], gf[i], gn[i], hb[i], out[t, b], H, ws_g[t, b], ws_h[t, b], ws_x[t, b], fh[i])
        else:
            _update_inlined(g[i], gf[i], gn[i], hb[i], out[t, b], H)


@njit(**JIT)
def _fwd_rows(b0, b1, gx, gidx, h0, w_ft, w_nt, op_ft, op_nt, lengths, reverse, has_uf, training,
              out, h_n, ws_g, ws_h, ws_x):
    """w_ft = U_f^T (H, H) (unused without U_f), w_nt = U_n^T (H, H), both C-contiguous:
    per step two GEMMs over the block's rows, h @ U_f^T then (f * h) @ U_n^T. op_ft, op_nt:
    the operands of w_ft and w_nt for the step's products (common.recurrent_operand)."""
    H = h0.shape[1]
    R = b1 - b0
    hb = h0[b0:b1].copy()
    gf = np.zeros((R, H), h0.dtype)
    gn = np.zeros((R, H), h0.dtype)
    fh = np.zeros((R, H), h0.dtype)
    p_ft = recurrent_operand(w_ft, R if has_uf else 0, op_ft)
    p_nt = recurrent_operand(w_nt, R, op_nt)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
        if training:
            zero_tail(ws_g, b, lengths[b])
            zero_tail(ws_h, b, lengths[b])
            zero_tail(ws_x, b, lengths[b])
    uniform = one_length(lengths, b0, b1)
    scratch = np.empty((R if uniform else 0, 2 * H), h0.dtype)   # a table's rows (gx_block)
    for s in range(max_length(lengths, b0, b1)):
        if has_uf:
            gemm_packed(hb, w_ft, p_ft, gf)
        if uniform:
            t = time_index(s, lengths[b0], reverse)
            _block_step(gx_block(gx, gidx, t, b0, b1, scratch), gf, gn, hb, fh, w_nt, p_nt, has_uf, training, H, t, b0,
                        out, ws_g, ws_h, ws_x)
            continue
        for i in range(R):
            t = time_index(s, lengths[b0 + i], reverse)
            if t < 0:
                continue
            _forget_inlined(gx_row(gx, gidx, t, b0 + i), gf[i], hb[i], fh[i], H, has_uf)
        gemm_packed(fh, w_nt, p_nt, gn)
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            if training:
                _update_training(gx_row(gx, gidx, t, b), gf[i], gn[i], hb[i], out[t, b], H,
                                 ws_g[t, b], ws_h[t, b], ws_x[t, b], fh[i])
            else:
                _update_inlined(gx_row(gx, gidx, t, b), gf[i], gn[i], hb[i], out[t, b], H)
    copy_matrix(h_n[b0:b1], hb)


@njit(**JIT)
def _bwd_rows(b0, b1, w, op_f, op_n, lengths, reverse, has_uf, grad_out, grad_bf, grad_h_n, ws_g, ws_h, dgx, dh0):
    """Per step: the pointwise pass, d(f * h) = dn @ U_n (one GEMM), the f pass, then
    dh_{t-1} += df @ U_f (one GEMM, with U_f). op_f, op_n: the operands of U_f and U_n
    for the step's products (common.recurrent_operand)."""
    H = grad_out.shape[2]
    R = b1 - b0
    rn = H if has_uf else 0
    dt = dgx.dtype
    dh = grad_h_n[b0:b1].copy()
    dgf = np.zeros((R, H), dt)   # this step's df pre-activation grads
    dgn = np.zeros((R, H), dt)   # and dn
    d_fh = np.empty((R, H), dt)
    acc = np.empty((R, H), dt)
    u_f = w[:H]
    u_n = w[rn:rn + H]
    p_f = recurrent_operand(u_f, R if has_uf else 0, op_f)
    p_n = recurrent_operand(u_n, R, op_n)
    for b in range(b0, b1):
        zero_tail(dgx, b, lengths[b])
    for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:            # past this sequence's end: state carried
                dgf[i, :] = 0
                dgn[i, :] = 0
                continue
            go = output_grad(grad_out, t, b, grad_bf)
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            df_ = dgf[i]
            dn_ = dgn[i]
            dhi = dh[i]
            for j in range(H):
                d = dhi[j] + go[j]
                f = gs[j]
                n = gs[H + j]
                dn_[j] = d * f * (ONE - n * n)
                df_[j] = d * (n - hp[j])          # df, completed below
                dhi[j] = d * (ONE - f)
        gemm_packed(dgn, u_n, p_n, d_fh)
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            gs = ws_g[t, b]
            hp = ws_h[t, b]
            dg = dgx[t, b]
            df_ = dgf[i]
            dn_ = dgn[i]
            dfh = d_fh[i]
            dhi = dh[i]
            for j in range(H):
                f = gs[j]
                df_[j] = (df_[j] + dfh[j] * hp[j]) * f * (ONE - f)
                dhi[j] += dfh[j] * f
                dg[j] = df_[j]
                dg[H + j] = dn_[j]
        if has_uf:
            gemm_add(dgf, u_f, p_f, acc, dh)   # rows past their end: dgf = 0, dh carried
    copy_matrix(dh0[b0:b1], dh)


@njit(**JIT)
def frame(x, w_in, input_transposed, input_panels, b_in, w, transposed, panels, has_uf, h, gx, out):
    """One streaming frame (streaming.Streamer): x (B, I) or (I,); w_in = W_ih^T (I, 2H) over both gates (zero
    columns where a variant has no input weights) with ``input_transposed`` (its frame_panels
    ``input_panels``), else as stored; w = W^T (H, 2H) columns U_f, U_n (without U_f, (H, H)) with
    ``transposed``, else as stored (common.stored_matvec says which), ``panels`` its
    common.frame_panels; the state h (B, H) is updated in place. gx (1, B, 2H) and out (B, H) are
    scratch. The step is stored_sequence's."""
    project_frame(x, w_in, input_transposed, input_panels, b_in, gx)
    _stored_step(gx[0], w, transposed, panels, has_uf, h, out, np.empty(h.shape, h.dtype),
                 np.empty(h.shape, h.dtype), np.empty(h.shape, h.dtype))


@njit(**JIT)
def _stored_step(g, w, transposed, panels, has_uf, h, o, gf, fh, gn):
    """One step on the weights as stored, read in place: g (B, 2H) the step's input side, w
    (2H, H) rows U_f, U_n (without U_f, (H, H): U_n; with ``transposed``, W^T, and maybe its
    ``panels``: common.stored_tiles_operand); the state h (B, H) is updated in place and copied to
    o. gf, fh and gn (B, H) are scratch."""
    B, H = h.shape
    if has_uf:
        rows_product_on(h, w, transposed, panels, np.int64(0), H, gf)
    for i in range(B):
        _forget(g[i], gf[i], h[i], fh[i], H, has_uf)
    n0 = H if has_uf else np.int64(0)     # U_n's rows
    rows_product_on(fh, w, transposed, panels, n0, n0 + H, gn)
    for i in range(B):
        _update(g[i], gf[i], gn[i], h[i], o[i], H)


@njit(**JIT)
def stored_frame(x, w_ih, b_in, w, h):
    """One frame of the MGU with U_f (mode "MGU") on the weights as stored, read in place
    (``layer.step()``): x (B, I), w_ih (2H, I), b_in (2H,), w (2H, H) rows U_f, U_n; the state
    h (B, H) is updated in place."""
    B, H = h.shape
    g = np.empty((B, 2 * H), h.dtype)
    project_stored(x, w_ih, b_in, g)
    _stored_step(g, w, np.bool_(False), no_operand(h.dtype), np.bool_(True), h, np.empty((B, H), h.dtype),
                 np.empty((B, H), h.dtype), np.empty((B, H), h.dtype), np.empty((B, H), h.dtype))


@njit(**JIT)
def stored_sequence(x, w_ih, b_in, w, has_uf, reverse, h, out):
    """A whole sequence on the weights as stored, in one call: x (T, B, I) C-contiguous, w_ih
    (2H, I) over both gates (zero rows where a variant has no input weights), out (T, B, H); the
    state h (B, H) is updated in place."""
    T = x.shape[0]
    g = project_sequence(x, w_ih, b_in)
    gf = np.empty(h.shape, h.dtype)
    fh = np.empty(h.shape, h.dtype)
    gn = np.empty(h.shape, h.dtype)
    w_r, transposed, panels = stored_tiles_operand(w, T)
    for s in range(T):
        t = time_index(s, T, reverse)
        _stored_step(g[t], w_r, transposed, panels, has_uf, h, out[t], gf, fh, gn)


def split_weight(w_t, has_uf):
    """(U_f^T, U_n^T) as C-contiguous copies of the packed weight's column blocks (one
    O(H^2) copy per call); without U_f, (U_n^T, U_n^T) and the first goes unused."""
    if not has_uf:
        return w_t, w_t
    H = w_t.shape[0]
    return np.ascontiguousarray(w_t[:, :H]), np.ascontiguousarray(w_t[:, H:])


# The blocks of a batch started from compiled code (common.run_rows, region.team_rows).
@njit(**JIT)
def _fwd_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows, bounds, blas_limit, args)


def step(gx_t, h, w_t, has_uf, products=None):
    """One inference step: gx_t (B, 2H), h (B, H) -> h'."""
    w_ft, w_nt = split_weight(w_t, has_uf)
    params = (w_ft, w_nt, *operand_pair(w_ft, w_nt, products))
    return run_step(_fwd_rows, gx_t, (h,), params, (has_uf,), 3)[0]


def forward(gx, h0, w_t, lengths, reverse, has_uf, training, gx_index=None, products=None):
    """``products``: the per-step products' GEMM, None for the dtype's default (products.py)."""
    T, B, G = gx_shape(gx, gx_index)
    H = h0.shape[1]
    w_ft, w_nt = split_weight(w_t, has_uf)
    params = (w_ft, w_nt, *operand_pair(w_ft, w_nt, products))
    out, (h_n,), ws = run_forward(_fwd_rows, gx, (h0,), params, lengths, reverse,
                                  (has_uf,), training, (2 * H, H, H), T * B * w_t.shape[1] * H, gx_index,
                                  _fwd_in_team)
    return out, h_n, ws


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, has_uf, grad_bf=False, products=None):
    ws_g, ws_h, ws_x = ws
    T, B, H = ws_h.shape
    dt = grad_out.dtype
    dgx = buffers.empty((T, B, 2 * H), dt)
    dh0 = np.empty((B, H), dt)
    ops = operand_pair(w[:H], w[H:2 * H], products) if has_uf else operand_pair(w, w, products)
    args = (w, *ops, lengths, reverse, has_uf, grad_out, grad_bf,
            grad_h_n, ws_g, ws_h, dgx, dh0)
    run_rows(_bwd_rows, B, T * B * w.shape[0] * H, args, in_team=_bwd_in_team)
    if has_uf:
        terms = [(0, H, dgx[..., :H], ws_h), (H, 2 * H, dgx[..., H:], ws_x)]
    else:
        terms = [(0, H, dgx[..., H:], ws_x)]
    return dgx, dh0, terms, None
