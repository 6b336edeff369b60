"""Row -> record conversions shared by the repositories."""

from __future__ import annotations

from typing import Any

from chat_api.models import MessageRecord

MESSAGE_COLUMNS = ("{m}.id::text, {m}.conversation_id::text, {m}.seq, {m}.sender_id, {m}.content,"
                   " {m}.created_at, {m}.thread_root_id::text, {m}.reply_count,"
                   " {m}.last_reply_at, {m}.thread_seq")
"""The columns ``message_from`` reads, for a table alias: ``MESSAGE_COLUMNS.format(m="m")``."""


def message_columns(alias: str) -> str:
    return MESSAGE_COLUMNS.format(m=alias)


def message_from(row: tuple[Any, ...], offset: int = 0) -> MessageRecord:
    """A message from the columns of ``MESSAGE_COLUMNS`` starting at ``offset`` in ``row``."""
    root = row[offset + 6]
    thread_seq = row[offset + 9]
    return MessageRecord(
        id=str(row[offset]),
        conversation_id=str(row[offset + 1]),
        seq=int(row[offset + 2]),
        sender_id=row[offset + 3],
        content=row[offset + 4],
        created_at=row[offset + 5],
        thread_root_id=str(root) if root is not None else None,
        reply_count=int(row[offset + 7]),
        last_reply_at=row[offset + 8],
        thread_seq=int(thread_seq) if thread_seq is not None else None,
    )
