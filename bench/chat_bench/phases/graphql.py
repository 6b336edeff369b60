"""The graphql phase: GraphQL beside the transports it is built on, measured side by side.

1. The inbox: ``viewer.conversations(first: 50)`` with unread counts and last messages against
   HTTP/JSON ``GetConversations(50)``, the same page of bench-user's 50 conversations, one call
   at a time over one keep-alive ``http.client`` connection, alternating call by call so drift
   hits both alike. Each answer is checked to hold 50 conversations.
2. Live delivery: messages sent over gRPC at a steady rate from a client process of its own
   (the delivery phase's pacer), each receiver holding two sockets at once, one native
   (/v1/ws) and one GraphQL subscription (/graphql, graphql-transport-ws); a frame's latency is
   its arrival minus the send's stamp, as in the delivery phase. Both kinds see the same
   messages at the same rate, so their p99s compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import aiohttp
import orjson

from chat_bench.clients import Sequential, User, open_api, token
from chat_bench.dataset import BENCH_CONVERSATIONS, BENCH_USER, Dataset
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.phases.delivery import START_DELAY, pacer_worker
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table

WARMUP = 30
INBOX = ("query Inbox { viewer { conversations(first: 50) { edges { node { id title "
         "unreadCount lastReadSeq lastMessage { id senderId content seq createdAt } } } "
         "pageInfo { hasNextPage endCursor } } } }")
SUBSCRIPTION = ("subscription($ids: [ID!]!) { conversationEvents(conversationIds: $ids) "
                "{ type event } }")
INBOX_FACTOR = 1.5
P99_GAP_MS = 10.0
KINDS = ("native", "graphql")


def measure_inbox(client: Sequential, ds: Dataset, secret: str, calls: int,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """Blocks for the whole part (run it in a thread)."""
    me = User(BENCH_USER, secret)
    body = orjson.dumps({"query": INBOX})

    def graphql(_: int) -> None:
        headers = {**me.headers, "Content-Type": "application/json"}
        client.http.request("POST", "/graphql", body=body, headers=headers)
        resp = client.http.getresponse()
        data = orjson.loads(resp.read())
        if resp.status != 200 or data.get("errors"):
            raise RuntimeError(f"graphql: {resp.status} {str(data)[:300]}")
        got = len(data["data"]["viewer"]["conversations"]["edges"])
        if got != BENCH_CONVERSATIONS:
            raise RuntimeError(f"graphql: {got} conversations, not {BENCH_CONVERSATIONS}")

    def http(_: int) -> None:
        got = client.get_conversations_http(me, 50)
        if got != BENCH_CONVERSATIONS:
            raise RuntimeError(f"http: {got} conversations, not {BENCH_CONVERSATIONS}")

    fns = {"GraphQL viewer.conversations(first: 50)": graphql,
           "HTTP/JSON GetConversations(50)": http}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    progress(f"graphql: {calls} sequential inbox calls each, GraphQL and HTTP alternating ...")
    for i in range(WARMUP):
        for fn in fns.values():
            fn(i)
    for i in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            samples[name].append(time.perf_counter() - start)
    return {"calls": calls, **{name: summarize(s) for name, s in samples.items()}}


async def _native(http: aiohttp.ClientSession, ws_url: str, user: str, secret: str
                  ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{ws_url}/v1/ws", heartbeat=None, autoping=True,
                               headers={"Authorization": f"Bearer {token(user, secret)}"})
    await ws.send_str('{"type":"resume","positions":{}}')
    await ws.send_str('{"type":"ping"}')
    for _ in range(10):  # the pong: the gateway has read the resume; live events flow
        if (await ws.receive_json(timeout=10)).get("type") == "pong":
            return ws
    raise RuntimeError("no pong on /v1/ws")


async def _subscribed(http: aiohttp.ClientSession, ws_url: str, user: str, secret: str,
                      conversation: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{ws_url}/graphql", protocols=("graphql-transport-ws",),
                               heartbeat=None, autoping=True)
    await ws.send_json({"type": "connection_init",
                        "payload": {"authorization": f"Bearer {token(user, secret)}"}})
    if (await ws.receive_json(timeout=10)).get("type") != "connection_ack":
        raise RuntimeError("no connection_ack on /graphql")
    await ws.send_json({"type": "subscribe", "id": "1", "payload": {
        "query": SUBSCRIPTION, "variables": {"ids": [conversation]}}})
    await ws.send_json({"type": "ping"})  # answered once the subscribe has been handled
    for _ in range(10):
        if (await ws.receive_json(timeout=10)).get("type") == "pong":
            return ws
    raise RuntimeError("no pong on /graphql")


def _content(kind: str, data: str) -> str | None:
    if '"message.created"' not in data:
        return None
    frame = orjson.loads(data)
    if kind == "graphql":
        if frame.get("type") != "next":
            return None
        frame = frame["payload"]["data"]["conversationEvents"]["event"]
    content: str = frame["message"]["content"]
    return content


async def measure_delivery(executor: Executor, grpc_addr: str, http_base: str, ws_url: str,
                           secret: str, rate: float, duration: float, conversations: int,
                           progress: Callable[[str], None]) -> dict[str, Any]:
    total = int(rate * duration)
    async with open_api("grpc", grpc_addr, http_base) as (api, *_), \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        plan = [(f"gql-sender-{i:03d}", f"gql-recv-{i:03d}") for i in range(conversations)]
        convs = await asyncio.gather(*(api.create_conversation(User(s, secret), [r], f"gql {i}")
                                       for i, (s, r) in enumerate(plan)))
        progress(f"graphql: {conversations} receivers, each with a native and a GraphQL "
                 "socket ...")
        sockets: list[tuple[str, int, aiohttp.ClientWebSocketResponse]] = []
        for ci, ((_, receiver), conv) in enumerate(zip(plan, convs, strict=True)):
            sockets.append(("native", ci, await _native(http, ws_url, receiver, secret)))
            sockets.append(("graphql", ci, await _subscribed(http, ws_url, receiver, secret,
                                                             conv)))
        latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        received: dict[int, set[int]] = {}
        count = [0]
        expected = [-1]
        arrived = asyncio.Event()

        async def read(k: int, kind: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            seen = received.setdefault(k, set())
            async for msg in ws:
                now = time.perf_counter()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                content = _content(kind, msg.data)
                if content is None or content == "warm-up":
                    continue
                stamp, n = content.split(" ")
                if int(n) in seen:
                    continue
                seen.add(int(n))
                latencies[kind].append(now - float(stamp))
                count[0] += 1
                if count[0] == expected[0]:
                    arrived.set()

        readers = [asyncio.create_task(read(k, kind, ws))
                   for k, (kind, _, ws) in enumerate(sockets)]
        progress(f"graphql: {rate:g} messages/s for {duration:g} s ({total} messages) over "
                 "gRPC ...")
        result = await asyncio.get_running_loop().run_in_executor(executor, pacer_worker, {
            "transport": "grpc", "grpc": grpc_addr, "http": http_base, "secret": secret,
            "rate": rate, "total": total, "start": time.perf_counter() + START_DELAY,
            "conversations": [(c, s) for c, (s, _) in zip(convs, plan, strict=True)]})
        ok: list[int] = result["ok"]
        expected[0] = len(ok) * len(KINDS)
        if count[0] >= expected[0]:
            arrived.set()
        try:
            await asyncio.wait_for(arrived.wait(), 15.0)
        except TimeoutError:
            pass
        for task in readers:
            task.cancel()
        for _, _, ws in sockets:
            await ws.close()
        lost = {kind: sum(1 for k, (kd, ci, _) in enumerate(sockets) if kd == kind
                          for n in ok if n % len(plan) == ci and n not in received.get(k, ()))
                for kind in KINDS}
    return {"rate_target": rate, "duration_s": duration, "conversations": conversations,
            "messages_sent": len(ok), "send_errors": sum(result["errors"].values()),
            "lost": lost, **{kind: summarize(latencies[kind]) for kind in KINDS}}


async def run(ctx: Context) -> dict[str, Any]:
    ds = await ctx.dataset()
    cfg, t = ctx.settings, ctx.target
    client = Sequential("", t.http)
    try:
        inbox = await asyncio.to_thread(measure_inbox, client, ds, t.jwt_secret,
                                        cfg["graphql_calls"], ctx.progress)
    finally:
        client.close()
    delivery = await measure_delivery(ctx.executor, t.grpc, t.http, t.ws, t.jwt_secret,
                                      cfg["graphql_rate"], cfg["graphql_duration"],
                                      cfg["graphql_conversations"], ctx.progress)
    return {"inbox": inbox, "delivery": delivery}


def _inbox_ratio(figures: Mapping[str, Any]) -> float | None:
    inbox = figures.get("inbox") or {}
    gql = (inbox.get("GraphQL viewer.conversations(first: 50)") or {}).get("mean_ms")
    http = (inbox.get("HTTP/JSON GetConversations(50)") or {}).get("mean_ms")
    return gql / http if gql is not None and http else None


def _p99_gap(figures: Mapping[str, Any]) -> float | None:
    d = figures.get("delivery") or {}
    gql, native = (d.get("graphql") or {}).get("p99_ms"), (d.get("native") or {}).get("p99_ms")
    return gql - native if gql is not None and native is not None else None


def targets(figures: Mapping[str, Any]) -> list[Check]:
    lost = (figures.get("delivery") or {}).get("lost")
    return [
        check("graphql: viewer.conversations(50) mean / HTTP GetConversations(50)",
              _inbox_ratio(figures), f"<= {INBOX_FACTOR:g}x", at_most(INBOX_FACTOR), "x"),
        check("graphql: subscription send-to-client p99 - native /v1/ws p99",
              _p99_gap(figures), f"<= {P99_GAP_MS:g} ms", at_most(P99_GAP_MS), "ms"),
        check("graphql: messages lost (subscription)",
              None if lost is None else lost.get("graphql"), "0", at_most(0)),
    ]


def details(figures: Mapping[str, Any]) -> list[str]:
    inbox, d = figures["inbox"], figures["delivery"]
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms")
    rows = [[name, *(fmt(s.get(k)) for k in keys)] for name, s in inbox.items()
            if isinstance(s, dict)]
    live = [[kind, *(fmt((d.get(kind) or {}).get(k)) for k in keys), str(d["lost"][kind])]
            for kind in KINDS]
    return [f"GraphQL: the inbox page, {inbox['calls']} sequential calls of each over one "
            "keep-alive connection, alternating, ms:", "",
            *table(["call", "p50", "p95", "p99", "mean"], rows), "",
            f"Send-to-client over the two WebSocket protocols at once: {d['messages_sent']:,} "
            f"messages at {d['rate_target']:g} msg/s over gRPC, {d['conversations']} "
            "receivers each holding a native socket and a GraphQL subscription, ms:", "",
            *table(["socket", "p50", "p95", "p99", "mean", "lost"], live)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--graphql-calls", type=int,
                       help="sequential inbox calls of each kind in the graphql phase (500)")
    group.add_argument("--graphql-rate", type=float,
                       help="messages/s of the graphql phase's delivery part (200)")
    group.add_argument("--graphql-duration", type=float,
                       help="seconds of the graphql phase's delivery part (10)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if args.quick else full)

    return {"graphql_calls": pick(args.graphql_calls, 500, 40),
            "graphql_rate": pick(args.graphql_rate, 200.0, 50.0),
            "graphql_duration": pick(args.graphql_duration, 10.0, 2.0),
            "graphql_conversations": 10 if args.quick else 40}


PHASE = Phase(
    name="graphql", about="GraphQL inbox vs HTTP GetConversations(50); subscription vs native "
                          "WebSocket send-to-client latency",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
