"""Send throughput: a closed loop of N concurrent senders for a fixed time, across conversations.

The load runs in several client processes (``workers``), each with its own gRPC channel and
event loop, so that one Python process is not the bottleneck; each reports its CPU share, and a
client near 1.0 (a full core) means the figure is the client's limit, not the service's. Every
call picks a random conversation and a random member of it as the sender; errors are counted by
status code, never retried. Only calls finished inside the window count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import grpc

from chat_bench.clients import Api, User, grpc_channel
from chat_bench.stats import CpuMeter, summarize

CONNECTIONS_PER_CLIENT = 4
START_DELAY = 3.0  # seconds for the client processes to start and warm up before the window


def send_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process's share (runs in a child process: plain data in and out)."""
    return asyncio.run(_send_loop(spec))


async def _send_loop(spec: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    conversations: list[tuple[str, list[str]]] = spec["conversations"]
    users: dict[str, User] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start, end = spec["start"], spec["start"] + spec["duration"]
    # Several connections per client process, so the kernel can spread them over the API's
    # worker processes (API_WORKERS); senders take them in turn.
    channels = [grpc_channel(spec["grpc"], own_connection=True)
                for _ in range(CONNECTIONS_PER_CLIENT)]
    apis = [Api(channel) for channel in channels]
    try:
        def pick() -> tuple[User, str]:
            conv, members = rng.choice(conversations)
            name = rng.choice(members)
            if name not in users:
                users[name] = User(name, spec["secret"])
            return users[name], conv

        for api in apis:  # warm-up: the connections and this process's code paths
            await api.send_grpc(*pick(), "warm-up")

        async def sender(api: Api) -> None:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            while (t0 := time.perf_counter()) < end:
                user, conv = pick()
                try:
                    await api.send_grpc(user, conv, f"throughput {t0:.6f}", deadline=10)
                    done = time.perf_counter()
                    if done <= end:
                        latencies.append(done - t0)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] += 1

        await asyncio.sleep(max(0.0, start - time.perf_counter() - 0.5))
        cpu = CpuMeter()
        await asyncio.gather(*(sender(apis[i % len(apis)])
                               for i in range(spec["concurrency"])))
        return {"latencies": latencies, "errors": dict(errors), "cpu": cpu.share()}
    finally:
        for channel in channels:
            await channel.close()


async def measure(executor: Executor, workers: int, grpc_addr: str, secret: str,
                  conversations: list[tuple[str, list[str]]], concurrency: int,
                  duration: float, progress: Callable[[str], None]) -> dict[str, Any]:
    progress(f"throughput: concurrency {concurrency} for {duration:g} s from {workers} client "
             f"processes over {len(conversations)} conversations ...")
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + START_DELAY
    shares = [concurrency // workers + (1 if i < concurrency % workers else 0)
              for i in range(workers)]
    futures = [loop.run_in_executor(executor, send_worker, {
        "grpc": grpc_addr, "secret": secret, "conversations": conversations,
        "concurrency": share, "start": start, "duration": duration, "seed": concurrency * 100 + i})
        for i, share in enumerate(shares) if share]
    results = await asyncio.gather(*futures)
    latencies = [x for r in results for x in r["latencies"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    return {"concurrency": concurrency, "duration_s": duration, "client_processes": len(results),
            "messages": len(latencies), "messages_per_s": round(len(latencies) / duration, 1),
            "errors": sum(errors.values()), "errors_by_code": dict(errors),
            "client_cpu_share": [r["cpu"] for r in results], "latency": summarize(latencies)}
