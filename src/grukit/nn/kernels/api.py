"""Numpy entry points of the fused kernels: one layer and direction, any cell mode.

Torch-free: a runtime without torch can call these with numpy arrays. The torch autograd
wrapper is :mod:`grukit.nn.kernels.function`. Arguments mirror
:func:`grukit.nn.reference.run_direction`: gx (T, B, G*H) C-contiguous input-side
pre-activations, h0 (B, H) (and c0 for LSTM), the recurrent weight as stored (rows per
:data:`grukit.nn.cells.LAYOUTS`) together with its packed transpose from
:func:`pack_weight`, bias_hh or None, lengths int64 (B,) with 0 <= lengths <= T.

Shapes are checked here because the compiled loops do not check bounds.
"""

from __future__ import annotations

import threading

import numpy as np

from . import gru, lstm, mgu, mingru, products, region, rnn
from .common import (flushing_subnormals, full_lengths, get_threads, gx_shape, pack_transposed, project_rows,
                     project_rows_in_team, run_rows)

GATES = {"GRU": 3, "GRU_RESET_BEFORE": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1,
         "MGU": 2, "MGU1": 2, "MGU2": 2, "MGU3": 2, "MINGRU": 2}
RECURRENT_ROWS = {**GATES, "MGU3": 1, "MINGRU": 0}   # rows of weight_hh, in units of H
HAS_BIAS_HH = ("GRU", "LSTM", "RNN_TANH", "RNN_RELU")
# Modes whose backward zeroes float32 gradients below common.TINY_GRADIENT_FLOAT32 inside its
# gate loop; the torch wrapper flushes the other modes' gradients in a pass after the kernel.
FLUSHES_IN_KERNEL = ("GRU", "GRU_RESET_BEFORE", "LSTM")
# Modes whose backward's bias source sums to the gradient of every gate's pre-activation summed
# over all rows, which is also the gradient of an input-side bias (see gate_sums).
BIAS_SOURCE_IS_GATES = ("LSTM", "RNN_TANH", "RNN_RELU")
# Modes whose training workspace is (out, h0), the forward's own output and initial state.
WORKSPACE_IS_OUTPUT = ("RNN_TANH", "RNN_RELU")
CANDIDATES = ("identity", "g")
MODES = tuple(GATES)
# A projection is one GEMM per thread, which runs several times faster per multiply-add than the
# recurrent loops, so it pays for a second thread only from more work on (common.MIN_PARALLEL_WORK
# is sized for those loops). Measured on 2 cores, float32, 1 against 2 threads: 100 x 64 x 384
# 153 against 267 us, 200 x 64 x 384 286 against 335, 400 x 64 x 384 522 against 476.
PROJECTION_MIN_PARALLEL_WORK = 8_000_000


def pack_weight(w: np.ndarray | None) -> np.ndarray | None:
    """The recurrent weight in the layout the forward loop reads: W^T, C-contiguous."""
    return None if w is None else pack_transposed(w)


def _check(mode, gx, h0, c0, w_t, lengths, candidate, shape=None):
    """``shape``: the (T, B, G*H) that gx stands for, when it is a table read through an index."""
    if mode not in GATES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if candidate not in CANDIDATES:
        raise ValueError(f"candidate: expected one of {CANDIDATES}, got {candidate!r}")
    if gx.ndim != 3 or not gx.flags.c_contiguous:
        raise ValueError(f"gx: expected a C-contiguous (T, B, G*H) array, got shape {gx.shape}")
    T, B, GH = gx.shape if shape is None else shape
    dt = gx.dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"gx: expected float32 or float64, got {dt}")
    H = GH // GATES[mode]
    if GH != GATES[mode] * H or h0.shape != (B, H) or h0.dtype != dt:
        raise ValueError(f"h0: expected ({B}, {H}) {dt} for gx of shape {(T, B, GH)}, "
                         f"got {h0.shape} {h0.dtype}")
    if mode == "LSTM" and (c0 is None or c0.shape != (B, H) or c0.dtype != dt):
        raise ValueError(f"c0: expected ({B}, {H}) {dt}")
    rows = RECURRENT_ROWS[mode] * H
    if rows:
        _check_array("packed weight_hh", w_t, (H, rows), dt, f" (pack_weight of the ({rows}, {H}) weight)")
    if lengths is None:
        return None
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if lengths.shape != (B,) or (B and (lengths.min() < 0 or lengths.max() > T)):
        raise ValueError(f"lengths: expected ({B},) values in [0, {T}], got {lengths}")
    return lengths


def _check_array(label, a, shape, dt, hint=""):
    """Raise unless ``a`` is a C-contiguous array of this shape and dtype (the compiled loops
    check no bounds)."""
    if a is None or a.shape != shape or a.dtype != dt or not a.flags.c_contiguous:
        got = None if a is None else (a.shape, a.dtype)
        raise ValueError(f"{label}: expected a C-contiguous {shape} {dt} array{hint}, got {got}")


