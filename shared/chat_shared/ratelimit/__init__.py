"""Rate limits shared by every replica: GCRA in Redis, with a local fallback.

Public face::

    limiter = build_limiter(settings)           # None when RATE_LIMIT_ENABLED is false
    decision = await limiter.check("send", tenant, user, limits)
    if not decision.allowed: ...                # decision.retry_after seconds

``policy_from_settings`` gives the default limits by class, ``tenant_overrides`` applies a
tenant's registry values and ``headers`` renders the IETF RateLimit headers of a decision. The
typing-notice interval (``RATE_LIMIT_TYPING_INTERVAL``) is a setting of this section that the
WebSocket gateway's typing relay enforces itself (atomically with the publish).
docs/rate-limits.md describes the whole.
"""

from __future__ import annotations

from chat_shared.config import RedisSettings
from chat_shared.ratelimit._cluster import ClusterGcra
from chat_shared.ratelimit._gcra import Decision, Limit, LocalLimiter, ceil_seconds, gcra_step
from chat_shared.ratelimit._headers import headers, policy_header, state_header
from chat_shared.ratelimit._limiter import (
    ANONYMOUS,
    CLASSES,
    LIMIT_NAMES,
    ClassLimits,
    RateLimiter,
    policy_from_settings,
    registry_lookup,
    tenant_overrides,
)
from chat_shared.ratelimit._redis import RedisGcra, RedisUnavailable
from chat_shared.ratelimit.settings import RateLimitSettings

__all__ = [
    "ANONYMOUS", "CLASSES", "LIMIT_NAMES", "ClassLimits", "ClusterGcra", "Decision", "Limit",
    "LocalLimiter", "RateLimitSettings", "RateLimiter", "RedisGcra", "RedisUnavailable",
    "build_limiter", "ceil_seconds", "gcra_step", "headers", "policy_from_settings",
    "policy_header", "registry_lookup", "state_header", "tenant_overrides",
]


def build_limiter(settings: RateLimitSettings, redis_settings: RedisSettings | None = None
                  ) -> RateLimiter | None:
    """The process's limiter: shared through REDIS_ADDR when set (routed by slot on a Redis
    Cluster), else this process alone.

    Nothing connects here: the first check (or ``RateLimiter.connect``) does.
    """
    if not settings.rate_limit_enabled:
        return None
    redis: RedisGcra | ClusterGcra | None = None
    if redis_settings is not None and redis_settings.redis_addr:
        if redis_settings.cluster_mode:
            redis = ClusterGcra(redis_settings.redis_nodes,
                                timeout=settings.rate_limit_redis_timeout,
                                password=redis_settings.redis_password)
        else:
            host, port = redis_settings.redis_nodes[0]
            redis = RedisGcra(host, port, timeout=settings.rate_limit_redis_timeout,
                              password=redis_settings.redis_password,
                              db=redis_settings.redis_db)
    return RateLimiter(policy_from_settings(settings), redis)
