"""Functions called through their address (region.call_unlinked) stay callable from every cached
caller, whatever process compiled what.

The case: one process compiles and caches tiles.pack (its work runs in an unlinked function); a
second compiles a new cached function that calls it, with tiles.pack loaded from the cache; a third
runs only that function, from the cache. The third must find the unlinked function's address (a
missing one aborts the process: "LLVM ERROR: Symbol not found"). Each process runs in a fresh
interpreter on one empty Numba cache directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

CALLER = textwrap.dedent('''
    import numpy as np
    from numba import njit

    from grukit.nn.kernels import tiles


    @njit(cache=True)
    def packed_sum(m):
        return tiles.pack(m).sum()
''')

FIRST = "import numpy as np\nfrom grukit.nn.kernels import tiles\nprint(tiles.pack(np.ones((3, 16), np.float32)).sum())"
CALL = "import numpy as np\nimport caller\nprint(caller.packed_sum(np.arange(48, dtype=np.float32).reshape(3, 16)))"


def _python(code: str, tmp_path, cache_dir) -> str:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_a_caller_compiled_on_a_cached_callee_runs_alone_from_the_cache(tmp_path):
    cache_dir = tmp_path / "numba-cache"
    (tmp_path / "caller.py").write_text(CALLER)
    assert float(_python(FIRST, tmp_path, cache_dir)) == 48.0
    want = float(np.arange(48).sum())
    assert float(_python(CALL, tmp_path, cache_dir)) == want      # compiles packed_sum on the cached pack
    assert float(_python(CALL, tmp_path, cache_dir)) == want      # loads it alone
