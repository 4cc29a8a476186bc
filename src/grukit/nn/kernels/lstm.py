"""LSTM kernels without projection (gates i, f, g, o; see :mod:`grukit.nn.cells`).

Shapes: gx (T, B, 4H), h0 and c0 (B, H), w (4H, H), w_t = w.T packed (H, 4H),
bias_hh (4H,) (zeros when absent). The workspace keeps the four activations and
tanh(c') per step, plus the previous h and c. The per-step recurrent products are GEMMs
over the block's rows (common.gemm_packed; products.py says which): h @ W^T forward, dgates @ W
backward.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import buffers
from .products import operands
from .region import barrier, run_in_team, team_rows
from .unit_shares import share_buffers, share_step
from .common import (JIT, ONE, add_vector, copy_and_sum, copy_matrix, copy_vector, flushed, fma, gemm_add, gemm_packed,
                     gx_block, gx_row, gx_shape, max_length, no_operand, one_length, output_grad, project_frame,
                     project_sequence, project_stored, recurrent_operand, rows_product_on, run_forward, run_rows,
                     run_step, sigmoid, stored_tiles_operand, tanh, tiles_transposed, time_index, tiny_gradient,
                     zero_tail, zero_vector)


# Per-row gate passes on 1-D row views: a flag test or a store into a 3-D workspace inside
# the j loop keeps LLVM from vectorising it (see gru.py).
#
# Each activation is one long chain of dependent instructions (exp's range reduction and
# polynomial, then a division), about 40 vector instructions. With all four gates and tanh(c')
# in one loop body, an iteration is some 220 instructions, and consecutive iterations overlap
# little. The activations get loops of their own, with short bodies: the pass went from 7.3
# to 6.6 ns per hidden unit (rows of S2, same process). The arithmetic is the same, operation
# for operation, so the results are the same bits.


@njit(**JIT)
def _activate(g, a, bhh, H):
    """a[:4H] (the recurrent products on entry) becomes the activations i, f, g, o."""
    for j in range(2 * H):
        a[j] = sigmoid((g[j] + a[j]) + bhh[j])
    for j in range(H):      # range(2 * H, 3 * H) would not vectorize (index wraparound)
        a[2 * H + j] = tanh((g[2 * H + j] + a[2 * H + j]) + bhh[2 * H + j])
    for j in range(H):
        a[3 * H + j] = sigmoid((g[3 * H + j] + a[3 * H + j]) + bhh[3 * H + j])


# The loops after the activations, shared by the per-row and the block passes; inlined by Numba into
# each (a call per row costs more than these loops at H = 64).


@njit(inline="always", **JIT)
def _cell_and_output(a, c, h, o, H):
    """Inference: c' = f c + i g into c, h' = o tanh(c') into h and the output row o."""
    for j in range(H):
        cj = fma(a[H + j], c[j], a[j] * a[2 * H + j])
        hj = a[3 * H + j] * tanh(cj)
        c[j] = cj
        h[j] = hj
        o[j] = hj


@njit(inline="always", **JIT)
def _cell(a, c, w, H):
    """Training: c' into c, tanh(c') into the workspace row w[4H:]."""
    for j in range(H):
        cj = fma(a[H + j], c[j], a[j] * a[2 * H + j])
        c[j] = cj
        w[4 * H + j] = tanh(cj)


@njit(inline="always", **JIT)
def _hidden(a, w, h, H):
    """Training: h' = o tanh(c') into h, tanh(c') read back from w[4H:]."""
    for j in range(H):
        h[j] = a[3 * H + j] * w[4 * H + j]


@njit(**JIT)
def _gates(g, gr, bhh, h, c, o, H):
    _activate(g, gr, bhh, H)
    _cell_and_output(gr, c, h, o, H)


@njit(inline="always", **JIT)   # inlined: the block and the padded batches' passes call it per row
def _gates_training(g, gr, bhh, h, c, o, H, wg, wh, wc):
    """As _gates, keeping h_{t-1}, c_{t-1} in wh, wc and (i, f, g, o, tanh(c')) in wg. Each loop
    writes at most two arrays, so that it vectorizes (see common.GATE_LOOPS)."""
    copy_vector(wh, h)
    copy_vector(wc, c)
    _activate(g, gr, bhh, H)
    copy_vector(wg[:4 * H], gr)
    _cell(gr, c, wg, H)
    _hidden(gr, wg, h, H)
    copy_vector(o, h)


# The block passes: the same arithmetic as _gates and _gates_training over a step's whole block of
# rows (sequences of one length), one stage at a time for every row: a call per row per step and
# its short loops cost more than the arithmetic at these widths. One Zen 5 core, 50 steps, the same
# bits out: 32 rows x H = 64 (S3) 7.1 -> 3.6-3.9 us a step, 16 x 128 (S2) 4.9 -> 3.4 us, 64 x 512
# (S4) 123 -> 115 us; the per-row pass with its calls inlined: 4.7, 3.7 and 113 us.


@njit(**JIT)
def _block_gates(g, gr, bhh, h, c, o, H):
    for i in range(gr.shape[0]):
        _activate(g[i], gr[i], bhh, H)
    for i in range(gr.shape[0]):
        _cell_and_output(gr[i], c[i], h[i], o[i], H)


@njit(**JIT)
def _block_gates_training(g, gr, bhh, h, c, o, H, wg, wh, wc):
    R = gr.shape[0]
    copy_matrix(wh, h)
    copy_matrix(wc, c)
    for i in range(R):
        _activate(g[i], gr[i], bhh, H)
    for i in range(R):
        copy_vector(wg[i, :4 * H], gr[i])
    for i in range(R):
        _cell(gr[i], c[i], wg[i], H)
    for i in range(R):
        _hidden(gr[i], wg[i], h[i], H)
    copy_matrix(o, h)


# Padded batches (sequences of several lengths) keep a pass per row, inlined by Numba rather than
# called (S3 with lengths: training 1.18x, S2 1.06x, S2 inference 1.04x; the first call's compile
# time unchanged). _gates itself stays a function: the streaming step calls it too.
_gates_inlined = njit(inline="always", **JIT)(_gates.py_func)


@njit(**JIT)
def _fwd_rows(b0, b1, gx, gidx, h0, c0, w_t, op_t, bhh, lengths, reverse, training,
              out, h_n, c_n, ws_g, ws_h, ws_c):
    H = h0.shape[1]
    R = b1 - b0
    hb = h0[b0:b1].copy()
    cb = c0[b0:b1].copy()
    gh = np.empty((R, 4 * H), h0.dtype)
    p_t = recurrent_operand(w_t, R, op_t)   # op_t: its operand for the step's products (products.py)
    for b in range(b0, b1):
        zero_tail(out, b, lengths[b])
        if training:
            zero_tail(ws_g, b, lengths[b])
            zero_tail(ws_h, b, lengths[b])
            zero_tail(ws_c, b, lengths[b])
    uniform = one_length(lengths, b0, b1)
    scratch = np.empty((R if uniform else 0, 4 * H), h0.dtype)   # a table's rows (gx_block)
    for s in range(max_length(lengths, b0, b1)):
        gemm_packed(hb, w_t, p_t, gh)
        if uniform:
            t = time_index(s, lengths[b0], reverse)
            g = gx_block(gx, gidx, t, b0, b1, scratch)
            if training:
                _block_gates_training(g, gh, bhh, hb, cb, out[t, b0:b1], H, ws_g[t, b0:b1], ws_h[t, b0:b1],
                                      ws_c[t, b0:b1])
            else:
                _block_gates(g, gh, bhh, hb, cb, out[t, b0:b1], H)
            continue
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:
                continue
            if training:
                _gates_training(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], cb[i], out[t, b], H, ws_g[t, b],
                                ws_h[t, b], ws_c[t, b])
            else:
                _gates_inlined(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], cb[i], out[t, b], H)
    copy_matrix(h_n[b0:b1], hb)
    copy_matrix(c_n[b0:b1], cb)


