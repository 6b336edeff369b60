"""The throughput phase: a closed loop of N concurrent senders for a fixed time, across
conversations, once per concurrency level (``--concurrency``).

The load runs in several client processes (``--clients``), each with its own connections
(gRPC channels, or an HTTP/JSON connection pool: the run's transport) and event loop, so that
one Python process is not the bottleneck; each reports its CPU share, and a client near 1.0 (a
full core) means the figure is the client's limit, not the service's. Every call picks a
random conversation and a random member of it as the sender; errors are counted by code
(``clients.CallFailed``), never retried. Only calls finished inside the window count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from chat_bench import cpu
from chat_bench.clients import TRANSPORT_NAMES, AsyncApi, CallFailed, User, open_api
from chat_bench.phase import Check, Context, Phase, at_least, at_most, check
from chat_bench.stats import CpuMeter, summarize
from chat_bench.tables import fmt, table

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
    async with open_api(spec["transport"], spec["grpc"], spec["http"],
                        CONNECTIONS_PER_CLIENT) as apis:
        def pick() -> tuple[User, str]:
            conv, members = rng.choice(conversations)
            name = rng.choice(members)
            if name not in users:
                users[name] = User(name, spec["secret"])
            return users[name], conv

        # Warm-up: this process's code paths, and every connection (an HTTP pool opens one
        # per call in flight, so as many calls at once as there will be senders).
        await asyncio.gather(*(apis[i % len(apis)].send(*pick(), "warm-up")
                               for i in range(max(len(apis), spec["concurrency"]))))

        async def sender(api: AsyncApi) -> None:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            while (t0 := time.perf_counter()) < end:
                user, conv = pick()
                try:
                    await api.send(user, conv, f"throughput {t0:.6f}", deadline=10)
                    done = time.perf_counter()
                    if done <= end:
                        latencies.append(done - t0)
                except CallFailed as e:
                    errors[e.code] += 1

        await asyncio.sleep(max(0.0, start - time.perf_counter() - 0.5))
        meter = CpuMeter()
        await asyncio.gather(*(sender(apis[i % len(apis)])
                               for i in range(spec["concurrency"])))
        return {"latencies": latencies, "errors": dict(errors), "cpu": meter.share()}


async def measure(executor: Executor, workers: int, transport: str, grpc_addr: str,
                  http_base: str, secret: str, conversations: list[tuple[str, list[str]]],
                  concurrency: int, duration: float,
                  progress: Callable[[str], None],
                  processes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One closed-loop run; with ``processes`` (a stack started here), also the CPU each of
    its parts spent per message over the window (``chat_bench.cpu``)."""
    progress(f"throughput: concurrency {concurrency} for {duration:g} s from {workers} client "
             f"processes over {len(conversations)} conversations "
             f"({TRANSPORT_NAMES[transport]}) ...")
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + START_DELAY
    shares = [concurrency // workers + (1 if i < concurrency % workers else 0)
              for i in range(workers)]
    futures = [loop.run_in_executor(executor, send_worker, {
        "transport": transport, "grpc": grpc_addr, "http": http_base, "secret": secret,
        "conversations": conversations,
        "concurrency": share, "start": start, "duration": duration, "seed": concurrency * 100 + i})
        for i, share in enumerate(shares) if share]

    async def sample_window() -> tuple[dict[str, float], dict[str, float]]:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = cpu.snapshot(processes or {})
        await asyncio.sleep(max(0.0, start + duration - time.perf_counter()))
        return before, cpu.snapshot(processes or {})

    sampler = asyncio.ensure_future(sample_window())
    results = await asyncio.gather(*futures)
    before, after = await sampler
    latencies = [x for r in results for x in r["latencies"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    # The clients' own CPU over about the same window, as the load generator's share.
    clients = {"load generator": sum(r["cpu"] for r in results) * duration}
    per_message = cpu.per_message(before, after, len(latencies), clients) if processes else {}
    return {"concurrency": concurrency, "transport": transport, "duration_s": duration,
            "client_processes": len(results), "cpu_ms_per_message": per_message,
            "cores": os.cpu_count(),
            "messages": len(latencies), "messages_per_s": round(len(latencies) / duration, 1),
            "errors": sum(errors.values()), "errors_by_code": dict(errors),
            "client_cpu_share": [r["cpu"] for r in results], "latency": summarize(latencies)}


async def run(ctx: Context) -> dict[str, Any]:
    ds = await ctx.dataset()
    # Not the read conversation: a send there by bench-user would move its read position,
    # which the next run's MarkAsRead calls count on.
    spread = [c for c in ds.conversations if c[0] != ds.read_conversation]
    out: dict[str, Any] = {}
    for c in ctx.settings["concurrency"]:
        try:
            out[f"c{c}"] = await measure(
                ctx.executor, ctx.client_count, ctx.transport, ctx.target.grpc, ctx.target.http,
                ctx.target.jwt_secret, spread, c, ctx.settings["duration"], ctx.progress,
                ctx.target.processes)
        except Exception as e:  # the other levels still run
            ctx.failed(f"c{c}", e)
    return out


def targets(figures: Mapping[str, Any]) -> list[Check]:
    c64 = figures.get("c64") or {}
    return [
        check("send throughput, concurrency 64", c64.get("messages_per_s"), ">= 2,000 msg/s",
              at_least(2000), "msg/s"),
        check("send p99, concurrency 64", (c64.get("latency") or {}).get("p99_ms"), "<= 50 ms",
              at_most(50), "ms"),
        check("send errors, concurrency 64", c64.get("errors"), "0", at_most(0)),
    ]


def _cpu_table(figures: Mapping[str, Any]) -> list[str]:
    """CPU per message in each part of the stack, and what the cores allow at that cost."""
    runs = [r for r in figures.values() if r.get("cpu_ms_per_message")]
    if not runs:
        return []
    parts = [p for p in runs[0]["cpu_ms_per_message"] if p != "all"]
    rows = [[str(r["concurrency"]), *(fmt(r["cpu_ms_per_message"].get(p)) for p in parts),
             fmt(r["cpu_ms_per_message"]["all"]),
             fmt(cpu.capacity(r["cpu_ms_per_message"], r.get("cores"))), fmt(r["messages_per_s"])]
            for r in runs]
    cores = runs[0].get("cores") or "?"
    return ["", "CPU per message, ms (each part's processes sampled from /proc over the "
            f"window; with every core busy, {cores} cores allow cores / all messages a "
            "second):", "",
            *table(["concurrency", *parts, "all", "msg/s the cores allow", "msg/s measured"],
                   rows)]


def details(figures: Mapping[str, Any]) -> list[str]:
    if not figures:
        return []
    # Runs before the transport was recorded sent over gRPC.
    transport = next(iter(figures.values())).get("transport", "grpc")
    rows = [[str(r["concurrency"]), fmt(r["messages_per_s"]), str(r["errors"]),
             *(fmt(r["latency"].get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")),
             f"{r['client_processes']} ("
             + ", ".join(f"{c:.0%}" for c in r["client_cpu_share"]) + ")"]
            for r in figures.values()]
    return [f"Send throughput ({TRANSPORT_NAMES[transport]}, "
            "closed loop, random conversation and member per call):", "",
            *table(["concurrency", "msg/s", "errors", "p50 ms", "p95 ms", "p99 ms",
                    "client processes (CPU of a core)"], rows), *_cpu_table(figures)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--concurrency", default="16,64", help="throughput runs (comma list)")
    group.add_argument("--duration", type=float, help="seconds per throughput run (15)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"concurrency": [int(c) for c in args.concurrency.split(",") if c],
            "duration": args.duration if args.duration is not None
            else (2.0 if args.quick else 15.0)}


PHASE = Phase(
    name="throughput", about="send throughput, closed loop at each --concurrency",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
