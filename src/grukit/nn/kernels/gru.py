"""GRU kernels, both reset placements (gates r, z, n; see :mod:`grukit.nn.cells`).

reset_after=True (mode "GRU"): n = tanh(gx_n + r * (W_hn h + b_hn)); the workspace keeps
the pre-reset term W_hn h + b_hn. reset_after=False ("GRU_RESET_BEFORE"):
n = tanh(gx_n + W_hn (r * h)) and no bias_hh; the workspace keeps r * h, which is what the
candidate rows of grad W_hh multiply.

Shapes: gx (T, B, 3H) C-contiguous, h0 (B, H), w (3H, H) rows r, z, n as stored,
w_t = w.T packed (H, 3H), bias_hh (3H,) (zeros when absent), lengths int64 (B,).

The per-step recurrent products are GEMMs over the block's rows (common.gemm_packed; products.py
says which): forward h @ W^T into a (rows, 3H) buffer then the fused gate pass;
backward the gate pass then dgates @ W.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import buffers
from .common import (JIT, ONE, add_vector, copy_and_sum, copy_matrix, copy_vector, flushed, fma, gemm_add,
                     gemm_packed, gx_block, gx_row, gx_shape, max_length, no_operand, one_length, output_grad,
                     project_frame, project_sequence, project_stored, recurrent_operand, rows_product_on, run_forward,
                     run_rows, run_step, sigmoid, stored_operand, stored_panels, tanh, time_index, tiny_gradient,
                     zero_tail)
from .products import operand_pair
from .region import barrier, run_in_team, team_rows
from .unit_shares import share_buffers, share_step


# --- the per-row gate passes ------------------------------------------------------------
# Each takes one row's 1-D views and is specialised by variant (reset placement, training):
# a flag tested inside the j loop, or a store into a 3-D workspace there, keeps LLVM from
# vectorising it (measured: the forward gate pass of S2 ran 2.5x slower that way). The inference
# and training variants repeat the cell's arithmetic on purpose: moved into a shared scalar
# function returning the gates as a tuple, the loops stopped vectorising (S2 forward 13 -> 49 ms).


@njit(**JIT)
def _update_and_reset(g, a, bhh, H):
    """a[:2H] (the recurrent products on entry) becomes r and z: a loop of its own, so that the
    CPU overlaps the activations' long dependency chains (see lstm._activate; 16% on S2)."""
    for j in range(2 * H):
        a[j] = sigmoid(g[j] + (a[j] + bhh[j]))


# The loops after r and z, shared by the per-row and the block passes and inlined by Numba into each.


@njit(inline="always", **JIT)
def _candidate_and_output(g, a, bhh, h, o, H):
    """Inference: n and h' = z h + (1 - z) n into h and the output row o."""
    for j in range(H):
        z = a[H + j]
        n = tanh(g[2 * H + j] + a[j] * (a[2 * H + j] + bhh[2 * H + j]))
        hj = fma(z, h[j], (ONE - z) * n)
        h[j] = hj
        o[j] = hj


@njit(inline="always", **JIT)
def _candidate(g, a, bhh, h, w, H):
    """Training: h' into h, n and W_hn h + b_hn into the workspace row w."""
    for j in range(H):
        z = a[H + j]
        ghn = a[2 * H + j] + bhh[2 * H + j]
        n = tanh(g[2 * H + j] + a[j] * ghn)
        h[j] = fma(z, h[j], (ONE - z) * n)
        w[2 * H + j] = n
        w[3 * H + j] = ghn


@njit(**JIT)
def _gates_after(g, gr, bhh, h, o, H):
    _update_and_reset(g, gr, bhh, H)
    _candidate_and_output(g, gr, bhh, h, o, H)


@njit(inline="always", **JIT)
def _gates_after_training(g, gr, bhh, h, o, H, wg, wh):
    """As _gates_after, keeping h_{t-1} in wh and (r, z, n, W_hn h + b_hn) in wg. The main loop
    writes h and the two blocks it computes; the copies get loops of their own (common.GATE_LOOPS)."""
    copy_vector(wh, h)
    _update_and_reset(g, gr, bhh, H)
    _candidate(g, gr, bhh, h, wg, H)
    copy_vector(o, h)
    copy_vector(wg[:2 * H], gr)


