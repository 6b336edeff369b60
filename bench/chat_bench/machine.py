"""What the figures came from: CPU, memory, kernel, Python, PostgreSQL and Redis versions.

Figures from a 2-core machine shared with other work mean little without its load, so the load
average is recorded before and after the run as well.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def redis_version(redis_addr: str) -> str:
    """The Redis server's version ("unknown" without an address). PostgreSQL's is read with
    its settings (``chat_bench.database``)."""
    if redis_addr:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(f"redis://{redis_addr}", decode_responses=True)
        try:
            return str((await r.info("server"))["redis_version"])
        finally:
            await r.aclose()
    return "unknown"


def describe() -> dict[str, Any]:
    return {"cpu_model": _cpu_model(), "cores": os.cpu_count() or 0,
            "memory_gib": _memory_gib(), "kernel": platform.release(),
            "os": platform.platform(terse=True), "python": sys.version.split()[0],
            "date": datetime.now(UTC).isoformat(timespec="seconds")}