def _bias(mode, bias_hh, gh, dt):
    if mode in HAS_BIAS_HH and bias_hh is not None:
        if bias_hh.shape != (gh,) or bias_hh.dtype != dt:
            raise ValueError(f"bias_hh: expected ({gh},) {dt}, got {bias_hh.shape} {bias_hh.dtype}")
        return np.ascontiguousarray(bias_hh)
    return np.zeros(gh, dt)


def forward(mode, gx, h0, c0=None, w_t=None, bias_hh=None, lengths=None,
            reverse=False, training=False, candidate="identity", gx_index=None, products=None,
            input_rows=None):
    """Run one layer and direction; ``w_t`` is :func:`pack_weight` of weight_hh.

    ``products``: the GEMM of the per-step recurrent products (products.py): None for the dtype's
    default ("onednn" or "blas"), or the bfloat16 mode's "brgemm" or "rounded".

    ``gx_index`` (T, B) int64: gx is a table (U, G*H) and step t of sequence b reads its row
    gx_index[t, b], as if gx were ``table[gx_index]`` (an embedded first layer's projection per
    distinct token), without that (T, B, G*H) array being written.
    ``input_rows`` (x, w_ih, b_ih or None, batch_first), with gx None: each step projects its rows
    itself, x[t, b] @ w_ih.T + b_ih (x[b, t] when batch_first), as if gx were that projection; where
    :func:`projects_in_loop` says so: writing and reading back gx costs more than projecting there.
    Returns (out, h_n, c_n or None, workspace or None).
    """
    if input_rows is not None:
        x, batch_first = input_rows[0], input_rows[3]
        batch = x.shape[0 if batch_first else 1] if x.ndim == 3 else 0
        if not projects_in_loop(mode, x.shape[-1], x.dtype, batch, lengths):
            raise ValueError(f"input_rows: {mode} with {x.shape[-1]} input features takes gx (api.projects_in_loop: "
                             f"MINGRU's backward reads gx; inputs wider than {INPUT_ROWS_MAX} are projected in the "
                             f"loop only on oneDNN's microkernel, up to {BLOCK_PROJECTION_MAX} features, for "
                             f"sequences of one length and at least {BLOCK_PROJECTION_MIN_ROWS} rows a thread)")
        gx, gx_index = input_rows_source(*input_rows, G=GATES[mode] * h0.shape[1])
    else:
        gx, gx_index = _table_and_index(gx, gx_index)
    shape = gx_shape(gx, gx_index)
    lengths = _check(mode, gx, h0, c0, w_t, lengths, candidate, shape)
    if lengths is None:
        lengths = full_lengths(shape[0], shape[1])
    reverse, training = bool(reverse), bool(training)
    bias = _bias(mode, bias_hh, gx.shape[2], gx.dtype)
    c_n = None
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        out, h_n, ws = gru.forward(gx, h0, w_t, bias, lengths, reverse, mode == "GRU", training, gx_index,
                                   products)
    elif mode == "LSTM":
        out, h_n, c_n, ws = lstm.forward(gx, h0, np.ascontiguousarray(c0), w_t, bias, lengths,
                                         reverse, training, gx_index, products)
    elif mode in ("RNN_TANH", "RNN_RELU"):
        out, h_n, ws = rnn.forward(gx, h0, w_t, bias, lengths, reverse, mode == "RNN_RELU", training,
                                   gx_index, products)
    elif mode == "MINGRU":   # no recurrent matrix, no per-step product
        out, h_n, ws = mingru.forward(gx, h0, lengths, reverse, candidate == "g", training, gx_index)
    else:
        out, h_n, ws = mgu.forward(gx, h0, w_t, lengths, reverse, mode != "MGU3", training, gx_index,
                                   products)
    return out, h_n, c_n, ws


# Inputs up to this width are projected inside the time loop (input_rows): in training
# (kernels.function) and in batched inference (forward_stack).
# S3's LSTM training step (I = 10, G = 256, 3200 rows): the separate projection (the time-major copy
# of x, the GEMM writing gx, its backward's two GEMMs over the step's gate gradients) took 1.7 ms of
# 7.2 in the step. Inside the loop its forward costs the kernel 0.17 ms (two threads), and the step
# is 1.08x faster (the backward's GEMMs remain; benchmarks/NOTES.md).
INPUT_ROWS_MAX = 16
# Wider inputs, up to BLOCK_PROJECTION_MAX features, are projected in the loop too where a step's
# rows are projected as one block by oneDNN's microkernel (float32 where it is the faster GEMM,
# products.resolve), each thread's block has at least BLOCK_PROJECTION_MIN_ROWS rows and the
# sequences all have one length (a padded batch would project row by row): the (T, B, G*H) gx is
# then neither written nor read back. Inference on the Zen 5, one process, alternating: S2's shape
# (I = H = 128) LSTM 1.12-1.21x, GRU 1.09-1.24x, SimpleRNN 1.36x; I = 256 GRU 1.075x; I = 512 (H =
# 128) GRU 1.07x, LSTM 1.005x, S4's shape (I = H = 512) GRU 1.09x, LSTM 1.06x, since the large
# operands go in tiles (common._onednn; I = 512 had been 0.90x); I = 1024 1.02x; blocks of 1-2 rows
# 0.89-0.98x against one large GEMM before the loop. Training: level at S2 and S4 (0.99-1.01x).
BLOCK_PROJECTION_MAX = 512
BLOCK_PROJECTION_MIN_ROWS = 3


