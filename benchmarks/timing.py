"""Timing: warm-up (first call timed separately), then interleaved repetitions and the median.

Implementations compared in one row are timed round-robin so that slow drift of a shared machine
hits them alike, in a different order each round (a Williams design: over a cycle of rounds, each
implementation follows each other one equally often).

A repetition is a short loop of consecutive calls of one implementation, as a training loop or a
stream of requests makes them: a lead call, then calls timed together for about ``Settings.loop_s``
(a call longer than that is timed alone). On this machine a call right after another library's
runs slower than after its own (cold caches, that library's threads still spinning), by a fixed
amount that weighs most on the shortest calls: S3's GRU training step took 2.47 ms right after
torch's and 1.72 ms in a loop, torch's 7.57 and 7.51 ms (one process, 2026-12-03). Timing one call
per repetition charged that switch to every measurement of the in-process implementations but not
to the Keras/JAX peer, timed alone in its own process. The lead calls, each right after another
implementation's loop, are kept as ``after_switch``. No torch import here: the Keras/JAX subprocess
uses it too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Settings:
    """How often to repeat. With ``exact`` every measurement runs ``repeats`` times; otherwise it
    stops early once ``budget_s`` seconds went into timed calls and ``min_repeats`` are done."""

    repeats: int = 30
    min_repeats: int = 3
    budget_s: float = 8.0
    warmup: int = 1
    exact: bool = False
    step_count: int = 3000     # step() calls timed one by one for the per-step latency
    loop_s: float = 0.02       # a repetition's consecutive calls last about this long (0: one call)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        return cls(**data)


def summary(times_s: list[float], first_call_s: float | None, scale: float = 1e3) -> dict:
    """A measurement record: times in ms (scale 1e3) or us (scale 1e6), each repetition kept."""
    values = [t * scale for t in times_s]
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "repeats": len(values), "times": [round(v, 4) for v in values],
            "first_call": None if first_call_s is None else first_call_s * scale}


def loop_length(call_s: float, loop_s: float, most: int = 200) -> int:
    """How many consecutive calls of ``call_s`` seconds a repetition times after its lead call: about
    ``loop_s`` seconds of them, at least 2; 0 (no lead call, one call timed) for calls of ``loop_s``
    or longer, or when loop_s is 0."""
    if loop_s <= 0 or call_s >= loop_s:
        return 0
    return max(2, min(most, round(loop_s / max(call_s, 1e-9))))


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n items in which every ordered pair (i, j), i != j, is adjacent equally often:
    Williams's Latin square (n rows for even n; with the rows reversed too for odd n)."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(i + shift) % n for i in first] for shift in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def measure_group(functions: dict[str, Callable[[], object]], settings: Settings,
                  sync: Callable[[object], None] | None = None) -> dict[str, dict]:
    """Time each function: warm-up calls (the first one timed as ``first_call``) and one more that
    sizes its loop (``loop_length``), then round-robin repetitions, each a lead call and a loop of
    consecutive calls whose mean is the repetition's time. Returns name -> summary in milliseconds,
    with ``calls_per_repeat``, ``calls`` (every call made, warm-up included) and the summary of the
    lead calls that followed another implementation's calls as ``after_switch``."""
    clock = time.perf_counter

    def timed(fn, count: int = 1) -> float:
        """Seconds for ``count`` consecutive calls of fn."""
        start = clock()
        for _ in range(count):
            result = fn()
            if sync:
                sync(result)
        return clock() - start

    first: dict[str, float] = {}
    loops: dict[str, int] = {}
    for name, fn in functions.items():
        for i in range(settings.warmup):
            elapsed = timed(fn)
            if i == 0:
                first[name] = elapsed
        loops[name] = loop_length(timed(fn), settings.loop_s)
    times: dict[str, list[float]] = {name: [] for name in functions}
    leads: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    orders = balanced_orders(len(names))
    spent, previous = 0.0, names[-1]
    for repeat in range(settings.repeats):
        if (not settings.exact and repeat >= settings.min_repeats
                and spent >= settings.budget_s):
            break
        for index in orders[repeat % len(orders)]:
            name = names[index]
            fn, count = functions[name], loops[name]
            if count == 0:
                elapsed = timed(fn)
                times[name].append(elapsed)
            else:
                lead = timed(fn)
                if previous != name:
                    leads[name].append(lead)
                elapsed = timed(fn, count)
                times[name].append(elapsed / count)
                spent += lead
            spent += elapsed
            previous = name
    records = {}
    for name in functions:
        record = summary(times[name], first.get(name))
        record["calls_per_repeat"] = max(loops[name], 1)
        record["calls"] = settings.warmup + 1 + len(times[name]) * (loops[name] + 1 if loops[name] else 1)
        if leads[name]:   # none where a single implementation only ever follows itself
            record["after_switch"] = summary(leads[name], None)
        records[name] = record
    return records


def measure_steps(step: Callable[[int], None], count: int, warmup: int = 100) -> dict:
    """Per-call latency of ``step(i)``, each call timed alone; summary in microseconds."""
    start = time.perf_counter()
    step(0)
    first = time.perf_counter() - start
    for i in range(1, warmup):
        step(i)
    clock = time.perf_counter_ns
    times = []
    for i in range(count):
        t0 = clock()
        step(i)
        times.append((clock() - t0) * 1e-9)
    record = summary(times, first, scale=1e6)
    ordered = sorted(t * 1e6 for t in times)
    record["quantiles"] = {q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
                           for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)}
    return record
