"""Event-loop lag: how long the loop was busy with something else when it should have woken us.

Every service runs one asyncio loop that serves all callers; work that holds it (a scan that
grows with the input, a large parse, a blocking call) delays every other caller by as long,
and no request metric shows it: the delayed calls' own durations start after the wait. So each
service runs this monitor, a task that sleeps ``interval`` seconds over and over and records
how much later than asked it woke up, into a ``<prefix>_event_loop_lag_seconds`` histogram.

A stall of ``d`` seconds shows as an observation of at least ``d - interval``; the default
interval (20 ms) makes every stall over 70 ms an observation over 50 ms, for about fifty
wake-ups a second (a few microseconds each).

Why not a library: prometheus_client has no loop-lag collector (Node's prom-client has
``nodejs_eventloop_lag_seconds``); the small PyPI packages that measure lag (loopmon, aiodebug)
are single-author and idle for years, aiodebug by patching asyncio's Handle; asyncio's debug
mode, which logs slow callbacks, costs far too much to leave on. This is a sleep and a subtraction.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Histogram

DEFAULT_INTERVAL = 0.02
"""Seconds between wake-ups."""

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def event_loop_lag_histogram(prefix: str) -> Histogram:
    """The ``<prefix>_event_loop_lag_seconds`` histogram (create it once per process)."""
    return Histogram(f"{prefix}_event_loop_lag_seconds",
                     "How much later than scheduled the event loop woke a periodic task",
                     buckets=BUCKETS)


class EventLoopLagMonitor:
    """Observes the running loop's lag into a histogram until stopped."""

    def __init__(self, histogram: Histogram, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._histogram = histogram
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts observing on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            # Timers may fire a little early on a millisecond clock: no negative lag.
            self._histogram.observe(max(0.0, loop.time() - asked))
