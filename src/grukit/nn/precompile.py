"""Compile the fused kernels into Numba's disk cache ahead of use.

The kernels compile on their first use and are cached on disk: on a fresh install the first
``layer(x)`` of a cell takes seconds (the benchmark's cold-start table), and every later process
loads the machine code in milliseconds. :func:`precompile` pays that cost now, for a container
image, a CI cache or a device image, so that no user call does: it runs each cell through every
entry point of the kernels (inference batch-first and time-major, a batch of one, padded lengths,
both directions, token ids with an embedding, ``step()``, the streamer, and training's forward and
backward; a GRU wide enough for a batch of one to split its steps over the threads; inputs narrow
enough to be projected inside the loop and wider ones), each cell variant (both GRU reset
placements, tanh and relu SimpleRNN, every MGU variant, both minGRU candidates), in the dtypes asked
for; "mixed_bfloat16" runs float32 layers in the bfloat16 mode (``fit(precision="mixed_bfloat16")``,
autocast), whose per-step products are kernels of their own.

The cache is where Numba keeps it: beside the kernels' sources when that folder is writable, else
in Numba's per-user cache, or in ``NUMBA_CACHE_DIR`` when that is set; :func:`cache_location`
names it. The cached code is specific to this CPU and these versions of Python, Numba and
grukit; a process on another machine compiles again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from numba.core import event

from ..errors import ConfigError
from . import bfloat16
from .kernels.api import INPUT_ROWS_MAX, SPLIT_SEQUENCE_MIN_H
from .recurrent import GRU, LSTM, MGU, MGU_VARIANTS, RNN, MinGRU, RecurrentLayer

CELLS = ("gru", "lstm", "rnn", "mgu", "mingru")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "mixed_bfloat16": torch.float32}
# small shapes: compiling does not depend on them, and they run in milliseconds
_INPUT, _HIDDEN, _STEPS = 6, 8, 5
# Inputs up to INPUT_ROWS_MAX wide are projected inside the time loop, wider ones before it in a
# batch as small as this one's (api.projects_in_loop), in inference and in training: both forms are
# compiled. Wider inputs projected inside the loop share the narrow ones' compiled code.
_WIDE_INPUT = INPUT_ROWS_MAX + 1


def _variants(cell: str) -> Iterator[Callable[..., RecurrentLayer]]:
    """Constructors (taking bidirectional=) of every variant of a cell the kernels specialise on."""
    if cell == "gru":
        yield lambda inputs=_INPUT, **kw: GRU(inputs, _HIDDEN, **kw)
        yield lambda inputs=_INPUT, **kw: GRU(inputs, _HIDDEN, reset_after=False, **kw)
    elif cell == "lstm":
        yield lambda inputs=_INPUT, **kw: LSTM(inputs, _HIDDEN, **kw)
    elif cell == "rnn":
        yield lambda inputs=_INPUT, **kw: RNN(inputs, _HIDDEN, **kw)
        yield lambda inputs=_INPUT, **kw: RNN(inputs, _HIDDEN, nonlinearity="relu", **kw)
    elif cell == "mgu":
        for variant in MGU_VARIANTS:
            yield lambda inputs=_INPUT, variant=variant, **kw: MGU(inputs, _HIDDEN, variant=variant, **kw)
    else:
        yield lambda inputs=_INPUT, **kw: MinGRU(inputs, _HIDDEN, **kw)
        yield lambda inputs=_INPUT, **kw: MinGRU(inputs, _HIDDEN, candidate="g", **kw)


def _exercise(layer: RecurrentLayer, dtype: torch.dtype, training: bool) -> None:
    """Call every kernel entry point a user call can reach, with inputs of ``dtype``."""
    layer = layer.to(dtype)
    x = torch.randn(3, _STEPS, _INPUT, dtype=dtype)                 # batch-first, as layer() takes it
    lengths = torch.tensor([_STEPS, 2, 3])
    ids = torch.randint(0, 4, (_STEPS, 3))
    embedding = torch.randn(4, _INPUT, dtype=dtype)
    layer.batch_first = True
    layer.eval()
    with torch.no_grad():
        layer(x)
        layer(x[:1])                                   # a batch of one: the mat-vec loops
        layer(x, lengths=lengths)
        layer.batch_first = False
        layer(x.transpose(0, 1).contiguous())         # time-major
        layer(ids, embedding=embedding)
        if not layer.bidirectional:
            layer.step(x[:, 0])
            layer.step(x[0, 0])
            streamer = layer.streamer(batch_size=3)
            streamer.step(x[:, 0].numpy())
            streamer.run(x.transpose(0, 1).numpy())
            layer.streamer().step(x[0, 0].numpy())      # a batch of one's frames: (H_in,) inputs
    if training:
        _train(layer, x, lengths)
        layer.batch_first = False
        layer(ids, embedding=embedding.requires_grad_(True))[0].sum().backward()


def _exercise_wide(layer: RecurrentLayer, dtype: torch.dtype, training: bool) -> None:
    """The entry points that differ for an input too wide for the loop's own projection: a batch's
    inference (batch-first and time-major) and training."""
    layer = layer.to(dtype)
    x = torch.randn(3, _STEPS, _WIDE_INPUT, dtype=dtype)
    layer.eval()
    with torch.no_grad():
        layer.batch_first = True
        layer(x)
        layer.batch_first = False
        layer(x.transpose(0, 1).contiguous())
    if training:
        _train(layer, x, torch.tensor([_STEPS, 2, 3]))


def _exercise_split(dtype: torch.dtype) -> None:
    """A GRU wide enough for a batch of one's steps to split over the threads (api.SPLIT_SEQUENCE_MIN_H):
    its own compiled sequence (gru.split_sequence), run where torch's team can take it."""
    layer = GRU(_INPUT, SPLIT_SEQUENCE_MIN_H, batch_first=True, kernel="fused").to(dtype).eval()
    with torch.no_grad():
        layer(torch.randn(1, _STEPS, _INPUT, dtype=dtype))