@njit(**JIT)
def _bwd_gates(go, gs, cp, dg, dhi, dci, H, tiny):
    """One row: the four gates' gradients into dg and dc_{t-1} into dci (dhi: dh_t from the GEMM)."""
    for j in range(H):
        d = dhi[j] + go[j]
        ig = gs[j]
        fg = gs[H + j]
        gg = gs[2 * H + j]
        og = gs[3 * H + j]
        tc = gs[4 * H + j]
        dct = dci[j] + d * og * (ONE - tc * tc)
        dg[j] = flushed(dct * gg * ig * (ONE - ig), tiny)
        dg[H + j] = flushed(dct * cp[j] * fg * (ONE - fg), tiny)
        dg[2 * H + j] = flushed(dct * ig * (ONE - gg * gg), tiny)
        dg[3 * H + j] = flushed(d * tc * og * (ONE - og), tiny)
        dci[j] = dct * fg


# _bwd_gates is a call per row per step with a fixed cost of about 0.3 us (one Zen 5 core: 9.5 ns a
# hidden unit at H = 32, 5.4 at 64, 2.9 at 128, 2.5 from 192 on). Written out inside one call for the
# whole block (inlined) it costs 2.8-3.0 ns a unit at every width, the same bits: that form runs up to
# BLOCK_BACKWARD_MAX_H (S3's 32 rows x 64: 10.5 -> 5.7 us a step; S2's 16 x 128 level).
BLOCK_BACKWARD_MAX_H = 128
_bwd_gates_inlined = njit(inline="always", **JIT)(_bwd_gates.py_func)   # inlined by Numba, not called