def projects_in_loop(mode: str, input_size: int, dtype=np.float32, batch: int = 0, lengths=None) -> bool:
    """Whether a layer input this wide is projected inside the time loop (input_rows): not for
    MINGRU, whose backward reads gx; at most INPUT_ROWS_MAX features, or BLOCK_PROJECTION_MAX on
    oneDNN's microkernel for ``batch`` sequences of one length (``lengths`` None or all equal)."""
    if mode == "MINGRU":
        return False
    if input_size <= INPUT_ROWS_MAX:
        return True
    return (input_size <= BLOCK_PROJECTION_MAX and block_projection(dtype)
            and batch >= BLOCK_PROJECTION_MIN_ROWS * get_threads()
            and (lengths is None or bool(np.all(lengths == lengths[0]))))


def block_projection(dtype) -> bool:
    """Whether a step's input rows are projected as one block, by oneDNN's microkernel, in ``dtype``."""
    return products.resolve(None, dtype) == "onednn"


def input_rows_source(x, w_ih, b_ih, batch_first, G):
    """forward's (gx, gx_index) for input rows: a (1, B, G) scratch array, each row of which a step
    overwrites with its own projection, and the tuple (x, w_ih.T, bias, batch_first, operand) that
    common.gx_row and gx_block project from; ``operand``: products.operands of w_ih.T where a step's
    block of rows is projected by oneDNN's microkernel (:func:`block_projection`), else empty."""
    dt = x.dtype
    if x.ndim != 3 or not x.flags.c_contiguous or dt not in (np.float32, np.float64):
        raise ValueError(f"input_rows: expected x a C-contiguous 3-D float32 or float64 array, got {x.shape} {dt}")
    B = x.shape[0] if batch_first else x.shape[1]
    _check_array("input_rows weight_ih", w_ih, (G, x.shape[2]), dt)
    bias = np.zeros(G, dt) if b_ih is None else b_ih
    _check_array("input_rows bias", bias, (G,), dt)
    w_in_t = pack_transposed(w_ih)
    (operand,) = products.operands((w_in_t,), None) if block_projection(dt) else (np.empty(0, dt),)
    return np.empty((1, B, G), dt), (x, w_in_t, bias, np.bool_(batch_first), operand)


def _table_and_index(gx, gx_index):
    """(gx, None) without an index; else the table as (1, U, G*H) and the checked index."""
    if gx_index is None:
        return gx, None
    if gx.ndim != 2 or not gx.flags.c_contiguous:
        raise ValueError(f"gx: with gx_index, expected a C-contiguous (U, G*H) table, got shape {gx.shape}")
    gx_index = np.ascontiguousarray(gx_index, dtype=np.int64)
    if gx_index.ndim != 2 or (gx_index.size and (gx_index.min() < 0 or gx_index.max() >= gx.shape[0])):
        raise ValueError(f"gx_index: expected (T, B) rows of the ({gx.shape[0]}, {gx.shape[1]}) table, "
                         f"got shape {gx_index.shape}" + (f" with values from {gx_index.min()} to "
                                                          f"{gx_index.max()}" if gx_index.size else ""))
    return gx.reshape((1,) + gx.shape), gx_index


def forward_stack(mode, x, directions, h0, c0=None, lengths=None, candidate="identity",
                  batch_first=False, first_gx=None):
    """Inference through a stack of layers: per layer and direction, :func:`project` (for a
    batch-first input, :func:`project_batch_first`) then :func:`forward`, the directions' outputs
    concatenated as the next layer's input.

    x: (T, B, I), or (B, T, I) with ``batch_first`` (the first layer's input only; None with
    ``first_gx``, the first layer's gx per direction, computed elsewhere: (T, B, G*H), or a pair
    (table, index) as :func:`forward` takes them, e.g. the distinct tokens of an embedded input);
    directions: one
    list per layer of (w_ih (G*H, I) as stored, b_ih or None, :func:`pack_weight` of weight_hh or
    None, bias_hh or None) per direction; h0 (and c0 for LSTM): the initial states, entry
    layer * D + direction of shape (B, H). Returns the last layer's output (T, B, D*H) and the
    final states h_n (and c_n, else None), (L*D, B, H) each.
    """
    count = sum(len(layer) for layer in directions)
    h_n = np.empty((count,) + h0[0].shape, h0[0].dtype)
    c_n = None if c0 is None else np.empty_like(h_n)
    index = 0
    for layer_number, layer in enumerate(directions):
        outputs = []
        for direction, (w_ih, b_ih, w_t, bias_hh) in enumerate(layer):
            gx_index = input_rows = gx = None
            if layer_number == 0 and first_gx is not None:
                gx = first_gx[direction]
                if isinstance(gx, tuple):
                    gx, gx_index = gx
            elif projects_in_loop(mode, x.shape[-1], x.dtype, x.shape[0 if batch_first else 1], lengths):
                input_rows = (x, w_ih, b_ih, batch_first)
            elif batch_first:
                gx, gx_index = project_batch_first(x, w_ih, b_ih)
            else:
                gx = project(x, w_ih, b_ih)
            out, h_n[index], c_last, _ = forward(mode, gx, h0[index], None if c0 is None else c0[index],
                                                 w_t, bias_hh, lengths, direction == 1, False, candidate,
                                                 gx_index, input_rows=input_rows)
            if c_n is not None:
                c_n[index] = c_last
            outputs.append(out)
            index += 1
        x = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
        batch_first = False
    return x, h_n, c_n