# The block passes (reset after): the same arithmetic over a step's whole block of rows, one stage
# at a time for every row, as lstm.py's (a call per row costs more than the arithmetic at H = 64).


@njit(**JIT)
def _block_gates_after(g, gr, bhh, h, o, H):
    for i in range(gr.shape[0]):
        _update_and_reset(g[i], gr[i], bhh, H)
    for i in range(gr.shape[0]):
        _candidate_and_output(g[i], gr[i], bhh, h[i], o[i], H)


@njit(**JIT)
def _block_gates_after_training(g, gr, bhh, h, o, H, wg, wh):
    R = gr.shape[0]
    copy_matrix(wh, h)
    for i in range(R):
        _update_and_reset(g[i], gr[i], bhh, H)
    for i in range(R):
        _candidate(g[i], gr[i], bhh, h[i], wg[i], H)
    copy_matrix(o, h)
    for i in range(R):
        copy_vector(wg[i, :2 * H], gr[i])


@njit(**JIT)
def _reset_before(g, gr, h, rh, H):
    """Reset before, first half: r (into gr) and r * h, the second GEMM's operand."""
    for j in range(H):
        r = sigmoid(g[j] + gr[j])
        gr[j] = r
        rh[j] = r * h[j]


@njit(**JIT)
def _gates_before(g, gr, gn, h, o, H):
    for j in range(H):
        z = sigmoid(g[H + j] + gr[H + j])
        n = tanh(g[2 * H + j] + gn[j])
        hj = fma(z, h[j], (ONE - z) * n)
        h[j] = hj
        o[j] = hj


@njit(inline="always", **JIT)
def _gates_before_training(g, gr, gn, h, o, H, wg, wh, wx, rh):
    """As _gates_before, keeping h_{t-1} in wh, (r, z, n) in wg and r * h_{t-1} in wx."""
    for j in range(H):
        wh[j] = h[j]
        wx[j] = rh[j]
    for j in range(H):
        z = sigmoid(g[H + j] + gr[H + j])
        n = tanh(g[2 * H + j] + gn[j])
        hj = fma(z, h[j], (ONE - z) * n)
        h[j] = hj
        o[j] = hj
        wg[j] = gr[j]
        wg[H + j] = z
        wg[2 * H + j] = n


# Inlined by Numba into the block passes and the padded batches' per-row loops (a call per row per
# step costs more than a row's arithmetic at small H).
_gates_after_inlined = njit(inline="always", **JIT)(_gates_after.py_func)
_reset_before_inlined = njit(inline="always", **JIT)(_reset_before.py_func)
_gates_before_inlined = njit(inline="always", **JIT)(_gates_before.py_func)


@njit(**JIT)
def _block_gates_before(g, gr, gn, h, rh, w_nt, p_nt, training, H, t, b0, out, ws_g, ws_h, ws_x):
    """Reset before, step t for a block of rows (sequences of one length): r and r * h, the second
    GEMM, then the update; the row passes inlined (the workspace is read only in training)."""
    R = h.shape[0]
    for i in range(R):
        _reset_before_inlined(g[i], gr[i], h[i], rh[i], H)
    gemm_packed(rh, w_nt, p_nt, gn)
    for i in range(R):
        b = b0 + i
        if training:
            _gates_before_training(g[i], gr[i], gn[i], h[i], out[t, b], H, ws_g[t, b], ws_h[t, b], ws_x[t, b],
                                   rh[i])
        else:
            _gates_before_inlined(g[i], gr[i], gn[i], h[i], out[t, b], H)


# The time loops are compiled once per reset placement, ``reset_after`` a constant of each (a closure
# variable): Numba prunes the other placement's branches before typing them, so a layer compiles only
# its own placement's code. With the placement an argument, a GRU's first training step compiled both:
# 14.5-16.7 s from an empty cache against 13.7 s with the other placement's branches pruned (Zen 5).
def _specialised(rows, name: str):
    """njit(rows) under ``name``, the module attribute it is assigned to: region.call_unlinked finds
    a rows function by its module and qualified name, and Numba names its cache files after it."""
    rows.__name__ = rows.__qualname__ = name
    return njit(**JIT)(rows)


