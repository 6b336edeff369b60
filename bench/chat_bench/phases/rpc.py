"""The rpc phase: per-RPC latency, sequential, one call at a time.

Sequential calls measure the service's own path (no queueing). With ``--transport grpc`` (the
default) each RPC alternates gRPC and HTTP call by call, which makes drift on a shared machine
hit both alike, so the HTTP/gRPC ratio is meaningful; with ``--transport http`` every call is
HTTP/JSON. The client is ``Sequential`` (blocking gRPC stub, keep-alive http.client), the
cheapest client of each kind in Python, so that as little as possible of each figure is the
client's own time. SendMessage goes to bench-user's conversations in turn, GetMessages(50) and
MarkAsRead to the read conversation (each MarkAsRead moves the position one message forward,
so each writes its event), GetConversations(50) returns bench-user's full page of 50.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chat_bench.clients import Sequential, User
from chat_bench.dataset import BENCH_CONVERSATIONS, BENCH_USER, Dataset
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table

RPCS = ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead")
WARMUP = 30
CLIENT = "grpc's blocking stub and a keep-alive http.client connection"
HTTP_CLIENT = "a keep-alive http.client connection"
MEAN_TARGET_MS = {"SendMessage": 2.0, "GetMessages": 1.0, "GetConversations": 1.5,
                  "MarkAsRead": 1.0}
HTTP_FACTOR = 1.5
NAMES = {"grpc": "gRPC", "http": "HTTP"}


def measure(client: Sequential, ds: Dataset, secret: str, calls: int,
            progress: Callable[[str], None],
            transports: Sequence[str] = ("grpc", "http")) -> dict[str, Any]:
    """Blocks for the whole phase (run it in a thread when a loop must stay responsive)."""
    me = User(BENCH_USER, secret)
    send_to = ds.bench_conversations[1:]  # not the read conversation: sending moves my position

    def check_answer(value: int, want: int | None = None, minimum: int = 1) -> None:
        if (want is not None and value != want) or value < minimum:
            raise RuntimeError(f"unexpected answer {value} (want {want or f'>= {minimum}'})")

    def send(transport: str) -> Callable[[int], None]:
        fn = client.send_grpc if transport == "grpc" else client.send_http
        return lambda i: check_answer(fn(me, send_to[i % len(send_to)],
                                         f"sequential {transport} {i}"))

    def get_messages(transport: str) -> Callable[[int], None]:
        fn = client.get_messages_grpc if transport == "grpc" else client.get_messages_http
        return lambda i: check_answer(fn(me, ds.read_conversation, 50), want=50)

    def get_conversations(transport: str) -> Callable[[int], None]:
        fn = client.get_conversations_grpc if transport == "grpc" else client.get_conversations_http
        return lambda i: check_answer(fn(me, 50), want=BENCH_CONVERSATIONS)

    def mark_read(transport: str) -> Callable[[int], None]:
        fn = client.mark_read_grpc if transport == "grpc" else client.mark_read_http

        def call(i: int) -> None:
            ds.marked += 1  # carried over from run to run (chat-bench --repeat)
            check_answer(fn(me, ds.read_conversation, ds.marked), want=ds.marked)
        return call

    makers = {"SendMessage": send, "GetMessages": get_messages,
              "GetConversations": get_conversations, "MarkAsRead": mark_read}
    out: dict[str, Any] = {"calls": calls, "transports": list(transports),
                           "client": CLIENT if "grpc" in transports else HTTP_CLIENT,
                           **{t: {} for t in transports}}
    how = ("gRPC and HTTP alternating" if len(transports) > 1
           else f"{NAMES[transports[0]]} only")
    for rpc in RPCS:
        calls_of = {t: makers[rpc](t) for t in transports}
        samples: dict[str, list[float]] = {t: [] for t in transports}
        progress(f"rpc latency: {rpc}, {calls} sequential calls per transport ({how}) ...")
        for i in range(WARMUP):  # connections, pools, prepared statements
            for t in transports:
                calls_of[t](i)
        for i in range(calls):
            for t in transports:
                start = time.perf_counter()
                calls_of[t](i)
                samples[t].append(time.perf_counter() - start)
        for t in transports:
            out[t][rpc] = summarize(samples[t])
    return out


async def run(ctx: Context) -> dict[str, Any]:
    ds = await ctx.dataset()
    transports = ("grpc", "http") if ctx.transport == "grpc" else ("http",)
    client = Sequential(ctx.target.grpc if "grpc" in transports else "", ctx.target.http)
    try:
        return await asyncio.to_thread(measure, client, ds, ctx.target.jwt_secret,
                                       ctx.settings["calls"], ctx.progress, transports)
    finally:
        client.close()


def _transports(figures: Mapping[str, Any]) -> list[str]:
    # Runs before the transports were recorded measured both, gRPC first.
    return list(figures.get("transports") or ("grpc", "http"))


def _mean(figures: Mapping[str, Any], transport: str, rpc: str) -> Any:
    return ((figures.get(transport) or {}).get(rpc) or {}).get("mean_ms")


def targets(figures: Mapping[str, Any]) -> list[Check]:
    """Each RPC's mean on the primary transport; beside gRPC, HTTP's mean as a ratio to it."""
    transports = _transports(figures)
    primary = transports[0]
    out = []
    for rpc in RPCS:
        limit = MEAN_TARGET_MS[rpc]
        mean = _mean(figures, primary, rpc)
        out.append(check(f"{rpc} mean, {NAMES[primary]}", mean, f"<= {limit:g} ms",
                         at_most(limit), "ms"))
        if primary == "grpc":
            http_mean = _mean(figures, "http", rpc)
            ratio = http_mean / mean if http_mean is not None and mean else None
            out.append(check(f"{rpc} mean, HTTP / gRPC", ratio, f"<= {HTTP_FACTOR:g}x",
                             at_most(HTTP_FACTOR), "x"))
    return out


def details(figures: Mapping[str, Any]) -> list[str]:
    transports = _transports(figures)
    # Runs before the client was recorded used grpc.aio and aiohttp.
    client = figures.get("client", "grpc.aio and aiohttp")
    how = ("gRPC and HTTP alternating; clients" if len(transports) > 1
           else f"{NAMES[transports[0]]} only; client")
    rows = []
    for rpc_name in RPCS:
        for t in transports:
            s = (figures.get(t) or {}).get(rpc_name) or {}
            rows.append([rpc_name, NAMES[t],
                         *(fmt(s.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))])
    return [f"Per-RPC latency, {figures['calls']} sequential calls per RPC and transport "
            f"({how}: {client}), ms:", "",
            *table(["RPC", "transport", "p50", "p95", "p99", "mean"], rows)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--calls", type=int, help="sequential calls per RPC and transport (500)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.calls if args.calls is not None else (40 if args.quick else 500)
    # Every MarkAsRead (warm-up included, both transports, every run) moves bench-user's read
    # position one message forward: the data set holds that many unread messages.
    return {"calls": calls, "read_messages": 2 * (calls + WARMUP) * max(1, args.repeat) + 10}


PHASE = Phase(
    name="rpc", about="per-RPC latency, sequential calls (gRPC and HTTP alternating)",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
