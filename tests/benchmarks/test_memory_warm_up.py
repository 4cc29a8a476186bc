"""The memory benchmark's warm-up loads every compiled function its full training step calls, so that
no compilation (10-15 MB of LLVM's memory from an empty cache) lands in the measured peak."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process: functions compiled or loaded by earlier tests would hide a missing one. The full
# step's batch is large enough to run in blocks (common.MIN_PARALLEL_WORK), the 2-step warm-up's is not.
_SCRIPT = """
import gc, sys
import torch
from numba.core.dispatcher import Dispatcher
from benchmarks import memory
from benchmarks.scenarios import Scenario
from benchmarks.torch_peer import build_pair, inputs, training_fn
torch.set_num_threads(2)
scenario = Scenario("mem", "memory", 32, 8, 16, 128, ())
layer, _ = build_pair(sys.argv[1], scenario)
x, target = inputs(scenario)
memory.warm_up("grukit", training_fn(layer, x[:, :2].contiguous(), target))

def overloads():
    return {d.py_func.__qualname__: len(d.overloads) for d in gc.get_objects() if isinstance(d, Dispatcher)}
before = overloads()
training_fn(layer, x, target)()
after = overloads()
print(sorted(name for name, count in after.items() if count > before.get(name, 0)))
"""


@pytest.mark.slow   # a fresh process per cell, which on a fresh clone compiles its kernels: 20-25 s each
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_full_step_compiles_and_loads_nothing_after_the_warm_up(cell):
    completed = subprocess.run([sys.executable, "-c", _SCRIPT, cell], cwd=ROOT, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]", f"loaded in the measured step: {completed.stdout}"
