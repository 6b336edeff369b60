"""Per-RPC latency, sequential: one call at a time, alternating gRPC and HTTP call by call.

Sequential calls measure the service's own path (no queueing); alternating the transports
makes drift on a shared machine hit both alike, so the HTTP/gRPC ratio is meaningful. The
client is ``Sequential`` (blocking gRPC stub, keep-alive http.client), the cheapest client of
each kind in Python, so that as little as possible of each figure is the client's own time.
SendMessage goes to bench-user's conversations in turn, GetMessages(50) and MarkAsRead to the
read conversation (each MarkAsRead moves the position one message forward, so each writes its
event), GetConversations(50) returns bench-user's full page of 50.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chat_bench.clients import Sequential, User
from chat_bench.dataset import BENCH_CONVERSATIONS, BENCH_USER, Dataset
from chat_bench.stats import summarize

RPCS = ("SendMessage", "GetMessages", "GetConversations", "MarkAsRead")
WARMUP = 30
CLIENT = "grpc's blocking stub and a keep-alive http.client connection"


def measure(client: Sequential, ds: Dataset, secret: str, calls: int,
            progress: Callable[[str], None]) -> dict[str, Any]:
    """Blocks for the whole phase (run it in a thread when a loop must stay responsive)."""
    me = User(BENCH_USER, secret)
    send_to = ds.bench_conversations[1:]  # not the read conversation: sending moves my position

    def check(value: int, want: int | None = None, minimum: int = 1) -> None:
        if (want is not None and value != want) or value < minimum:
            raise RuntimeError(f"unexpected answer {value} (want {want or f'>= {minimum}'})")

    def send(transport: str) -> Callable[[int], None]:
        fn = client.send_grpc if transport == "grpc" else client.send_http
        return lambda i: check(fn(me, send_to[i % len(send_to)], f"sequential {transport} {i}"))

    def get_messages(transport: str) -> Callable[[int], None]:
        fn = client.get_messages_grpc if transport == "grpc" else client.get_messages_http
        return lambda i: check(fn(me, ds.read_conversation, 50), want=50)

    def get_conversations(transport: str) -> Callable[[int], None]:
        fn = client.get_conversations_grpc if transport == "grpc" else client.get_conversations_http
        return lambda i: check(fn(me, 50), want=BENCH_CONVERSATIONS)

    def mark_read(transport: str) -> Callable[[int], None]:
        fn = client.mark_read_grpc if transport == "grpc" else client.mark_read_http

        def call(i: int) -> None:
            ds.marked += 1  # carried over from run to run (chat-bench --repeat)
            check(fn(me, ds.read_conversation, ds.marked), want=ds.marked)
        return call

    makers = {"SendMessage": send, "GetMessages": get_messages,
              "GetConversations": get_conversations, "MarkAsRead": mark_read}
    out: dict[str, Any] = {"calls": calls, "grpc": {}, "http": {}, "client": CLIENT}
    for rpc in RPCS:
        calls_of = {t: makers[rpc](t) for t in ("grpc", "http")}
        samples: dict[str, list[float]] = {"grpc": [], "http": []}
        progress(f"rpc latency: {rpc}, {calls} sequential calls per transport "
                 "(gRPC and HTTP alternating) ...")
        for i in range(WARMUP):  # connections, pools, prepared statements
            for t in ("grpc", "http"):
                calls_of[t](i)
        for i in range(calls):
            for t in ("grpc", "http"):
                start = time.perf_counter()
                calls_of[t](i)
                samples[t].append(time.perf_counter() - start)
        for t in ("grpc", "http"):
            out[t][rpc] = summarize(samples[t])
    return out
