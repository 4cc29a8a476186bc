"""SimpleRNN kernels: h' = act(gx + W_hh h + b_hh) with act tanh or relu.

Shapes: gx (T, B, H), h0 (B, H), w (H, H), w_t = w.T packed, bias_hh (H,) (zeros when
absent). The per-step recurrent products are GEMMs over
the block's rows (common.gemm_packed; products.py says which).

No workspace: everything backward reads is in the output and h0. The activation's derivative
comes from h' = out[t] (1 - h'^2, or h' > 0), and the previous state of step t is out[t - 1]
(out[t + 1] in reverse), or h0 at each sequence's first step, with padded outputs zero. Keeping
the (T, B, H) copies instead put the S2 training step's peak memory above torch's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import buffers
from .products import operands
from .common import (JIT, ONE, ZERO, copy_matrix, gemm_add, gemm_packed, gx_block, gx_row, gx_shape, max_length,
                     no_operand, one_length, output_grad, project_frame, project_sequence, project_stored,
                     recurrent_operand, rows_product_on, run_forward, run_rows, run_step, stored_tiles_operand, tanh,
                     time_index, zero_tail)
from .region import team_rows


# --- the per-row forward passes ------------------------------------------------------
# Each takes one row's 1-D views and is specialised by activation, as in gru.py.


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


# Sequences of one length: a step's rows as one block, the row passes inlined by Numba into one loop
# over them (a call per row per step costs more than a row's arithmetic at small H; see lstm.py).
_tanh_row_inlined = njit(inline="always", **JIT)(_tanh_row.py_func)
_relu_row_inlined = njit(inline="always", **JIT)(_relu_row.py_func)


@njit(**JIT)
def _block_rows(g, gh, bhh, h, o, H, relu):
    for i in range(gh.shape[0]):
        if relu:
            _relu_row_inlined(g[i], gh[i], bhh, h[i], o[i], H)
        else:
            _tanh_row_inlined(g[i], gh[i], bhh, h[i], o[i], H)


@njit(**JIT)
def _fwd_rows(b0, b1, gx, gidx, h0, w_t, op_t, bhh, lengths, reverse, relu, training, out, h_n):
    """``training`` is accepted for run_forward's common signature and not needed: backward
    reads the output (see the module docstring)."""
    H = h0.shape[1]
    R = b1 - b0
    hb = h0[b0:b1].copy()
    gh = np.empty((R, H), h0.dtype)
    p_t = recurrent_operand(w_t, R, op_t)   # op_t: its operand for the step's products (products.py)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
    uniform = one_length(lengths, b0, b1)
    scratch = np.empty((R if uniform else 0, H), h0.dtype)   # a table's rows (gx_block)
    for s in range(max_length(lengths, b0, b1)):
        gemm_packed(hb, w_t, p_t, gh)
        if uniform:
            t = time_index(s, lengths[b0], reverse)
            _block_rows(gx_block(gx, gidx, t, b0, b1, scratch), gh, bhh, hb, out[t, b0:b1], H, relu)
            continue
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            if relu:
                _relu_row_inlined(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], out[t, b], H)
            else:
                _tanh_row_inlined(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], out[t, b], H)
    copy_matrix(h_n[b0:b1], hb)


@njit(**JIT)
def _bwd_rows(b0, b1, w, op_w, lengths, reverse, relu, grad_out, grad_bf, grad_h_n, out, dgx, dh0):
    H = grad_out.shape[2]
    R = b1 - b0
    dh = grad_h_n[b0:b1].copy()
    dgb = np.zeros((R, H), dgx.dtype)
    acc = np.empty((R, H), dgx.dtype)
    p_w = recurrent_operand(w, R, op_w)
    for b in range(b0, b1):
        zero_tail(dgx, b, lengths[b])
    for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:            # past this sequence's end: state carried
                dgb[i, :] = 0
                continue
            go = output_grad(grad_out, t, b, grad_bf)
            hs = out[t, b]
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
    copy_matrix(dh0[b0:b1], dh)


@njit(**JIT)
def frame(x, w_in, input_transposed, input_panels, b_in, w, transposed, panels, bhh, relu, h, gx, out):
    """One streaming frame (streaming.Streamer): x (B, I) or (I,); w_in = W_ih^T (I, H) with
    ``input_transposed`` (its frame_panels ``input_panels``), else W_ih as stored; w = W^T (H, H) with
    ``transposed``, else W as stored (common.stored_matvec says which), ``panels`` its
    common.frame_panels; the state h (B, H) is updated in place. gx (1, B, H) and out (B, H) are
    scratch. The step is stored_sequence's."""
    project_frame(x, w_in, input_transposed, input_panels, b_in, gx)
    _stored_step(gx[0], w, transposed, panels, bhh, relu, h, out, np.empty(h.shape, h.dtype))


