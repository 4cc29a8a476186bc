"""Speed and memory of grukit against torch.nn, ONNX Runtime and Keras 3 on JAX.

Scenarios (B batch, T steps, I inputs, H hidden units):
  S1 streaming          B=1   T=100 I=64  H=128  inference (layer(x) and streamer.run); also step() latency
                                                 and the floor of a step: one core reading the weights
  S2 sentiment layer    B=32  T=200 I=128 H=128  inference and training; also peak memory
  S3 time-series layer  B=64  T=50  I=10  H=64   training
  S4 large              B=128 T=100 I=512 H=512  training; also GFLOP/s against the matmul peak

Every library runs on the same THREADS threads and CPUs. Each measurement: warm-up (the first
call, with Numba compilation or cache loading, is reported separately), then repetitions timed
round-robin across implementations, in a different (balanced) order each round, and the median. Writes OUT/latest.json (every repetition,
machine and thread settings) and OUT/latest.md (one table per cell, against the issue's targets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .machine import OtherLoad, machine_info, pin_threads
from .scenarios import (BF16_SCENARIOS, CELLS, DEFAULT_CELLS, FLOP_FORMULA, PEAK_SHARE_SCENARIOS, SCENARIOS,
                        training_flops)
from .timing import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m benchmarks.run --quick --only S1,S3 --cells gru\n"
               "  python -m benchmarks.run --no-keras --repeats 5 --out /tmp/bench")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 repetitions, short time budget, fewer step() calls")
    parser.add_argument("--only", default=",".join(SCENARIOS), metavar="S1,S2,...",
                        help="scenarios to run (default: all of %(default)s)")
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS), metavar="gru,lstm,...",
                        help="cells to run (default: %(default)s; mgu and mingru are grukit only)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 / JAX peer")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peer")
    parser.add_argument("--no-memory", action="store_true", help="skip the S2 peak-memory subprocesses")
    parser.add_argument("--no-cold-start", action="store_true",
                        help="skip timing first calls with an empty Numba cache (fresh subprocess per "
                             "cell; skipped by --quick too)")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help=f"exactly N timed repetitions per measurement (default: up to "
                             f"{Settings.repeats}, stopping after about {Settings.budget_s:g} s of timed "
                             f"calls once {Settings.min_repeats} are done)")
    parser.add_argument("--loop-ms", type=float, default=Settings.loop_s * 1e3, metavar="MS",
                        help="each repetition times an implementation's consecutive calls for about MS "
                             "milliseconds after a lead call (default: %(default)g); 0 times one call per "
                             "repetition, right after another implementation's")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default: 2)")
    parser.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default",
                        help="OMP_WAIT_POLICY for every library in the run, torch included (default: unset, "
                             "libgomp's own spin-then-sleep; passive speeds up grukit's batched training and "
                             "slows torch's small operations)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for latest.json and latest.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    args.only = _choices(parser, "--only", args.only, SCENARIOS, upper=True)
    args.cells = _choices(parser, "--cells", args.cells, CELLS, upper=False)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.loop_ms < 0:
        parser.error(f"--loop-ms must be 0 or more, got {args.loop_ms:g}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def _choices(parser, option: str, text: str, known, upper: bool) -> list[str]:
    chosen = [p.strip().upper() if upper else p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        parser.error(f"{option}: unknown {unknown or 'empty list'}; choose from {','.join(known)}")
    return [k for k in known if k in chosen]   # canonical order


def settings_from(args) -> Settings:
    loop_s = args.loop_ms * 1e-3
    if args.repeats is not None:
        return Settings(repeats=args.repeats, min_repeats=args.repeats, exact=True,
                        step_count=300 if args.quick else 3000, loop_s=loop_s)
    if args.quick:
        return Settings(repeats=3, min_repeats=2, budget_s=1.0, step_count=300, loop_s=loop_s)
    return Settings(loop_s=loop_s)


def numba_cache_files() -> int:
    """Numba cache index files of grukit's kernels present before the run: with them the first
    call loads machine code from disk, without them it compiles."""
    import importlib.util
    spec = importlib.util.find_spec("grukit")
    if spec is None or spec.origin is None:
        return 0
    return len(list((Path(spec.origin).parent / "nn" / "kernels" / "__pycache__").glob("*.nbi")))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_in_process(args, settings: Settings, result: dict) -> None:
    """grukit, torch.nn and ONNX Runtime, scenario by scenario, in this process."""
    import torch

    from . import onnx_peer, torch_peer
    from .timing import measure_group, measure_steps

    onnx_missing = None if args.no_onnx else onnx_peer.available()
    if onnx_missing:
        result["notes"].append(f"ONNX Runtime peer skipped: {onnx_missing}")
    use_onnx = not args.no_onnx and onnx_missing is None
    measurements = result["measurements"]
    peak = result.get("matmul_peak", {}).get("gflops")
    for name in args.only:
        scenario = SCENARIOS[name]
        progress(f"{name} {scenario.label} (B={scenario.B}, T={scenario.T}, I={scenario.I}, H={scenario.H})")
        load = OtherLoad(result["threads"]["pinned"]["cpus"])
        for cell in args.cells:
            ours, theirs = torch_peer.build_pair(cell, scenario)
            x, target = torch_peer.inputs(scenario)
            dispatcher = torch_peer.dispatch_path(ours)
            for mode in scenario.modes:
                progress(f"  {cell} {mode}")
                if mode == "inference":
                    functions = {"grukit": torch_peer.inference_fn(ours, x)}
                    if name == "S1":   # the streaming scenario: also the streamer's chunk call
                        functions["grukit-chunk"] = torch_peer.streamer_run_fn(ours, x)
                    if theirs is not None:
                        functions["torch"] = torch_peer.inference_fn(theirs, x)
                    if use_onnx and CELLS[cell]["onnx"]:
                        functions["onnxruntime"], result["threads"]["onnxruntime"] = \
                            onnx_peer.session_and_feed(ours, x.numpy(), args.threads)
                    counters = ("run",)
                else:
                    functions = {"grukit": torch_peer.training_fn(ours, x, target)}
                    if name in BF16_SCENARIOS:
                        functions["grukit-bf16"] = torch_peer.training_fn(ours, x, target, bfloat16=True)
                    if theirs is not None:
                        functions["torch"] = torch_peer.training_fn(theirs, x, target)
                    counters = ("run", "backward")
                before = torch_peer.snapshot_calls()
                records = measure_group(functions, settings)
                calls = records["grukit"]["calls"]
                for impl, record in records.items():
                    variant = {"grukit-chunk": "chunk", "grukit-bf16": "training-bf16"}.get(impl)
                    record.update(cell=cell, scenario=name, mode=variant or mode,
                                  impl="grukit" if variant else impl, shape=scenario.shape(), unit="ms",
                                  group=f"{name}/{cell}/{mode}")   # timed round by round together
                    if impl == "grukit":
                        record["path"] = torch_peer.observed_path(before, calls, counters, dispatcher)
                    if mode == "training":
                        record["gflops"] = training_flops(cell, scenario) / (record["median"] * 1e-3) / 1e9
                        if peak and name in PEAK_SHARE_SCENARIOS:
                            record["peak_share"] = record["gflops"] / peak
                    measurements.append(record)
                    progress(f"    {impl:12s} {record['median']:10.3f} ms  (first call "
                             f"{record['first_call']:.1f} ms, {record['repeats']} repeats)"
                             + (f"  [{record['path']['path']}]" if impl == "grukit" else ""))
            if name == "S1":
                progress(f"  {cell} step()")
                for impl, step in torch_peer.step_fns(cell, ours, theirs, scenario, settings.step_count).items():
                    before = torch_peer.snapshot_calls()
                    record = measure_steps(step, settings.step_count)
                    ours_impl = impl.startswith("grukit")
                    record.update(cell=cell, scenario=name, mode="stream" if impl == "grukit-streamer" else "step",
                                  unit="us", impl="grukit" if ours_impl else "torch-cell", shape=scenario.shape())
                    if impl == "grukit":
                        record["path"] = torch_peer.observed_path(before, 100 + settings.step_count,
                                                                  ("step",), dispatcher)
                    measurements.append(record)
                    progress(f"    {impl:12s} {record['median']:10.2f} us per step")
            del ours, theirs
        torch.set_num_threads(args.threads)   # in case a peer changed it
        record_load(result, name, load)


def record_load(result: dict, label: str, load: OtherLoad) -> None:
    share = load.share()
    result["other_load"][label] = share
    if share > 0.05:
        progress(f"  warning: other processes used {share:.0%} of the benchmark's CPUs during {label}; "
                 "its times are inflated, rerun on a quiet machine")


def run_keras(args, settings: Settings, result: dict) -> None:
    jobs = [{"cell": cell, "layer": CELLS[cell]["keras"], "scenario": name, **SCENARIOS[name].shape()}
            for name in args.only if name in ("S2", "S3")
            for cell in args.cells if CELLS[cell]["keras"]]
    if not jobs:
        return
    progress("Keras 3 / JAX training (subprocess, KERAS_BACKEND=jax)")
    load = OtherLoad(result["threads"]["pinned"]["cpus"])
    request = {"jobs": jobs, "settings": settings.to_dict(), "threads": args.threads,
               "learning_rate": 1e-3}
    answer = _subprocess("benchmarks.keras_jax", request, result["notes"], "Keras/JAX peer")
    record_load(result, "keras-jax", load)
    if answer is None:
        return
    result["threads"]["keras-jax"] = answer["thread_note"]
    result["keras_jax"] = {k: v for k, v in answer.items() if k != "results"}
    for record in answer["results"]:
        job = {k: record.pop(k) for k in ("cell", "layer", "scenario", "B", "T", "I", "H")}
        scenario = SCENARIOS[job["scenario"]]
        record.update(cell=job["cell"], scenario=job["scenario"], mode="training", impl="keras-jax",
                      shape=scenario.shape(), unit="ms", layer=f"keras.layers.{job['layer']}")
        record["gflops"] = training_flops(job["cell"], scenario) / (record["median"] * 1e-3) / 1e9
        result["measurements"].append(record)


def run_memory(args, memory: list[dict], notes: list[str]) -> None:
    scenario = SCENARIOS["S2"]
    for cell in args.cells:
        if not CELLS[cell]["torch"]:
            continue
        for impl in ("grukit", "torch"):
            progress(f"S2 peak memory of one training step: {cell} {impl} (fresh subprocess)")
            request = {"impl": impl, "cell": cell, "threads": args.threads, **scenario.shape()}
            answer = _subprocess("benchmarks.memory", request, notes, f"memory {cell} {impl}")
            if answer is not None:
                memory.append(answer)
                progress(f"    {impl:12s} {answer['peak_mb']:10.1f} MB")


def run_cold_start(args, result: dict) -> None:
    import tempfile
    for cell in args.cells:
        progress(f"first calls with an empty Numba cache: {cell} (fresh subprocess)")
        with tempfile.TemporaryDirectory(prefix="grukit-numba-cache-") as cache_dir:
            request = {"cell": cell, "threads": args.threads, "cache_dir": cache_dir}
            answer = _subprocess("benchmarks.cold_start", request, result["notes"], f"cold start {cell}")
        if answer is not None:
            result["cold_start"].append(answer)
            progress(f"    import {answer['import_s']:.1f} s, first inference {answer['inference']['first_s']:.1f} s, "
                     f"first training step {answer['training']['first_s']:.1f} s, "
                     f"first step() {answer['step']['first_s']:.2f} s")


def _subprocess(module: str, request: dict, notes: list[str], label: str) -> dict | None:
    completed = subprocess.run([sys.executable, "-m", module, json.dumps(request)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        notes.append(f"{label} failed (exit {completed.returncode}); see stderr of the run")
        progress(f"  {label} failed with exit code {completed.returncode}")
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = pin_threads(args.threads, args.omp_wait_policy)       # before torch, numba and onnxruntime are imported
    whole_run = OtherLoad(threads["cpus"])
    cache_files = numba_cache_files()
    loadavg_start = os.getloadavg()
    memory: list[dict] = []
    notes: list[str] = []
    if not args.no_memory and "S2" in args.only:
        # First, while this process is small: a child's ru_maxrss starts at its parent's peak.
        run_memory(args, memory, notes)
    import torch
    torch.set_num_threads(args.threads)
    from .machine import library_threads, matmul_peak, weight_read_floor
    from .report import comparisons, write_results

    settings = settings_from(args)
    started = time.perf_counter()
    result = {"schema": 1, "machine": machine_info(), "settings": settings.to_dict(),
              "options": {"only": args.only, "cells": args.cells, "quick": args.quick,
                          "keras": not args.no_keras, "onnx": not args.no_onnx,
                          "memory": not args.no_memory, "cold_start": not (args.no_cold_start or args.quick)},
              "threads": {"pinned": threads, **library_threads()},
              "flop_formula": FLOP_FORMULA, "measurements": [], "memory": memory, "notes": notes,
              "other_load": {}, "numba_cache_index_files_at_start": cache_files,
              "cold_start": []}
    if any(name in args.only for name in PEAK_SHARE_SCENARIOS):
        progress("float32 matmul peak (torch.matmul and oneDNN's matmul)")
        sizes = (1024, 2048) if args.quick else (1024, 2048, 3072)
        result["matmul_peak"] = matmul_peak(settings, sizes)
        engines = result["matmul_peak"]["engine_gflops"]
        progress("    " + ", ".join(f"{e} {g:.1f}" for e, g in engines.items()) + " GFLOP/s")
    if "S1" in args.only:
        progress("weight-read floor of a batch-of-one GRU step (S1's layer)")
        s1 = SCENARIOS["S1"]
        result["weight_read_floor"] = weight_read_floor(settings, s1.I, s1.H, gates=3)
        floor = result["weight_read_floor"]
        progress(f"    {floor['gb_per_s']:.1f} GB/s: {floor['recurrent_us']:.2f} us per step for W_hh, "
                 f"{floor['frame_us']:.2f} us per streamed frame")
    run_in_process(args, settings, result)
    result["threads"].update(library_threads())   # the threading layer is known by now
    if not args.no_keras:
        run_keras(args, settings, result)
    if not (args.no_cold_start or args.quick):
        run_cold_start(args, result)
    result["comparisons"] = comparisons(result["measurements"], result["memory"],
                                        result.get("matmul_peak", {}).get("gflops"))
    result["elapsed_s"] = time.perf_counter() - started
    result["other_load"]["whole run"] = whole_run.share()
    result["machine"]["loadavg_start"] = loadavg_start
    result["machine"]["loadavg_end"] = os.getloadavg()
    json_path, md_path = write_results(args.out, result)
    progress(f"done in {result['elapsed_s']:.0f} s: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