def _forward_rows(reset_after: bool):
    """_fwd_rows for one reset placement, a constant of its compiled code (see _specialised)."""

    def _fwd_rows(b0, b1, gx, gidx, h0, w_t, w_nt, op_t, op_nt, bhh, lengths, reverse, training,
                  out, h_n, ws_g, ws_h, ws_x):
        """reset_after: w_t is W^T (H, 3H) and one GEMM per step gives all three recurrent
        terms. Reset before: w_t is W_rz^T (H, 2H), w_nt is W_n^T (H, H) and the step takes
        two GEMMs, h @ W_rz^T then (r * h) @ W_n^T. Every row of the block goes through the
        GEMMs; rows past their sequence's end skip the gate pass, so their state is carried.
        op_t, op_nt: the operands of w_t and w_nt for the step's products (common.recurrent_operand)."""
        H = h0.shape[1]
        R = b1 - b0
        dt = h0.dtype
        hb = h0[b0:b1].copy()
        gh = np.zeros((R, w_t.shape[1]), dt)   # h @ w_t: 3H (reset after) or 2H columns
        gn = np.zeros((R, H), dt)              # reset before: (r * h) @ W_n^T
        rh = np.zeros((R, H), dt)
        p_t = recurrent_operand(w_t, R, op_t)
        p_nt = recurrent_operand(w_nt, 0 if reset_after else R, op_nt)
        for b in range(b0, b1):
            zero_tail(out, b, lengths[b])
            if training:
                zero_tail(ws_g, b, lengths[b])
                zero_tail(ws_h, b, lengths[b])
                if not reset_after:
                    zero_tail(ws_x, b, lengths[b])
        uniform = one_length(lengths, b0, b1)
        scratch = np.empty((R if uniform else 0, 3 * H), dt)   # a table's rows (gx_block)
        for s in range(max_length(lengths, b0, b1)):
            gemm_packed(hb, w_t, p_t, gh)
            if uniform:
                t = time_index(s, lengths[b0], reverse)
                g = gx_block(gx, gidx, t, b0, b1, scratch)
                if not reset_after:
                    _block_gates_before(g, gh, gn, hb, rh, w_nt, p_nt, training, H, t, b0, out, ws_g, ws_h, ws_x)
                elif training:
                    _block_gates_after_training(g, gh, bhh, hb, out[t, b0:b1], H, ws_g[t, b0:b1], ws_h[t, b0:b1])
                else:
                    _block_gates_after(g, gh, bhh, hb, out[t, b0:b1], H)
                continue
            if not reset_after:
                for i in range(R):
                    t = time_index(s, lengths[b0 + i], reverse)
                    if t >= 0:
                        _reset_before_inlined(gx_row(gx, gidx, t, b0 + i), gh[i], hb[i], rh[i], H)
                gemm_packed(rh, w_nt, p_nt, gn)
            for i in range(R):
                b = b0 + i
                t = time_index(s, lengths[b], reverse)
                if t < 0:
                    continue
                if reset_after and training:
                    _gates_after_training(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], out[t, b], H, ws_g[t, b],
                                          ws_h[t, b])
                elif reset_after:
                    _gates_after_inlined(gx_row(gx, gidx, t, b), gh[i], bhh, hb[i], out[t, b], H)
                elif training:
                    _gates_before_training(gx_row(gx, gidx, t, b), gh[i], gn[i], hb[i], out[t, b], H, ws_g[t, b],
                                           ws_h[t, b], ws_x[t, b], rh[i])
                else:
                    _gates_before_inlined(gx_row(gx, gidx, t, b), gh[i], gn[i], hb[i], out[t, b], H)
        copy_matrix(h_n[b0:b1], hb)

    return _specialised(_fwd_rows, "_fwd_rows_after" if reset_after else "_fwd_rows_before")


_fwd_rows_after = _forward_rows(True)
_fwd_rows_before = _forward_rows(False)


