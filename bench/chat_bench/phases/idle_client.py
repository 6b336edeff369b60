"""The idle phase's client process: opens the sockets, holds them, counts them on request.

Run as ``python -m chat_bench.phases.idle_client URL SECRET COUNT WITHIN`` by
``chat_bench.phases.idle``; it prints ``OPEN <open> <failed>`` as it goes and ``READY ...``
when done, answers ``count`` on stdin with the sockets still open, and closes them all on any
other line.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import aiohttp

from chat_bench.clients import token
from chat_bench.stats import CpuMeter

BATCH = 200


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