@njit(**JIT)
def _block_bwd_gates(grad_out, grad_bf, t, b0, b1, ws_g, ws_c, dgx, dh, dc, H, tiny, bias_rows):
    """_bwd_gates for step t's rows b0 <= b < b1 (sequences of one length), then their bias sums."""
    if H <= BLOCK_BACKWARD_MAX_H:
        for i in range(b1 - b0):
            b = b0 + i
            _bwd_gates_inlined(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_c[t, b], dgx[t, b], dh[i], dc[i],
                               H, tiny)
    else:
        for i in range(b1 - b0):
            b = b0 + i
            _bwd_gates(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_c[t, b], dgx[t, b], dh[i], dc[i], H, tiny)
    for b in range(b0, b1):
        add_vector(bias_rows[b], dgx[t, b])


@njit(**JIT)
def _bwd_rows(b0, b1, w, op_w, lengths, reverse, grad_out, grad_bf, grad_h_n, grad_c_n, ws_g, ws_c,
              dgx, dh0, dc0, bias_rows, tiny):
    """Per step: the pointwise pass over the block's rows, then dh_{t-1} = dgates @ W as one
    GEMM. bias_rows (B, 4H) receives each sequence's gate gradients summed over time. Gate
    gradients below ``tiny`` leave as 0 (see common.TINY_GRADIENT_FLOAT32).

    Sequences of one length (every batch without ``lengths``): the GEMM reads the step's gate
    gradients where the pass wrote them, in dgx, and writes dh. Otherwise each row's gradients are
    copied into dgb, zeros for the rows past their end, and the GEMM adds to dh, which carries
    those rows' state (S3's LSTM backward, two threads: 1.04 -> 0.93 ms)."""
    H = grad_out.shape[2]
    R = b1 - b0
    dh = grad_h_n[b0:b1].copy()
    dc = grad_c_n[b0:b1].copy()
    dgb = np.zeros((R, 4 * H), dgx.dtype)
    acc = np.empty((R, H), dgx.dtype)
    p_w = recurrent_operand(w, R, op_w)
    uniform = one_length(lengths, b0, b1)
    for b in range(b0, b1):
        zero_tail(dgx, b, lengths[b])
    for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
        if uniform:
            t = time_index(s, lengths[b0], reverse)
            _block_bwd_gates(grad_out, grad_bf, t, b0, b1, ws_g, ws_c, dgx, dh, dc, H, tiny, bias_rows)
            gemm_packed(dgx[t, b0:b1], w, p_w, dh)
            continue
        for i in range(R):
            b = b0 + i
            t = time_index(s, lengths[b], reverse)
            if t < 0:            # past this sequence's end: h and c carried
                dgb[i, :] = 0
            else:
                if H <= BLOCK_BACKWARD_MAX_H:
                    _bwd_gates_inlined(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_c[t, b], dgx[t, b], dh[i],
                                       dc[i], H, tiny)
                else:
                    _bwd_gates(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_c[t, b], dgx[t, b], dh[i], dc[i],
                               H, tiny)
                copy_and_sum(dgx[t, b], dgb[i], bias_rows[b])
                zero_vector(dh[i])
        gemm_add(dgb, w, p_w, acc, dh)          # rows past their end: dgb = 0, dh carried
    copy_matrix(dh0[b0:b1], dh)
    copy_matrix(dc0[b0:b1], dc)