@njit(inline="always", **JIT)
def _bwd_after(go, gs, hp, dg, gb, dn_r, dhi, H, gsum, tiny):
    """Reset after, one row: dgx row (dr, dz, dn) into dg, dn * r into dn_r, dh_{t-1}'s direct
    part d * z into dhi; then the recurrent side's (dr, dz, dn * r) into gb and summed over time
    into gsum (grad bias_hh), in loops of their own (common.GATE_LOOPS), and dn summed into gsum[3H:]."""
    for j in range(H):
        d = dhi[j] + go[j]
        r = gs[j]
        z = gs[H + j]
        n = gs[2 * H + j]
        dn = flushed(d * (ONE - z) * (ONE - n * n), tiny)
        dg[j] = flushed(dn * gs[3 * H + j] * r * (ONE - r), tiny)
        dg[H + j] = flushed(d * (hp[j] - n) * z * (ONE - z), tiny)
        dg[2 * H + j] = dn
        dn_r[j] = flushed(dn * r, tiny)
        dhi[j] = d * z
    copy_and_sum(dg, gb[:2 * H], gsum)
    copy_and_sum(dn_r, gb[2 * H:], gsum[2 * H:])
    add_vector(gsum[3 * H:], dg[2 * H:])   # dn's sum: with dr's and dz's, an input bias's gradient


@njit(**JIT)
def _block_bwd_after(grad_out, grad_bf, t, b0, b1, ws_g, ws_h, dgx, dgb, dgh_n, dh, bias_rows, H, tiny):
    """_bwd_after for step t's rows b0 <= b < b1 (sequences of one length) in one call."""
    for i in range(b1 - b0):
        b = b0 + i
        _bwd_after(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i], dgh_n[t, b],
                   dh[i], H, bias_rows[b], tiny)


@njit(inline="always", **JIT)
def _bwd_before(go, gs, hp, dg, gb, gn, dhi, H, tiny):
    """Reset before, one row's first half: dz and dn (into dg and gb / gn), dhi = d * z."""
    for j in range(H):
        d = dhi[j] + go[j]
        z = gs[H + j]
        n = gs[2 * H + j]
        dn = flushed(d * (ONE - z) * (ONE - n * n), tiny)
        dz = flushed(d * (hp[j] - n) * z * (ONE - z), tiny)
        dg[2 * H + j] = dn
        gn[j] = dn
        dg[H + j] = dz
        gb[H + j] = dz
        dhi[j] = d * z


@njit(inline="always", **JIT)
def _bwd_before_reset(gs, hp, dg, gb, dhi, drh, H, tiny):
    """Reset before, second half: d(r * h) = dn @ W_n gives dr and adds r * d(r * h) to dhi."""
    for j in range(H):
        r = gs[j]
        dr = flushed(drh[j] * hp[j] * r * (ONE - r), tiny)
        dg[j] = dr
        gb[j] = dr
        dhi[j] += drh[j] * r


@njit(**JIT)
def _block_bwd_before(grad_out, grad_bf, t, b0, b1, ws_g, ws_h, dgx, dgb, dgn, dh, d_rh, w_n, p_n, H, tiny):
    """Reset before, step t for a block of rows (sequences of one length): dz and dn, d(r * h) =
    dn @ W_n, then dr; the row passes inlined."""
    for i in range(b1 - b0):
        b = b0 + i
        _bwd_before(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i], dgn[i],
                    dh[i], H, tiny)
    gemm_packed(dgn, w_n, p_n, d_rh)
    for i in range(b1 - b0):
        b = b0 + i
        _bwd_before_reset(ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i], dh[i], d_rh[i], H, tiny)


