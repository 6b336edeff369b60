"""The events that travel outbox -> Redis Streams -> WebSocket gateway (and outside consumers).

An event is written to the outbox in the transaction that causes it; its ``event_id`` is fixed
then, so every re-publication after a crash or retry carries the same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
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
