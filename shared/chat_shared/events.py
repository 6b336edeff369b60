"""The events that travel outbox -> Redis Streams -> WebSocket gateway (and outside consumers).

An event is written to the outbox in the transaction that causes it; its ``event_id`` is fixed
then, so every re-publication after a crash or retry carries the same id.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MESSAGE_CREATED = "message.created"
CONVERSATION_READ = "conversation.read"
EVENT_TYPES = (MESSAGE_CREATED, CONVERSATION_READ)


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    conversation_id: str
    seq: int
    occurred_at: datetime
    recipients: list[str]
    payload: dict[str, Any] = field(default_factory=dict)


def dumps(data: Any) -> str:
    """Compact JSON, the one encoding used in the outbox and the streams."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


# --- Redis Streams layout (written by the outbox relay, read by the ws-gateway and outsiders) ---
#
# Events are appended to ``STREAM_SHARDS`` streams named ``<prefix>:<shard>`` (default prefix
# ``chat:events``, so one shard means the single stream ``chat:events:0``). A conversation
# always maps to the same shard, so all of its events are in one stream, in seq order.

DEFAULT_STREAM_PREFIX = "chat:events"

ENTRY_FIELDS = ("event_id", "type", "conversation_id", "seq", "occurred_at", "recipients",
                "payload")
"""The fields of every stream entry, all strings; recipients and payload are JSON."""


def shard_of(conversation_id: str, shards: int) -> int:
    """The stream shard of a conversation: CRC-32 of its canonical UUID text, modulo shards.

    CRC-32 is stable across processes, languages and versions (unlike Python's ``hash``), so
    any consumer can compute it: ``zlib.crc32(str(uuid).encode()) % shards``.
    """
    if shards <= 1:
        return 0
    return zlib.crc32(str(uuid.UUID(str(conversation_id))).encode("ascii")) % shards


def stream_key(conversation_id: str, shards: int, prefix: str = DEFAULT_STREAM_PREFIX) -> str:
    """The stream a conversation's events are appended to."""
    return f"{prefix}:{shard_of(conversation_id, shards)}"


def stream_keys(shards: int, prefix: str = DEFAULT_STREAM_PREFIX) -> list[str]:
    """Every stream of the layout, for consumers that read all of them."""
    return [f"{prefix}:{i}" for i in range(max(1, shards))]


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: ``2026-11-27T10:00:00.123456Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_entry(event: Event) -> dict[str, str]:
    """The stream entry of an event (field order as in ENTRY_FIELDS)."""
    return {
        "event_id": event.event_id,
        "type": event.type,
        "conversation_id": event.conversation_id,
        "seq": str(event.seq),
        "occurred_at": format_time(event.occurred_at),
        "recipients": dumps(list(event.recipients)),
        "payload": dumps(event.payload),
    }


def decode_entry(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Event:
    """An event from a stream entry's fields (str or bytes, as redis-py returns them)."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    missing = [name for name in ENTRY_FIELDS if name not in f]
    if missing:
        raise ValueError(f"stream entry lacks field(s) {missing}")
    return Event(
        event_id=f["event_id"],
        type=f["type"],
        conversation_id=f["conversation_id"],
        seq=int(f["seq"]),
        occurred_at=datetime.fromisoformat(f["occurred_at"].replace("Z", "+00:00")),
        recipients=list(json.loads(f["recipients"])),
        payload=dict(json.loads(f["payload"])),
    )