def _backward_rows(reset_after: bool):
    """_bwd_rows for one reset placement, a constant of its compiled code (see _specialised)."""

    def _bwd_rows(b0, b1, w, op_main, op_n, lengths, reverse, grad_out, grad_bf, grad_h_n, ws_g, ws_h,
                  dgx, dgh_n, dh0, bias_rows, tiny):
        """Per step: the pointwise pass over the block's rows, then dh_{t-1} += dgates @ W as
        one GEMM (reset before: d(r * h) = dn @ W_n first, then the r, z rows).

        Reset after, the recurrent side's gradient is (dr, dz, dn * r): dgx holds (dr, dz, dn)
        and dgh_n (T, B, H) the one block that differs, dn * r; bias_rows (B, 4H) receives the
        sums over time per sequence of (dr, dz, dn * r) (grad bias_hh is their sum over the batch)
        and of dn (for an input-side bias: api.gate_sums). Gate gradients
        below ``tiny`` leave as 0 (see common.TINY_GRADIENT_FLOAT32). op_main, op_n: the operands
        of W (reset before W_rz) and W_n for the step's products (common.recurrent_operand)."""
        H = grad_out.shape[2]
        R = b1 - b0
        dt = dgx.dtype
        dh = grad_h_n[b0:b1].copy()
        dgb = np.zeros((R, 3 * H if reset_after else 2 * H), dt)   # recurrent-side grads (r, z[, n])
        dgn = np.zeros((R, H), dt)                                  # reset before: dn
        d_rh = np.empty((R, H), dt)
        acc = np.empty((R, H), dt)
        w_rz = w[:2 * H]
        w_n = w[2 * H:]
        p_main = recurrent_operand(w if reset_after else w_rz, R, op_main)
        p_n = recurrent_operand(w_n, 0 if reset_after else R, op_n)
        for b in range(b0, b1):
            zero_tail(dgx, b, lengths[b])
            if reset_after:
                zero_tail(dgh_n, b, lengths[b])
        uniform = one_length(lengths, b0, b1)
        for s in range(max_length(lengths, b0, b1) - 1, -1, -1):
            if uniform:
                t = time_index(s, lengths[b0], reverse)
                if reset_after:
                    _block_bwd_after(grad_out, grad_bf, t, b0, b1, ws_g, ws_h, dgx, dgb, dgh_n, dh, bias_rows, H, tiny)
                    gemm_add(dgb, w, p_main, acc, dh)
                else:
                    _block_bwd_before(grad_out, grad_bf, t, b0, b1, ws_g, ws_h, dgx, dgb, dgn, dh, d_rh, w_n, p_n, H,
                                      tiny)
                    gemm_add(dgb, w_rz, p_main, acc, dh)
                continue
            for i in range(R):
                b = b0 + i
                t = time_index(s, lengths[b], reverse)
                if t < 0:            # past this sequence's end: state carried, nothing flows
                    dgb[i, :] = 0
                    dgn[i, :] = 0
                elif reset_after:
                    _bwd_after(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i],
                               dgh_n[t, b], dh[i], H, bias_rows[b], tiny)
                else:
                    _bwd_before(output_grad(grad_out, t, b, grad_bf), ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i],
                                dgn[i], dh[i], H, tiny)
            if not reset_after:
                gemm_packed(dgn, w_n, p_n, d_rh)
                for i in range(R):
                    b = b0 + i
                    t = time_index(s, lengths[b], reverse)
                    if t >= 0:
                        _bwd_before_reset(ws_g[t, b], ws_h[t, b], dgx[t, b], dgb[i], dh[i], d_rh[i], H, tiny)
                gemm_add(dgb, w_rz, p_main, acc, dh)
            else:
                gemm_add(dgb, w, p_main, acc, dh)
        copy_matrix(dh0[b0:b1], dh)

    return _specialised(_bwd_rows, "_bwd_rows_after" if reset_after else "_bwd_rows_before")


_bwd_rows_after = _backward_rows(True)
_bwd_rows_before = _backward_rows(False)


@njit(**JIT)
def frame(x, w_in, input_transposed, input_panels, b_in, w, transposed, panels, bhh, reset_after, h, gx, out):
    """One streaming frame (streaming.Streamer): x (B, I) or (I,); w_in = W_ih^T (I, 3H) with
    ``input_transposed`` (its frame_panels ``input_panels``), else W_ih as stored; w = W^T (H, 3H) with
    ``transposed``, else W as stored (common.stored_matvec says which), ``panels`` its
    common.frame_panels; the state h (B, H) is updated in place. gx (1, B, 3H) and out (B, H) are
    scratch. The step is stored_sequence's."""
    project_frame(x, w_in, input_transposed, input_panels, b_in, gx)
    gr, rh, gn = _stored_scratch(h, reset_after)
    _stored_step(gx[0], w, transposed, panels, bhh, reset_after, h, out, gr, rh, gn)


@njit(**JIT)
def _stored_step(g, w, transposed, panels, bhh, reset_after, h, o, gr, rh, gn):
    """One step on the weights as stored, read in place: g (B, 3H) the step's input side,
    w (3H, H) rows r, z, n (with ``transposed``, W^T (H, 3H), and maybe its ``panels``:
    common.stored_panels), bhh (3H,); the state h (B, H) is updated in place and copied to o.
    Scratch: gr (B, 3H) reset after, (B, 2H) before; rh and gn (B, H). The same gate passes as the
    forward loop, on products from common.rows_product_on."""
    B, H = h.shape
    if reset_after:
        rows_product_on(h, w, transposed, panels, np.int64(0), 3 * H, gr)
        for i in range(B):
            _gates_after(g[i], gr[i], bhh, h[i], o[i], H)
        return
    rows_product_on(h, w, transposed, panels, np.int64(0), 2 * H, gr)
    for i in range(B):
        _reset_before(g[i], gr[i], h[i], rh[i], H)
    rows_product_on(rh, w, transposed, panels, 2 * H, 3 * H, gn)
    for i in range(B):
        _gates_before(g[i], gr[i], gn[i], h[i], o[i], H)