def project(x, w_ih, b_ih=None):
    """The input pre-activations gx (T, B, G*H) = x @ w_ih.T + b_ih for inference, on the
    kernels' threads (they split the (t, b) rows, one large GEMM each). x: (T, B, I) C-contiguous;
    w_ih: (G*H, I) as stored (no transposed copy); b_ih: (G*H,) or None."""
    b_ih = _projection_bias(x, w_ih, b_ih)
    T, B, I = x.shape
    return _project_rows(x.reshape(T * B, I), w_ih, b_ih).reshape(T, B, w_ih.shape[0])


def project_batch_first(x, w_ih, b_ih=None):
    """:func:`project` for a batch-first x (B, T, I), as the pair (table, index) that
    :func:`forward` reads as gx (its ``gx_index``): the table (B*T, G*H) holds the rows in x's own
    order, projected as one block of rows like a time-major input, and index[t, b] = b*T + t.

    Projecting into a time-major gx instead took one GEMM per sequence whose output rows lie
    B*G*H apart: at S2 (B=32, T=200, I=128) 9.2 against 8.3 ms for the LSTM's G*H = 512 and 6.5
    against 5.6 ms for the GRU's 384 (one process, rotating order)."""
    b_ih = _projection_bias(x, w_ih, b_ih)
    B, T, I = x.shape
    table = _project_rows(x.reshape(B * T, I), w_ih, b_ih)
    index = np.arange(B, dtype=np.int64)[None, :] * T + np.arange(T, dtype=np.int64)[:, None]
    return table, index


def _project_rows(rows, w_ih, b_ih):
    """rows (R, I) @ w_ih.T + b_ih on the kernels' threads, the arrays already checked
    (_projection_bias): one large GEMM per thread's share of the rows."""
    return project_into(rows, w_ih, b_ih, np.empty((rows.shape[0], w_ih.shape[0]), rows.dtype))


def project_into(rows, w_ih, b_ih, out):
    """out (R, G) = rows (R, I) @ w_ih.T + b_ih on the kernels' threads, C-contiguous arrays of one
    dtype, b_ih (G,) (not None); returns out. The training projection of the fused layers calls it
    where the kernels' GEMM is oneDNN's (function.training_projection)."""
    R, I = rows.shape
    G = w_ih.shape[0]
    kind = products.resolve(None, rows.dtype)   # oneDNN's microkernel takes w_ih.T, a copy per call
    (operand,) = products.operands((pack_transposed(w_ih) if kind == "onednn" else w_ih,), kind)
    run_rows(project_rows, R, R * G * I, (rows, w_ih, b_ih, out, operand), PROJECTION_MIN_PARALLEL_WORK,
             project_rows_in_team)
    return out


def _projection_bias(x, w_ih, b_ih):
    """Check a projection's arrays; the bias as a C-contiguous array (zeros for None)."""
    if x.ndim != 3 or not x.flags.c_contiguous or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x: expected a C-contiguous float32/float64 3-D array, got {x.shape} {x.dtype}")
    G, I = w_ih.shape
    if I != x.shape[2] or w_ih.dtype != x.dtype or not w_ih.flags.c_contiguous:
        raise ValueError(f"w_ih: expected a C-contiguous (G*H, {x.shape[2]}) {x.dtype} array, "
                         f"got {w_ih.shape} {w_ih.dtype}")
    b_ih = np.zeros(G, x.dtype) if b_ih is None else np.ascontiguousarray(b_ih)
    if b_ih.shape != (G,) or b_ih.dtype != x.dtype:
        raise ValueError(f"b_ih: expected ({G},) {x.dtype}, got {b_ih.shape} {b_ih.dtype}")
    return b_ih


