"""The Redis fast path in front of the database's idempotency constraint.

A send first reserves (sender, key) with SET NX and a TTL. The winner runs the transaction and
then stores what it created; a later retry finds that record in Redis and is answered without
touching PostgreSQL. Everything else (a reservation still in flight, Redis down, flushed or
evicted) falls through to the database, whose unique constraint is the truth: whatever Redis
does, a key never produces two messages.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import Counter

from chat_shared.observability.logging import get_logger
from chat_shared.observability.tracing import tracer

log = get_logger(__name__)
_tracer = tracer(__name__)

IDEMPOTENCY_HITS = Counter(
    "idempotency_hits_total", "Duplicate sends answered from a stored key", ["source"]
)
IDEMPOTENCY_DEGRADED = Counter(
    "idempotency_degraded_total",
    "Sends that skipped the Redis fast path because Redis failed (the database still decided)",
)

# Deletes the reservation only when it is still ours (not a record, not someone else's).
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0"
)

# After a Redis failure, skip it for this long instead of paying its timeout on every send.
_BACKOFF_SECONDS = 1.0


def content_digest(conversation_id: str, content: str) -> str:
    return hashlib.sha256(f"{conversation_id}\x00{content}".encode()).hexdigest()[:32]


class Outcome(enum.Enum):
    RESERVED = "reserved"   # we own the key: run the transaction
    EXISTING = "existing"   # a committed send already used the key
    PENDING = "pending"     # another send with the key is in flight
    SKIPPED = "skipped"     # Redis unavailable: the database decides alone


@dataclass(frozen=True, slots=True)
class StoredSend:
    message_id: str
    conversation_id: str
    seq: int
    digest: str


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: Outcome
    token: str = ""
    stored: StoredSend | None = None


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, ttl_seconds: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_seconds * 1000)
        self._skip_until = 0.0
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def _key(sender_id: str, key: str) -> str:
        # Length-prefix the sender so no (sender, key) pair can collide with another.
        return f"idem:{len(sender_id)}:{sender_id}:{key}"

    def _failed(self, action: str, exc: Exception) -> None:
        self._skip_until = time.monotonic() + _BACKOFF_SECONDS
        IDEMPOTENCY_DEGRADED.inc()
        log.warning("idempotency_degraded", action=action, error=type(exc).__name__)

    async def reserve(self, sender_id: str, key: str) -> Reservation:
        if time.monotonic() < self._skip_until:
            IDEMPOTENCY_DEGRADED.inc()
            return Reservation(Outcome.SKIPPED)
        token = "pending:" + secrets.token_hex(8)
        rkey = self._key(sender_id, key)
        try:
            with _tracer.start_as_current_span("redis.idempotency_reserve"):
                if await self._redis.set(rkey, token, nx=True, px=self._ttl_ms):
                    return Reservation(Outcome.RESERVED, token=token)
                raw = await self._redis.get(rkey)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed("reserve", exc)
            return Reservation(Outcome.SKIPPED)
        # The client decodes responses, but typing cannot know that.
        value = raw.decode() if isinstance(raw, bytes) else raw
        if value is None or value.startswith("pending:"):
            return Reservation(Outcome.PENDING)
        try:
            data = json.loads(value)
            stored = StoredSend(data["m"], data["c"], int(data["q"]), data["h"])
        except (ValueError, KeyError, TypeError):
            return Reservation(Outcome.PENDING)  # unreadable: let the database decide
        return Reservation(Outcome.EXISTING, stored=stored)

    async def complete(self, sender_id: str, key: str, stored: StoredSend) -> None:
        """Replaces the reservation with the committed send (best effort)."""
        value = json.dumps({"m": stored.message_id, "c": stored.conversation_id,
                            "q": stored.seq, "h": stored.digest}, separators=(",", ":"))
        try:
            with _tracer.start_as_current_span("redis.idempotency_complete"):
                await self._redis.set(self._key(sender_id, key), value, px=self._ttl_ms)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed("complete", exc)

    async def release(self, sender_id: str, key: str, token: str) -> None:
        """Drops our reservation after a failed send so a retry can proceed at once."""
        try:
            with _tracer.start_as_current_span("redis.idempotency_release"):
                await self._release(keys=[self._key(sender_id, key)], args=[token])
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed("release", exc)