@njit(**JIT)
def _stored_scratch(h, reset_after):
    B, H = h.shape
    gr = np.empty((B, (3 if reset_after else 2) * H), h.dtype)
    return gr, np.empty((B, H), h.dtype), np.empty((B, H), h.dtype)


@njit(**JIT)
def stored_frame(x, w_ih, b_in, w, bhh, reset_after, h):
    """One frame on the weights as stored, read in place (``layer.step()``): x (B, I), w_ih (3H, I),
    b_in (3H,), w (3H, H) rows r, z, n, bhh (3H,); the state h (B, H) is updated in place."""
    B, H = h.shape
    g = np.empty((B, 3 * H), h.dtype)
    project_stored(x, w_ih, b_in, g)
    gr, rh, gn = _stored_scratch(h, reset_after)
    _stored_step(g, w, np.bool_(False), no_operand(h.dtype), bhh, reset_after, h, np.empty((B, H), h.dtype), gr, rh,
                 gn)


@njit(**JIT)
def stored_sequence(x, w_ih, b_in, w, bhh, reset_after, reverse, h, out):
    """A whole sequence on the weights as stored, in one call (a batch of one: see
    api.SequenceStack): x (T, B, I) C-contiguous, out (T, B, H); the state h (B, H) is
    updated in place. Shapes as in :func:`stored_frame`. A long sequence's products read a
    transposed copy of w (common.stored_operand)."""
    T = x.shape[0]
    g = project_sequence(x, w_ih, b_in)
    gr, rh, gn = _stored_scratch(h, reset_after)
    w_r, transposed = stored_operand(w, T)
    panels = stored_panels(w_r, transposed)
    for s in range(T):
        t = time_index(s, T, reverse)
        _stored_step(g[t], w_r, transposed, panels, bhh, reset_after, h, out[t], gr, rh, gn)


# A batch of one's sequence on two (or more) threads, reset after (unit_shares.py, api._split_sequence).


@njit(**JIT)
def split_sequence(x, w_ih, b_in, w, bhh, reverse, h, out, threads):
    """stored_sequence (reset after) for a batch of one, its steps on ``threads`` threads of torch's
    team (region.run_in_team), with the same bits: x (T, 1, I) C-contiguous, out (T, 1, H), the state
    h (1, H) updated in place. Returns 0, or 1 when a thread's call raised."""
    T = x.shape[0]
    H = h.shape[1]
    g = project_sequence(x, w_ih, b_in)
    w_r, transposed = stored_operand(w, T)
    states = np.empty((2, 1, H), h.dtype)     # the state before and after each step
    counter = np.zeros(8, np.int64)
    return run_in_team(_split_part, threads, (g, w_r, transposed, bhh, reverse, h, out, states, counter))


@njit(**JIT)
def _split_part(thread, team_size, g, w, transposed, bhh, reverse, h, out, states, counter):
    """One thread's share of split_sequence (unit_shares.py): its units' r, z and n rows gathered for
    the gate pass stored_sequence runs over the whole row (_gates_after, called: inlined here, its
    arithmetic compiled otherwise and gave other bits at H = 48)."""
    T = g.shape[0]
    u0, u1, local_g, local_b, products = share_buffers(h.shape[1], np.int64(3), thread, team_size, bhh, h, states)
    gathered = products.reshape(local_g.shape[0])
    barrier(counter, team_size)
    for s in range(T):
        t = time_index(s, T, reverse)
        after = share_step(g[t, 0], w, transposed, states, s, u0, u1, products, local_g)
        _gates_after(local_g, gathered, local_b, after, out[t, 0, u0:u1], u1 - u0)
        barrier(counter, team_size * (s + 2))
    copy_vector(h[0, u0:u1], states[T % 2, 0, u0:u1])


