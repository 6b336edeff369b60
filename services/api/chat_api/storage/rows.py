"""Row -> record conversion shared by the repositories."""

from __future__ import annotations

from typing import Any

from chat_api.models import MessageRecord


def message_from(row: Any, prefix: str = "") -> MessageRecord:
    m = row._mapping
    return MessageRecord(
        id=str(m[f"{prefix}id"]),
        conversation_id=str(m[f"{prefix}conversation_id"]),
        sender_id=m[f"{prefix}sender_id"],
        content=m[f"{prefix}content"],
        seq=int(m[f"{prefix}seq"]),
        created_at=m[f"{prefix}created_at"],
    )
