"""First calls of grukit in a fresh process with an empty Numba cache: the compile times a user
pays once on a fresh install (later processes load the machine code from the cache).

``python -m benchmarks.cold_start JSON`` with {"cell", "threads", "cache_dir"}; prints JSON with
seconds for importing grukit and for the first inference call (S1 shape), first training step
(S3 shape) and first ``step()``, each followed by a second call for comparison.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _twice(fn) -> dict:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    start = time.perf_counter()
    fn()
    return {"first_s": first, "second_s": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    os.environ["NUMBA_CACHE_DIR"] = request["cache_dir"]     # empty: every kernel compiles
    from .machine import pin_threads
    pin_threads(request["threads"])
    start = time.perf_counter()
    import torch

    import grukit.nn  # noqa: F401
    imported = time.perf_counter() - start
    torch.set_num_threads(request["threads"])
    from .scenarios import SCENARIOS
    from .torch_peer import build_pair, inference_fn, inputs, observed_path, snapshot_calls, training_fn
    result = {"cell": request["cell"], "import_s": imported, "numba_cache_dir": "empty temporary"}
    for label, name, make in (("inference", "S1", inference_fn), ("training", "S3", training_fn)):
        scenario = SCENARIOS[name]
        layer, _ = build_pair(request["cell"], scenario)
        x, target = inputs(scenario)
        fn = make(layer, x) if label == "inference" else make(layer, x, target)
        before = snapshot_calls()
        result[label] = {"scenario": name, **_twice(fn),
                         "path": observed_path(before, 2, ("run",), "unknown")["path"]}
    layer, _ = build_pair(request["cell"], SCENARIOS["S1"])
    x_t = torch.randn(1, SCENARIOS["S1"].I)
    state = {"value": None}

    @torch.no_grad()
    def one_step():
        _, state["value"] = layer.step(x_t, state["value"])

    before = snapshot_calls()
    result["step"] = {"scenario": "S1", **_twice(one_step),
                      "path": observed_path(before, 2, ("step",), "unknown")["path"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
