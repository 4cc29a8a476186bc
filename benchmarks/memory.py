"""Peak memory (RSS) of one training step, measured in a fresh process per implementation.

``python -m benchmarks.memory JSON`` with {"impl": "grukit"|"torch", "cell", "B", "T", "I", "H",
"threads"}: imports, builds the layer and its inputs, warms up over 2 time steps at the same
batch and sizes (this loads the same compiled kernels without approaching the full step's
memory). grukit's launchers of the batch's blocks and its backward GEMMs compile or load on first
use, and only larger calls reach them: the warm-up runs its calls in blocks
(common.every_call_in_blocks) and loads the GEMMs beside it, which would otherwise be counted in the
step (from an empty cache, the launchers' compilation added 10-15 MB to SimpleRNN's 14.6 MB).
Then it takes the baseline, runs one full training step and prints {"peak_mb": ru_maxrss after
the step minus the baseline, ...} as JSON.

The kernel's high-water mark is reset (``/proc/self/clear_refs`` = 5) right before the baseline
where Linux allows it, so memory freed earlier (imports, warm-up) cannot hide the step's peak.
Linux also carries the parent's peak RSS at the moment of exec into a child's ru_maxrss, so
the harness starts these processes before it imports torch; ``hwm_mb``, the same difference
of the address space's own high-water mark (VmHWM), is recorded as a cross-check.
"""

from __future__ import annotations

import gc
import json
import resource
import sys


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def warm_up(impl: str, short_step) -> None:
    """Run the 2-step training step; for grukit, in blocks, with the backward GEMMs loaded beside it."""
    if impl != "grukit":
        short_step()
        return
    from grukit.nn.kernels import backward_gemms, common
    backward_gemms.compile_launchers()
    with common.every_call_in_blocks():     # the blocks' launchers, as the full step's larger calls run
        short_step()


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    from .machine import pin_threads
    pin_threads(request["threads"])
    import torch

    from .scenarios import Scenario
    from .torch_peer import build_pair, inputs, training_fn
    torch.set_num_threads(request["threads"])
    scenario = Scenario("mem", "memory", request["B"], request["T"], request["I"], request["H"], ())
    ours, theirs = build_pair(request["cell"], scenario)
    layer = ours if request["impl"] == "grukit" else theirs
    x, target = inputs(scenario)
    warm_up(request["impl"], training_fn(layer, x[:, :2].contiguous(), target))
    gc.collect()
    reset = _reset_peak()
    baseline, hwm_before, rss_before = _max_rss_mb(), _status_mb("VmHWM"), _status_mb("VmRSS")
    training_fn(layer, x, target)()
    peak, hwm_after = _max_rss_mb(), _status_mb("VmHWM")
    print(json.dumps({"impl": request["impl"], "cell": request["cell"],
                      "peak_mb": peak - baseline, "baseline_maxrss_mb": baseline,
                      "after_maxrss_mb": peak,
                      "hwm_mb": None if hwm_before is None else hwm_after - hwm_before,
                      "rss_before_mb": rss_before, "rss_after_mb": _status_mb("VmRSS"),
                      "peak_reset": reset}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
