"""The event-loop lag monitor records a loop held by one piece of work as lag."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from chat_shared.observability.loop_lag import BUCKETS, EventLoopLagMonitor


def _histogram() -> tuple[Histogram, CollectorRegistry]:
    registry = CollectorRegistry()
    return Histogram("t_event_loop_lag_seconds", "test", buckets=BUCKETS,
                     registry=registry), registry


def _count(registry: CollectorRegistry, le: str | None = None) -> float:
    if le is None:
        return registry.get_sample_value("t_event_loop_lag_seconds_count") or 0.0
    return registry.get_sample_value("t_event_loop_lag_seconds_bucket", {"le": le}) or 0.0


async def _ticks(registry: CollectorRegistry, at_least: float) -> None:
    for _ in range(500):  # bounded: 5 s
        if _count(registry) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the monitor made {_count(registry)} observations, not {at_least}")


async def test_a_loop_held_by_blocking_work_shows_as_one_long_lag() -> None:
    histogram, registry = _histogram()
    monitor = EventLoopLagMonitor(histogram, interval=0.01)
    monitor.start()
    try:
        await _ticks(registry, 2)
        before_over = _count(registry) - _count(registry, "0.25")
        time.sleep(0.4)  # noqa: ASYNC251 - holds the loop, as a quadratic scan would
        seen = _count(registry)
        await _ticks(registry, seen + 2)
        over = _count(registry) - _count(registry, "0.25") - before_over
        assert over >= 1  # the wake-up that came 0.39 s or more late
    finally:
        await monitor.stop()


async def test_stop_ends_the_task_and_start_twice_runs_one() -> None:
    histogram, registry = _histogram()
    monitor = EventLoopLagMonitor(histogram, interval=0.01)
    monitor.start()
    monitor.start()
    await _ticks(registry, 3)
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag"]
    assert len(tasks) == 1
    await monitor.stop()
    assert tasks[0].done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag"]


def test_interval_must_be_positive() -> None:
    histogram, _ = _histogram()
    with pytest.raises(ValueError, match="interval"):
        EventLoopLagMonitor(histogram, interval=0)
