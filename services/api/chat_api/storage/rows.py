"""Row -> record conversions shared by the repositories."""

from __future__ import annotations

from typing import Any

from chat_api.models import AttachmentRecord, MessageRecord

ATTACHMENTS_JSON = """(SELECT coalesce(jsonb_agg(jsonb_build_object(
        'id', a.id, 'filename', a.filename, 'content_type', a.content_type,
        'size_bytes', a.size_bytes, 'width', coalesce(a.width, 0),
        'height', coalesce(a.height, 0), 'thumbnail_ready', a.thumbnail_key IS NOT NULL)
        ORDER BY a.position), '[]'::jsonb)
    FROM attachments a WHERE a.tenant_id = {tenant} AND a.message_id = {message})"""
"""A message's attachments as one JSON array (one probe of ix_attachments_message)."""


def attachments_from(value: Any) -> tuple[AttachmentRecord, ...]:
    if not value:
        return ()
    return tuple(AttachmentRecord(str(a["id"]), a["filename"], a["content_type"],
                                  int(a["size_bytes"]), int(a["width"]), int(a["height"]),
                                  bool(a["thumbnail_ready"])) for a in value)


def message_from(row: tuple[Any, ...], offset: int = 0, *, attachments: bool = False
                 ) -> MessageRecord:
    """A message from the columns id, conversation_id, seq, sender_id, content, created_at
    (and with ``attachments`` the attachments' JSON) starting at ``offset`` in ``row``."""
    return MessageRecord(
        id=str(row[offset]),
        conversation_id=str(row[offset + 1]),
        seq=int(row[offset + 2]),
        sender_id=row[offset + 3],
        content=row[offset + 4],
        created_at=row[offset + 5],
        attachments=attachments_from(row[offset + 6]) if attachments else (),
    )
