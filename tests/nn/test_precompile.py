"""grukit.nn.precompile's API. That it leaves nothing for later calls to compile is tested where a fresh
process compiles into an empty cache: tests/nn/kernels/test_cache_determinism.py."""

import os
import subprocess
import sys

import pytest
import torch

from grukit.errors import ConfigError
from grukit.nn.precompile import cache_location, precompile


def test_precompile_reports_each_cell_and_dtype():
    reported = []
    results = precompile(["mingru"], ["float32", "float64"], training=False, report=reported.append)
    assert results == reported
    assert [(r["cell"], r["dtype"]) for r in results] == [("mingru", "float32"), ("mingru", "float64")]
    assert all(r["seconds"] > 0 and r["compiled"] >= 0 for r in results)
    again = precompile(["mingru"], ["float32"], training=False)
    assert again[0]["compiled"] == 0, "a second run in the same process finds everything compiled"


_BFLOAT16_SCRIPT = """
import torch
from numba.core import event
from grukit.nn import RNN
from grukit.nn.precompile import _CompiledNames, precompile

(result,) = precompile(["rnn"], ["mixed_bfloat16"])
assert result["dtype"] == "mixed_bfloat16" and result["compiled"] > 0, result
listener = _CompiledNames()
layer = RNN(5, 7, batch_first=True)
with event.install_listener("numba:compile", listener):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(torch.randn(4, 6, 5), lengths=torch.tensor([6, 2, 3, 6]))
        out.sum().backward()
        with torch.no_grad():
            layer.step(torch.randn(4, 5))
print("compiled after precompile:", listener.names)
"""


def test_precompile_of_the_bfloat16_mode_leaves_nothing_to_compile_for_autocast_training(tmp_path):
    """mixed_bfloat16: float32 layers in the mode, whose per-step products are kernels of their own;
    afterwards a layer trained and run under autocast compiles nothing. In a fresh process with an
    empty cache (NUMBA_CACHE_DIR), where a kernel that precompile missed would compile."""
    shown = subprocess.run([sys.executable, "-c", _BFLOAT16_SCRIPT],
                           env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)),
                           capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "compiled after precompile: []" in shown.stdout, shown.stdout


def test_precompile_leaves_the_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    precompile(["mingru"], training=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cells, dtypes, named", [(["gru", "tcn"], ["float32"], "'tcn'"),
                                                  (["gru"], ["bfloat16"], "'bfloat16'")])
def test_unknown_names_raise_and_list_the_choices(cells, dtypes, named):
    with pytest.raises(ConfigError, match=named) as error:
        precompile(cells, dtypes)
    assert "gru, lstm, rnn, mgu, mingru" in str(error.value) and "float32, float64, mixed_bfloat16" in str(error.value)


def test_cache_location_follows_numba_cache_dir(tmp_path):
    """Numba reads NUMBA_CACHE_DIR when it is imported: a fresh process."""
    code = "from grukit.nn.precompile import cache_location; print(cache_location())"
    shown = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)),
                           capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert shown.startswith(str(tmp_path)), shown
    assert cache_location() != shown      # this process keeps its own
