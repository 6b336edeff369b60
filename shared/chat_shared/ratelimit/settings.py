"""Rate-limit settings: one section that the API and the WebSocket gateway both read.

Each class of request has a rate (requests per second) and a burst (requests at once) per
user, and a ceiling for the whole tenant (all its users together). A tenant's registry entry
may set its own values (``chat-tenant set-limit ID rate_limit.send.rate 20``), which win over
these. docs/rate-limits.md says how to choose them.
"""

from __future__ import annotations

from pydantic import Field

from chat_shared.config import BaseSection

__all__ = ["RateLimitSettings"]


def _rate(default: float, what: str) -> float:
    return Field(default, ge=0, le=1_000_000,
                 description=f"{what}, requests per second (0 = no limit)")


def _burst(default: int, what: str) -> int:
    return Field(default, ge=0, le=1_000_000,
                 description=f"{what}, requests at once (the bucket's size)")


class RateLimitSettings(BaseSection):
    rate_limit_enabled: bool = Field(
        True, description="apply the rate limits (docs/rate-limits.md); false = every request "
                          "is allowed and no RateLimit headers are sent")
    rate_limit_redis_timeout_ms: int = Field(
        50, ge=1, le=5000,
        description="milliseconds a limit check waits for Redis; then it decides locally, in "
                    "the process (fail open), and Redis is left alone for a second")
    rate_limit_send_rate: float = _rate(10, "messages one user may send")
    rate_limit_send_burst: int = _burst(30, "messages one user may send")
    rate_limit_read_rate: float = _rate(50, "reads (GetMessages, GetConversations) of one user")
    rate_limit_read_burst: int = _burst(100, "reads of one user")
    rate_limit_write_other_rate: float = _rate(
        10, "other writes (CreateConversation, MarkAsRead) of one user")
    rate_limit_write_other_burst: int = _burst(30, "other writes of one user")
    rate_limit_connect_rate: float = _rate(1, "WebSocket connections one user may open")
    rate_limit_connect_burst: int = _burst(20, "WebSocket connections one user may open")
    rate_limit_anon_rate: float = _rate(
        2, "requests with missing or refused credentials from one client IP")
    rate_limit_anon_burst: int = _burst(20, "requests with refused credentials from one IP")
    rate_limit_typing_interval: float = Field(
        3.0, ge=0, le=3600,
        description="seconds between two typing notices of one user in one conversation, "
                    "across gateway replicas; the notices between are dropped. It holds "
                    "whatever RATE_LIMIT_ENABLED says (0 = no limit)")
    rate_limit_tenant_send_rate: float = _rate(1000, "messages a whole tenant may send")
    rate_limit_tenant_send_burst: int = _burst(2000, "messages a whole tenant may send")
    rate_limit_tenant_read_rate: float = _rate(5000, "reads of a whole tenant")
    rate_limit_tenant_read_burst: int = _burst(10000, "reads of a whole tenant")
    rate_limit_tenant_write_other_rate: float = _rate(1000, "other writes of a whole tenant")
    rate_limit_tenant_write_other_burst: int = _burst(2000, "other writes of a whole tenant")
    rate_limit_tenant_connect_rate: float = _rate(200, "WebSocket connections of a tenant")
    rate_limit_tenant_connect_burst: int = _burst(1000, "WebSocket connections of a tenant")

    @property
    def rate_limit_redis_timeout(self) -> float:
        """RATE_LIMIT_REDIS_TIMEOUT_MS in seconds."""
        return self.rate_limit_redis_timeout_ms / 1000.0
