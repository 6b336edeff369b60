"""The typing-notice limit: one notice per user and conversation every few seconds.

A client shows "alice is typing" for a few seconds after each notice, so more than one notice
per RATE_LIMIT_TYPING_INTERVAL from a user in a conversation carries nothing new and only costs
fan-out. The WebSocket gateway asks ``TypingLimit.allow`` before it forwards a ``typing``
frame and drops the frame (without an error: a client that types fast is not misbehaving)
when it says no.
"""

from __future__ import annotations

from chat_shared.ratelimit._gcra import Limit
from chat_shared.ratelimit._limiter import ClassLimits, RateLimiter

__all__ = ["TYPING", "TypingLimit"]

TYPING = "typing"


class TypingLimit:
    def __init__(self, limiter: RateLimiter, interval: float) -> None:
        """
        Args:
            interval: seconds between two notices of one user in one conversation; 0 = none.
        """
        self._limiter = limiter
        self._limits = ClassLimits(Limit(1.0 / interval if interval > 0 else 0.0, 1))

    async def allow(self, tenant: str, user: str, conversation_id: str) -> bool:
        """Whether this notice may be forwarded (and counts it when it may)."""
        decision = await self._limiter.check(TYPING, tenant, f"{user}:{conversation_id}",
                                             self._limits)
        return decision.allowed