@njit(**JIT)
def frame(x, w_in, input_transposed, input_panels, b_in, w, transposed, panels, bhh, h, c, gx, out):
    """One streaming frame (streaming.Streamer): x (B, I) or (I,); w_in = W_ih^T (I, 4H) with
    ``input_transposed`` (its frame_panels ``input_panels``), else W_ih as stored; w = W^T (H, 4H) with
    ``transposed``, else W as stored (common.stored_matvec says which), ``panels`` its
    common.frame_panels; the states h and c (B, H) are updated in place. gx (1, B, 4H) and out (B, H)
    are scratch. The step is stored_sequence's."""
    project_frame(x, w_in, input_transposed, input_panels, b_in, gx)
    _stored_step(gx[0], w, transposed, panels, bhh, h, c, out,
                 np.empty((h.shape[0], 4 * h.shape[1]), h.dtype))


@njit(**JIT)
def _stored_step(g, w, transposed, panels, bhh, h, c, o, gr):
    """One step on the weights as stored, read in place: g (B, 4H) the step's input side,
    w (4H, H) (with ``transposed``, W^T (H, 4H), and maybe its ``panels``:
    common.stored_tiles_operand), bhh (4H,); the states h and c (B, H) are updated in place and h
    copied to o. gr (B, 4H) is scratch."""
    H = h.shape[1]
    rows_product_on(h, w, transposed, panels, np.int64(0), 4 * H, gr)
    for i in range(h.shape[0]):
        _gates(g[i], gr[i], bhh, h[i], c[i], o[i], H)


@njit(**JIT)
def stored_frame(x, w_ih, b_in, w, bhh, h, c):
    """One frame on the weights as stored, read in place (``layer.step()``): x (B, I), w_ih (4H, I),
    b_in (4H,), w (4H, H), bhh (4H,); the states h and c (B, H) are updated in place."""
    B, H = h.shape
    g = np.empty((B, 4 * H), h.dtype)
    project_stored(x, w_ih, b_in, g)
    _stored_step(g, w, np.bool_(False), no_operand(h.dtype), bhh, h, c, np.empty((B, H), h.dtype),
                 np.empty((B, 4 * H), h.dtype))


@njit(**JIT)
def stored_sequence(x, w_ih, b_in, w, bhh, reverse, h, c, out):
    """A whole sequence on the weights as stored, in one call: x (T, B, I) C-contiguous,
    out (T, B, H); the states h and c (B, H) are updated in place."""
    T = x.shape[0]
    g = project_sequence(x, w_ih, b_in)
    gr = np.empty((h.shape[0], 4 * h.shape[1]), h.dtype)
    w_r, transposed, panels = stored_tiles_operand(w, T)
    for s in range(T):
        t = time_index(s, T, reverse)
        _stored_step(g[t], w_r, transposed, panels, bhh, h, c, out[t], gr)


