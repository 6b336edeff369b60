"""The changes phase: EditMessage, AddReaction, and what reactions cost GetMessages(50).

Sequential gRPC calls (the blocking stub, as the rpc phase's client), one at a time:

- EditMessage: bench-user edits its own messages of a conversation of its own, in turn.
- AddReaction: bench-user adds a new reaction each call (messages times emoji, never the same
  pair twice in a run), so every call writes a change, a log row and an event.
- GetMessages(50) on two conversations of the same size, alternating call by call: one whose
  newest 50 messages carry three reactions each, one without any. The ratio of the means is
  what aggregating reactions into the page costs.

Its conversations are its own (made at the start of each run), so the other phases' data set
is untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import grpc

from chat_bench.clients import User
from chat_bench.database import analyze
from chat_bench.dataset import BENCH_PEER, BENCH_USER
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

WARMUP = 20
MESSAGES = 60
EMOJI = ("👍", "🎉", "❤️", "😂", "😮", "😢", "🙏", "🔥", "👀", "✅")
MEAN_TARGET_MS = {"EditMessage": 1.5, "AddReaction": 1.5}
REACTIONS_FACTOR = 1.2
RPCS = ("EditMessage", "AddReaction", "GetMessages(50)", "GetMessages(50) with reactions")


def _conversation(stub: Any, me: User, title: str, messages: int) -> tuple[str, list[str]]:
    conv = stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=[BENCH_PEER], title=title), metadata=me.meta, timeout=30).conversation
    ids = [stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=conv.id, content=f"{title} {i}", idempotency_key=uuid.uuid4().hex),
        metadata=me.meta, timeout=30).message.id for i in range(messages)]
    return conv.id, ids


def measure(addr: str, secret: str, calls: int, progress: Callable[[str], None],
            settle: Callable[[], object] = lambda: None
            ) -> dict[str, Any]:
    """Blocks for the whole phase (run it in a thread)."""
    me, peer = User(BENCH_USER, secret), User(BENCH_PEER, secret)
    channel = grpc.insecure_channel(addr)
    try:
        stub: Any = chat_pb2_grpc.ChatServiceStub(channel)  # type: ignore[no-untyped-call]
        run = uuid.uuid4().hex[:8]
        progress("changes: making the phase's conversations ...")
        edit_conv, edit_ids = _conversation(stub, me, f"edits {run}", MESSAGES)
        react_conv, react_ids = _conversation(stub, me, f"reactions {run}", MESSAGES)
        plain_conv, _ = _conversation(stub, me, f"plain {run}", MESSAGES)
        busy_conv, busy_ids = _conversation(stub, me, f"reacted {run}", MESSAGES)
        for mid in busy_ids[-50:]:
            for who, emoji in ((me, EMOJI[0]), (peer, EMOJI[0]), (peer, EMOJI[1])):
                stub.AddReaction(chat_pb2.AddReactionRequest(
                    conversation_id=busy_conv, message_id=mid, emoji=emoji),
                    metadata=who.meta, timeout=30)

        settle()  # statistics for the rows just written (chat_bench.database.analyze)

        def edit(i: int) -> None:
            stub.EditMessage(chat_pb2.EditMessageRequest(
                conversation_id=edit_conv, message_id=edit_ids[i % MESSAGES],
                content=f"edited {i}"), metadata=me.meta, timeout=30)

        pairs = [(m, e) for e in EMOJI for m in react_ids]

        def react(i: int) -> None:
            mid, emoji = pairs[i % len(pairs)]
            resp = stub.AddReaction(chat_pb2.AddReactionRequest(
                conversation_id=react_conv, message_id=mid, emoji=emoji),
                metadata=me.meta, timeout=30)
            if not any(r.emoji == emoji and r.reacted_by_me for r in resp.message.reactions):
                raise RuntimeError("AddReaction answered without the reaction")

        def page(conv: str, want_reactions: bool) -> Callable[[int], None]:
            def call(_: int) -> None:
                resp = stub.GetMessages(chat_pb2.GetMessagesRequest(
                    conversation_id=conv, limit=50), metadata=me.meta, timeout=30)
                if len(resp.messages) != 50 or \
                        all(bool(m.reactions) for m in resp.messages) != want_reactions:
                    raise RuntimeError("GetMessages(50) answered an unexpected page")
            return call

        out: dict[str, Any] = {"calls": calls}
        reacting = min(calls, len(pairs) - WARMUP)
        measured: list[tuple[str, Callable[[int], None], int]] = [
            ("EditMessage", edit, calls), ("AddReaction", react, reacting)]
        for name, change, n in measured:
            progress(f"changes: {name}, {n} sequential calls ...")
            for i in range(WARMUP):
                change(i)
            samples = []
            for i in range(WARMUP, WARMUP + n):
                start = time.perf_counter()
                change(i)
                samples.append(time.perf_counter() - start)
            out[name] = summarize(samples)
        progress(f"changes: GetMessages(50) with and without reactions, {calls} calls each ...")
        plain, busy = page(plain_conv, False), page(busy_conv, True)
        timed: dict[str, list[float]] = {RPCS[2]: [], RPCS[3]: []}
        for i in range(WARMUP + calls):
            for name, fn in ((RPCS[2], plain), (RPCS[3], busy)):
                start = time.perf_counter()
                fn(i)
                if i >= WARMUP:
                    timed[name].append(time.perf_counter() - start)
        for name, samples in timed.items():
            out[name] = summarize(samples)
        return out
    finally:
        channel.close()


async def run(ctx: Context) -> dict[str, Any]:
    await ctx.dataset()  # bench-user and bench-peer exist in their tenant from here on
    return await asyncio.to_thread(measure, ctx.target.grpc, ctx.target.jwt_secret,
                                   ctx.settings["change_calls"], ctx.progress,
                                   partial(analyze, ctx.target.db_source))


def _mean(figures: Mapping[str, Any], rpc: str) -> Any:
    return (figures.get(rpc) or {}).get("mean_ms")


def targets(figures: Mapping[str, Any]) -> list[Check]:
    out = [check(f"{rpc} mean (gRPC always)", _mean(figures, rpc), f"<= {limit:g} ms",
                 at_most(limit), "ms") for rpc, limit in MEAN_TARGET_MS.items()]
    plain, busy = _mean(figures, RPCS[2]), _mean(figures, RPCS[3])
    ratio = busy / plain if plain and busy is not None else None
    out.append(check("GetMessages(50) with reactions / without", ratio,
                     f"<= {REACTIONS_FACTOR:g}x", at_most(REACTIONS_FACTOR), "x"))
    return out


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = [[rpc, *(fmt((figures.get(rpc) or {}).get(k))
                    for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))] for rpc in RPCS]
    return [f"Changes to messages, {figures.get('calls')} sequential gRPC calls each "
            "(AddReaction: at most one per message and emoji), ms:", "",
            *table(["RPC", "p50", "p95", "p99", "mean"], rows)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--change-calls", type=int,
                       help="sequential calls per measured RPC of the changes phase (500)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.change_calls if args.change_calls is not None else (40 if args.quick else 500)
    return {"change_calls": calls}


PHASE = Phase(
    name="changes", about="EditMessage, AddReaction, GetMessages(50) with reactions (gRPC)",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
