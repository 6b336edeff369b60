"""End-to-end delivery: SendMessage at a steady rate -> outbox -> relay -> gateway -> socket.

Sending runs in a client process of its own, paced open-loop (message n is due at
start + n / rate, whatever the answers do); each message's content carries the monotonic clock
(CLOCK_MONOTONIC, shared by all processes of the machine) read just before its RPC. The
receivers (every member but the sender, each on its own socket) run in this process: a frame's
latency is its arrival time minus that stamp. Every successful send must reach each of its
receivers; whatever has not arrived when the drain time is over counts as lost.

The relay's commit-to-stream lag comes from the stream itself: each entry's id is Redis's clock
at XADD (ms) and its ``occurred_at`` is the outbox row's ``created_at``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any

import aiohttp
import grpc
import redis.asyncio as aioredis

from chat_bench.clients import Api, User, grpc_channel, token
from chat_bench.stats import CpuMeter, summarize

START_DELAY = 3.0
MAX_IN_FLIGHT = 512


def pacer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The sending client process (plain data in and out)."""
    return asyncio.run(_pace(spec))


async def _pace(spec: dict[str, Any]) -> dict[str, Any]:
    conversations: list[tuple[str, str]] = spec["conversations"]  # (id, sender)
    rate, total, start = spec["rate"], spec["total"], spec["start"]
    ok: list[int] = []
    errors: dict[str, int] = {}
    late = 0
    async with grpc_channel(spec["grpc"]) as channel:
        api = Api(channel)
        users = {s: User(s, spec["secret"]) for _, s in conversations}
        for conv, sender in conversations[:5]:
            await api.send_grpc(users[sender], conv, "warm-up")
        sem = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(n: int) -> None:
            conv, sender = conversations[n % len(conversations)]
            try:
                await api.send_grpc(users[sender], conv, f"{time.perf_counter():.6f} {n}",
                                    deadline=10)
                ok.append(n)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
            finally:
                sem.release()

        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu = CpuMeter()
        tasks = []
        for n in range(total):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
            await sem.acquire()
            tasks.append(asyncio.create_task(one(n)))
        offered = time.perf_counter() - start
        await asyncio.gather(*tasks)
        return {"ok": ok, "errors": errors, "offered_s": offered, "late": late,
                "cpu": cpu.share()}


