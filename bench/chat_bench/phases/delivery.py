"""The delivery phase: SendMessage at a steady rate -> outbox -> relay -> gateway -> socket.

Sending runs in a client process of its own, paced open-loop (message n is due at
start + n / rate, whatever the answers do); each message's content carries the monotonic clock
(CLOCK_MONOTONIC, shared by all processes of the machine) read just before its call (over
the run's transport, gRPC or HTTP/JSON). The
receivers (every member but the sender, each on its own socket) run in this process: a frame's
latency is its arrival time minus that stamp. Every successful send must reach each of its
receivers; whatever has not arrived when the drain time is over counts as lost.

The relay's commit-to-stream lag comes from the stream itself: each entry's id is Redis's clock
at XADD (ms) and its ``occurred_at`` is the outbox row's ``created_at``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import datetime
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from chat_bench.clients import TRANSPORT_NAMES, CallFailed, User, open_api, token
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import CpuMeter, summarize
from chat_bench.tables import fmt

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
    async with open_api(spec["transport"], spec["grpc"], spec["http"]) as (api, *_):
        users = {s: User(s, spec["secret"]) for _, s in conversations}
        for conv, sender in conversations[:5]:
            await api.send(users[sender], conv, "warm-up")
        sem = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(n: int) -> None:
            conv, sender = conversations[n % len(conversations)]
            try:
                await api.send(users[sender], conv, f"{time.perf_counter():.6f} {n}",
                               deadline=10)
                ok.append(n)
            except CallFailed as e:
                errors[e.code] = errors.get(e.code, 0) + 1
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


async def measure(executor: Executor, transport: str, grpc_addr: str, http_base: str,
                  ws_url: str, redis_addr: str, stream_prefix: str, secret: str, rate: float,
                  duration: float, conversations: int, receivers: int, drain: float,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    total = int(rate * duration)
    async with open_api(transport, grpc_addr, http_base) as (api, *_), \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
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
                 f"client process over {TRANSPORT_NAMES[transport]}, {len(sockets)} receiver "
                 "sockets in this process ...")
        cpu = CpuMeter()
        result = await asyncio.get_running_loop().run_in_executor(executor, pacer_worker, {
            "transport": transport, "grpc": grpc_addr, "http": http_base, "secret": secret,
            "rate": rate, "total": total,
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
    return {"rate_target": rate, "transport": transport, "duration_s": duration,
            "messages_sent": len(ok),
            "send_errors": sum(result["errors"].values()), "send_errors_by_code": result["errors"],
            "rate_achieved": round(total / result["offered_s"], 1) if result["offered_s"] else 0,
            "late_sends": result["late"], "conversations": conversations,
            "receivers_per_conversation": receivers, "sockets": len(sockets),
            "deliveries_expected": len(ok) * receivers, "deliveries": count[0], "lost": lost,
            "duplicates": duplicates, "latency": summarize(latencies), "relay_lag": lag,
            "client_processes": 2, "sender_cpu_share": result["cpu"],
            "receiver_cpu_share": receiver_cpu}


async def run(ctx: Context) -> dict[str, Any]:
    t, cfg = ctx.target, ctx.settings
    return await measure(
        ctx.executor, ctx.transport, t.grpc, t.http, t.ws, t.redis_addr, t.stream_prefix,
        t.jwt_secret, cfg["rate"], cfg["delivery_duration"], cfg["delivery_conversations"],
        cfg["receivers"], 15.0, ctx.progress)


def targets(figures: Mapping[str, Any]) -> list[Check]:
    latency, lag = figures.get("latency") or {}, figures.get("relay_lag") or {}
    return [
        check(f"send-to-socket p99 at {figures.get('rate_target', 500):g} msg/s",
              latency.get("p99_ms"), "<= 50 ms", at_most(50), "ms"),
        check("messages lost (send-to-socket)", figures.get("lost"), "0", at_most(0)),
        check("relay commit-to-stream lag p99", lag.get("p99_ms"), "<= 25 ms",
              at_most(25), "ms"),
    ]


def details(d: Mapping[str, Any]) -> list[str]:
    lat, lag = d["latency"], d["relay_lag"]
    # Runs before the transport was recorded sent over gRPC.
    over = TRANSPORT_NAMES[d.get("transport", "grpc")]
    return [f"Send-to-WebSocket: {d['messages_sent']:,} messages at {d['rate_achieved']:g} "
            f"msg/s (target {d['rate_target']:g}, sent over {over}) over {d['conversations']} "
            f"conversations, each to {d['receivers_per_conversation']} receivers "
            f"({d['sockets']} sockets): {d['deliveries']:,} of {d['deliveries_expected']:,} "
            f"frames, {d['lost']} lost, {d['duplicates']} duplicates, {d['send_errors']} send "
            f"errors; latency p50 {fmt(lat.get('p50_ms'))} ms, p95 {fmt(lat.get('p95_ms'))} "
            f"ms, p99 {fmt(lat.get('p99_ms'))} ms, max {fmt(lat.get('max_ms'))} ms. Relay "
            f"commit-to-stream lag (entry id vs occurred_at, ms resolution) p50 "
            f"{fmt(lag.get('p50_ms'))} ms, p99 {fmt(lag.get('p99_ms'))} ms. Clients: 1 sending "
            f"process ({d['sender_cpu_share']:.0%} of a core), receivers in the main process "
            f"({d['receiver_cpu_share']:.0%})."]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--rate", type=float, help="messages/s of the delivery phase (500)")
    group.add_argument("--delivery-duration", type=float,
                       help="seconds of the delivery phase (15)")
    group.add_argument("--receivers", type=int, default=2,
                       help="receiving members per conversation in the delivery phase")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if args.quick else full)

    return {"rate": pick(args.rate, 500.0, 100.0),
            "delivery_duration": pick(args.delivery_duration, 15.0, 2.0),
            "delivery_conversations": 20 if args.quick else 100, "receivers": args.receivers}


PHASE = Phase(
    name="delivery", about="send-to-WebSocket latency at a steady rate, and the relay's lag",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
