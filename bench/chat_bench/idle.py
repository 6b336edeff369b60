"""Idle WebSocket connections held by one gateway process, and its memory per connection.

The sockets are opened by a separate client process (``python -m chat_bench.idle``) so that
each side has its own file-descriptor limit (both raised to the hard limit); each socket is a
different user that sends its resume frame, like a real client, then stays quiet. After a
settle time the gateway's RSS growth is divided by the connections still open, and the
gateway's own ``ws_connections`` gauge is read to confirm it holds them all.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from chat_bench.clients import token
from chat_bench.stats import CpuMeter
from chat_devtools.services import metric_sum

BATCH = 200
SETTLE = 3.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _fetch(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return await resp.text()


async def measure(ws_url: str, secret: str, count: int, within: float, gateway_pid: int | None,
                  gateway_metrics: str, progress: Callable[[str], None]) -> dict[str, Any]:
    base = rss_kib(gateway_pid) if gateway_pid else 0
    progress(f"idle connections: opening {count} sockets (1 client process, at most "
             f"{within:g} s) ...")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat_bench.idle", f"{ws_url}/v1/ws", secret, str(count),
        str(within), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    opened = failed = 0
    started = time.monotonic()
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), within + 60)).decode()
            if not line:
                raise RuntimeError("the idle client exited early")
            fields = line.split()
            opened, failed = int(fields[1]), int(fields[2])
            if fields[0] == "READY":
                break
            progress(f"idle connections: {opened} open, {failed} failed")
        open_s = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        rss = rss_kib(gateway_pid) if gateway_pid else 0
        held = metric_sum(await _fetch(gateway_metrics), "ws_connections") \
            if gateway_metrics else None
        proc.stdin.write(b"count\n")
        await proc.stdin.drain()
        still_open = int((await asyncio.wait_for(proc.stdout.readline(), 60)).split()[1])
    finally:
        if proc.returncode is None:
            proc.stdin.write(b"close\n")
            await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 120)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    connections = min(still_open, int(held)) if held is not None else still_open
    out: dict[str, Any] = {
        "target": count, "opened": opened, "failed": failed, "still_open": still_open,
        "gateway_ws_connections": held, "connections": connections,
        "open_seconds": round(open_s, 1), "client_processes": 1}
    if gateway_pid:
        out.update({"gateway_rss_before_mib": round(base / 1024, 1),
                    "gateway_rss_after_mib": round(rss / 1024, 1),
                    "kib_per_connection": round((rss - base) / max(1, connections), 1)})
    return out


async def _client(url: str, secret: str, count: int, within: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deadline = time.monotonic() + within
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    readers: list[asyncio.Task[None]] = []
    failed = 0
    cpu = CpuMeter()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            ws = await session.ws_connect(url, heartbeat=None, autoping=True, headers={
                "Authorization": f"Bearer {token(f'idle-{i:05d}', secret)}"})
            await ws.send_str('{"type":"resume","positions":{}}')
            sockets.append(ws)
            # Reading answers the gateway's heartbeat pings (autoping works inside receive)
            # and notices a close, so ``closed`` below is the truth.
            readers.append(asyncio.create_task(drain(ws)))

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for _ in ws:
                pass

        for first in range(0, count, BATCH):
            if time.monotonic() > deadline:
                break
            results = await asyncio.gather(
                *(one(i) for i in range(first, min(count, first + BATCH))),
                return_exceptions=True)
            failed += sum(isinstance(r, BaseException) for r in results)
            if (first // BATCH) % 10 == 9:
                print(f"OPEN {len(sockets)} {failed}", flush=True)
        print(f"READY {len(sockets)} {failed} {cpu.share()}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if command == "count":
                print(f"OPEN {sum(not ws.closed for ws in sockets)} {failed}", flush=True)
            else:
                break
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(_client(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