async def _stream_position(r: aioredis.Redis, keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        info = await r.xinfo_stream(key) if await r.exists(key) else None
        out[key] = info["last-generated-id"] if info else "0-0"
    return out


def _occurred(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def wait_quiet(r: aioredis.Redis, keys: list[str], within: float = 60.0) -> None:
    """Until no stream grows for a second: the relay has drained what earlier phases wrote."""
    deadline = time.monotonic() + within
    last = await _stream_position(r, keys)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = await _stream_position(r, keys)
        if now == last:
            return
        last = now


async def relay_lag(r: aioredis.Redis, since: dict[str, str],
                    conversations: set[str]) -> tuple[list[float], int]:
    """Commit-to-stream lag (s) of this phase's message.created entries written after ``since``."""
    lags: list[float] = []
    for key, after in since.items():
        cursor = after
        for _ in range(10_000):  # bounded: at most 10M entries
            entries: list[tuple[str, dict[str, str]]] = await r.xrange(  # type: ignore[assignment]
                key, min=f"({cursor}", count=1000)
            if not entries:
                break
            for entry_id, fields in entries:
                cursor = entry_id
                if fields.get("type") == "message.created" and \
                        fields.get("conversation_id") in conversations:
                    xadd = int(entry_id.split("-")[0]) / 1000
                    lags.append(xadd - _occurred(fields["occurred_at"]))
    return [max(0.0, x) for x in lags], len(lags)


async def measure(executor: Executor, grpc_addr: str, ws_url: str, redis_addr: str,
                  stream_prefix: str, secret: str, rate: float, duration: float,
                  conversations: int, receivers: int, drain: float,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    total = int(rate * duration)
    async with grpc_channel(grpc_addr) as channel, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        api = Api(channel)
        progress(f"delivery: {conversations} conversations, 1 sender + {receivers} receivers "
                 "each; connecting receivers ...")
        plan = [(f"ws-sender-{i:03d}", [f"ws-recv-{i:03d}-{j}" for j in range(receivers)])
                for i in range(conversations)]
        convs = await asyncio.gather(*(api.create_conversation(User(s, secret), rs, f"ws {i}")
                                       for i, (s, rs) in enumerate(plan)))
        sockets: list[tuple[int, aiohttp.ClientWebSocketResponse]] = []
        for ci, (_, rs) in enumerate(plan):
            for name in rs:
                auth = {"Authorization": f"Bearer {token(name, secret)}"}
                ws = await http.ws_connect(f"{ws_url}/v1/ws", heartbeat=None, autoping=True,
                                           headers=auth)
                await ws.send_str('{"type":"resume","positions":{}}')
                await ws.send_str('{"type":"ping"}')
                sockets.append((ci, ws))
        for _, ws in sockets:  # the pong: the gateway has read the resume; live events flow
            for _ in range(10):
                frame = await ws.receive_json(timeout=10)
                if frame.get("type") == "pong":
                    break
        received: dict[int, set[int]] = {}  # socket index -> message numbers
        latencies: list[float] = []
        duplicates = 0
        arrived = asyncio.Event()
        expected_total = [-1]
        count = [0]

        async def read(k: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal duplicates
            seen = received.setdefault(k, set())
            async for msg in ws:
                now = time.perf_counter()
                if msg.type != aiohttp.WSMsgType.TEXT or '"message.created"' not in msg.data:
                    continue
                content = msg.json()["message"]["content"]
                if content == "warm-up":
                    continue
                stamp, n = content.split(" ")
                if int(n) in seen:
                    duplicates += 1
                    continue
                seen.add(int(n))
                latencies.append(now - float(stamp))
                count[0] += 1
                if count[0] == expected_total[0]:
                    arrived.set()

        readers = [asyncio.create_task(read(k, ws)) for k, (_, ws) in enumerate(sockets)]
        r = aioredis.Redis.from_url(f"redis://{redis_addr}", decode_responses=True) \
            if redis_addr else None
        keys = ([k async for k in r.scan_iter(match=f"{stream_prefix}:*", _type="stream")]
                if r is not None else [])
        if r is not None:
            progress("delivery: waiting for the relay to drain earlier phases' events ...")
            await wait_quiet(r, keys)
        since = await _stream_position(r, keys) if r is not None else {}
        progress(f"delivery: {rate:g} messages/s for {duration:g} s ({total} messages) from 1 "
                 f"client process, {len(sockets)} receiver sockets in this process ...")
        cpu = CpuMeter()
        result = await asyncio.get_running_loop().run_in_executor(executor, pacer_worker, {
            "grpc": grpc_addr, "secret": secret, "rate": rate, "total": total,
            "start": time.perf_counter() + START_DELAY,
            "conversations": [(c, s) for c, (s, _) in zip(convs, plan, strict=True)]})
        ok: list[int] = result["ok"]
        expected_total[0] = len(ok) * receivers
        if count[0] >= expected_total[0]:
            arrived.set()
        progress(f"delivery: sent {len(ok)}; waiting up to {drain:g} s for the last frames ...")
        try:
            await asyncio.wait_for(arrived.wait(), drain)
        except TimeoutError:
            pass
        receiver_cpu = cpu.share()
        for task in readers:
            task.cancel()
        for _, ws in sockets:
            await ws.close()
        lost = sum(1 for k, (ci, _) in enumerate(sockets) for n in ok
                   if n % len(plan) == ci and n not in received.get(k, ()))
        lag: dict[str, Any] = {"n": 0}
        if r is not None:
            if not keys:
                keys = [k async for k in r.scan_iter(match=f"{stream_prefix}:*", _type="stream")]
                since = dict.fromkeys(keys, "0-0")
            lags, _ = await relay_lag(r, since, set(convs))
            lag = summarize(lags)
            await r.aclose()
    return {"rate_target": rate, "duration_s": duration, "messages_sent": len(ok),
            "send_errors": sum(result["errors"].values()), "send_errors_by_code": result["errors"],
            "rate_achieved": round(total / result["offered_s"], 1) if result["offered_s"] else 0,
            "late_sends": result["late"], "conversations": conversations,
            "receivers_per_conversation": receivers, "sockets": len(sockets),
            "deliveries_expected": len(ok) * receivers, "deliveries": count[0], "lost": lost,
            "duplicates": duplicates, "latency": summarize(latencies), "relay_lag": lag,
            "client_processes": 2, "sender_cpu_share": result["cpu"],
            "receiver_cpu_share": receiver_cpu}
