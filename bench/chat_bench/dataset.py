"""A realistic data set, loaded through the API itself (works against any stack, no SQL), over
the run's transport (gRPC or HTTP/JSON).

Users ``user-0000...``; conversations of 2 to 50 members with a few messages each; the user
``bench-user`` is in exactly 50 conversations (GetConversations(50) returns a full page), and
one of them (``read_conversation``) holds enough messages from ``bench-peer`` that every
measured MarkAsRead moves bench-user's position forward (the path that writes an event).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chat_bench.clients import AsyncApi, User

BENCH_USER = "bench-user"
BENCH_PEER = "bench-peer"
BENCH_CONVERSATIONS = 50


@dataclass
class Dataset:
    bench_conversations: list[str]
    read_conversation: str
    read_messages: int
    marked: int = 0  # bench-user's read position in read_conversation (MarkAsRead moves it)
    # (conversation id, member ids) of every conversation, for the throughput phase.
    conversations: list[tuple[str, list[str]]] = field(default_factory=list)
    users: int = 0
    messages: int = 0


def settings(quick: bool) -> dict[str, Any]:
    """The data set's size (recorded in the result's settings): smaller for a smoke run."""
    return {"users": 200 if quick else 1000, "other_conversations": 20 if quick else 250,
            "messages_per_conversation": 3 if quick else 8}


async def _bounded(jobs: list[Callable[[], Awaitable[object]]], limit: int) -> list[object]:
    sem = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[object]]) -> object:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(run(j) for j in jobs)))


async def load_dataset(api: AsyncApi, secret: str, *, users: int, other_conversations: int,
               messages_per_conversation: int, read_messages: int,
               progress: Callable[[str], None], seed: int = 8) -> Dataset:
    rng = random.Random(seed)
    names = [f"user-{i:04d}" for i in range(users)]
    cache: dict[str, User] = {}

    def user(name: str) -> User:
        if name not in cache:
            cache[name] = User(name, secret)
        return cache[name]

    def members(first: str) -> list[str]:
        size = rng.randint(2, 50)
        return [first, *rng.sample(names, size - 1)]

    plans = [members(BENCH_USER) for _ in range(BENCH_CONVERSATIONS)]
    plans[0][1] = BENCH_PEER  # the read conversation: bench-peer writes, bench-user reads
    plans += [members(rng.choice(names)) for _ in range(other_conversations)]
    progress(f"loading data: {len(plans)} conversations of 2-50 members "
             f"({BENCH_USER} in {BENCH_CONVERSATIONS}) ...")

    def create(i: int, m: list[str]) -> Callable[[], Awaitable[object]]:
        return lambda: api.create_conversation(user(m[0]), m[1:], f"bench {i}")

    ids = [str(c) for c in await _bounded([create(i, m) for i, m in enumerate(plans)], 16)]
    conversations = list(zip(ids, plans, strict=True))

    def send(sender: str, conv: str, content: str) -> Callable[[], Awaitable[object]]:
        return lambda: api.send(user(sender), conv, content)

    sends = [send(BENCH_PEER, ids[0], f"unread {i}") for i in range(read_messages)]
    for conv, m in conversations[1:]:
        for j in range(rng.randint(1, 2 * messages_per_conversation - 1)):
            sends.append(send(rng.choice(m), conv, f"hello {j}"))
    progress(f"loading data: {len(sends)} messages ...")
    await _bounded(sends, 32)
    return Dataset(bench_conversations=ids[:BENCH_CONVERSATIONS], read_conversation=ids[0],
                   read_messages=read_messages, conversations=conversations,
                   users=len({n for m in plans for n in m}), messages=len(sends))