def _train(layer: RecurrentLayer, x: torch.Tensor, lengths: torch.Tensor) -> None:
    """Training's forward and backward on x, batch-first, without and with lengths."""
    layer.train()
    layer.batch_first = True
    for inputs in ((x.requires_grad_(True),), (x, None, lengths)):
        out = layer(*inputs)[0]
        out.square().sum().backward()


def precompile(cells=CELLS, dtypes=("float32",), training: bool = True,
               report: Callable[[dict], None] | None = None) -> list[dict]:
    """Compile (or load from the cache) every kernel the given cells use, in the given dtypes.

    cells: names from :data:`CELLS`; dtypes: "float32", "float64" and/or "mixed_bfloat16" (float32
    layers in the bfloat16 mode); training: also the backward kernels. ``report`` is called with each cell's result as it finishes. Returns one
    dict per cell and dtype: cell, dtype, seconds, and ``compiled``, the number of functions
    Numba compiled (0 when everything came from the cache).
    """
    unknown = [c for c in cells if c not in CELLS] + [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ConfigError(f"precompile: unknown {', '.join(map(repr, unknown))}; cells are {', '.join(CELLS)} "
                          f"and dtypes {', '.join(DTYPES)}")
    results = []
    with torch.random.fork_rng(devices=[]):    # the layers and inputs made here leave the caller's RNG alone
        for cell in cells:
            for dtype in dtypes:
                result = _compile_cell(cell, dtype, training)
                results.append(result)
                if report is not None:
                    report(result)
    return results


def _compile_cell(cell: str, dtype: str, training: bool) -> dict:
    from .kernels import backward_gemms, common
    listener = _CompiledNames()
    start = time.perf_counter()
    with event.install_listener("numba:compile", listener):
        backward_gemms.compile_launchers()
        # Every call of two or more rows runs in two blocks (every_call_in_blocks), also where torch has
        # one thread, so that the launchers that start a large batch's blocks compile (region.team_rows).
        # A launcher compiles its rows function for the very types a serial call passes (region.
        # call_unlinked), so the serial calls need no pass of their own; a batch of one runs serially.
        with common.every_call_in_blocks():
            for make in _variants(cell):
                for bidirectional in (False, True):
                    with bfloat16.mode(dtype == "mixed_bfloat16"):
                        _exercise(make(bidirectional=bidirectional, kernel="fused"), DTYPES[dtype], training)
                        _exercise_wide(make(inputs=_WIDE_INPUT, bidirectional=bidirectional, kernel="fused"),
                                       DTYPES[dtype], training)
        if cell == "gru":
            with bfloat16.mode(dtype == "mixed_bfloat16"):
                _exercise_split(DTYPES[dtype])
    return {"cell": cell, "dtype": dtype, "seconds": time.perf_counter() - start, "compiled": len(listener.names)}


def cache_location() -> str:
    """The folder where this process reads and writes the kernels' compiled code."""
    from .kernels import gru
    return str(gru._fwd_rows_after._cache._cache_path)


class _CompiledNames(event.Listener):
    """A Numba event listener that records the functions compiled while it is installed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_start(self, ev) -> None:
        self.names.append(ev.data["dispatcher"].py_func.__qualname__)

    def on_end(self, ev) -> None:
        pass


__all__ = ["CELLS", "DTYPES", "cache_location", "precompile"]
