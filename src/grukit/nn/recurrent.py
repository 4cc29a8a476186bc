"""Recurrent layers: drop-in twins of torch.nn.GRU / LSTM / RNN, plus MGU and MinGRU.

Same constructor arguments, inputs (3-D, unbatched 2-D, PackedSequence), outputs and
state_dict keys as torch.nn, so ``grukit.nn.GRU(...).load_state_dict(torch.nn.GRU(...).state_dict())``
gives the same numbers. Additions: ``lengths=`` for padded batches, ``reset_after`` on GRU,
``kernel=`` to choose the fused CPU kernel or the reference loop, ``check_finite=``, and
``step()`` for streaming one time step at a time.

Keras's cell options, also additions over torch.nn (they run on the reference loop; see
:mod:`grukit.nn.cells` for where they enter the equations):

* ``activation`` / ``recurrent_activation`` on GRU, LSTM and MGU (any name in
  :data:`grukit.nn.cells.ACTIVATIONS`; RNN takes it as ``nonlinearity``). The defaults (tanh,
  sigmoid) run on the fused kernels; other choices on the reference loop, and ``kernel="fused"``
  raises UnsupportedKernelConfig.
* ``recurrent_dropout`` on GRU, LSTM, RNN and MGU: in training, each layer, direction and
  sequence draws one mask per recurrent gate, ``m ~ Bernoulli(1 - p) / (1 - p)`` of shape
  (N, G_rec * H_out), fixed over the time steps, and each gate's recurrent product reads
  ``m_g * h``. Training with it runs the reference loop (``kernel="fused"`` raises); in eval mode
  nothing is dropped and the fused kernels run.

Parameters of layer k (suffix ``_reverse`` for the backward direction), rows in gate order
of :data:`grukit.nn.cells.LAYOUTS`:

* ``weight_ih_l{k}``: (G_in * H, H_in), ``weight_hh_l{k}``: (G_rec * H, H)
* ``bias_ih_l{k}`` and ``bias_hh_l{k}`` for GRU (reset_after=True), LSTM and RNN, as in torch;
  a single merged ``bias_l{k}`` for GRU(reset_after=False) and MGU, whose two biases would be
  redundant (this is Keras's layout, so parameter counts match Keras);
  ``bias_ih_l{k}`` only for MinGRU, which has no recurrent weights.
* ``weight_hr_l{k}``: (proj_size, H) for LSTM with proj_size > 0.
* LSTM and RNN with ``single_bias=True``: one ``bias_l{k}`` instead of the pair (Keras's count).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError, DataError, ShapeError
from . import bfloat16, dispatch, training_plan
from .cells import LAYOUTS, CellLayout, State, activation_function
from .dynamo import eager_under_compile
from .embedded import EmbeddedTokens, TableRows, check_tokens, kept_empty, time_major_rows
from .projection_grads import projection_grads
from .reference import DirectionWeights, mingru_parallel_scan, run_direction, step


class RecurrentLayer(nn.Module):
    """Shared machinery of all recurrent layers; use GRU, LSTM, RNN, MGU or MinGRU."""

    _activation_argument = "activation"  # the constructor's name for layout.activation

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, kernel: str = "auto",
                 check_finite: bool = False, candidate: str = "identity", single_bias: bool = False,
                 activation: str | None = None, recurrent_activation: str | None = None,
                 recurrent_dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_positive_int(f"{name}(input_size=...)", input_size)
        _check_positive_int(f"{name}(hidden_size=...)", hidden_size)
        _check_positive_int(f"{name}(num_layers=...)", num_layers)
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ConfigError(f"{name}(dropout={dropout!r}): expected a probability in [0, 1]")
        if (not isinstance(recurrent_dropout, (int, float)) or isinstance(recurrent_dropout, bool)
                or not 0 <= recurrent_dropout < 1):
            raise ConfigError(f"{name}(recurrent_dropout={recurrent_dropout!r}): expected a probability in "
                              "[0, 1) (the fraction of the previous state's units dropped in training)")
        if not isinstance(proj_size, int) or proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ConfigError(f"{name}(proj_size={proj_size!r}): expected 0 (no projection) or an int "
                              f"in [1, hidden_size={hidden_size})")
        self.mode = mode
        self.layout: CellLayout = LAYOUTS[mode]
        self.single_bias = single_bias
        if single_bias:
            if self.layout.bias_gates("bias_hh") and mode == "GRU":
                raise ConfigError("GRU(reset_after=True) needs its recurrent bias inside r * (W_hn h + b_hn); "
                                  "single_bias=True applies to LSTM and RNN (reset_after=False GRU has one already)")
            # Keras's layout: the input and recurrent biases of LSTM/RNN are only ever summed
            self.layout = replace(self.layout, biases=(("bias", self.layout.gates),))
        if activation is not None or recurrent_activation is not None:
            activation = activation or self.layout.activation
            recurrent_activation = recurrent_activation or self.layout.recurrent_activation
            activation_function(activation, f"{name}(activation=...)")
            activation_function(recurrent_activation, f"{name}(recurrent_activation=...)")
            self.layout = replace(self.layout, activation=activation, recurrent_activation=recurrent_activation)
        self.recurrent_dropout = float(recurrent_dropout)
        if self.recurrent_dropout and not self.layout.recurrent_gates:
            raise ConfigError(f"{name}(recurrent_dropout={recurrent_dropout!r}): this cell has no recurrent "
                              "weights to drop from; use dropout= between layers instead")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.kernel = dispatch.validate_kernel_choice(kernel)
        self.check_finite = check_finite
        self.candidate = candidate
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.output_size * self.num_directions
            for suffix in self._direction_suffixes():
                for param_name, shape in self._parameter_shapes(layer_input):
                    self.register_parameter(f"{param_name}_l{layer}{suffix}",
                                            nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    # -- structure -------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features per direction in the output: proj_size if projected, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _direction_suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _parameter_shapes(self, layer_input: int) -> list[tuple[str, tuple[int, ...]]]:
        H = self.hidden_size
        layout = self.layout
        shapes = [("weight_ih", (len(layout.input_gates) * H, layer_input))]
        if layout.recurrent_gates:
            shapes.append(("weight_hh", (len(layout.recurrent_gates) * H, self.output_size)))
        if self.bias:
            shapes += [(bias_name, (len(gates) * H,)) for bias_name, gates in layout.biases]
        if self.proj_size:
            shapes.append(("weight_hr", (self.proj_size, H)))
        return shapes

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    _PARAMETER_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "bias", "weight_hr")

    def _layer_parameters(self, layer: int, direction: int) -> dict[str, torch.Tensor | None]:
        """{kind: tensor or None} for one layer and direction, kinds as _PARAMETER_KINDS.

        Only the names this configuration registers are looked up: for a missing one, getattr
        raises inside nn.Module.__getattr__ and costs ~4 us, on every forward and step() call."""
        names = self.__dict__.get("_registered_names")
        if names is None:   # first call (also for modules pickled before this cache existed)
            names = self.__dict__["_registered_names"] = {}
        key = (layer, direction)
        if key not in names:
            suffix = f"_l{layer}{self._direction_suffixes()[direction]}"
            names[key] = tuple((kind, kind + suffix) for kind in self._PARAMETER_KINDS
                               if hasattr(self, kind + suffix))
        found = dict.fromkeys(self._PARAMETER_KINDS)
        for kind, name in names[key]:
            found[kind] = getattr(self, name)
        return found

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[p for p in self._layer_parameters(layer, d).values() if p is not None]
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    def flatten_parameters(self) -> None:
        """Nothing to do; here so that code written for torch.nn (which calls it to pack the weights
        into one cuDNN buffer) runs unchanged: grukit's kernels read the parameters as stored."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "kernel": "auto"}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                text += f", {key}={getattr(self, key)!r}"
        default = LAYOUTS[self.mode]
        if self.layout.activation != default.activation:
            text += f", {self._activation_argument}={self.layout.activation!r}"
        if self.layout.recurrent_activation != default.recurrent_activation:
            text += f", recurrent_activation={self.layout.recurrent_activation!r}"
        if self.recurrent_dropout:
            text += f", recurrent_dropout={self.recurrent_dropout!r}"
        return text

    # -- forward ---------------------------------------------------------------------
    # torch.compile runs these eagerly (a graph break): nn/dynamo.py.
    @eager_under_compile
    def forward(self, input: torch.Tensor | PackedSequence, hx: State | None = None,
                lengths: torch.Tensor | None = None, embedding: torch.Tensor | None = None):
        """Run the layer over a sequence.

        input: (L, N, H_in), or (N, L, H_in) with batch_first, or (L, H_in) unbatched, or a
        PackedSequence. hx: (num_layers * D, N, H_out) (for LSTM a tuple (h_0, c_0)), zeros if None.
        lengths: optional (N,) valid lengths of a padded batch; each sequence's state stops at its
        last valid step and padded outputs are zero.
        embedding: optional (V, H_in) matrix (an ``nn.Embedding``'s weight); input then holds
        integer token ids (L, N), (N, L) with batch_first, or (L,), and the call equals
        ``layer(embedding[input])``, with the first layer's input projection run once per
        distinct token (see :mod:`grukit.nn.embedded`; gradients reach the embedding too).
        Returns (output, h_n) (for LSTM (output, (h_n, c_n))) with torch.nn's shapes.
        Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a float32 layer runs grukit's bfloat16
        mode (:mod:`grukit.nn.bfloat16`: bfloat16 products, float32 accumulation and outputs).
        """
        if hx is None and lengths is None and embedding is None:   # training's common call, decided once
            plan = training_plan.kept_plan(self, input)
            if plan is not None:
                return plan.run(self, input)
        hx = _state_tuple(hx)
        if torch.jit.is_tracing() or torch.compiler.is_exporting():   # torch.jit.trace, torch.onnx.export,
            return self._traced(input, hx, lengths, embedding)             # torch.export
        weight = self._any_weight()
        scope = bfloat16.autocast_scope(weight)
        if scope is not None:   # again, with autocast off inside and the bfloat16 mode on or off
            input, hx = bfloat16.autocast_inputs(weight.dtype, input, hx)
            with scope:
                return self.forward(input, hx, lengths, embedding=embedding)
        packed = isinstance(input, PackedSequence)
        if embedding is not None:
            if packed:
                raise ConfigError(f"{type(self).__name__}: embedding= takes padded token ids, not a "
                                  "PackedSequence; pad the ids and pass lengths= instead")
            tokens, batched = check_tokens(type(self).__name__, input, embedding, self.input_size,
                                           self.batch_first)
            x = EmbeddedTokens(tokens, embedding)
        elif packed:
            if lengths is not None:
                raise ConfigError(f"{type(self).__name__}: lengths= was given with a PackedSequence, "
                                  "which carries its own lengths; pass one or the other")
            sorted_indices, batch_sizes = input.sorted_indices, input.batch_sizes
            x, lengths = pad_packed_sequence(input, batch_first=False)
            batched = True
        else:
            x, batched = self._check_input(input)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if not batched:
                x = x.unsqueeze(1)
        self._check_dtype(x.weight if isinstance(x, EmbeddedTokens) else x, weight,
                          "embedding" if isinstance(x, EmbeddedTokens) else "input")
        if self.check_finite and not torch.isfinite(x.weight if isinstance(x, EmbeddedTokens) else x).all():
            raise DataError(f"{type(self).__name__}: the input contains NaN or infinity; clean or "
                            "impute the data first (check_finite=True asked for this check)")
        T, N = x.shape[0], x.shape[1]
        lengths = self._check_lengths(lengths, T, N)
        views = self._kernel_views(x)
        if views is not None:   # inference on the fused kernels, all layers in one call
            from .kernels.function import fused_inference
            state = None if hx is None else self._initial_state(hx, N, x, batched)
            output, final = fused_inference(self.mode, x, state, views, lengths, self.candidate, self.hidden_size,
                                            self._made_of(views))
        else:
            state = self._initial_state(hx, N, x, batched)
            output, final = self._run_layers(x, state, lengths)
        if packed:
            output = _repack(output, lengths, batch_sizes, sorted_indices, input.unsorted_indices)
        elif not batched:
            output = output.squeeze(1)
            final = _map_state(final, lambda s: s.squeeze(1))
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, final

    def _traced(self, input, hx, lengths, embedding):
        """A call recorded by torch.jit.trace, torch.onnx.export or torch.export: a tracer records
        torch ops and cannot see into the compiled kernels, so the call runs on the layer's torch.nn
        twin with the layer's own parameters (convert.sharing_twin), and the record holds torch's
        GRU / LSTM / RNN operator, which ONNX exports as its own, for any sequence length."""
        from .convert.torch_layout import sharing_twin, twin_problem
        name = type(self).__name__
        problem = twin_problem(self)
        if problem is not None:
            raise ConfigError(f"{name}: torch.jit.trace, torch.onnx.export and torch.export record a grukit "
                              f"layer as its torch.nn twin, and {problem}; export the weights with "
                              "grukit.nn.convert (onnx_weights, to_keras) instead")
        if lengths is not None:
            raise ConfigError(f"{name}: a traced or exported call does not take lengths=; pass a PackedSequence "
                              "for padded batches")
        if embedding is not None:   # what the distinct-token path computes: layer(embedding[ids])
            check_tokens(name, input, embedding, self.input_size, self.batch_first)
            input = nn.functional.embedding(input, embedding)
        return sharing_twin(self)(input, hx)

    def _run_layers(self, x: torch.Tensor, state: State, lengths: torch.Tensor | None):
        """x: (T, N, H_in) time-major; state: (layers * D, N, H) or a tuple of two."""
        finals: list[State] = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                state0 = _map_state(state, lambda s: s[index])
                out, final = self._run_direction(layer_input, state0, lengths, layer, direction)
                outputs.append(out)
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        if isinstance(finals[0], tuple):
            final = tuple(torch.stack([f[i] for f in finals], 0) for i in range(2))
        else:
            final = torch.stack(finals, 0)
        return layer_input, final

    def _fused_inference_directions(self, x: torch.Tensor | EmbeddedTokens) -> list[list[tuple]] | None:
        """Every layer's and direction's (weight_ih, outer bias, weight_hh, bias_hh) when the whole
        stack can run through kernels.function.fused_inference: no gradients recorded (torch.no_grad
        or inference_mode), no dropout to apply, a configuration the fused kernels cover, every
        tensor on the CPU in x's float dtype. None sends the call through _run_direction, which
        decides per direction (and raises for kernel="fused" where the kernels do not apply)."""
        if torch.is_grad_enabled() or self.kernel == "reference" or (
                self.training and (self.dropout or self.recurrent_dropout)):
            return None
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return None
        covered = self.__dict__.get("_fused_inference_covered")
        if covered is None:   # fixed by the configuration: decided once
            covered = self.__dict__["_fused_inference_covered"] = self._fused_kernels_cover_every_layer()
        if not covered:
            return None
        directions = []
        for layer in range(self.num_layers):
            per_direction = []
            for direction in range(self.num_directions):
                params = self._layer_parameters(layer, direction)
                weight_ih, bias = single_projection(self.layout, params)
                tensors = (weight_ih, bias, params["weight_hh"], params["bias_hh"])
                if any(t is not None and (t.dtype != x.dtype or t.device.type != "cpu") for t in tensors):
                    return None
                per_direction.append(tensors)
            directions.append(per_direction)
        return directions

    def _fused_kernels_cover_every_layer(self) -> bool:
        """Whether fused_inference covers this configuration (dtypes and devices aside): what
        dispatch asks of every direction (kernels importable, default activations), no projection
        (proj_size), and each layer's input side a single projection (not MGU1-3)."""
        reason = dispatch.fused_unsupported_reason(self.mode, torch.float64, torch.device("cpu"), None,
                                                   self.layout)
        if self.proj_size or reason is not None:
            return False
        return all(single_projection(self.layout, self._layer_parameters(layer, direction)) is not None
                   for layer in range(self.num_layers) for direction in range(self.num_directions))

    def _direction_weights(self, layer: int, direction: int) -> tuple[dict, DirectionWeights]:
        params = self._layer_parameters(layer, direction)
        return params, DirectionWeights(params["weight_hh"], params["bias_hh"], params["weight_hr"])

    def _run_direction(self, x, state0, lengths, layer: int, direction: int):
        params, weights = self._direction_weights(layer, direction)
        reverse = direction == 1
        mask = None
        if self.recurrent_dropout and self.training:
            mask = self.recurrent_dropout_mask(x.shape[1], x)
        path = dispatch.choose_path(self.kernel, self.mode, x.dtype, x.device, weights, self.layout,
                                    recurrent_dropout=mask is not None)
        gx = self._preactivations(x, params, fused=path == "fused", lengths=lengths)
        if path == "fused":
            from .kernels.function import fused_run_direction
            return fused_run_direction(self.mode, gx, state0, weights, lengths, reverse, self.candidate)
        if self.mode == "MINGRU":
            return mingru_parallel_scan(gx, state0, lengths, reverse, self.candidate)
        return run_direction(self.mode, gx, state0, weights, lengths, reverse, self.candidate, self.layout, mask)

    def _preactivations(self, x: torch.Tensor | EmbeddedTokens, params: dict, fused: bool,
                        lengths: torch.Tensor | None = None) -> torch.Tensor | TableRows:
        """gx (T, N, G*H) of one direction: through the distinct tokens for an embedded first
        layer (for the fused kernels as the per-token table and index, which they read without
        gathering; minGRU's backward reads gx again, so it gets gx), else the kernels' projection
        where it applies, else input_preactivations."""
        single = single_projection(self.layout, params)
        if isinstance(x, EmbeddedTokens):
            if single is not None:
                return x.project_distinct(*single) if fused and self.mode != "MINGRU" else x.project(*single)
            x = x.materialize()   # MGU1-3: some gates have no input weights
        if fused and not bfloat16.enabled():
            from .kernels.function import fused_projection, input_rows
            gx = input_rows(self.mode, x, single, lengths) or fused_projection(x, single)
            if gx is not None:
                return gx
        return input_preactivations(self.layout, x, params, self.hidden_size, fused)

    def recurrent_dropout_mask(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """A fresh recurrent-dropout mask for one layer and direction: (N, G_rec * H_out) with entries
        0 (probability recurrent_dropout) or 1 / (1 - recurrent_dropout), one H_out block per recurrent
        gate in ``layout.recurrent_gates`` order. Drawn from torch's global generator (seed it with
        torch.manual_seed); forward calls this once per layer and direction, in training only."""
        keep = 1.0 - self.recurrent_dropout
        shape = (batch_size, len(self.layout.recurrent_gates) * self.output_size)
        return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)

    # -- streaming -------------------------------------------------------------------
    @eager_under_compile
    def step(self, x_t: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Advance one time step, for streaming inference (unidirectional layers only).

        x_t: (N, H_in) or (H_in,); state: as hx of forward, or None for zeros.
        Returns (y_t, state) where y_t is the last layer's output (N, H_out); feeding a sequence
        step by step gives the same numbers as one forward call.
        """
        if self.bidirectional:
            raise ConfigError(f"{type(self).__name__}.step(): a bidirectional layer needs the whole "
                              "sequence; use forward(), or a unidirectional layer for streaming")
        if x_t.dim() not in (1, 2) or x_t.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}.step(): x_t must be (N, {self.input_size}) or "
                             f"({self.input_size},), got {tuple(x_t.shape)}")
        if self.recurrent_dropout and self.training:
            raise ConfigError(f"{type(self).__name__}.step(): recurrent_dropout={self.recurrent_dropout} "
                              "needs one mask over the whole sequence, which step() does not keep; call "
                              ".eval() for streaming inference, or train with forward() over whole sequences")
        state = _state_tuple(state)
        if torch.jit.is_tracing() or torch.compiler.is_exporting():   # a one-step sequence, as forward()
            time_axis = 1 if self.batch_first and x_t.dim() == 2 else 0
            output, final = self._traced(x_t.unsqueeze(time_axis), state, None, None)
            return output.squeeze(time_axis), final
        weight = self._any_weight()
        scope = bfloat16.autocast_scope(weight)
        if scope is not None:
            x_t, state = bfloat16.autocast_inputs(weight.dtype, x_t, state)
            with scope:
                return self.step(x_t, state)
        self._check_dtype(x_t, weight, "x_t")
        batched = x_t.dim() == 2
        plan = self._step_plan(x_t)
        if plan is not None:   # inference on the fused kernels: the whole stack in one call
            stack, fused_step_stack = plan
            if state is not None:
                self._check_state(state, x_t.shape[0] if batched else 1, batched)
            return fused_step_stack(self.mode, x_t, state, stack, batched)
        x = x_t if batched else x_t.unsqueeze(0)
        state = self._initial_state(state, x.shape[0], x, batched)
        new_states = []
        layer_input = x
        for layer in range(self.num_layers):
            params, weights = self._direction_weights(layer, 0)
            gx = input_preactivations(self.layout, layer_input, params, self.hidden_size)
            layer_state0 = _map_state(state, lambda s: s[layer])
            if self._step_path(gx, weights) == "fused":
                from .kernels.function import fused_step
                layer_state = fused_step(self.mode, gx, layer_state0, weights, self.candidate)
            else:
                layer_state = step(self.mode, gx, layer_state0, weights, self.candidate, self.layout)
            new_states.append(layer_state)
            layer_input = layer_state[0] if isinstance(layer_state, tuple) else layer_state
        if isinstance(new_states[0], tuple):
            final = tuple(torch.stack([s[i] for s in new_states], 0) for i in range(2))
        else:
            final = torch.stack(new_states, 0)
        if not batched:
            layer_input = layer_input.squeeze(0)
            final = _map_state(final, lambda s: s.squeeze(1))
        return layer_input, final

    _KEPT_VIEWS = "_kept_kernel_views"

    def _kernel_views(self, x: torch.Tensor | EmbeddedTokens) -> list[list[tuple]] | None:
        """Every layer's and direction's (weight_ih, outer bias, weight_hh, bias_hh) as numpy views of
        the parameters, for the fused inference paths (``layer(x)`` through
        kernels.function.fused_inference, step() through kernels.api.StepStack); None where they do
        not apply (see _fused_inference_directions).

        Looking the parameters up, checking them and viewing them as numpy arrays costs about as
        much per layer as a streamed frame's own work (some 10 us), so the views are kept. Views,
        not copies: in-place updates of any kind (optimizer steps, load_state_dict, writes through
        .data, torch's fused Adam, which bumps no version counter) are read at once. They are made
        anew when a parameter is replaced, moved or reshaped (its object, data pointer, shape or
        strides change: ``param.data = param.data.t()`` keeps the pointer), or when
        the kernel choice, training mode, dropout or x's dtype or device changes, and never pickled.
        Where a weight the layer reads is not one of its registered parameters (parametrizations
        such as weight norm compute it on every access, pruning recomputes it before every call),
        the views are made on every call and not kept.
        """
        if torch.is_grad_enabled() or bfloat16.enabled():   # the bfloat16 mode: per direction, below
            return None
        params = self._parameters.values()
        key = (self.kernel, self.training, self.dropout, self.recurrent_dropout, x.dtype, x.device.type,
               [(id(p), p.data_ptr(), p.shape, p.stride()) for p in params])
        kept = self.__dict__.get(self._KEPT_VIEWS)
        if kept is not None and kept[0] == key:
            return kept[1]
        views = self._make_kernel_views(x)
        # Decided when the views are made: pruning or a parametrization takes the weight out of
        # _parameters, which changes the key.
        if self._reads_parameters_only():
            self.__dict__[self._KEPT_VIEWS] = (key, views, {})   # {}: what the fused paths make of them
        else:
            self.__dict__.pop(self._KEPT_VIEWS, None)
        return views

    def _reads_parameters_only(self) -> bool:
        """Whether every weight the layer has looked up (_layer_parameters) is a registered parameter
        of its own, rather than an attribute computed from one."""
        names = self.__dict__.get("_registered_names")
        return names is not None and all(name in self._parameters for pairs in names.values()
                                         for _, name in pairs)

    def _make_kernel_views(self, x: torch.Tensor | EmbeddedTokens) -> list[list[tuple]] | None:
        directions = self._fused_inference_directions(x)
        if directions is None or any(t is not None and not t.is_contiguous()
                                     for layer in directions for direction in layer for t in direction):
            return None
        return [[tuple(None if t is None else t.detach().numpy() for t in direction) for direction in layer]
                for layer in directions]

    def _step_plan(self, x: torch.Tensor):
        """For step() in inference: (a kernels.api.StepStack on the kept views, kernels.function.
        fused_step_stack, which runs it); None where step() runs layer by layer."""
        views = self._kernel_views(x)
        if views is None or self.bidirectional:
            return None
        made = self._made_of(views)
        if "step" not in made:
            from .kernels.api import StepStack
            from .kernels.function import fused_step_stack
            made["step"] = StepStack(self.mode, [layer[0] for layer in views], self.candidate), fused_step_stack
        return made["step"]

    def _any_weight(self) -> torch.Tensor:
        """One of the layer's weights, for its dtype and device."""
        weight = next(iter(self._parameters.values()), None)
        return self._layer_parameters(0, 0)["weight_ih"] if weight is None else weight

    def _made_of(self, views) -> dict:
        """What the fused paths make of the kept views and keep with them (step()'s StepStack,
        layer(x)'s SequenceStack for a batch of one); a fresh dict when the views are not kept
        (a parametrized or pruned layer makes them on every call)."""
        kept = self.__dict__.get(self._KEPT_VIEWS)
        return kept[2] if kept is not None and kept[1] is views else {}

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(self._KEPT_VIEWS, None)   # views of the parameters: made again after loading
        state.pop(training_plan.KEPT, None)   # and the training plan, which holds them
        return state

    def _step_path(self, gx: torch.Tensor, weights: DirectionWeights) -> str:
        """The fused step has no autograd: it runs only when no gradient is being recorded."""
        if dispatch.records_gradient(gx, weights.weight_hh, weights.bias_hh):
            if self.kernel == "fused":
                raise dispatch.UnsupportedKernelConfig(
                    f"{type(self).__name__}.step() with kernel='fused' has no backward; run it under "
                    "torch.no_grad() (streaming inference) or use kernel='auto' to record gradients")
            return "reference"
        return dispatch.choose_path(self.kernel, self.mode, gx.dtype, gx.device, weights, self.layout)

    def streamer(self, batch_size: int = 1) -> "Streamer":
        """A lean object for per-frame inference: ``y_t = streamer.step(x_t)`` keeps the state
        inside and skips the per-call checks of step(). See :class:`grukit.nn.streaming.Streamer`."""
        reason = dispatch.reference_only_reason(self.layout, recurrent_dropout=False)
        if reason is not None:
            raise ConfigError(f"{type(self).__name__}.streamer() runs the fused kernels, but {reason}; "
                              "use layer.step() under torch.no_grad() to stream this layer")
        from .streaming import Streamer
        return Streamer(self, batch_size)

    # -- validation ------------------------------------------------------------------
    def _check_input(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise ShapeError(f"{name}: input must be a torch.Tensor or PackedSequence, got "
                             f"{type(input).__name__}; convert with torch.as_tensor(x, dtype=torch.float32)")
        layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
        if input.dim() not in (2, 3):
            raise ShapeError(f"{name}: input must be 3-D {layout} or unbatched 2-D (L, H_in), got "
                             f"{input.dim()}-D shape {tuple(input.shape)}; add or remove a batch dimension")
        if input.shape[-1] != self.input_size:
            raise ShapeError(f"{name}: input has {input.shape[-1]} features in its last dimension, but "
                             f"the layer was built with input_size={self.input_size}; fix the data or "
                             f"build the layer with input_size={input.shape[-1]}")
        time_dim = 1 if (input.dim() == 3 and self.batch_first) else 0
        if input.shape[time_dim] == 0 or (input.dim() == 3 and input.shape[1 - time_dim] == 0):
            raise ShapeError(f"{name}: input shape {tuple(input.shape)} has an empty time or batch "
                             "dimension; pass at least one step of one sequence")
        if not input.is_floating_point():
            raise ShapeError(f"{name}: input must be floating point, got {input.dtype}; "
                             "convert with input.float()")
        return input, input.dim() == 3

    def _check_dtype(self, x: torch.Tensor, weight: torch.Tensor, what: str) -> None:
        """A ConfigError unless x has the dtype of the layer's weights (as torch.nn.GRU requires)."""
        if x.dtype != weight.dtype:
            name = type(self).__name__
            raise ConfigError(f"{name}: {what} is {x.dtype} but the layer's weights are {weight.dtype}; convert "
                              f"the {what} with .to({weight.dtype}) or the layer with .to({x.dtype}) (under "
                              "torch.autocast a bfloat16 input is converted for you)")

    def _check_lengths(self, lengths, T: int, N: int) -> torch.Tensor | None:
        if lengths is None:
            return None
        name = type(self).__name__
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != N or lengths.is_floating_point():
            raise ShapeError(f"{name}: lengths must be a 1-D integer tensor with one entry per sequence "
                             f"({N}), got dtype {lengths.dtype} and shape {tuple(lengths.shape)}")
        lengths = lengths.to(device="cpu", dtype=torch.int64)
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > T:
            raise DataError(f"{name}: lengths must lie in [1, {T}] (the padded sequence length), got "
                            f"values from {low} to {high}; drop empty sequences and clip lengths to "
                            "the padded length")
        if low == T:
            return None  # nothing is padded: take the unmasked path
        return lengths

    def _initial_state(self, hx: State | None, N: int, x: torch.Tensor, batched: bool) -> State:
        """hx checked (_check_state), unbatched parts given their batch axis; zeros of x's dtype and
        device for None."""
        if hx is None:
            h0 = torch.zeros((self.num_layers * self.num_directions, N, self.output_size), dtype=x.dtype,
                             device=x.device)
            if not self.layout.has_cell_state:
                return h0
            return h0, torch.zeros((h0.shape[0], N, self.hidden_size), dtype=x.dtype, device=x.device)
        self._check_state(hx, N, batched)
        if batched:
            return hx
        return tuple(part.unsqueeze(1) for part in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)

    def _check_state(self, hx: State, N: int, batched: bool) -> None:
        """Raise a ShapeError unless hx is a state of this layer for N sequences (batched) or one."""
        rows = self.num_layers * self.num_directions
        h_shape = (rows, N, self.output_size)
        c_shape = (rows, N, self.hidden_size)
        is_lstm = self.layout.has_cell_state
        if _is_state_of(hx, (h_shape, c_shape) if is_lstm else (h_shape,), batched, self._any_weight().dtype):
            return   # accepted at once, as step() asks of every frame's state; else the error below
        name = type(self).__name__
        if is_lstm and not (isinstance(hx, tuple) and len(hx) == 2):
            raise ShapeError(f"{name}: hx must be a tuple (h_0, c_0) for an LSTM")
        if not is_lstm and not isinstance(hx, torch.Tensor):
            raise ShapeError(f"{name}: hx must be a tensor of shape {h_shape}, got {type(hx).__name__}")
        parts = hx if is_lstm else (hx,)
        expected = (h_shape, c_shape) if is_lstm else (h_shape,)
        for label, part, shape in zip(("h_0", "c_0"), parts, expected):
            want = shape if batched else (shape[0], shape[2])
            self._check_dtype(part, self._any_weight(), label)
            if tuple(part.shape) != want:
                raise ShapeError(f"{name}: {label} must have shape {want} (num_layers * num_directions, "
                                 f"{'batch, ' if batched else ''}features), got {tuple(part.shape)}; "
                                 "pass None for zeros or reshape the state")


def _is_state_of(hx, shapes: tuple, batched: bool, dtype: torch.dtype) -> bool:
    """Whether hx is exactly a state of these shapes ((L, N, H) each, or (L, H) when not batched)
    and dtype: one tensor for one shape, a tuple of them for two (LSTM's)."""
    parts = (hx,) if len(shapes) == 1 else hx
    if type(parts) is not tuple or len(parts) != len(shapes):
        return False
    for part, shape in zip(parts, shapes):
        if type(part) is not torch.Tensor or part.dtype != dtype or part.shape != (
                shape if batched else (shape[0], shape[2])):
            return False
    return True


def _state_tuple(hx: State | list | None) -> State | None:
    """An LSTM's (h_0, c_0) given as a list, as torch.nn.LSTM accepts it, as the tuple used inside."""
    return tuple(hx) if isinstance(hx, list) else hx


def _outer_bias(params: dict) -> tuple[torch.Tensor | None, str]:
    """The bias added outside the recurrent product, and its parameter name."""
    if params["bias_ih"] is not None:
        return params["bias_ih"], "bias_ih"
    return params["bias"], "bias"


def single_projection(layout: CellLayout, params: dict) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight_ih, outer bias or None) when gx is one GEMM plus a bias over every gate (the common
    case), else None (some gates have no input weights or no outer bias: MGU1-3)."""
    outer_bias, bias_name = _outer_bias(params)
    if layout.input_gates == layout.gates and (outer_bias is None or layout.bias_gates(bias_name) == layout.gates):
        return params["weight_ih"], outer_bias
    return None


class _InputProjection(torch.autograd.Function):
    """rows @ weight^T + bias, recorded for backward, into one of the kernels' kept arrays.

    The forward: torch's addmm writes its result to a fresh (rows, G) tensor, several MB that glibc
    hands back to the system when the step frees them, so each step touched fresh pages (LSTM S3:
    up to 200 page faults per step; profiled, the bias fill that first touches the output took
    0.6-0.9 ms of a 4.6 ms step). Into a kept array (kernels/buffers.py) instead, reused once
    nothing holds it. (The inference path's chunked projection, api.project's, on MKL's GEMM took
    longer here: 212 against 167 us at S3's 3200 x 10 rows and G = 256, 3.3 against 3.2 ms at S2's
    GRU. Where the kernels' GEMM is oneDNN's it is the faster one: _FusedInputProjection.)

    The backward: :func:`grukit.nn.projection_grads.projection_grads`."""

    @staticmethod
    def forward(rows, weight, bias):
        return _torch_projection(rows, weight, bias, kept_empty((rows.shape[0], weight.shape[0]), rows))

    @staticmethod
    def setup_context(ctx, inputs, output):   # forward without ctx: torch.func.grad can run it
        rows, weight, bias = inputs
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @bfloat16.without_autocast
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        return projection_grads(rows, weight, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                ctx.has_bias and ctx.needs_input_grad[2])


class _FusedInputProjection(_InputProjection):
    """_InputProjection for a layer on the fused kernels: on the kernels' threads and GEMM where that
    is oneDNN's microkernel (kernels.function.training_projection), else torch's addmm."""

    @staticmethod
    def forward(rows, weight, bias):
        from .kernels.function import training_projection
        out = kept_empty((rows.shape[0], weight.shape[0]), rows)
        if training_projection(rows, weight, bias, out):
            return out
        return _torch_projection(rows, weight, bias, out)


def _torch_projection(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      out: torch.Tensor) -> torch.Tensor:
    """out = rows @ weight.T (+ bias): one addmm, no separate pass for the bias."""
    if bias is None:
        return torch.mm(rows, weight.t(), out=out)
    return torch.addmm(bias, rows, weight.t(), out=out)


def input_preactivations(layout: CellLayout, x: torch.Tensor, params: dict, hidden_size: int,
                         fused: bool = False) -> torch.Tensor:
    """gx for all steps: the input projection (one GEMM) in full gate order plus outer biases;
    ``fused``: for a layer on the fused kernels, whose training projection may run on them."""
    single = single_projection(layout, params)
    if single is not None:
        # one fused GEMM + bias (addmm): no separate pass over gx for the bias.
        # Flattened to 2-D first: linear on a 3-D batch-first view runs mm, then the bias add.
        if bfloat16.enabled():
            flat = bfloat16.Projection.apply(time_major_rows(x), *single)
        elif dispatch.records_gradient(x, *single):
            projection = _FusedInputProjection if fused else _InputProjection
            flat = projection.apply(time_major_rows(x), *single)
        else:
            flat = nn.functional.linear(x.reshape(-1, x.shape[-1]), *single)
        return flat.view(*x.shape[:-1], flat.shape[-1])
    outer_bias, bias_name = _outer_bias(params)
    projected = bfloat16.linear(x, params["weight_ih"]) if bfloat16.enabled() else x @ params["weight_ih"].t()
    if layout.input_gates == layout.gates:
        gx = projected
    else:  # some gates have no input weights (MGU1-3): their input side is zero
        blocks = dict(zip(layout.input_gates, projected.split(hidden_size, dim=-1)))
        zeros = torch.zeros(projected.shape[:-1] + (hidden_size,), dtype=x.dtype, device=x.device)
        gx = torch.cat([blocks.get(gate, zeros) for gate in layout.gates], dim=-1)
    if outer_bias is not None:
        gates = layout.bias_gates(bias_name)
        if gates != layout.gates:
            blocks = dict(zip(gates, outer_bias.split(hidden_size)))
            zeros = outer_bias.new_zeros(hidden_size)
            outer_bias = torch.cat([blocks.get(gate, zeros) for gate in layout.gates])
        gx = gx + outer_bias
    return gx


def _check_positive_int(label: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{label} expected a positive int, got {value!r}")


def _map_state(state: State, fn) -> State:
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _repack(output: torch.Tensor, lengths: torch.Tensor | None, batch_sizes: torch.Tensor,
            sorted_indices: torch.Tensor | None, unsorted_indices: torch.Tensor | None) -> PackedSequence:
    """Pack a padded (T, N, F) output exactly like the input PackedSequence was packed."""
    if lengths is None:
        lengths = torch.full((output.shape[1],), output.shape[0], dtype=torch.int64)
    if sorted_indices is not None:
        output = output.index_select(1, sorted_indices.to(output.device))
        lengths = lengths.index_select(0, sorted_indices.cpu())
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)


class GRU(RecurrentLayer):
    """Gated recurrent unit, a drop-in for torch.nn.GRU.

    ``reset_after=True`` (default) is PyTorch/cuDNN/Keras: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.
    ``reset_after=False`` is Cho et al. (2014): ``n = tanh(W_in x + W_hn (r * h) + b_n)`` with one merged
    bias ``bias_l{k}`` of shape (3H,). Then ``h' = (1 - z) * n + z * h``; weight rows are r, z, n.
    ``activation`` replaces tanh in n, ``recurrent_activation`` the sigmoid of r and z;
    ``recurrent_dropout`` masks h in the three recurrent products (Keras's placement, see the module).

    Example::

        gru = GRU(input_size=10, hidden_size=64, batch_first=True)
        output, h_n = gru(torch.randn(32, 50, 10))   # (32, 50, 64), (1, 32, 64)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, kernel: str = "auto", check_finite: bool = False,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 recurrent_dropout: float = 0.0, device=None, dtype=None) -> None:
        self.reset_after = reset_after
        super().__init__("GRU" if reset_after else "GRU_RESET_BEFORE", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, kernel, check_finite,
                         activation=activation, recurrent_activation=recurrent_activation,
                         recurrent_dropout=recurrent_dropout, device=device, dtype=dtype)


class LSTM(RecurrentLayer):
    """Long short-term memory, a drop-in for torch.nn.LSTM (gate rows i, f, g, o; optional proj_size).

    ``single_bias=True`` keeps one bias ``bias_l{k}`` (4H,) instead of torch's redundant pair, as Keras does.
    ``activation`` replaces tanh on g and on c', ``recurrent_activation`` the sigmoid of i, f and o;
    ``recurrent_dropout`` masks h in each gate's recurrent product.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, kernel: str = "auto", check_finite: bool = False,
                 single_bias: bool = False, activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 recurrent_dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, kernel, check_finite, single_bias=single_bias,
                         activation=activation, recurrent_activation=recurrent_activation,
                         recurrent_dropout=recurrent_dropout, device=device, dtype=dtype)


class RNN(RecurrentLayer):
    """Simple (Elman) RNN, a drop-in for torch.nn.RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    ``nonlinearity`` is torch's "tanh" or "relu" (fused kernels) or, as an extension, any other name in
    :data:`grukit.nn.cells.ACTIVATIONS` (reference loop); ``recurrent_dropout`` masks h in W_hh h.
    """

    _activation_argument = "nonlinearity"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, kernel: str = "auto", check_finite: bool = False,
                 single_bias: bool = False, recurrent_dropout: float = 0.0, device=None, dtype=None) -> None:
        activation_function(nonlinearity, "RNN(nonlinearity=...)")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_RELU" if nonlinearity == "relu" else "RNN_TANH", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, kernel, check_finite,
                         single_bias=single_bias, activation=nonlinearity, recurrent_dropout=recurrent_dropout,
                         device=device, dtype=dtype)


MGU_VARIANTS = ("mgu", "mgu1", "mgu2", "mgu3")


class MGU(RecurrentLayer):
    """Minimal gated unit (Zhou et al. 2016) and the Heck & Salem (2017) variants.

    ``f = sigmoid(W_f x + U_f h + b_f)``, ``n = tanh(W_n x + U_n (f * h) + b_n)``,
    ``h' = (1 - f) * h + f * n``. variant="mgu1": f = sigmoid(U_f h + b_f); "mgu2": f = sigmoid(U_f h);
    "mgu3": f = sigmoid(b_f). Rows: f, n (only n in weight_ih for mgu1-3, only n in weight_hh for mgu3).
    ``activation`` replaces tanh in n, ``recurrent_activation`` the sigmoid of f; ``recurrent_dropout``
    masks h in U_f h and in U_n (f * h), as Keras does for the reset-before GRU.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 variant: str = "mgu", kernel: str = "auto", check_finite: bool = False,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 recurrent_dropout: float = 0.0, device=None, dtype=None) -> None:
        if variant not in MGU_VARIANTS:
            raise ConfigError(f"MGU(variant={variant!r}): expected one of {MGU_VARIANTS}")
        self.variant = variant
        super().__init__(variant.upper(), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, kernel, check_finite, activation=activation,
                         recurrent_activation=recurrent_activation, recurrent_dropout=recurrent_dropout,
                         device=device, dtype=dtype)


class MinGRU(RecurrentLayer):
    """minGRU (Feng et al. 2024): ``z = sigmoid(Linear_z(x))``, ``h~ = Linear_h(x)``,
    ``h' = (1 - z) * h + z * h~``. No recurrent weights, so the whole sequence is one parallel
    scan (log space) in training; ``step()`` runs it one step at a time for streaming.
    ``candidate="g"`` applies the paper's positive map g to h~ (its log-space variant).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 candidate: str = "identity", kernel: str = "auto", check_finite: bool = False,
                 device=None, dtype=None) -> None:
        if candidate not in ("identity", "g"):
            raise ConfigError(f"MinGRU(candidate={candidate!r}): expected 'identity' or 'g'")
        super().__init__("MINGRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, kernel, check_finite, candidate, device=device, dtype=dtype)


def iter_layers(module: nn.Module) -> Iterator[RecurrentLayer]:
    """All grukit recurrent layers inside a module."""
    return (m for m in module.modules() if isinstance(m, RecurrentLayer))


__all__ = ["RecurrentLayer", "GRU", "LSTM", "RNN", "MGU", "MinGRU", "MGU_VARIANTS",
           "input_preactivations", "single_projection", "iter_layers"]
