"""run_until_signalled: start, settle the heap, wait for a signal, drain.

Why: every service's main runs through it, and the frozen heap is what keeps full garbage
collections from pausing calls for tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from chat_shared.runtime import run_until_signalled


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.frozen_after_start = -1

    async def start(self) -> None:
        self.events.append("start")
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self.frozen_after_start = gc.get_freeze_count()
        self.events.append("stop")


def test_runs_until_sigterm_then_stops_with_the_start_up_heap_frozen() -> None:
    service = _Recorder()
    gc.unfreeze()
    try:
        asyncio.run(asyncio.wait_for(run_until_signalled(lambda: service), timeout=10))
    finally:
        gc.unfreeze()  # give the test process its collector back
    assert service.events == ["start", "stop"]
    # Everything alive at start-up (this test process holds far more than 10,000 objects).
    assert service.frozen_after_start > 10_000
