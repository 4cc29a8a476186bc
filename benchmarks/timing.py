"""Timing: warm-up (first call timed separately), then interleaved repetitions and the median.

Implementations compared in one row are timed round-robin so that slow drift of a shared machine
hits them alike, in a different order each round (a Williams design: over a cycle of rounds, each
implementation follows each other one equally often). On this machine a call right after another
library's runs slower than after itself (cold caches, that library's threads still spinning): in a
fixed order A B C D, A always pays for following D. No torch import here: the Keras/JAX subprocess
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
    """Time each function: warm-up calls (the first one timed as ``first_call``), then
    round-robin repetitions. Returns name -> summary in milliseconds."""
    first: dict[str, float] = {}
    for name, fn in functions.items():
        for i in range(settings.warmup):
            start = time.perf_counter()
            result = fn()
            if sync:
                sync(result)
            if i == 0:
                first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    orders = balanced_orders(len(names))
    spent = 0.0
    for repeat in range(settings.repeats):
        if (not settings.exact and repeat >= settings.min_repeats
                and spent >= settings.budget_s):
            break
        for index in orders[repeat % len(orders)]:
            name = names[index]
            fn = functions[name]
            start = time.perf_counter()
            result = fn()
            if sync:
                sync(result)
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent += elapsed
    return {name: summary(times[name], first[name]) for name in functions}


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
