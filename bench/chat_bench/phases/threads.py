"""The threads phase: pages of a thread and of a timeline with replies mixed in, sequential.

It builds, through the API, two conversations of two users with the same number of messages:
"mixed", where three of every four messages are replies (most to one busy thread, the rest to
recent roots), and "plain", root-level messages only. Then it times, one call at a time over
gRPC whatever ``--transport`` says (the blocking stub, as the rpc phase), alternating call by
call so drift hits all alike: GetThread(50) of the busy thread, GetMessages(50) of mixed's main
timeline (root-level only: a page that skips the replies between its roots), GetMessages(50)
of mixed with its replies, GetMessages(50) of plain (the same page without threads), then
SendMessage of a reply. Each page is checked to be full.

The read right after the reply's SendMessage shares the machine with the relay, the gateway
and the API's thumbnail reader handling that reply's event, so each read takes that place in
turn (``rounds``): the reads are rotated one place each round and the reply ends every round.
(The whole round used to be rotated, which keeps the reply's successor: GetThread followed it
in four rounds of five, and measured 3.10 ms beside 2.01 ms for GetMessages of plain in a full
sitting on a 2-core AMD EPYC host; in this order, in the next sitting there, 2.55 and 2.42 ms.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from chat_bench.clients import Sequential, User
from chat_bench.database import analyze
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_shared.protos.chat.v1 import chat_pb2

CALLS = ("GetThread", "GetMessages root-level", "GetMessages with replies",
         "GetMessages no threads", "SendMessage reply")
WARMUP = 30
PAGE = 50
THREAD_TARGET_MS = 1.2
TIMELINE_TARGET_MS = 1.0  # the rpc phase's GetMessages(50) target
MIXED_FACTOR = 1.2
"""A page of the timeline that skips replies costs at most this much more than a page of a
conversation without threads (measured side by side, so it holds on a loaded machine too)."""
USERS = ("bench-thread-a", "bench-thread-b")


def rounds(reads: Sequence[str], write: str, i: int) -> list[str]:
    """Round ``i``'s calls: the reads rotated ``i`` places, then the write. The call after
    the write is the next round's first read, so over ``len(reads)`` rounds each read follows
    the write once."""
    turn = i % len(reads)
    return [*reads[turn:], *reads[:turn], write]


def _send(client: Sequential, user: User, conv: str, content: str, root: str = "") -> Any:
    return client.stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=conv, content=content, idempotency_key=uuid.uuid4().hex,
        thread_root_id=root), metadata=user.meta, timeout=30).message


def _conversation(client: Sequential, user: User, other: str, title: str) -> str:
    resp = client.stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=[other], title=title), metadata=user.meta, timeout=30)
    return str(resp.conversation.id)


def measure(client: Sequential, secret: str, messages: int, calls: int,
            progress: Callable[[str], None],
            settle: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Blocks for the whole phase (run it in a thread)."""
    a, b = (User(u, secret) for u in USERS)
    tag = uuid.uuid4().hex[:8]
    mixed = _conversation(client, a, b.id, f"threads mixed {tag}")
    plain = _conversation(client, a, b.id, f"threads plain {tag}")
    progress(f"threads: sending {messages} messages to each of two conversations ...")
    rng = random.Random(1)
    roots: list[str] = []
    busy = ""
    for i in range(messages):
        sender = a if i % 2 else b
        _send(client, sender, plain, f"plain {i}")
        if i % 4 == 0 or not roots:
            roots.append(_send(client, sender, mixed, f"root {i}").id)
            busy = busy or roots[0]
        else:
            target = busy if rng.random() < 0.7 else rng.choice(roots[-5:])
            _send(client, sender, mixed, f"reply {i}", target)
    reply_count = client.stub.GetThread(chat_pb2.GetThreadRequest(
        conversation_id=mixed, root_id=busy, limit=1), metadata=a.meta,
        timeout=30).root.reply_count

    def full(n: int) -> None:
        if n != PAGE:
            raise RuntimeError(f"a page of {n} messages, not {PAGE}")

    def get_thread(_: int) -> None:
        full(len(client.stub.GetThread(chat_pb2.GetThreadRequest(
            conversation_id=mixed, root_id=busy, limit=PAGE), metadata=a.meta,
            timeout=30).messages))

    def get_messages(conv: str, replies: bool) -> Callable[[int], None]:
        def call(_: int) -> None:
            full(len(client.stub.GetMessages(chat_pb2.GetMessagesRequest(
                conversation_id=conv, limit=PAGE, include_thread_replies=replies),
                metadata=a.meta, timeout=30).messages))
        return call

    # Replies to a root of their own, not the busy thread: the figures above stay as measured.
    side_root = _send(client, a, mixed, "side thread").id

    def reply(i: int) -> None:
        _send(client, b, mixed, f"measured reply {i}", side_root)

    settle()  # statistics for the rows just written (chat_bench.database.analyze)
    fns = dict(zip(CALLS, (get_thread, get_messages(mixed, False), get_messages(mixed, True),
                           get_messages(plain, False), reply), strict=True))
    samples: dict[str, list[float]] = {name: [] for name in CALLS}
    progress(f"threads: {calls} sequential calls of each of {len(CALLS)} calls, alternating ...")
    for i in range(WARMUP):
        for fn in fns.values():
            fn(i)
    for i in range(calls):
        for name in rounds(CALLS[:-1], CALLS[-1], i):
            start = time.perf_counter()
            fns[name](i)
            samples[name].append(time.perf_counter() - start)
    return {"calls": calls, "messages": messages, "thread_replies": int(reply_count),
            "roots": len(roots), **{name: summarize(s) for name, s in samples.items()}}