def split_weight(w_t, reset_after):
    """The forward loop's weights: (W^T, W^T) reset after (the second unused), else
    (W_rz^T, W_n^T) as two C-contiguous copies (one O(H^2) copy per call)."""
    if reset_after:
        return w_t, w_t
    H = w_t.shape[0]
    return buffers.aligned_copy(w_t[:, :2 * H]), buffers.aligned_copy(w_t[:, 2 * H:])


def _forward_weights(w_t, reset_after, products):
    """split_weight's two matrices, then their operands for ``products`` (products.py)."""
    w_main, w_n = split_weight(w_t, reset_after)
    return w_main, w_n, *operand_pair(w_main, w_n, products)


# The blocks of a batch started from compiled code (common.run_rows, region.team_rows).
@njit(**JIT)
def _fwd_after_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows_after, bounds, blas_limit, args)


@njit(**JIT)
def _fwd_before_in_team(bounds, blas_limit, args):
    return team_rows(_fwd_rows_before, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_after_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows_after, bounds, blas_limit, args)


@njit(**JIT)
def _bwd_before_in_team(bounds, blas_limit, args):
    return team_rows(_bwd_rows_before, bounds, blas_limit, args)


def _forward_loop(reset_after):
    """(the rows function, its launcher) of the forward for this reset placement."""
    return (_fwd_rows_after, _fwd_after_in_team) if reset_after else (_fwd_rows_before, _fwd_before_in_team)


def _backward_loop(reset_after):
    """(the rows function, its launcher) of the backward for this reset placement."""
    return (_bwd_rows_after, _bwd_after_in_team) if reset_after else (_bwd_rows_before, _bwd_before_in_team)


def step(gx_t, h, w_t, bhh, reset_after, products=None):
    """One inference step: gx_t (B, 3H), h (B, H) -> h'."""
    params = (*_forward_weights(w_t, reset_after, products), bhh)
    return run_step(_forward_loop(reset_after)[0], gx_t, (h,), params, (), 3)[0]


def forward(gx, h0, w_t, bhh, lengths, reverse, reset_after, training, gx_index=None, products=None):
    """Returns out (T, B, H), h_n (B, H) and the workspace (None when not training).
    ``products``: the per-step products' GEMM, None for the dtype's default (products.py)."""
    T, B, G = gx_shape(gx, gx_index)
    H = h0.shape[1]
    widths = (4 * H, H, H) if reset_after else (3 * H, H, H)
    params = (*_forward_weights(w_t, reset_after, products), bhh)
    rows, in_team = _forward_loop(reset_after)
    out, (h_n,), ws = run_forward(rows, gx, (h0,), params, lengths, reverse, (), training, widths, T * B * G * H,
                                  gx_index, in_team)
    return out, h_n, ws


def backward(ws, w, grad_out, grad_h_n, lengths, reverse, reset_after, grad_bf=False, products=None):
    """Returns grad_gx (T, B, 3H), grad_h0 (B, H), the weight-gradient terms and the
    bias-gradient source (see :func:`grukit.nn.kernels.api.weight_grads`)."""
    ws_g, ws_h, ws_x = ws
    T, B, H = ws_h.shape
    dt = grad_out.dtype
    dgx = buffers.empty((T, B, 3 * H), dt)
    dgh_n = buffers.empty((T, B, H), dt) if reset_after else dgx
    dh0 = np.empty((B, H), dt)
    bias_rows = np.zeros((B, 4 * H) if reset_after else (1, 1), dt)
    ops = operand_pair(w, w, products) if reset_after else operand_pair(w[:2 * H], w[2 * H:], products)
    args = (w, *ops, lengths, reverse, grad_out, grad_bf, grad_h_n, ws_g, ws_h, dgx, dgh_n, dh0, bias_rows,
            tiny_gradient(dt))
    rows, in_team = _backward_loop(reset_after)
    run_rows(rows, B, 2 * T * B * 3 * H * H, args, in_team=in_team)
    if reset_after:
        return dgx, dh0, [(0, 2 * H, dgx[..., :2 * H], ws_h), (2 * H, 3 * H, dgh_n, ws_h)], bias_rows
    return dgx, dh0, [(0, 2 * H, dgx[..., :2 * H], ws_h), (2 * H, 3 * H, dgx[..., 2 * H:], ws_x)], None
