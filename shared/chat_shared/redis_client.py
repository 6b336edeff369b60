"""Redis connections from REDIS_ADDR, with short timeouts so a Redis outage degrades fast."""

from __future__ import annotations

import redis.asyncio as aioredis

from chat_shared.config import RedisSettings, parse_host_port


def create_redis(settings: RedisSettings) -> aioredis.Redis:
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
        health_check_interval=30,
        decode_responses=True,
    )
