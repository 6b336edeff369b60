"""chat_shared.redis_client against a real redis-server that this test stops and kills.

Why: a call through the shared client must end within REDIS_TIMEOUT whatever Redis does, with no
retries hidden in the client (redis-py's defaults retry a failed call 10 times with backoff,
which held calls for seconds). A stalled server (SIGSTOP) costs one REDIS_TIMEOUT; a dead one
(SIGKILL) costs next to nothing; the client recovers when the server is back.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.exceptions

from chat_devtools.local_redis import LocalRedis
from chat_shared.config import RedisSettings
from chat_shared.redis_client import create_redis

TIMEOUT = 0.3  # REDIS_TIMEOUT for these tests
SLACK = 0.7    # seconds a busy machine may add


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.signal(signal.SIGCONT)
            server.process.stop()  # also when killed: collects it and closes its log
        server.cleanup()


@pytest.fixture
async def client(own_redis: LocalRedis) -> AsyncIterator[object]:
    client = create_redis(RedisSettings(_env_file=None, redis_addr=own_redis.addr,  # type: ignore[call-arg]
                                        redis_timeout=TIMEOUT))
    yield client
    await client.aclose()


async def _seconds_to_fail(client) -> float:
    started = time.monotonic()
    with pytest.raises(redis.exceptions.RedisError):
        await client.ping()
    return time.monotonic() - started


async def test_a_stalled_redis_costs_one_timeout_and_the_client_recovers(client, own_redis):
    assert await client.ping()
    own_redis.process.signal(signal.SIGSTOP)
    try:
        took = await _seconds_to_fail(client)
    finally:
        own_redis.process.signal(signal.SIGCONT)
    assert TIMEOUT * 0.9 <= took < TIMEOUT + SLACK
    assert await client.ping()


async def test_a_dead_redis_fails_a_call_at_once(client, own_redis):
    assert await client.ping()
    own_redis.process.kill()
    own_redis.process.wait(10)
    assert await _seconds_to_fail(client) < SLACK  # refused: no timeout to wait out
    assert await _seconds_to_fail(client) < SLACK  # and again: no backoff either
