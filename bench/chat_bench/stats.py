"""Latency summaries: every figure in the JSON is in milliseconds, computed the same way."""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in 0..100)."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def summarize(seconds: list[float]) -> dict[str, Any]:
    """n, mean, p50, p95, p99, max in ms (rounded to µs) of samples given in seconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 3),
            "p50_ms": round(percentile(ms, 50), 3), "p95_ms": round(percentile(ms, 95), 3),
            "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(ms[-1], 3)}


class Progress:
    """One status line per step, with the time since the benchmark started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", file=sys.stderr, flush=True)


class CpuMeter:
    """This process's CPU use over a phase, as a share of one core: shows a saturated client."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.cpu = time.process_time()

    def share(self) -> float:
        wall = time.monotonic() - self.wall
        return round((time.process_time() - self.cpu) / wall, 3) if wall > 0 else 0.0