def backward(mode, ws, gx, w, grad_out, grad_h_n, grad_c_n=None, lengths=None, reverse=False,
             candidate="identity", grad_out_batch_first=False, products=None):
    """Gradients through one forward call (its workspace ``ws``).

    ``gx`` is read by minGRU only (which recomputes its gates from it); other modes take None,
    so the caller need not keep the (T, B, G*H) pre-activations alive between the passes.
    ``grad_out`` is (T, B, H), or (B, T, H) with ``grad_out_batch_first`` (read in place), or
    (1, 1, H) zeros when the loss does not read the output sequence (common.output_grad).
    ``products``: as the forward call's (:func:`forward`).
    Returns (grad_gx, grad_h0, grad_c0 or None, terms, bias_source): see :func:`weight_grads`.
    """
    T, B = ws[0].shape[:2]   # every mode's first workspace array is (T, B, ...)
    dtype = ws[0].dtype
    lengths = full_lengths(T, B) if lengths is None else np.ascontiguousarray(lengths, np.int64)
    grad_out = np.ascontiguousarray(grad_out, dtype=dtype)
    grad_h_n = np.ascontiguousarray(grad_h_n, dtype=dtype)
    H = grad_h_n.shape[1]
    bf = bool(grad_out_batch_first)
    expected = (B, T, H) if bf else (T, B, H)
    if grad_out.shape not in (expected, (1, 1, H)):
        raise ValueError(f"grad_out: expected {expected}{' (batch-first)' if bf else ''}, or (1, 1, {H}) zeros "
                         f"for an unused output sequence, got {grad_out.shape}")
    reverse = bool(reverse)
    w = None if w is None else np.ascontiguousarray(w)
    dc0 = None
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        dgx, dh0, terms, bias_src = gru.backward(ws, w, grad_out, grad_h_n, lengths, reverse,
                                                 mode == "GRU", bf, products)
    elif mode == "LSTM":
        grad_c_n = np.ascontiguousarray(grad_c_n, dtype=dtype)
        dgx, dh0, dc0, terms, bias_src = lstm.backward(ws, w, grad_out, grad_h_n, grad_c_n,
                                                       lengths, reverse, bf, products)
    elif mode in ("RNN_TANH", "RNN_RELU"):
        dgx, dh0, terms, bias_src = rnn.backward(ws, w, grad_out, grad_h_n, lengths, reverse,
                                                 mode == "RNN_RELU", bf, products)
    elif mode == "MINGRU":
        dgx, dh0, terms, bias_src = mingru.backward(ws, gx, grad_out, grad_h_n, lengths, reverse,
                                                    candidate == "g", bf)
    else:
        dgx, dh0, terms, bias_src = mgu.backward(ws, w, grad_out, grad_h_n, lengths, reverse,
                                                 mode != "MGU3", bf, products)
    return dgx, dh0, dc0, terms, bias_src


def merged_terms(terms):
    """The weight-gradient terms with those sharing rows (RNN's previous-state and h0 terms) joined
    into one, their (T, B, n) operands stacked along T: one product whose rounding (the bfloat16
    mode rounds each product's result) is the rounding of the whole sum, as in the reference."""
    merged = {}
    for row0, row1, g, x in terms:
        merged.setdefault((row0, row1), []).append((g, x))
    return [(row0, row1, *((pairs[0][0], pairs[0][1]) if len(pairs) == 1 else
                           (np.concatenate([g for g, _ in pairs]), np.concatenate([x for _, x in pairs]))))
            for (row0, row1), pairs in merged.items()]


def weight_grads(terms, bias_source, w_shape, matmul=np.matmul):
    """grad weight_hh and grad bias_hh from the backward terms, as single large GEMMs.

    Each term ``(row0, row1, G, X)`` with G (T, B, row1 - row0) and X (T, B, H) adds
    G^T X summed over (T, B) to grad W[row0:row1]; grad bias_hh = bias_source summed over
    all its leading axes, where bias_source is one (..., G*H) array (the kernels' per-sequence
    sums (B, G*H), or (T, B, G*H) gradients) or a list of arrays whose last axes concatenate
    to G*H. ``matmul`` lets the torch wrapper run the GEMMs with torch (and its
    threads).
    """
    if not terms:
        return None, None
    H = w_shape[1]
    grad_w = np.zeros(w_shape, terms[0][2].dtype)
    for row0, row1, g, x in terms:       # terms may share rows (RNN: the h0 term): they add up
        grad_w[row0:row1] += matmul(g.reshape(-1, row1 - row0).T, x.reshape(-1, H))
    return grad_w, bias_grad(bias_source)


def bias_grad(bias_source):
    """grad bias_hh from a backward's bias source (see :func:`weight_grads`), or None without one."""
    if bias_source is None:
        return None
    sources = bias_source if isinstance(bias_source, list) else [bias_source]
    return np.concatenate([s.reshape(-1, s.shape[-1]).sum(0) for s in sources])


