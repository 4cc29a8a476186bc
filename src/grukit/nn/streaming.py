"""Streaming inference, one frame at a time, with the state kept inside.

``layer.streamer()`` snapshots a unidirectional layer's weights as numpy arrays in the layout
the compiled kernels read (input weights transposed and expanded to every gate, biases merged,
recurrent weights packed), so each frame costs one small input product and one compiled step
per layer: no torch dispatch, no autograd, no per-call validation. The numbers equal
``layer(x)`` over the whole sequence (tested). Weights changed after creating the streamer are
not seen; create a new one.

``streamer.run(frames)`` takes a chunk of frames at once (as a speech front end delivers them) and
runs each layer's input projection as one GEMM and its recurrence as one compiled call over the
chunk, on the snapshot weights: for a whole sequence it skips what ``layer(x)`` pays on every call
(reading the parameters, the transposed copy of weight_hh, the dispatch and its checks).

Example::

    streamer = gnn.GRU(13, 64).streamer()
    for frame in mfcc_frames:                  # (13,) each, as they arrive
        y = streamer.step(frame)               # (64,) numpy
    ys = streamer.run(next_chunk)              # (T, 13) in, (T, 64) out, the state carried on
    streamer.reset()                           # start a new utterance
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from .kernels import api, gru, lstm, mgu, mingru, rnn
from .kernels.buffers import aligned_copy
from .kernels.common import frame_panels, set_threads, stored_matvec
from .kernels.function import one_blas_thread
from .recurrent import RecurrentLayer, input_preactivations


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


class _LayerWeights(NamedTuple):
    """One layer's snapshot, copies of its parameters in each layout a kernel reads."""

    input_t: np.ndarray          # W_ih^T over every gate (I, G*H): the frames' input side on W^T
    input_bias: np.ndarray       # the outer bias (G*H,)
    w_t: np.ndarray | None       # W_hh^T packed (H, R*H): forward_stack's products, the frames' on W^T
    bias_hh: np.ndarray          # (G*H,), zeros where the cell has none
    w_ih: np.ndarray             # W_ih as stored (G*H, I): run()'s projection, the frames' as stored
    w_hh: np.ndarray | None      # W_hh as stored (R*H, H): a batch of one's api.SequenceStack, the
                                 # frames' where dot products are the faster mat-vec


