"""The shared limiter against a real Redis: the script, the answers ahead of Redis, fail-open."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chat_shared.ratelimit import ClassLimits, Limit, LocalLimiter, RateLimiter
from tests.helpers import gcra_backend, redis_async

pytestmark = pytest.mark.redis_cluster

SLOW = Limit(0.001, 50)  # a burst of 50 and (for a test's length) no refill


def limiter(redis_addr: str, timeout: float = 0.5) -> RateLimiter:
    return RateLimiter({"send": ClassLimits(SLOW, Limit(0.001, 1000))},
                       gcra_backend(redis_addr, timeout))


async def test_redis_and_the_local_limiter_agree(redis_addr: str) -> None:
    shared = limiter(redis_addr)
    local = LocalLimiter()
    try:
        remote = [await shared.check("send", "t", "alice") for _ in range(52)]
        here = [local.check("k", SLOW) for _ in range(52)]
        assert [d.allowed for d in remote] == [d.allowed for d in here] == [True] * 50 + [False] * 2
        assert [d.remaining for d in remote[:50]] == [d.remaining for d in here[:50]]
        assert remote[50].retry_after == pytest.approx(here[50].retry_after, rel=0.01)
        assert not any(d.fail_open for d in remote)
    finally:
        await shared.close()


async def test_processes_sharing_a_budget_exceed_it_by_at_most_one_request_each(
        redis_addr: str) -> None:
    """Three limiters (as three processes) spend one user's budget of 50 at once, 20
    requests in flight each: each may let one request through on an answer that another
    spent meanwhile, never more."""
    processes = [limiter(redis_addr) for _ in range(3)]
    try:
        async def spend(lim: RateLimiter) -> int:
            allowed = 0
            for _ in range(5):
                decisions = await asyncio.gather(*(lim.check("send", "t", "bob")
                                                   for _ in range(20)))
                allowed += sum(d.allowed for d in decisions)
            return allowed

        granted = sum(await asyncio.gather(*(spend(p) for p in processes)))
        assert 50 <= granted <= 50 + len(processes)
    finally:
        for p in processes:
            await p.close()


async def test_one_process_alone_is_exact_also_with_calls_in_flight(redis_addr: str) -> None:
    lim = limiter(redis_addr)
    try:
        granted = 0
        for _ in range(10):
            decisions = await asyncio.gather(*(lim.check("send", "t", "carol")
                                               for _ in range(10)))
            granted += sum(d.allowed for d in decisions)
        assert granted == 50
    finally:
        await lim.close()


async def test_an_unreachable_redis_fails_open_to_the_same_limits() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    lim = limiter(f"127.0.0.1:{closed}", timeout=0.05)
    try:
        decisions = [await lim.check("send", "t", "dave") for _ in range(52)]
        assert all(d.fail_open for d in decisions[:51])  # the 52nd: the refusal remembered
        assert [d.allowed for d in decisions] == [True] * 50 + [False] * 2
    finally:
        await lim.close()


async def test_a_user_with_room_does_not_wait_for_redis(redis_addr: str) -> None:
    """After the first answer, a user's requests go ahead while their checks run beside them
    (one at a time here, as calls that take a moment each); all are counted in Redis."""
    lim = limiter(redis_addr)
    try:
        decisions = []
        for _ in range(10):
            decisions.append(await lim.check("send", "t", "erin"))
            await asyncio.sleep(0.01)  # the call's own work, during which the check answers
        assert [d.ahead for d in decisions] == [False] + [True] * 9
        assert [d.remaining for d in decisions] == list(range(49, 39, -1))
        r = redis_async(redis_addr)
        assert await r.exists("chat:rl:{t}:u:erin:send")
        await r.aclose()
        # All ten were counted in Redis: 40 left, so 40 more pass and the 41st does not.
        more = [await lim.check("send", "t", "erin") for _ in range(41)]
        await asyncio.sleep(0.05)
        assert sum(d.allowed for d in more) == 40
    finally:
        await lim.close()


async def test_falling_open_continues_the_shared_budget() -> None:
    """Redis dies after a user spent 40 of 50: the local limiter carries on from 10 left,
    not from a fresh burst of 50."""
    from chat_devtools.local_redis import LocalRedis

    own = LocalRedis().start()
    lim = limiter(own.addr, timeout=0.05)
    try:
        spent = [await lim.check("send", "t", "frank") for _ in range(40)]
        assert all(d.allowed and not d.fail_open for d in spent)
        own.stop()
        after = [await lim.check("send", "t", "frank") for _ in range(15)]
        assert all(d.fail_open for d in after[:11])
        assert [d.allowed for d in after] == [True] * 10 + [False] * 5
    finally:
        await lim.close()
        own.cleanup()


async def test_a_stalled_redis_is_asked_once_then_left_alone() -> None:
    """A server that accepts and never answers: the first check waits out the timeout, the
    next ones (within a second) decide locally at once without sending anything."""
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append((reader, writer))

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    lim = limiter(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout=0.05)
    try:
        decisions = [await lim.check("send", "t", "ivan") for _ in range(5)]
        assert all(d.allowed and d.fail_open for d in decisions)
        await lim.close()  # the server reads what was sent, up to the end of the stream
        [(reader, writer)] = held
        received = await asyncio.wait_for(reader.read(), 5)
        assert received.count(b"EVALSHA") == 1
    finally:
        await lim.close()
        for _, writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_replies_that_stop_coming_are_each_given_up_after_the_timeout() -> None:
    """A server that answers the first two scripts, then stalls: two requests that went
    ahead of it, sent a moment apart, each have their reply given up once overdue (one timer
    serves every reply awaited, set again for the later one), and each is counted in the
    process instead (fail open), so neither key stays waiting for an answer."""
    from prometheus_client import REGISTRY

    held: list[asyncio.StreamWriter] = []
    answer = b"*6\r\n:1\r\n:0\r\n:0\r\n:49\r\n:20000000\r\n:999\r\n"

    async def two_then_silence(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        for _ in range(2):
            await reader.readuntil(b"\r\n$1\r\n0\r\n")  # the end of one script's arguments
            writer.write(answer)

    def fail_open() -> float:
        return REGISTRY.get_sample_value(
            "chat_ratelimit_requests_total", {"class": "send", "result": "fail_open"}) or 0.0

    server = await asyncio.start_server(two_then_silence, "127.0.0.1", 0)
    lim = RateLimiter({"send": ClassLimits(SLOW)},
                      gcra_backend(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", 0.05))
    try:
        first = [await lim.check("send", "t", user) for user in ("kim", "lou")]
        assert all(d.allowed and not d.ahead and not d.fail_open for d in first)
        before = fail_open()
        ahead = [await lim.check("send", "t", "kim")]
        await asyncio.sleep(0.02)
        ahead.append(await lim.check("send", "t", "lou"))
        assert all(d.allowed and d.ahead for d in ahead)
        for _ in range(100):  # until both replies are given up (each after 0.05 s)
            if fail_open() - before >= 2:
                break
            await asyncio.sleep(0.01)
        assert fail_open() - before == 2
        # Neither key waits for a reply any more: Redis is left alone, so they decide here.
        after = [await lim.check("send", "t", user) for user in ("kim", "lou")]
        assert all(d.allowed and d.fail_open and not d.ahead for d in after)
    finally:
        await lim.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_on_a_cluster_a_failover_is_followed_by_moved_without_failing_open(
        redis_cluster) -> None:
    """After CLUSTER FAILOVER the old master answers MOVED: the limiter sends the check to the
    new master at once (no fail-open decision) and the budget carries on there."""
    from chat_shared.redis_client import key_slot

    redis_cluster.ensure_healthy()
    redis_cluster.flush()
    lim = limiter(redis_cluster.addr)
    try:
        first = await lim.check("send", "t", "moe")
        assert first.allowed and not first.fail_open
        slot = key_slot("chat:rl:{t}:u:moe:send")
        with redis_cluster.client(redis_cluster.master_nodes()[0]) as c:
            ranges = c.execute_command("CLUSTER", "SLOTS")
        port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
        master = next(n for n in redis_cluster.nodes if n.port == port)
        replica = redis_cluster.replica_of(master)
        with redis_cluster.client(replica) as c:
            c.execute_command("CLUSTER", "FAILOVER")
        for _ in range(200):
            if redis_cluster.role(replica) == "master" and redis_cluster.role(master) == "slave":
                break
            await asyncio.sleep(0.05)
        assert redis_cluster.role(replica) == "master"
        decisions = [await lim.check("send", "t", "moe") for _ in range(5)]
        assert [d.fail_open for d in decisions] == [False] * 5
        assert decisions[-1].remaining < first.remaining
    finally:
        await lim.close()
        redis_cluster.ensure_healthy()
