"""Comparisons against the issue's targets, the markdown report, and atomic file writes."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from .scenarios import CELLS, PEAK_SHARE_TARGET, SCENARIOS, STEP_TARGET_US, target_for

PEER_LABELS = {"torch": "torch.nn", "onnxruntime": "ONNX Runtime", "keras-jax": "Keras 3 / JAX",
               "torch-cell": "torch.nn *Cell", "matmul-peak": "matmul peak"}
_ENGINES = {"mkl": "torch.matmul (MKL)", "onednn": "oneDNN's matmul"}
MODE_LABELS = {"chunk": "inference via `streamer.run`", "training-bf16": "training, bfloat16 mode"}


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _find(measurements, **keys):
    for m in measurements:
        if all(m.get(k) == v for k, v in keys.items()):
            return m
    return None


def comparisons(measurements: list[dict], memory: list[dict], peak_gflops: float | None) -> list[dict]:
    """Every grukit measurement against every peer measured for the same cell, scenario and mode.

    ratio = peer / grukit for times (a speed-up: > 1 means grukit is faster) and for memory
    (> 1 means grukit needs less); for S4 GFLOP/s it is grukit's share of the matmul peak.
    """
    rows = []
    for ours in (m for m in measurements if m["impl"] == "grukit"):
        cell, scenario, mode = ours["cell"], ours["scenario"], ours["mode"]
        # the streamer's frame against torch's *Cell step, its chunk call against the layers' inference
        # (and its bfloat16-mode training step against the peers' float32 ones)
        peer_mode = {"stream": "step", "chunk": "inference", "training-bf16": "training"}.get(mode, mode)
        for peer in (m for m in measurements if m["impl"] != "grukit" and m["cell"] == cell
                     and m["scenario"] == scenario and m["mode"] == peer_mode):
            ratio = peer["median"] / ours["median"]
            row = {"cell": cell, "scenario": scenario, "mode": mode, "peer": peer["impl"],
                   "grukit": ours["median"], "peer_value": peer["median"], "unit": ours["unit"],
                   "ratio": ratio, "path": ours.get("path", {}).get("path")}
            paired = paired_ratios(ours, peer)
            if paired:
                row["paired"] = paired
            if "after_switch" in ours and "after_switch" in peer:   # both timed in one group (timing.py)
                row["after_switch"] = {"grukit": ours["after_switch"]["median"],
                                       "peer_value": peer["after_switch"]["median"],
                                       "ratio": peer["after_switch"]["median"] / ours["after_switch"]["median"]}
            if mode in ("step", "stream"):
                row["target"] = f"grukit < {STEP_TARGET_US:g} us" if cell == "gru" else None
                row["met"] = ours["median"] < STEP_TARGET_US if cell == "gru" else None
            else:
                target = target_for(cell, scenario, mode if mode == "training-bf16" else peer_mode, peer["impl"])
                row["target"] = target.text() if target else None
                row["met"] = target.met(ratio) if target else None
            rows.append(row)
        if mode == "training" and scenario == "S4" and peak_gflops and CELLS[cell]["torch"]:
            share = ours["gflops"] / peak_gflops
            rows.append({"cell": cell, "scenario": scenario, "mode": "GFLOP/s", "peer": "matmul-peak",
                         "grukit": ours["gflops"], "peer_value": peak_gflops, "unit": "GFLOP/s",
                         "ratio": share, "path": ours.get("path", {}).get("path"),
                         "target": f">={PEAK_SHARE_TARGET:.0%} of peak" if cell == "gru" else None,
                         "met": share >= PEAK_SHARE_TARGET if cell == "gru" else None})
    for cell in CELLS:
        ours = _find(memory, cell=cell, impl="grukit")
        theirs = _find(memory, cell=cell, impl="torch")
        if ours and theirs and "peak_mb" in ours and "peak_mb" in theirs:
            ratio = theirs["peak_mb"] / ours["peak_mb"] if ours["peak_mb"] > 0 else float("inf")
            rows.append({"cell": cell, "scenario": "S2", "mode": "peak memory", "peer": "torch",
                         "grukit": ours["peak_mb"], "peer_value": theirs["peak_mb"], "unit": "MB",
                         "ratio": ratio, "path": None, "target": "<= torch",
                         "met": ours["peak_mb"] <= theirs["peak_mb"]})
    return rows


def paired_ratios(ours: dict, peer: dict) -> dict | None:
    """The spread of peer / grukit over the rounds of one group (timing.measure_group times every
    implementation of a group once per round, so the i-th times of two were taken minutes, not hours,
    apart): the quartiles of the per-round ratios and their count. None for measurements of different
    groups (the Keras/JAX peer runs in its own process) or without rounds."""
    if ours.get("group") is None or ours.get("group") != peer.get("group"):
        return None
    a, b = ours.get("times") or [], peer.get("times") or []
    if len(a) != len(b) or len(a) < 4:
        return None
    ratios = [p / o for o, p in zip(a, b)]
    q25, _, q75 = statistics.quantiles(ratios, n=4, method="inclusive")   # numpy's default interpolation
    return {"q25": q25, "q75": q75, "rounds": len(ratios)}


def _fmt(value: float, unit: str) -> str:
    if unit == "GFLOP/s":
        return f"{value:.1f} GFLOP/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    digits = 3 if value < 10 else (2 if value < 100 else 1)
    return f"{value:.{digits}f} {unit}"


def _scenario_text(name: str) -> str:
    s = SCENARIOS[name]
    return f"{name} (B={s.B}, T={s.T}, I={s.I}, H={s.H})"


def _yes_no(met) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def _threads_text(threads: dict) -> str:
    pinned = threads["pinned"]
    parts = [f"{pinned['threads']} threads on CPUs {pinned['cpus']} "
             f"({', '.join(f'{k}={v}' for k, v in pinned['environment'].items())})",
             f"torch.set_num_threads({threads['torch.get_num_threads']}), "
             f"interop {threads['torch.get_num_interop_threads']}",
             f"Numba {threads['numba.get_num_threads']} threads, {threads['numba.threading_layer']} layer "
             f"(grukit's kernels use min(torch.get_num_threads(), Numba's pool) threads of "
             f"{threads.get('grukit.kernel_threads', 'a Python thread pool')})"]
    if "onnxruntime" in threads:
        ort = threads["onnxruntime"]
        parts.append(f"ONNX Runtime intra_op_num_threads={ort['intra_op_num_threads']}, "
                     f"inter_op_num_threads={ort['inter_op_num_threads']}, spinning off")
    if "keras-jax" in threads:
        parts.append(f"JAX: {threads['keras-jax']}")
    return "; ".join(parts) + "."


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = ["# grukit benchmarks", "",
             f"{machine['date']} on {machine['cpu_model']} ({machine['usable_cpus']} usable of "
             f"{machine['logical_cpus']} logical CPUs). Versions: "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v) + ".", "",
             "Threads: " + _threads_text(result["threads"]), "",
             f"Each time is the median of the repetitions after {result['settings']['warmup']} "
             "warm-up call(s) (the first call, which includes Numba compilation or cache loading, "
             "is reported separately below); implementations in one row were timed round-robin "
             "in the same run. A repetition is a lead call and then consecutive calls for about "
             f"{result['settings'].get('loop_s', 0) * 1e3:g} ms, timed together (a longer call is timed "
             "alone), as a training loop or a stream of requests runs them; the lead calls, each "
             "right after another implementation's, are compared in their own table below. "
             "**Speed-up = peer time / grukit time** (> 1: grukit is faster); in brackets, where both "
             "were timed in the same rounds, the middle half of the per-round speed-ups (their quartiles), "
             "which shows how far the host's swings move a ratio. "
             "grukit runs `kernel=\"auto\"`; the path in brackets is what ran, read from the "
             "kernels' spy counter. A training step = zero grads, forward, MSE loss on the last "
             "step's output, backward, SGD update (the same step for Keras/JAX, jitted).", ""]
    if result.get("other_load"):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in result["other_load"].items())
        lines += [f"Share of the benchmark's CPUs used by other processes (noise): {shares}.", ""]
    if result.get("matmul_peak"):
        engines = result["matmul_peak"].get("engine_gflops", {})
        by_engine = ", ".join(f"{_ENGINES.get(e, e)} {g:.1f}" for e, g in engines.items())
        peak = result["matmul_peak"]
        median = f"; {peak['median_gflops']:.1f} from the medians" if "median_gflops" in peak else ""
        lines += [f"Float32 matmul peak (the faster GEMM of torch's build, same threads, its fastest repetition): "
                  f"{peak['gflops']:.1f} GFLOP/s ({by_engine}{median}). {result['flop_formula']}.", ""]
    floor = result.get("weight_read_floor")
    if floor:
        shape = floor["shape"]
        lines += [f"Weight-read floor of a batch-of-one step (S1's GRU, I={shape['I']}, H={shape['H']}, float32): "
                  f"one core reads cached weights at {floor['gb_per_s']:.1f} GB/s ({floor['method']}). Each weight "
                  f"is read once per step for one multiply-add, so no implementation on this core steps faster than "
                  f"{floor['recurrent_us']:.2f} us per step for W_hh ({floor['recurrent_us'] * 100 / 1000:.3f} ms "
                  f"over S1's 100 steps, before the input projection and the gates), and "
                  f"{floor['frame_us']:.2f} us per streamed frame for W_ih and W_hh together (the step() "
                  f"rows' target is 5 us).", ""]
    rows = result["comparisons"]
    for cell in CELLS:
        cell_rows = [r for r in rows if r["cell"] == cell]
        if not cell_rows:
            continue
        lines += [f"## {CELLS[cell]['grukit']}", "",
                  "| scenario | measure | grukit | peer | peer value | speed-up | target | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in cell_rows:
            ours = _fmt(r["grukit"], r["unit"]) + (f" ({r['path']})" if r["path"] else "")
            ratio = f"{r['ratio']:.0%} of peak" if r["peer"] == "matmul-peak" else f"{r['ratio']:.2f}x"
            if r.get("paired"):
                ratio += f" ({r['paired']['q25']:.2f}-{r['paired']['q75']:.2f})"
            lines.append(f"| {_scenario_text(r['scenario'])} | {MODE_LABELS.get(r['mode'], r['mode'])} | {ours} | "
                         f"{PEER_LABELS.get(r['peer'], r['peer'])} | {_fmt(r['peer_value'], r['unit'])} | "
                         f"{ratio} | {r['target'] or '—'} | {_yes_no(r['met'])} |")
        lines.append("")
        for scenario in SCENARIOS:
            shares = [m for m in result["measurements"] if m["cell"] == cell and m["scenario"] == scenario
                      and m.get("peak_share") is not None]
            if shares:
                lines += [f"{scenario} training throughput: " + ", ".join(
                    f"{m['impl']}{' in the bfloat16 mode' if m['mode'] == 'training-bf16' else ''} "
                    f"{m['gflops']:.1f} GFLOP/s ({m['peak_share']:.0%} of the matmul peak)" for m in shares) + ".", ""]
    alone = [m for m in result["measurements"] if m["impl"] == "grukit" and CELLS[m["cell"]]["torch"] is None]
    if alone:
        lines += ["## Cells without a peer (grukit only)", "",
                  "| cell | scenario | measure | grukit | path | GFLOP/s | share of matmul peak |",
                  "|---|---|---|---|---|---|---|"]
        for m in alone:
            gflops = f"{m['gflops']:.1f}" if m.get("gflops") else "—"
            share = f"{m['peak_share']:.0%}" if m.get("peak_share") is not None else "—"
            lines.append(f"| {CELLS[m['cell']]['grukit']} | {_scenario_text(m['scenario'])} | "
                         f"{MODE_LABELS.get(m['mode'], m['mode'])} | "
                         f"{_fmt(m['median'], m['unit'])} | {m.get('path', {}).get('path', '—')} | "
                         f"{gflops} | {share} |")
        lines.append("")
    switched = [r for r in rows if "after_switch" in r]
    if switched:
        lines += ["## Calls right after another implementation's", "",
                  "Each repetition's lead call, where it followed another implementation's calls (median): "
                  "caches cold and the other library's threads maybe still spinning. This costs every "
                  "implementation about the same fixed time, so it weighs most on the shortest calls.", "",
                  "| cell | scenario | measure | grukit | peer | peer value | speed-up |", "|---|---|---|---|---|---|---|"]
        for r in switched:
            a = r["after_switch"]
            lines.append(f"| {CELLS[r['cell']]['grukit']} | {_scenario_text(r['scenario'])} | "
                         f"{MODE_LABELS.get(r['mode'], r['mode'])} | {_fmt(a['grukit'], r['unit'])} | "
                         f"{PEER_LABELS.get(r['peer'], r['peer'])} | {_fmt(a['peer_value'], r['unit'])} | "
                         f"{a['ratio']:.2f}x |")
        lines.append("")
    cache = result.get("numba_cache_index_files_at_start")
    lines += ["## First calls (not in the medians)", "",
              "The first call of a process includes importing the kernels and either compiling them "
              "(no Numba cache) or loading their machine code from the cache; this run started with "
              f"{cache} Numba cache index files in grukit's kernels (0 means every kernel compiled "
              "here). torch's first call includes its own one-time set-up.", "",
              "| cell | scenario | measure | implementation | first call | median after warm-up |",
              "|---|---|---|---|---|---|"]
    for m in result["measurements"]:
        if m.get("first_call") is not None:
            lines.append(f"| {CELLS[m['cell']]['grukit']} | {m['scenario']} | {m['mode']} | {m['impl']} | "
                         f"{_fmt(m['first_call'], m['unit'])} | {_fmt(m['median'], m['unit'])} |")
    lines.append("")
    if result.get("cold_start"):
        lines += ["## Compile times: first calls with an empty Numba cache (fresh process per cell)", "",
                  "| cell | import grukit | first S1 inference (second) | first S3 training step (second) "
                  "| first step() (second) |", "|---|---|---|---|---|"]
        for c in result["cold_start"]:
            cells = [f"{c[k]['first_s']:.2f} s ({c[k]['second_s'] * 1e3:.2f} ms, {c[k]['path']})"
                     for k in ("inference", "training", "step")]
            lines.append(f"| {CELLS[c['cell']]['grukit']} | {c['import_s']:.2f} s | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def write_results(out_dir: Path, result: dict) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    write_atomic(json_path, json.dumps(result, indent=1) + "\n")
    write_atomic(md_path, markdown(result))
    return json_path, md_path
