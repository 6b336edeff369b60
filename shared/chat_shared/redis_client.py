"""Redis connections from REDIS_ADDR: every call bounded by REDIS_TIMEOUT, no hidden retries.

redis-py's own defaults would not bound a call: it retries a call that failed to connect or
timed out 10 times with exponential backoff (up to 1 s apart) before it raises, so a dead Redis
held a call for seconds and a stalled one for as long as the stall. Here a call is one attempt:

- ``socket_connect_timeout`` and ``socket_timeout`` (REDIS_TIMEOUT) bound connecting and each
  answer;
- ``retry=Retry(NoBackoff(), 0)`` and no ``retry_on_error``: a failure is raised at once, for
  the caller to handle (the relay and the gateway back off with ``chat_shared.backoff``);
- the pool never waits: redis.asyncio's pool raises MaxConnectionsError when all
  ``max_connections`` are in use, so a pool wait cannot outlast the bounds above either.

(The relay and the gateway build every client here; the relay sizes its pool for its workers.)
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chat_shared.config import RedisSettings, parse_host_port

__all__ = ["MAX_CONNECTIONS", "create_redis"]

MAX_CONNECTIONS = 16
"""Connections per client: the gateway needs one for its probe and one for its reader."""


def create_redis(settings: RedisSettings, *, max_connections: int = MAX_CONNECTIONS
                 ) -> aioredis.Redis:
    """A client for REDIS_ADDR whose every call ends within REDIS_TIMEOUT (module docstring).

    Raises:
        ValueError: REDIS_ADDR is not set.
    """
    if not settings.redis_addr:
        raise ValueError("REDIS_ADDR is not set")
    host, port = parse_host_port(settings.redis_addr, default_host="127.0.0.1")
    return aioredis.Redis(
        host=host,
        port=port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        max_connections=max_connections,
        health_check_interval=30,
        decode_responses=True,
    )
