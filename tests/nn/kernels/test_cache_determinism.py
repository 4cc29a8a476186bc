"""The code a process compiles and the code a later process loads from Numba's cache give
the same bits.

Numba runs freshly compiled kernels from its JIT and writes separately generated object code
to the cache. With FMA contraction allowed, ``p * q + r * s`` may fuse either product, and
the two code generators chose differently for the LSTM's cell update, so the first run after
an install differed in the last bits from every later run with the same seed. The kernels now
spell such sums with ``common.fma``; this test compiles every cell into an empty cache in one
process, loads them in a second one, and compares outputs and gradients bit for bit.

The compiling process first runs :func:`grukit.nn.precompile.precompile`, so the same two
processes also show that it compiles everything the cells' calls (and a Keras-style model's
training) use: nothing compiles after it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RUN_EVERY_CELL = r"""
import hashlib, os, torch
from numba.core import event, types
from numba.core.registry import CPUDispatcher
from grukit.nn import GRU, LSTM, MGU, MGU_VARIANTS, RNN, MinGRU
from grukit.nn.kernels.api import SPLIT_SEQUENCE_MIN_H

class Names(event.Listener):     # every function Numba compiles in this process, by qualified name
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
        in_process.append(compiled[-1])

    def on_end(self, ev):
        pass

compiled, in_process = [], []    # since precompile; over the whole process
event.register("numba:compile", Names())
if os.environ.get("PRECOMPILE") == "1":
    from grukit.nn.precompile import precompile
    precompile()
    compiled.clear()

def cells():
    yield "gru", lambda: GRU(12, 16, kernel="fused")
    yield "gru reset before", lambda: GRU(12, 16, reset_after=False, kernel="fused")
    yield "lstm", lambda: LSTM(12, 16, kernel="fused")
    yield "rnn tanh", lambda: RNN(12, 16, kernel="fused")
    yield "rnn relu", lambda: RNN(12, 16, nonlinearity="relu", kernel="fused")
    for variant in MGU_VARIANTS:
        yield "mgu " + variant, lambda variant=variant: MGU(12, 16, variant=variant, kernel="fused")
    yield "mingru", lambda: MinGRU(12, 16, kernel="fused")

for name, make in cells():
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(20, 6, 12)
    with torch.no_grad():
        inference = layer(x)[0]
        y_t, _ = layer.step(x[0])
    x.requires_grad_(True)
    out = layer(x)[0]
    out.square().sum().backward()
    parts = [inference, y_t, out.detach(), x.grad] + [p.grad for p in layer.parameters()]
    digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts)).hexdigest()
    print(name, "=", digest[:16])

for name, make in cells():   # a batch large enough for its rows to run in blocks (region.team_rows)
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(50, 64, 12)
    with torch.no_grad():
        inference = layer(x)[0]
    out = layer(x)[0]
    out.square().sum().backward()
    parts = [inference, out.detach()] + [p.grad for p in layer.parameters()]
    print(name + " in blocks", "=", hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts)).hexdigest()[:16])

split = GRU(12, SPLIT_SEQUENCE_MIN_H, kernel="fused")   # a batch of one wide enough to split its steps
with torch.no_grad():
    split(torch.randn(5, 1, 12))

wide = LSTM(20, 16, kernel="fused")   # wider than INPUT_ROWS_MAX: projected before the loop
with torch.no_grad():
    wide(torch.randn(5, 3, 20))
wide(torch.randn(5, 3, 20, requires_grad=True))[0].sum().backward()

import numpy as np   # the tutorial model, trained and used: Embedding(mask_zero) -> GRU -> Dense
from grukit.layers import Dense, Embedding, GRU as KerasGRU, Input
from grukit.models import Sequential
ids = np.random.default_rng(0).integers(0, 50, size=(16, 12))
model = Sequential([Input(shape=(12,)), Embedding(50, 8, mask_zero=True), KerasGRU(8), Dense(1, activation="sigmoid")])
model.compile(optimizer="adam", loss="binary_crossentropy")
model.fit(ids, (ids[:, :1] > 25).astype("float32"), epochs=1, batch_size=8, verbose=0)
model.predict(ids[:1], verbose=0)
streamer = LSTM(12, 16).streamer()
streamer.run(np.zeros((4, 12), np.float32))
streamer.step(np.zeros(12, np.float32))

import grukit.nn.kernels as kernels, importlib, pkgutil
twice = []     # kernels compiled once per literal argument value instead of once per type
for info in pkgutil.iter_modules(kernels.__path__):
    module = importlib.import_module("grukit.nn.kernels." + info.name)
    for label, f in vars(module).items():
        if isinstance(f, CPUDispatcher) and f.__module__ == module.__name__:
            plain = [tuple(types.unliteral(a) for a in sig) for sig in f.signatures]
            twice += [info.name + "." + label] if len(set(plain)) < len(plain) else []
print("compiled", "=", ",".join(sorted(set(compiled))) or "-")
print("compiled in the process", "=", ",".join(sorted(set(in_process))) or "-")
print("compiled per literal", "=", ",".join(twice) or "-")
"""


def _run(cache_dir, precompile: bool = False) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PRECOMPILE="1" if precompile else "0")
    result = subprocess.run([sys.executable, "-c", RUN_EVERY_CELL], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" = ") for line in result.stdout.splitlines())


def _cell_digests(run: dict[str, str]) -> dict[str, str]:
    return {name: digest for name, digest in run.items() if not name.startswith("compiled")}


@pytest.fixture(scope="module")
def first_process(tmp_path_factory):
    """(the cache directory, the results of a process that precompiled every cell into it and
    then ran them)."""
    cache_dir = tmp_path_factory.mktemp("numba_cache")
    return cache_dir, _run(cache_dir, precompile=True)


def test_compiling_process_and_cache_loading_process_agree_bit_for_bit(first_process):
    cache_dir, compiled = first_process
    assert any(cache_dir.rglob("*.nbc")), "the first process should have written Numba's cache"
    loaded = _run(cache_dir)
    assert loaded["compiled"] == "-", "the second process should load every kernel from the cache"
    compiled, loaded = _cell_digests(compiled), _cell_digests(loaded)
    assert len(compiled) == 20  # 2 GRU, LSTM, 2 RNN, 4 MGU, MinGRU; each small, then in blocks
    differing = [name for name in compiled if compiled[name] != loaded[name]]
    assert not differing, f"fresh compile and cached code differ for: {differing}"


def test_an_empty_cache_compiles_no_error_formatting_and_each_kernel_once_per_type(first_process):
    """What the first calls after an install compile (benchmarks.cold_start reports their time).

    A slice assignment between arrays (``a[i, :] = b``) makes Numba compile the string formatting
    of its shape-mismatch error, 3.9 s in a fresh process (the kernels copy with common.copy_vector
    and copy_matrix instead); a call with literal arguments (``f(x, True, 1)``) compiles f once per
    literal value."""
    _, run = first_process
    names = run["compiled in the process"].split(",")
    assert any(name.startswith("_fwd_rows") for name in names), names
    formatting = [name for name in names if "raise_with_shape_context" in name]
    assert not formatting, f"a kernel assigns an array slice from an array: {formatting}"
    assert run["compiled per literal"] == "-", f"compiled once per literal value: {run['compiled per literal']}"


def test_precompile_leaves_nothing_for_the_first_calls_to_compile(first_process):
    _, run = first_process
    assert run["compiled"] == "-", f"compiled after precompile(): {run['compiled']}"
