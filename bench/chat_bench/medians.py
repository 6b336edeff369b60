"""Several runs of a phase -> one result: each figure is its median across the runs.

The targets are judged on medians because one run on a shared 2-core machine swings by a factor
of several (send-to-socket p99 from 40 to 180 ms between consecutive runs here). Counts of what
must never happen (lost frames, duplicates, errors) are summed instead: one loss in any run is a
loss (a phase names further such counts in ``Phase.summed``). Lists and text come from the
first run.
"""

from __future__ import annotations

import statistics
from typing import Any

# Summed across runs, never averaged away.
SUMMED = frozenset({"lost", "duplicates", "errors", "send_errors", "late_sends", "failed"})


def combine(runs: list[Any], summed: frozenset[str] = SUMMED) -> Any:
    """The runs' common structure with medians at the numeric leaves (see module doc); the
    numbers under a key in ``summed`` are added up instead."""
    return _merge(runs, "", summed)


def _merge(values: list[Any], key: str, summed: frozenset[str]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        out: dict[str, Any] = {}
        for k in first:
            present = [v[k] for v in values if isinstance(v, dict) and k in v]
            out[k] = _merge(present, k, summed)
        return out
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(first, bool) or len(numbers) != len(values):
        return first
    if key in summed:
        return sum(numbers)
    median = statistics.median(numbers)
    if all(isinstance(v, int) for v in numbers) and float(median).is_integer():
        return int(median)
    return round(median, 3)
