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

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from .kernels import api, gru, lstm, mgu, mingru, rnn
from .kernels.common import set_threads
from .kernels.function import one_blas_thread
from .recurrent import RecurrentLayer, input_preactivations


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


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
            bias_hh = params["bias_hh"] if params["bias_hh"] is not None else np.zeros(
                len(layer.layout.gates) * H, self.dtype)
            self._weights.append((input_t, input_bias, api.pack_weight(params["weight_hh"]), bias_hh))
        # run()'s layers for api.forward_stack, whose projection reads W_ih as stored, (G*H, I); for a
        # batch of one, an api.SequenceStack, which reads W_hh as stored too
        self._stack = [[(np.ascontiguousarray(input_t.T), input_bias, w_t, bias_hh)]
                       for input_t, input_bias, w_t, bias_hh in self._weights]
        self._sequence = None if batch_size != 1 else api.SequenceStack(
            self.mode, [[(w_ih, input_bias, None if w_t is None else np.ascontiguousarray(w_t.T), bias_hh)]
                        for ((w_ih, input_bias, w_t, bias_hh),) in self._stack], self.candidate)
        # the states, one (batch_size, H) view per layer of one (L, batch_size, H) array each, which
        # run() advances in place on a batch of one
        self._h = np.zeros((len(self._weights), batch_size, H), self.dtype)
        self._c = np.zeros_like(self._h) if self.mode == "LSTM" else None
        self.h = list(self._h)
        self.c = None if self._c is None else list(self._c)
        self._frames = [self._frame_function(index) for index in range(len(self._weights))]

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
        return np.ascontiguousarray(weight_t.numpy()), bias.numpy().copy()

    def reset(self) -> None:
        """Zero the state: the next frame starts a new sequence."""
        for state in self.h + (self.c or []):
            state.fill(0)     # in place: the frame functions hold these arrays

    def _frame_function(self, index: int):
        """``run(x) -> h``: one compiled call for the layer's whole frame (input product, gates,
        state update in place), with its weights and scratch buffers bound."""
        input_t, input_bias, w_t, bias_hh = self._weights[index]
        B, H, mode, h = self.batch_size, self.hidden_size, self.mode, self.h[index]
        gx = np.empty((1, B, input_t.shape[1]), self.dtype)
        out = np.empty((1, B, H), self.dtype)
        ones = np.ones(B, np.int64)
        if mode in ("GRU", "GRU_RESET_BEFORE"):
            w_a, w_b = gru.split_weight(w_t, mode == "GRU")
            reset_after = mode == "GRU"
            return lambda x: gru.frame(x, input_t, input_bias, w_a, w_b, bias_hh, reset_after, h, gx, out, ones)
        if mode == "LSTM":
            c = self.c[index]
            return lambda x: lstm.frame(x, input_t, input_bias, w_t, bias_hh, h, c, gx, out, ones)
        if mode in ("RNN_TANH", "RNN_RELU"):
            relu = mode == "RNN_RELU"
            return lambda x: rnn.frame(x, input_t, input_bias, w_t, bias_hh, relu, h, gx, out, ones)
        if mode == "MINGRU":
            use_g = self.candidate == "g"
            return lambda x: mingru.frame(x, input_t, input_bias, use_g, h, gx, out, ones)
        has_uf = mode != "MGU3"
        w_f, w_n = mgu.split_weight(w_t, has_uf)
        return lambda x: mgu.frame(x, input_t, input_bias, w_f, w_n, has_uf, h, gx, out, ones)

    def step(self, frame) -> np.ndarray:
        """One frame (H_in,) or (batch_size, H_in) in, the last layer's output out (same rank).

        The result is a copy: the streamer's own state is updated in place by the next frame.
        """
        x = np.asarray(frame, dtype=self.dtype)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.shape != (self.batch_size, self.input_size):
            raise ShapeError(f"{self.layer_type} streamer: a frame must be ({self.input_size},) or "
                             f"({self.batch_size}, {self.input_size}), got {np.shape(frame)}")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        for run, h in zip(self._frames, self.h):
            run(x)
            x = h
        return x[0].copy() if single else x.copy()

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
        if self._sequence is not None:   # one compiled call per layer (api.SequenceStack), states in place
            out = self._sequence.advance(x, self._h, self._c)
            return out[:, 0] if single else out
        set_threads(torch.get_num_threads())
        with one_blas_thread(x.shape[0] * x.shape[1]):    # the projection's rows and the steps' GEMMs
            out, h_n, c_n = api.forward_stack(self.mode, x, self._stack, self.h, self.c, candidate=self.candidate)
        self._h[...] = h_n       # in place: the frame functions hold views of these arrays
        if c_n is not None:
            self._c[...] = c_n
        return out[:, 0] if single else out


__all__ = ["Streamer"]
