"""The code a process compiles and the code a later process loads from Numba's cache give
the same bits.

Numba runs freshly compiled kernels from its JIT and writes separately generated object code
to the cache. With FMA contraction allowed, ``p * q + r * s`` may fuse either product, and
the two code generators chose differently for the LSTM's cell update, so the first run after
an install differed in the last bits from every later run with the same seed. The kernels now
spell such sums with ``common.fma``; this test compiles every cell into an empty cache in one
process, loads them in a second one, and compares outputs and gradients bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys

RUN_EVERY_CELL = r"""
import hashlib, torch
from grukit.nn import GRU, LSTM, MGU, MGU_VARIANTS, RNN, MinGRU

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
"""


def _run(cache_dir) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    result = subprocess.run([sys.executable, "-c", RUN_EVERY_CELL], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" = ") for line in result.stdout.splitlines())


def test_compiling_process_and_cache_loading_process_agree_bit_for_bit(tmp_path):
    compiled = _run(tmp_path)
    assert any(tmp_path.rglob("*.nbc")), "the first process should have written Numba's cache"
    loaded = _run(tmp_path)
    assert len(compiled) == 10  # 2 GRU, LSTM, 2 RNN, 4 MGU, MinGRU
    differing = [name for name in compiled if compiled[name] != loaded[name]]
    assert not differing, f"fresh compile and cached code differ for: {differing}"