class Streamer:
    """Per-frame inference for a unidirectional grukit layer (see the module docstring)."""

    def __init__(self, layer: RecurrentLayer, batch_size: int = 1) -> None:
        if layer.bidirectional:
            raise ConfigError("a bidirectional layer needs the whole sequence; stream a unidirectional layer")
        if layer.proj_size:
            raise ConfigError("streaming does not cover LSTM projections yet; use layer.step()")
        self.layer_type = type(layer).__name__
        self.mode = layer.mode
        self.candidate = layer.candidate
        self.input_size = layer.input_size
        self.batch_size = batch_size
        self.dtype = next(layer.parameters()).detach().numpy().dtype
        self.hidden_size = H = layer.hidden_size
        self._weights = []
        for index in range(layer.num_layers):
            params = {k: _numpy(v) for k, v in layer._layer_parameters(index, 0).items()}
            input_t, input_bias = self._expanded_input_side(layer, index)
            # copies: the snapshot does not follow later updates of the parameters
            bias_hh = params["bias_hh"].copy() if params["bias_hh"] is not None else np.zeros(
                len(layer.layout.gates) * H, self.dtype)
            weight_hh = params["weight_hh"]
            # aligned copies: the loops read each row with 64-byte vector loads (buffers.ALIGNMENT)
            self._weights.append(_LayerWeights(input_t, input_bias, api.pack_weight(weight_hh), bias_hh,
                                               aligned_copy(input_t.T),
                                               None if weight_hh is None else aligned_copy(weight_hh)))
        self._stack = [[(w.w_ih, w.input_bias, w.w_t, w.bias_hh)] for w in self._weights]
        self._sequence = None if batch_size != 1 else api.SequenceStack(
            self.mode, [[(w.w_ih, w.input_bias, w.w_hh, w.bias_hh)] for w in self._weights], self.candidate)
        # the states, one (batch_size, H) view per layer of one (L, batch_size, H) array each, which
        # run() advances in place on a batch of one
        self._h = np.zeros((len(self._weights), batch_size, H), self.dtype)
        self._c = np.zeros_like(self._h) if self.mode == "LSTM" else None
        self.h = list(self._h)
        self.c = None if self._c is None else list(self._c)
        self._frames = [self._frame_call(index) for index in range(len(self._weights))]
        self._frame_shape = (self.input_size,) if batch_size == 1 else None   # step()'s fast path
        self._calls_of_one = None
        self._output_of_one = self._h[-1, 0]      # the last layer's state of a batch of one, a view

    @staticmethod
    def _expanded_input_side(layer: RecurrentLayer, index: int) -> tuple[np.ndarray, np.ndarray]:
        """W_ih^T over all gates (I, G*H) and the outer bias (G*H,), through the layers' own
        input_preactivations: the identity gives the weights, a zero input the bias."""
        params = layer._layer_parameters(index, 0)
        no_bias = {**params, "bias_ih": None, "bias": None}
        weight = params["weight_ih"]
        eye = torch.eye(weight.shape[1], dtype=weight.dtype)
        with torch.no_grad():
            weight_t = input_preactivations(layer.layout, eye, no_bias, layer.hidden_size)
            bias = input_preactivations(layer.layout, eye[:1] * 0, params, layer.hidden_size)[0]
        return aligned_copy(weight_t.numpy()), bias.numpy().copy()

    def reset(self) -> None:
        """Zero the state: the next frame starts a new sequence."""
        for state in self.h + (self.c or []):
            state.fill(0)     # in place: the frame functions hold these arrays

    def _frame_call(self, index: int) -> tuple:
        """``(frame, bound)``: the layer's compiled frame (input product, gates, state update in
        place) and its arguments after the input, the weights and scratch buffers. The output is
        left in the layer's state ``self.h[index]``."""
        weights = self._weights[index]
        input_bias, bias_hh = weights.input_bias, weights.bias_hh
        # each weight as stored where dot products are its faster mat-vec, else transposed
        input_stored, stored = stored_matvec(self.input_size if index == 0 else self.hidden_size), \
            stored_matvec(self.hidden_size)
        w_in = weights.w_ih if input_stored else weights.input_t
        w = weights.w_hh if stored else weights.w_t
        input_transposed, transposed = np.bool_(not input_stored), np.bool_(not stored)
        B, mode, h = self.batch_size, self.mode, self.h[index]
        input_panels, panels = frame_panels(w_in, input_transposed, B), frame_panels(w, transposed, B)
        gx = np.empty((1, B, input_bias.shape[0]), self.dtype)
        out = np.empty((B, self.hidden_size), self.dtype)
        inputs = (w_in, input_transposed, input_panels, input_bias)
        if mode in ("GRU", "GRU_RESET_BEFORE"):
            return gru.frame, inputs + (w, transposed, panels, bias_hh, np.bool_(mode == "GRU"), h, gx, out)
        if mode == "LSTM":
            return lstm.frame, inputs + (w, transposed, panels, bias_hh, h, self.c[index], gx, out)
        if mode in ("RNN_TANH", "RNN_RELU"):
            return rnn.frame, inputs + (w, transposed, panels, bias_hh, np.bool_(mode == "RNN_RELU"), h, gx, out)
        if mode == "MINGRU":
            return mingru.frame, inputs + (np.bool_(self.candidate == "g"), h, gx, out)
        return mgu.frame, inputs + (w, transposed, panels, np.bool_(mode != "MGU3"), h, gx, out)

    def _bind_frames_of_one(self) -> list:
        """A batch of one's frames as calls of their compiled code (Numba's entry points, resolved
        here once): a frame's arguments keep their types from call to call, so the dispatcher's type
        checks, 0.4 us a frame, are skipped (step() lets through only frames of the type bound here).
        Each layer's input is a (H_in,) vector: the frame, then the layer before's state."""
        calls = []
        for index, (frame, bound) in enumerate(self._frames):
            x = np.empty(self.input_size, self.dtype) if index == 0 else self._h[index - 1, 0]
            entry = frame.compile(tuple(frame.typeof_pyval(a) for a in (x, *bound)))
            calls.append((entry, bound, x))
        (first, first_bound, _), *rest = calls
        self._calls_of_one = first, first_bound, rest
        return self._calls_of_one

    def step(self, frame) -> np.ndarray:
        """One frame (H_in,) or (batch_size, H_in) in, the last layer's output out (same rank).

        The result is a copy: the streamer's own state is updated in place by the next frame.
        """
        if (type(frame) is np.ndarray and frame.shape == self._frame_shape and frame.dtype == self.dtype
                and (flags := frame.flags).c_contiguous and flags.aligned and flags.writeable):
            # a batch of one's frame of the bound type (_bind_frames_of_one): no conversion, no checks
            first, bound, rest = self._calls_of_one or self._bind_frames_of_one()
            first(frame, *bound)
            for entry, bound, x in rest:
                entry(x, *bound)
            return self._output_of_one.copy()
        x = np.asarray(frame, dtype=self.dtype)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.shape != (self.batch_size, self.input_size):
            raise ShapeError(f"{self.layer_type} streamer: a frame must be ({self.input_size},) or "
                             f"({self.batch_size}, {self.input_size}), got {np.shape(frame)}")
        if self.batch_size == 1:   # a new array: contiguous, aligned and writeable, of the bound type
            out = self.step(np.array(x[0]))
            return out if single else out[None]
        out = self._run_frames(np.ascontiguousarray(x))
        return out[0].copy() if single else out.copy()

    def _run_frames(self, x: np.ndarray) -> np.ndarray:
        """x (batch_size, H_in) through every layer's frame; returns the last layer's state."""
        for (frame, bound), h in zip(self._frames, self.h):
            frame(x, *bound)
            x = h
        return x

    def run(self, frames) -> np.ndarray:
        """A chunk of frames, (T, H_in) or (T, batch_size, H_in), time first: the last layer's
        output at every frame, (T, H) or (T, batch_size, H), with the state carried from the
        frames before and on to the next call. Equal to calling :meth:`step` T times, up to the
        summation order of the input projection (one GEMM here, a mat-vec per frame there)."""
        x = np.asarray(frames, dtype=self.dtype)
        single = x.ndim == 2
        x = x[:, None, :] if single else x
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1:] != (self.batch_size, self.input_size):
            raise ShapeError(f"{self.layer_type} streamer: run() takes at least one frame, as "
                             f"(T, {self.input_size}) or (T, {self.batch_size}, {self.input_size}) "
                             f"with time first, got {np.shape(frames)}")
        x = np.ascontiguousarray(x)
        set_threads(torch.get_num_threads())
        if self._sequence is not None:   # one compiled call per layer (api.SequenceStack), states in place
            out = self._sequence.advance(x, self._h, self._c)
            return out[:, 0] if single else out
        with one_blas_thread(x.shape[0] * x.shape[1]):    # the projection's rows and the steps' GEMMs
            out, h_n, c_n = api.forward_stack(self.mode, x, self._stack, self.h, self.c, candidate=self.candidate)
        self._h[...] = h_n       # in place: the frame functions hold views of these arrays
        if c_n is not None:
            self._c[...] = c_n
        return out[:, 0] if single else out


__all__ = ["Streamer"]
