"""The gateway's typing relay (chat_ws_gateway.typing_indicators) against real PostgreSQL and
Redis.

Why: a typing signal must reach the other members through Redis pub/sub (never the sender,
never a stranger), at most once per window whichever process sends it, and a Redis that is
gone must cost the sender a dropped signal, not an error or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis

from chat_devtools.ports import closed_port
from chat_shared.config import DatabaseSettings, RedisSettings
from chat_shared.db import Database
from chat_shared.redis_client import create_redis
from chat_ws_gateway.history import History
from chat_ws_gateway.typing_indicators import TypingRelay
from tests.helpers import create_conversation

# Not marked redis_cluster: in-process, redis-py 8.1's RedisCluster leaves a node connection
# open after aclose() (a ResourceWarning when collected, which fails whichever test is running
# then). Typing on a cluster runs in tests/e2e/test_ws_threads_typing.py, in subprocesses.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def history(db_source: str):
    db = Database(DatabaseSettings(_env_file=None, db_source=db_source,
                                   database_role="chat_app"),
                  application_name="test-ws-typing")
    await db.open(wait=True)
    yield History(db, page_size=50)
    await db.close()


def _redis(addr: str) -> aioredis.Redis:
    """A client as the gateway makes it (its timeouts, no hidden retries)."""
    return create_redis(RedisSettings(_env_file=None, redis_addr=addr, redis_timeout=1.0))


class Received:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, list[str]]] = []

    def __call__(self, tenant: str, cid: str, sender: str, recipients: list[str],
                 frame: str) -> int:
        self.calls.append((tenant, cid, sender, recipients))
        return len(recipients)


@contextlib.asynccontextmanager
async def relay(redis_addr: str, history: History, received: Received, interval: float = 3.0):
    client, subscriber = _redis(redis_addr), _redis(redis_addr)
    typing = TypingRelay(client, subscriber, history, received, interval=interval,
                         cache_ttl=2.0)
    task = asyncio.get_running_loop().create_task(typing.run(retry_delay=0.1))
    try:
        await asyncio.wait_for(typing.subscribed.wait(), 10)
        yield typing
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        await subscriber.aclose()


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_members_signal_reaches_the_other_members_once_per_window(
        stub, history, redis_addr) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], "trio")
    received = Received()
    async with relay(redis_addr, history, received) as a, \
            relay(redis_addr, history, Received()) as b:
        assert await a.signal("default", "alice", conv.id) == "published"
        await _until(lambda: received.calls, "the signal")
        assert received.calls == [("default", conv.id, "alice", ["bob", "carol"])]
        # Again, from this process and from another one: both inside the window.
        assert await a.signal("default", "alice", conv.id) == "throttled"
        assert await b.signal("default", "alice", conv.id) == "throttled"
        # Another member has a window of their own.
        assert await b.signal("default", "bob", conv.id) == "published"
        await _until(lambda: len(received.calls) == 2, "bob's signal")
        assert received.calls[1][2:] == ("bob", ["alice", "carol"])


async def test_a_window_ends(stub, history, redis_addr) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    async with relay(redis_addr, history, Received(), interval=0.2) as typing:
        assert await typing.signal("default", "alice", conv.id) == "published"
        outcomes = []
        for _ in range(200):  # bounded: the window is 0.2 s
            outcomes.append(await typing.signal("default", "alice", conv.id))
            if outcomes[-1] == "published":
                break
            await asyncio.sleep(0.02)
        assert outcomes[0] == "throttled" and outcomes[-1] == "published", outcomes


async def test_an_interval_of_0_publishes_every_signal(stub, history, redis_addr) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    received = Received()
    async with relay(redis_addr, history, received, interval=0) as typing:
        outcomes = [await typing.signal("default", "alice", conv.id) for _ in range(3)]
        assert outcomes == ["published"] * 3
        await _until(lambda: len(received.calls) == 3, "three signals")


async def test_a_stranger_or_another_tenant_publishes_nothing(stub, history, redis_addr) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    received = Received()
    async with relay(redis_addr, history, received) as typing:
        assert await typing.signal("default", "mallory", conv.id) == "not_member"
        assert await typing.signal("other-tenant", "alice", conv.id) == "not_member"
        # A later signal arrives alone: the refused ones were never published.
        assert await typing.signal("default", "alice", conv.id) == "published"
        await _until(lambda: received.calls, "alice's signal")
        assert [c[2] for c in received.calls] == ["alice"]


async def test_without_redis_a_signal_is_dropped_not_raised(stub, history) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    with closed_port() as port:
        client = _redis(f"127.0.0.1:{port}")
        typing = TypingRelay(client, client, history, Received(), interval=3.0, cache_ttl=2.0)
        try:
            assert await typing.signal("default", "alice", conv.id) == "failed"
        finally:
            await client.aclose()
