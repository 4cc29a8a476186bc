"""The machine and thread settings, its float32 matmul peak (torch.matmul, same threads), and how
fast one core reads a layer's weights from its cache (the floor of a batch-of-one step)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import time

THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def pin_threads(threads: int, omp_wait_policy: str | None = None) -> dict:
    """Limit every library in this process (and subprocesses that inherit the environment) to
    ``threads`` threads on the first ``threads`` CPUs this process may use. Call before
    importing torch, numba, onnxruntime or JAX. XLA (JAX) has no thread-count setting, so
    the CPU affinity is what holds it to the same cores.

    ``omp_wait_policy`` ("passive", "active") applies to every OpenMP user in the process, torch
    included; "default" unsets it (libgomp spins a while, then sleeps); None keeps an inherited
    setting (the harness's subprocesses)."""
    if omp_wait_policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    elif omp_wait_policy is not None:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    for name in THREADS_ENV:
        os.environ[name] = str(threads)
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return {"threads": threads, "cpus": cpus,
            "environment": {n: os.environ.get(n, "(unset)") for n in (*THREADS_ENV, "OMP_WAIT_POLICY")}}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def versions() -> dict:
    names = ("grukit", "torch", "numpy", "numba", "llvmlite", "onnx", "onnxruntime", "keras",
             "jax", "jaxlib")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine_info() -> dict:
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def library_threads() -> dict:
    """What each library reports after pin_threads (imports torch and numba)."""
    import numba
    import torch
    info = {"torch.get_num_threads": torch.get_num_threads(),
            "torch.get_num_interop_threads": torch.get_num_interop_threads(),
            "numba.get_num_threads": numba.get_num_threads(),
            "numba.threading_layer": None}
    from grukit.nn.kernels import team
    info["grukit.kernel_threads"] = team.provider()
    try:
        info["numba.threading_layer"] = numba.threading_layer()
    except ValueError:  # only known after the first parallel call
        info["numba.threading_layer"] = "not yet chosen"
    return info


def matmul_peak(settings, sizes=(1024, 2048, 3072)) -> dict:
    """The best GFLOP/s of a float32 matmul of square matrices of the given sizes, over both GEMMs
    in torch's CPU build: torch.matmul (MKL) and oneDNN's matmul (torch's mkldnn linear on oneDNN
    tensors, converted once). On AMD CPUs with AVX-512 MKL runs its AVX2 code and oneDNN is the
    faster one (about 2.2x on a Zen 5): a peak from torch.matmul alone read S4 at 166% of it.

    Each size's rate is its fastest repetition's, not its median's: a ceiling is what the machine
    reached. The host's speed swings within a run (a Zen 3 run timed 2048^3 at 106-144 ms), and a
    median peak caught in a slow stretch read S4's training at 101% of it; ``median_gflops`` keeps
    the median rate, as the runs before 2026-12-04 reported it."""
    import torch

    from .timing import measure_group
    runs, engines = {}, {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        calls = {"mkl": lambda: torch.matmul(a, b, out=out)}
        if torch.backends.mkldnn.is_available():
            a_dnn, b_t_dnn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            calls["onednn"] = lambda: torch.ops.aten.mkldnn_linear(a_dnn, b_t_dnn, None)
        records = measure_group(calls, settings)
        for engine, record in records.items():
            record["gflops"] = 2 * n ** 3 / (record["min"] * 1e-3) / 1e9
            record["median_gflops"] = 2 * n ** 3 / (record["median"] * 1e-3) / 1e9
            engines.setdefault(engine, {})[str(n)] = record
        runs[str(n)] = max(records.values(), key=lambda r: r["gflops"])
    best = max(runs.values(), key=lambda r: r["gflops"])
    return {"gflops": best["gflops"], "median_gflops": max(r["median_gflops"] for r in runs.values()),
            "by_size": runs, "by_engine": engines,
            "engine_gflops": {e: max(r["gflops"] for r in by.values()) for e, by in engines.items()},
            "method": "float32 matmul of two n x n matrices, 2 n^3 FLOPs, the fastest repetition per size, "
                      "the best size and engine: torch.matmul (MKL) or oneDNN's matmul "
                      "(torch.ops.aten.mkldnn_linear); median_gflops: the same from each size's median"}


def weight_read_floor(settings, input_size: int, hidden_size: int, gates: int, repeat: int = 2000) -> dict:
    """How fast one core reads float32 weights of a recurrent layer's size that sit in its cache,
    and what that makes the least time of one batch-of-one step.

    A batch-of-one step multiplies one state vector by W_hh (and, streaming frame by frame, one
    input vector by W_ih): every weight is read once per step and used for a single multiply-add,
    so the step cannot be faster than reading them. Measured with a compiled loop that only sums
    the weights (vectorised, no stores), run ``repeat`` times over the same array per call so that
    it stays in the cache, median of the benchmark's repetitions. One thread: splitting one state
    over cores costs a cross-core exchange every step."""
    import numpy as np
    from numba import njit

    from .timing import measure_group

    @njit(fastmath=True, cache=False)
    def read_all(weights, times):
        total = np.float32(0.0)
        for _ in range(times):
            for row in range(weights.shape[0]):
                values = weights[row]
                for k in range(values.shape[0]):
                    total += values[k]
        return total

    recurrent_bytes = hidden_size * gates * hidden_size * 4
    weights = np.random.default_rng(0).standard_normal(
        (input_size + hidden_size, gates * hidden_size)).astype(np.float32)
    read_all(weights, 1)   # compile
    record = measure_group({"read": lambda: read_all(weights, repeat)}, settings)["read"]
    seconds = record["median"] * 1e-3 / repeat
    bandwidth = weights.nbytes / seconds
    return {"gb_per_s": bandwidth / 1e9, "bytes": int(weights.nbytes),
            "recurrent_us": recurrent_bytes / bandwidth * 1e6, "frame_us": weights.nbytes / bandwidth * 1e6,
            "shape": {"I": input_size, "H": hidden_size, "gates": gates},
            "method": f"a compiled loop summing a float32 ({input_size} + {hidden_size}) x {gates * hidden_size} "
                      f"array (W_ih^T and W_hh^T) {repeat} times per call, one thread, median per call"}


class OtherLoad:
    """How much of the pinned CPUs other processes used between start() and share().

    Busy time of those CPUs (from /proc/stat, steal included) minus this process's own CPU time
    and its finished children's, over wall time x CPUs. A shared machine makes every number
    noisy; this says how noisy a run was.
    """

    def __init__(self, cpus: list[int]):
        self.cpus = cpus
        self.start()

    def _sample(self) -> tuple[float, float, float]:
        busy = 0.0
        try:
            with open("/proc/stat") as f:
                for line in f:
                    name, *values = line.split()
                    if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                        user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
                        busy += user + nice + system + irq + softirq + steal
        except OSError:
            return 0.0, 0.0, time.perf_counter()
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()

    def start(self) -> None:
        self._begin = self._sample()

    def share(self) -> float:
        busy, own, wall = (b - a for a, b in zip(self._begin, self._sample()))
        return max(0.0, (busy - own) / (wall * len(self.cpus))) if wall > 0 else 0.0