async def run(ctx: Context) -> dict[str, Any]:
    client = Sequential(ctx.target.grpc, ctx.target.http)
    try:
        return await asyncio.to_thread(measure, client, ctx.target.jwt_secret,
                                       ctx.settings["thread_messages"],
                                       ctx.settings["thread_calls"], ctx.progress,
                                       partial(analyze, ctx.target.db_source))
    finally:
        client.close()


def _mean(figures: Mapping[str, Any], name: str) -> Any:
    return (figures.get(name) or {}).get("mean_ms")


def targets(figures: Mapping[str, Any]) -> list[Check]:
    return [
        check("threads: GetThread(50) mean", _mean(figures, "GetThread"),
              f"<= {THREAD_TARGET_MS:g} ms", at_most(THREAD_TARGET_MS), "ms"),
        check("threads: GetMessages(50) root-level, replies mixed in, mean",
              _mean(figures, "GetMessages root-level"), f"<= {TIMELINE_TARGET_MS:g} ms",
              at_most(TIMELINE_TARGET_MS), "ms"),
        check("threads: GetMessages(50) root-level, replies mixed in / no threads",
              _ratio(figures, "GetMessages root-level", "GetMessages no threads"),
              f"<= {MIXED_FACTOR:g}x", at_most(MIXED_FACTOR), "x"),
    ]


def _ratio(figures: Mapping[str, Any], name: str, base: str) -> float | None:
    value, reference = _mean(figures, name), _mean(figures, base)
    return value / reference if value is not None and reference else None


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = [[name, *(fmt((figures.get(name) or {}).get(k))
                     for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))] for name in CALLS]
    return [f"Threads: two conversations of {figures['messages']} messages each, one with "
            f"{figures['roots']} root-level messages and the rest replies ("
            f"{figures['thread_replies']} in the busy thread), one without threads; "
            f"{figures['calls']} sequential gRPC calls of each, alternating, pages of {PAGE}, ms:",
            "", *table(["call", "p50", "p95", "p99", "mean"], rows)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--thread-calls", type=int, help="sequential calls of each (500)")
    group.add_argument("--thread-messages", type=int,
                       help="messages in each of the two conversations (1200)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.thread_calls if args.thread_calls is not None else (40 if args.quick else 500)
    messages = args.thread_messages if args.thread_messages is not None else (
        400 if args.quick else 1200)
    return {"thread_calls": calls, "thread_messages": messages}


PHASE = Phase(
    name="threads", about="GetThread(50) and GetMessages(50) with thread replies mixed in",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
