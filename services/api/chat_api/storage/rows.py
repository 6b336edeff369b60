"""Row -> record conversions shared by the repositories."""

from __future__ import annotations

from typing import Any

from chat_api.models import MessageRecord


def message_from(row: tuple[Any, ...], offset: int = 0) -> MessageRecord:
    """A message from the columns id, conversation_id, seq, sender_id, content, created_at
    starting at ``offset`` in ``row``."""
    return MessageRecord(
        id=str(row[offset]),
        conversation_id=str(row[offset + 1]),
        seq=int(row[offset + 2]),
        sender_id=row[offset + 3],
        content=row[offset + 4],
        created_at=row[offset + 5],
    )