def bias_hh_source(mode, bias_source):
    """The part of a backward's bias source that sums to grad bias_hh (:func:`weight_grads`): the
    GRU's (reset after) per-sequence sums are (dr, dz, dn * r | dn), (B, 4H), bias_hh's the first 3H."""
    if mode == "GRU" and bias_source is not None:
        return bias_source[:, :bias_source.shape[1] // 4 * 3]
    return bias_source


def gate_sums(mode, bias_source, grad_bias_hh=None):
    """The gates' pre-activation gradients summed over all rows (T, B): the gradient of a bias added
    on the input side, or None where this mode's bias source is not those sums (the others have
    none). The GRU's (reset after) are (dr, dz, dn), apart from its bias_hh's (dr, dz, dn * r):
    its kernel sums dn beside them (:func:`bias_hh_source`), where torch's sum over the (T * B, 3H)
    gate gradients had taken 0.2-0.4 ms of S2's training step. ``grad_bias_hh``, when
    weight_grads gave it, is that sum where the two agree."""
    if mode == "GRU" and bias_source is not None:
        H = bias_source.shape[1] // 4
        sums = bias_source.sum(0)
        return np.concatenate([sums[:2 * H], sums[3 * H:]])
    if mode not in BIAS_SOURCE_IS_GATES or bias_source is None:
        return None
    if grad_bias_hh is not None:
        return grad_bias_hh
    return bias_source.reshape(-1, bias_source.shape[-1]).sum(0)


class StepStack:
    """A stack of unidirectional layers, prepared for inference one step at a time on their
    weights as stored: each layer's compiled frame (the family's ``stored_frame``) reads them in
    place, so a step copies no weight and sees in-place updates of them.

    layers: per layer (w_ih (G*H, I), the outer bias b_ih (G*H,) or None, weight_hh (R*H, H) or
    None for minGRU, bias_hh or None), C-contiguous as a torch layer stores them. They are
    checked here, once; :meth:`step` checks only its input and state. Not for MGU1-3, whose input
    side is not one product over every gate.
    """

    def __init__(self, mode, layers, candidate="identity"):
        if mode in ("MGU1", "MGU2", "MGU3") or mode not in GATES:
            raise ValueError(f"mode: StepStack covers {tuple(m for m in MODES if m not in ('MGU1', 'MGU2', 'MGU3'))}, "
                             f"got {mode!r}")
        if candidate not in CANDIDATES:
            raise ValueError(f"candidate: expected one of {CANDIDATES}, got {candidate!r}")
        G = GATES[mode]
        self.mode, self.layers = mode, len(layers)
        self.hidden_size = H = layers[0][0].shape[0] // G
        self.input_size = layers[0][0].shape[1]
        self.dtype = dt = layers[0][0].dtype
        self._frames = []
        size = self.input_size
        for index, weights in enumerate(layers):
            self._frames.append(_stored_frame(mode, candidate,
                                              *_stored_weights(mode, weights, size, H, dt, f"of layer {index}")))
            size = H

    def step(self, x, h=None, c=None):
        """x (B, I) C-contiguous; h (and c for LSTM): (L, B, H), left unchanged, or None for
        zeros. Returns the last layer's output (B, H) and the new states h (and c, else None),
        (L, B, H) each."""
        if x.ndim != 2 or x.shape[1] != self.input_size or x.dtype != self.dtype or not x.flags.c_contiguous:
            raise ValueError(f"x: expected a C-contiguous (B, {self.input_size}) {self.dtype} array, "
                             f"got {x.shape} {x.dtype}")
        shape = (self.layers, x.shape[0], self.hidden_size)
        states = []   # copies: the frames update the states in place
        for name, state in (("h", h), ("c", c)) if self.mode == "LSTM" else (("h", h),):
            if h is None:
                states.append(np.zeros(shape, self.dtype))
                continue
            if state is None or state.shape != shape or state.dtype != self.dtype:
                raise ValueError(f"{name}: expected {shape} {self.dtype} states, one per layer, got "
                                 f"{None if state is None else (state.shape, state.dtype)}")
            states.append(state.copy())   # C order
        for index, (frame, weights) in enumerate(self._frames):
            frame(x, *weights, *[state[index] for state in states])
            x = states[0][index]
        return x.copy(), states[0], states[1] if len(states) == 2 else None


class SequenceStack:
    """A stack of layers prepared for inference over whole sequences on their weights as stored:
    per layer and direction, one compiled call (the family's ``stored_sequence``) projects the
    sequence and runs its steps, reading weight_hh in place, with no packed copy of it and no
    Python between the two. The weights are checked here, once; :meth:`run` checks only its
    input and states.

    For a batch of one (``layer(x)`` and ``streamer.run``), which runs on one thread anyway and
    where the calls around the loops cost as much as the loops: a GRU layer at S1 (T=100, I=64,
    H=128), called between torch and ONNX Runtime calls as the benchmark does, took 1.34-1.39 ms
    through :func:`forward_stack` and 0.56-0.58 ms in one such call. The steps' products are dot
    products with the stored rows (common.dot_matvec; a GRU sequence of at least
    common.STORED_TRANSPOSE_MIN_STEPS steps reads a transposed copy made in the call instead), so
    outputs may differ from :func:`forward_stack`'s in the last bits (summation order).

    layers: one list per layer of (w_ih (G*H, I), the outer bias b_ih (G*H,) or None, weight_hh
    (R*H, H) or None for minGRU, bias_hh or None) per direction, C-contiguous as a torch layer
    stores them; for MGU1-3, w_ih covers both gates (zero rows where the variant has none).
    """

    def __init__(self, mode, layers, candidate="identity"):
        if mode not in GATES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if candidate not in CANDIDATES:
            raise ValueError(f"candidate: expected one of {CANDIDATES}, got {candidate!r}")
        self.mode = mode
        self.hidden_size = H = layers[0][0][0].shape[0] // GATES[mode]
        self.input_size = size = layers[0][0][0].shape[1]
        self.dtype = dt = layers[0][0][0].dtype
        self.shape = (sum(len(layer) for layer in layers), H)   # the states' (L*D, H)
        self._layers = []
        for number, layer in enumerate(layers):
            self._layers.append([_stored_sequence(mode, candidate, *_stored_weights(
                mode, weights, size, H, dt, f"of layer {number}, direction {direction}"))
                for direction, weights in enumerate(layer)])
            size = len(layer) * H

    def run(self, x, h0=None, c0=None):
        """x (T, B, I) C-contiguous, time-major; h0 (and c0 for LSTM): (L*D, B, H), left unchanged,
        or None for zeros (each on its own). Returns the last layer's output (T, B, D*H) and the
        final states h_n (and c_n, else None), (L*D, B, H) each."""
        self._check_input(x)
        shape = (self.shape[0], x.shape[1], self.shape[1])
        lstm_ = self.mode == "LSTM"
        states = []   # copies: the loops update the states in place
        for name, state in (("h0", h0), ("c0", c0)) if lstm_ else (("h0", h0),):
            if state is None:
                states.append(np.zeros(shape, self.dtype))
            else:
                self._check_state(name, state, shape)
                states.append(np.array(state, order="C"))
        h_n, c_n = states if lstm_ else (states[0], None)
        return self._advance(x, h_n, c_n), h_n, c_n

    def advance(self, x, h, c=None):
        """As :meth:`run`, on states (L*D, B, H) C-contiguous that are updated in place to the
        final states (``streamer.run`` keeps its state so). Returns the last layer's output."""
        self._check_input(x)
        shape = (self.shape[0], x.shape[1], self.shape[1])
        for name, state in (("h", h), ("c", c)) if self.mode == "LSTM" else (("h", h),):
            self._check_state(name, state, shape)
            if not state.flags.c_contiguous:
                raise ValueError(f"{name}: expected a C-contiguous array, updated in place")
        return self._advance(x, h, c)

    def _check_input(self, x):
        if x.ndim != 3 or x.shape[2] != self.input_size or x.dtype != self.dtype or not x.flags.c_contiguous:
            raise ValueError(f"x: expected a C-contiguous (T, B, {self.input_size}) {self.dtype} array, "
                             f"got {x.shape} {x.dtype}")

    def _check_state(self, name, state, shape):
        if state is None or state.shape != shape or state.dtype != self.dtype:
            raise ValueError(f"{name}: expected {shape} {self.dtype}, got "
                             f"{None if state is None else (state.shape, state.dtype)}")

    def _advance(self, x, h, c):
        T, B, _ = x.shape
        index = 0
        for layer in self._layers:
            outputs = []
            for direction, sequence in enumerate(layer):
                out = np.empty((T, B, self.hidden_size), self.dtype)
                flushing_subnormals(sequence, x, direction == 1, h[index], None if c is None else c[index], out)
                outputs.append(out)
                index += 1
            x = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
        return x


def _stored_weights(mode, weights, size, H, dt, label):
    """One layer's (and direction's) weights as stored, (w_ih, b_ih or None, weight_hh or None,
    bias_hh or None), checked once for the compiled loops, which check no bounds: returns (w_ih,
    b_in, weight_hh, bias), b_in zeros for no b_ih and bias what the family reads (_bias)."""
    w_ih, b_ih, w_hh, bias_hh = weights
    G, R = GATES[mode], RECURRENT_ROWS[mode]
    _check_array(f"w_ih {label}", w_ih, (G * H, size), dt)
    if R:
        _check_array(f"weight_hh {label}", w_hh, (R * H, H), dt)
    b_in = np.zeros(G * H, dt) if b_ih is None else b_ih
    _check_array(f"b_ih {label}", b_in, (G * H,), dt)
    return w_ih, b_in, w_hh, _bias(mode, bias_hh, G * H, dt)


def _stored_frame(mode, candidate, w_ih, b_in, w_hh, bias):
    """The family's compiled frame on stored weights for one layer and the arguments after its
    input: ``frame(x, *weights, h)`` (``h, c`` for LSTM) updates the state(s) in place."""
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        return gru.stored_frame, (w_ih, b_in, w_hh, bias, mode == "GRU")
    if mode == "LSTM":
        return lstm.stored_frame, (w_ih, b_in, w_hh, bias)
    if mode in ("RNN_TANH", "RNN_RELU"):
        return rnn.stored_frame, (w_ih, b_in, w_hh, bias, mode == "RNN_RELU")
    if mode == "MINGRU":
        return mingru.stored_frame, (w_ih, b_in, candidate == "g")
    return mgu.stored_frame, (w_ih, b_in, w_hh)


def _stored_sequence(mode, candidate, w_ih, b_in, w_hh, bias):
    """The family's compiled ``stored_sequence`` for one layer and direction, its weights bound:
    (x, reverse, h, c, out) -> the state(s) updated in place, out filled."""
    if mode in SPLITS and w_hh.shape[1] >= SPLIT_SEQUENCE_MIN_H:
        return lambda x, reverse, h, c, out: _split_sequence(mode, x, w_ih, b_in, w_hh, bias, reverse, h, c, out)
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        reset_after = mode == "GRU"
        return lambda x, reverse, h, c, out: gru.stored_sequence(x, w_ih, b_in, w_hh, bias, reset_after, reverse,
                                                                 h, out)
    if mode == "LSTM":
        return lambda x, reverse, h, c, out: lstm.stored_sequence(x, w_ih, b_in, w_hh, bias, reverse, h, c, out)
    if mode in ("RNN_TANH", "RNN_RELU"):
        relu = mode == "RNN_RELU"
        return lambda x, reverse, h, c, out: rnn.stored_sequence(x, w_ih, b_in, w_hh, bias, relu, reverse, h, out)
    if mode == "MINGRU":
        use_g = candidate == "g"
        return lambda x, reverse, h, c, out: mingru.stored_sequence(x, w_ih, b_in, use_g, reverse, h, out)
    has_uf = mode != "MGU3"
    return lambda x, reverse, h, c, out: mgu.stored_sequence(x, w_ih, b_in, w_hh, has_uf, reverse, h, out)


# A batch of one's GRU (reset after) or LSTM sequence splits its hidden units over the threads from
# this width on (each family's split_sequence, unit_shares.py). `layer(x)` at T = 100, I = 64 on the
# Zen 5, round-robin with torch's layer in one process, two threads split against one: GRU H = 128
# 0.85x, H = 192 1.10x, H = 256 1.10-1.32x, H = 512 1.53-1.68x (the sequence call alone, alternating:
# H = 64 0.76x, H = 128 1.05-1.35x over three runs, H = 256 1.67x). Each step exchanges the new state
# between the cores and meets at a barrier (a 60 ns round trip), but the two cores each run the
# gates' vector code 13-80% slower while both are busy (measured on this host: an exp loop 25 ms
# alone, 35-46 ms beside its twin), and a region whose team has gone to sleep (after a gap, or after
# torch's own calls) first waits for it to wake; a narrow layer's half of W_hh does not pay for that.
SPLIT_SEQUENCE_MIN_H = 256
SPLITS = ("GRU", "LSTM")
# One split sequence at a time in the process: its threads spin at every step's barrier, and two
# at once (two Python threads, each with its own OpenMP team) would put four spinning threads on two
# cores. A call that finds one running takes the one-thread loop. A wide GRU's layer(x) from two
# Python threads at once (T = 100, H = 256, 0.5 ms a call alone): 2.8-4.9 ms a call over ten runs, as
# with no split at all (3.4-5.3 ms; one run in ten of either took 300 ms a call: see the note).
_SPLIT_RUNNING = threading.Lock()


def _split_sequence(mode, x, w_ih, b_in, w_hh, bias, reverse, h, c, out):
    """The family's stored_sequence, split over the threads (its split_sequence) for a batch of one
    where they are torch's team (region.usable) and no other split sequence is running."""
    threads = get_threads()
    if x.shape[1] == 1 and threads >= 2 and region.usable() and _SPLIT_RUNNING.acquire(blocking=False):
        try:
            if mode == "LSTM":
                status = lstm.split_sequence(x, w_ih, b_in, w_hh, bias, reverse, h, c, out, threads)
            else:
                status = gru.split_sequence(x, w_ih, b_in, w_hh, bias, reverse, h, out, threads)
        finally:
            _SPLIT_RUNNING.release()
        if status != 0:
            raise RuntimeError(f"{mode}: a thread's part of the split sequence raised")
    elif mode == "LSTM":
        lstm.stored_sequence(x, w_ih, b_in, w_hh, bias, reverse, h, c, out)
    else:
        gru.stored_sequence(x, w_ih, b_in, w_hh, bias, True, reverse, h, out)


def step(mode, gx_t, h, c=None, w_t=None, bias_hh=None, candidate="identity", products=None):
    """One time step for inference: gx_t (B, G*H), h (B, H) -> (h', c' or None).

    ``w_t`` is the packed weight (:func:`pack_weight`): pack once, step many times.
    ``products``: as :func:`forward`'s.
    """
    gx_t = np.ascontiguousarray(gx_t)
    if gx_t.ndim != 2:
        raise ValueError(f"gx_t: expected (B, G*H), got shape {gx_t.shape}")
    _check(mode, gx_t.reshape((1,) + gx_t.shape), h, c, w_t, None, candidate)
    h = np.ascontiguousarray(h)
    if mode in ("GRU", "GRU_RESET_BEFORE"):
        bias = _bias(mode, bias_hh, gx_t.shape[1], gx_t.dtype)
        return gru.step(gx_t, h, w_t, bias, mode == "GRU", products), None
    if mode == "LSTM":
        bias = _bias(mode, bias_hh, gx_t.shape[1], gx_t.dtype)
        return lstm.step(gx_t, h, np.ascontiguousarray(c), w_t, bias, products)
    if mode in ("RNN_TANH", "RNN_RELU"):
        bias = _bias(mode, bias_hh, gx_t.shape[1], gx_t.dtype)
        return rnn.step(gx_t, h, w_t, bias, mode == "RNN_RELU", products), None
    if mode == "MINGRU":
        return mingru.step(gx_t, h, candidate == "g"), None
    return mgu.step(gx_t, h, w_t, mode != "MGU3", products), None