@njit(**JIT)
def _stored_step(g, w, transposed, panels, bhh, relu, h, o, gr):
    """One step on the weights as stored, read in place: g (B, H) the step's input side, w (H, H)
    (with ``transposed``, W^T, and maybe its ``panels``: common.stored_tiles_operand), bhh (H,); the
    state h (B, H) is updated in place and copied to o. gr (B, H) is scratch."""
    H = h.shape[1]
    rows_product_on(h, w, transposed, panels, np.int64(0), H, gr)
    for i in range(h.shape[0]):
        if relu:
            _relu_row(g[i], gr[i], bhh, h[i], o[i], H)
        else:
            _tanh_row(g[i], gr[i], bhh, h[i], o[i], H)


@njit(**JIT)
def stored_frame(x, w_ih, b_in, w, bhh, relu, h):
    """One frame on the weights as stored, read in place (``layer.step()``): x (B, I), w_ih (H, I),
    b_in (H,), w (H, H), bhh (H,); the state h (B, H) is updated in place."""
    B, H = h.shape
    g = np.empty((B, H), h.dtype)
    project_stored(x, w_ih, b_in, g)
    _stored_step(g, w, np.bool_(False), no_operand(h.dtype), bhh, relu, h, np.empty((B, H), h.dtype),
                 np.empty((B, H), h.dtype))


@njit(**JIT)
def stored_sequence(x, w_ih, b_in, w, bhh, relu, reverse, h, out):
    """A whole sequence on the weights as stored, in one call: x (T, B, I) C-contiguous,
    out (T, B, H); the state h (B, H) is updated in place."""
    T = x.shape[0]
    g = project_sequence(x, w_ih, b_in)
    gr = np.empty(h.shape, h.dtype)
    w_r, transposed, panels = stored_tiles_operand(w, T)
    for s in range(T):
        t = time_index(s, T, reverse)
        _stored_step(g[t], w_r, transposed, panels, bhh, relu, h, out[t], gr)


# The blocks of a batch started from compiled code (common.run_rows, region.team_rows).
@njit(**JIT)
def _fwd_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows, bounds, blas_limit, args)


def step(gx_t, h, w_t, bhh, relu, products=None):
    """One inference step: gx_t (B, H), h (B, H) -> h'."""
    return run_step(_fwd_rows, gx_t, (h,), (w_t, *operands((w_t,), products), bhh), (relu,), 0)[0]


def forward(gx, h0, w_t, bhh, lengths, reverse, relu, training, gx_index=None, products=None):
    """Returns out (T, B, H), h_n and, when training, the workspace (out, h0): backward reads
    these two arrays, so they must not change in between. ``products``: the per-step products'
    GEMM, None for the dtype's default (products.py)."""
    T, B, H = gx_shape(gx, gx_index)
    params = (w_t, *operands((w_t,), products), bhh)
    out, (h_n,), _ = run_forward(_fwd_rows, gx, (h0,), params, lengths, reverse, (relu,),
                                 False, (), T * B * H * H, gx_index, _fwd_in_team)
    return out, h_n, ((out, h0) if training else None)


def _previous_states(out, h0, dgx, lengths, reverse):
    """The weight-gradient terms pairing each step's gate gradient with the state before it:
    out[t - 1] (out[t + 1] in reverse) over the steps that have one, and h0 with each sequence's
    first processed step (t = 0, or t = L - 1 in reverse; a padded out or dgx is zero)."""
    H = out.shape[2]
    if not reverse:
        return [(0, H, dgx[1:], out[:-1]), (0, H, dgx[:1], h0[None])]
    B = out.shape[1]
    first = np.zeros((1, B, H), dgx.dtype)
    rows = np.nonzero(lengths > 0)[0]
    first[0, rows] = dgx[lengths[rows] - 1, rows]
    return [(0, H, dgx[:-1], out[1:]), (0, H, first, h0[None])]


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, relu, grad_bf=False, products=None):
    out, h0 = ws
    T, B, H = out.shape
    dt = grad_out.dtype
    dgx = buffers.empty((T, B, H), dt)
    dh0 = np.empty((B, H), dt)
    args = (w, *operands((w,), products), lengths, reverse, relu, grad_out, grad_bf, grad_h_n, out,
            dgx, dh0)
    run_rows(_bwd_rows, B, T * B * H * H, args, in_team=_bwd_in_team)
    return dgx, dh0, _previous_states(out, np.ascontiguousarray(h0, dt), dgx, lengths, reverse), dgx