@njit(**JIT)
def split_sequence(x, w_ih, b_in, w, bhh, reverse, h, c, out, threads):
    """stored_sequence for a batch of one, its steps on ``threads`` threads of torch's team
    (region.run_in_team; unit_shares.py), with the same bits: x (T, 1, I) C-contiguous, out (T, 1, H),
    the states h and c (1, H) updated in place. Returns 0, or 1 when a thread's call raised."""
    H = h.shape[1]
    g = project_sequence(x, w_ih, b_in)
    w_r, transposed = tiles_transposed(w, g.shape[0])   # the one-thread loop's form: its bits
    states = np.empty((2, 1, H), h.dtype)     # h before and after each step; c stays with its units
    counter = np.zeros(8, np.int64)
    return run_in_team(_split_part, threads, (g, w_r, transposed, bhh, reverse, h, c, out, states, counter))


@njit(**JIT)
def _split_part(thread, team_size, g, w, transposed, bhh, reverse, h, c, out, states, counter):
    """One thread's share of split_sequence (unit_shares.py): its units' i, f, g and o rows gathered for
    the gate pass stored_sequence runs over the whole row (_gates); their cell state stays in place."""
    T = g.shape[0]
    u0, u1, local_g, local_b, products = share_buffers(h.shape[1], np.int64(4), thread, team_size, bhh, h, states)
    gathered = products.reshape(local_g.shape[0])
    cell = c[0, u0:u1]
    barrier(counter, team_size)
    for s in range(T):
        t = time_index(s, T, reverse)
        after = share_step(g[t, 0], w, transposed, states, s, u0, u1, products, local_g)
        _gates(local_g, gathered, local_b, after, cell, out[t, 0, u0:u1], u1 - u0)
        barrier(counter, team_size * (s + 2))
    copy_vector(h[0, u0:u1], states[T % 2, 0, u0:u1])


# The blocks of a batch started from compiled code (common.run_rows, region.team_rows).
@njit(**JIT)
def _fwd_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows, bounds, blas_limit, args)


def step(gx_t, h, c, w_t, bhh, products=None):
    """One inference step: gx_t (B, 4H), h and c (B, H) -> (h', c')."""
    return run_step(_fwd_rows, gx_t, (h, c), (w_t, *operands((w_t,), products), bhh), (), 3)


def forward(gx, h0, c0, w_t, bhh, lengths, reverse, training, gx_index=None, products=None):
    """Returns out (T, B, H), h_n, c_n (B, H) and the workspace (None when not training).
    ``products``: the per-step products' GEMM, None for the dtype's default (products.py)."""
    T, B, G = gx_shape(gx, gx_index)
    H = h0.shape[1]
    params = (w_t, *operands((w_t,), products), bhh)
    out, (h_n, c_n), ws = run_forward(_fwd_rows, gx, (h0, c0), params, lengths, reverse, (),
                                      training, (5 * H, H, H), T * B * G * H, gx_index, _fwd_in_team)
    return out, h_n, c_n, ws


def backward(ws, w, grad_out, grad_h_n, grad_c_n, lengths, reverse, grad_bf=False, products=None):
    """Returns grad_gx (T, B, 4H), grad_h0, grad_c0, the weight terms and the bias source."""
    ws_g, ws_h, ws_c = ws
    T, B, H = ws_h.shape
    dt = grad_out.dtype
    dgx = buffers.empty((T, B, 4 * H), dt)
    dh0 = np.empty((B, H), dt)
    dc0 = np.empty((B, H), dt)
    bias_rows = np.zeros((B, 4 * H), dt)
    args = (w, *operands((w,), products), lengths, reverse, grad_out, grad_bf, grad_h_n, grad_c_n,
            ws_g, ws_c, dgx, dh0, dc0, bias_rows, tiny_gradient(dt))
    run_rows(_bwd_rows, B, T * B * 4 * H * H, args, in_team=_bwd_in_team)
    return dgx, dh0, dc0, [(0, 4 * H, dgx, ws_h)], bias_rows
