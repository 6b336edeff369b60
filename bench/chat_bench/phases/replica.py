"""The replica phase: the read-only calls with and without a streaming replica.

Needs a stack started here (it knows the PostgreSQL it started): the phase makes a hot standby
of it (``pg_basebackup -R``, as the tests do) and starts a second API whose DB_READ_SOURCE is
the standby; the stack's own API reads the primary only. Both APIs serve the same database.
Then, one call at a time over gRPC, alternating call by call so drift hits all alike:

- GetMessages(50) and GetConversations on the primary-only API;
- the same two on the replica API without a position (served by the standby);
- a writer's round on the replica API: SendMessage, then GetMessages(50) with the position the
  send answered (read-your-writes: the primary answers while the standby has not replayed the
  send, the standby once it has), whose share served by the standby the API's
  ``chat_db_reads_total`` tells;
- SendMessage on each API (the replica API asks the primary for the position after each write).

On one machine the standby shares the cores with the primary, so this measures what a replica
costs per call and whether the routing adds latency, not the capacity it adds: that is
docs/capacity.md's arithmetic (a replica takes the read share of the primary's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from chat_bench.clients import Sequential, User
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_devtools.local_postgres import start_replica
from chat_devtools.services import Api, base_env, metric_sum
from chat_shared.protos.chat.v1 import chat_pb2

CALLS = ("GetMessages primary", "GetMessages replica", "GetConversations primary",
         "GetConversations replica", "SendMessage primary", "SendMessage replica API",
         "GetMessages after own write")
WARMUP = 30
PAGE = 50
ROUTING_FACTOR = 1.5
"""A read served by the standby through the routing costs at most this much more than the same
read on the primary-only API (both on this machine, measured side by side)."""
USERS = ("bench-replica-a", "bench-replica-b")


def _replica_dsn(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def _replayed(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _written(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'").fetchone()
    return int(row[0]) if row else 0


def measure(primary: Sequential, routed: Sequential, secret: str, messages: int, calls: int,
            metrics_url: str, catch_up: Callable[[], None],
            progress: Callable[[str], None]) -> dict[str, Any]:
    """Blocks for the whole phase (run it in a thread)."""
    a, b = (User(u, secret) for u in USERS)
    conv = primary.stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=[b.id], title=f"replica {uuid.uuid4().hex[:8]}"), metadata=a.meta,
        timeout=30).conversation.id
    progress(f"replica: sending {messages} messages ...")
    for i in range(messages):
        primary.send_grpc(a if i % 2 else b, conv, f"replica {i}")
    catch_up()

    def full(n: int) -> None:
        if n != PAGE:
            raise RuntimeError(f"a page of {n} messages, not {PAGE}")

    def get_messages(client: Sequential) -> Callable[[int], None]:
        def call(_: int) -> None:
            full(len(client.stub.GetMessages(chat_pb2.GetMessagesRequest(
                conversation_id=conv, limit=PAGE), metadata=b.meta, timeout=30).messages))
        return call

    def get_conversations(client: Sequential) -> Callable[[int], None]:
        def call(_: int) -> None:
            client.stub.GetConversations(chat_pb2.GetConversationsRequest(limit=20),
                                         metadata=b.meta, timeout=30)
        return call

    def send(client: Sequential) -> Callable[[int], None]:
        def call(i: int) -> None:
            client.send_grpc(a, conv, f"measured {i}")
        return call

    position = [""]

    def send_then_position(i: int) -> None:
        # not timed: the send is "SendMessage replica API"; this keeps its position
        _, call = routed.stub.SendMessage.with_call(chat_pb2.SendMessageRequest(
            conversation_id=conv, content=f"writer {i}", idempotency_key=uuid.uuid4().hex),
            metadata=a.meta, timeout=30)
        position[0] = dict(call.trailing_metadata())["x-chat-position"]

    def read_own_write(_: int) -> None:
        full(len(routed.stub.GetMessages(chat_pb2.GetMessagesRequest(
            conversation_id=conv, limit=PAGE),
            metadata=(*a.meta, ("x-chat-read-after", position[0])), timeout=30).messages))

    fns = dict(zip(CALLS, (get_messages(primary), get_messages(routed),
                           get_conversations(primary), get_conversations(routed),
                           send(primary), send(routed), read_own_write), strict=True))
    samples: dict[str, list[float]] = {name: [] for name in CALLS}
    progress(f"replica: {calls} sequential calls of each of {len(CALLS)} calls, alternating ...")
    for i in range(WARMUP):
        send_then_position(i)
        for fn in fns.values():
            fn(i)
    before = _read_sources(metrics_url)
    for i in range(calls):
        send_then_position(i)
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            samples[name].append(time.perf_counter() - start)
    after = _read_sources(metrics_url)
    served = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {"calls": calls, "messages": messages, "reads_by_source": served,
            **{name: summarize(s) for name, s in samples.items()}}


def _read_sources(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    return {f"{source}/{reason}": metric_sum(
        text, f'chat_db_reads_total{{reason="{reason}",source="{source}"}}')
        for source, reason in (("replica", "caught_up"), ("primary", "replica_behind"),
                               ("primary", "replica_failed"), ("primary", "replica_down"))}


async def run(ctx: Context) -> dict[str, Any]:
    target = ctx.target
    if not target.started_here or not target.db_source:
        raise RuntimeError("the replica phase needs a stack started here (it makes a standby "
                           "of the stack's PostgreSQL)")
    primary_port = urlsplit(target.db_source).port or 5432
    ctx.progress("replica: pg_basebackup of the stack's PostgreSQL, standby starting ...")
    standby = await asyncio.to_thread(start_replica, primary_port, durable=True)
    log_dir = pathlib.Path(target.log_dir or tempfile.mkdtemp(prefix="chat-bench-"))
    api: Api | None = None
    primary = routed = None
    try:
        replica_dsn = _replica_dsn(target.db_source, standby.port)
        env = base_env(target.db_source, target.redis_addr, target.jwt_secret,
                       ENVIRONMENT="development", LOG_LEVEL="WARNING",
                       DB_READ_SOURCE=replica_dsn)
        api = Api(env, log_dir, name="api-replica", metrics=True)
        api.start()
        await api.ready()
        metrics_url = f"http://127.0.0.1:{api.port('metrics_port')}/metrics"
        primary = Sequential(target.grpc, target.http)
        routed = Sequential(f"127.0.0.1:{api.grpc_port}", api.http_url)

        def catch_up() -> None:
            goal = _written(target.db_source)
            deadline = time.monotonic() + 60
            while _replayed(replica_dsn) < goal:
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby did not catch up within 60 s")
                time.sleep(0.05)

        return await asyncio.to_thread(
            measure, primary, routed, target.jwt_secret, ctx.settings["replica_messages"],
            ctx.settings["replica_calls"], metrics_url, catch_up, ctx.progress)
    finally:
        for client in (primary, routed):
            if client is not None:
                client.close()
        if api is not None:
            api.stop()
        standby.cleanup()


def _mean(figures: Mapping[str, Any], name: str) -> Any:
    return (figures.get(name) or {}).get("mean_ms")


def _ratio(figures: Mapping[str, Any], name: str, base: str) -> float | None:
    value, reference = _mean(figures, name), _mean(figures, base)
    return value / reference if value is not None and reference else None


def targets(figures: Mapping[str, Any]) -> list[Check]:
    return [
        check("replica: GetMessages(50) on the standby / on the primary",
              _ratio(figures, "GetMessages replica", "GetMessages primary"),
              f"<= {ROUTING_FACTOR:g}x", at_most(ROUTING_FACTOR), "x"),
        check("replica: a writer's GetMessages(50) after its send / on the primary",
              _ratio(figures, "GetMessages after own write", "GetMessages primary"),
              f"<= {ROUTING_FACTOR:g}x", at_most(ROUTING_FACTOR), "x"),
    ]


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = [[name, *(fmt((figures.get(name) or {}).get(k))
                     for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))] for name in CALLS]
    sources = figures.get("reads_by_source") or {}
    served = ", ".join(f"{k}: {int(v)}" for k, v in sorted(sources.items()))
    return [f"Replica: a hot standby of the stack's PostgreSQL on the same machine, a second API "
            f"reading it (DB_READ_SOURCE); one conversation of {figures['messages']} messages; "
            f"{figures['calls']} sequential gRPC calls of each, alternating, ms:",
            "", *table(["call", "p50", "p95", "p99", "mean"], rows), "",
            f"Reads of the replica API by the server that answered them ({served}): a "
            "writer's read right after its send goes to the primary until the standby has "
            "replayed the send."]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--replica-calls", type=int, help="sequential calls of each (400)")
    group.add_argument("--replica-messages", type=int,
                       help="messages in the measured conversation (300)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.replica_calls if args.replica_calls is not None else (
        30 if args.quick else 400)
    messages = args.replica_messages if args.replica_messages is not None else (
        100 if args.quick else 300)
    return {"replica_calls": calls, "replica_messages": messages}


PHASE = Phase(
    name="replica", about="reads with and without a streaming replica (starts a standby)",
    run=run, targets=targets, details=details, options=_options, settings=_settings,
    repeated=False, default=False)
