"""Attachments: upload rows (CreateUpload), the checks before a send, downloads, the sweeper.

Attaching itself is part of the send statement (``storage.messages``): a message and its
attachments commit together. Every statement here runs for one tenant (row-level security),
and a caller who is not a member of the conversation gets the same empty answer as for an id
that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chat_api.models import UploadRecord
from chat_api.storage.changes import change_ctes, locked
from chat_api.storage.message_changes import message_payload
from chat_shared.db import Database
from chat_shared.events import MESSAGE_UPDATED

_CREATE = """
    INSERT INTO attachments (tenant_id, id, conversation_id, uploader, filename, content_type,
                             size_bytes, object_key)
    SELECT %(tenant)s, %(id)s, m.conversation_id, %(user_id)s, %(filename)s, %(content_type)s,
           %(size_bytes)s, %(object_key)s
    FROM conversation_members m
    WHERE m.tenant_id = %(tenant)s AND m.conversation_id = %(conversation_id)s
      AND m.user_id = %(user_id)s
    RETURNING created_at
    """

_COLUMNS = """a.id::text, a.conversation_id::text, a.uploader, a.filename, a.content_type,
              a.size_bytes, a.object_key, a.status <> 'uploaded', a.thumbnail_key"""
"""``attached`` is "no longer free": attached to a message, or erased with its message."""

# The uploads a send lists, with the idempotency key of the message each is attached to (a
# retried send lists the same uploads: it must get ALREADY_EXISTS, not FAILED_PRECONDITION).
_FOR_SEND = f"""
    SELECT {_COLUMNS}, mm.idempotency_key
    FROM attachments a
    LEFT JOIN messages mm ON mm.tenant_id = a.tenant_id AND mm.id = a.message_id
                         AND mm.sender_id = %(user_id)s
    WHERE a.tenant_id = %(tenant)s AND a.id = ANY(CAST(%(ids)s AS uuid[]))
    """

# A download: only for a member of the attachment's conversation, and an upload not yet
# attached only for its uploader; an erased one (its message deleted) for nobody.
_FOR_DOWNLOAD = f"""
    SELECT {_COLUMNS}, NULL
    FROM attachments a
    JOIN conversation_members m ON m.tenant_id = a.tenant_id
                               AND m.conversation_id = a.conversation_id
                               AND m.user_id = %(user_id)s
    WHERE a.tenant_id = %(tenant)s AND a.id = %(id)s
      AND (a.status = 'attached' OR (a.status = 'uploaded' AND a.uploader = %(user_id)s))
    """

# The sweeper: uploads never attached, older than the cut-off, claimed with SKIP LOCKED so
# replicas sweeping at once take different rows, and deleted in the same statement. The
# objects are deleted from the store after the rows (an object without a row is harmless and
# a later sweep of the store's listing is not needed: a failed store delete is logged, and the
# object stays unreachable, since no row names it).
_SWEEP = """
    WITH claimed AS (
        SELECT a.tenant_id, a.id FROM attachments a
        WHERE a.tenant_id = %(tenant)s AND a.status = 'uploaded'
          AND a.created_at < %(before)s
        ORDER BY a.created_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM attachments a USING claimed
    WHERE a.tenant_id = claimed.tenant_id AND a.id = claimed.id
    RETURNING a.object_key, a.size_bytes
    """

# The queued deletions of a deleted message's files: rows DeleteMessage turned ``erased``,
# claimed and deleted like orphans (no age: the message is gone), their objects deleted after.
_SWEEP_ERASED = """
    WITH claimed AS (
        SELECT a.tenant_id, a.id FROM attachments a
        WHERE a.tenant_id = %(tenant)s AND a.status = 'erased'
        ORDER BY a.created_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM attachments a USING claimed
    WHERE a.tenant_id = claimed.tenant_id AND a.id = claimed.id
    RETURNING a.object_key, a.thumbnail_key
    """

_TENANTS = "SELECT id FROM tenants ORDER BY id"

_OF_MESSAGE_FOR_THUMBNAILS = """
    SELECT a.id::text, a.object_key, a.size_bytes, a.content_type, a.thumbnail_key
    FROM attachments a
    WHERE a.tenant_id = %(tenant)s AND a.message_id = %(message_id)s
    ORDER BY a.position
    """

# The thumbnail and its announcement: an ordered change (``storage.changes``) like an edit,
# made by the service itself. Under the conversation's row lock, ``_THUMBNAIL_TARGET`` reads the
# attachment as it is now; when it is still attached without a thumbnail, ``_SET_THUMBNAIL``
# records the thumbnail and takes the next pos with its change-log row and a ``message.updated``
# event whose payload is the whole message, its attachments as they are after the change (the
# statement's snapshot still shows the row before the update, hence the CASEs naming the new
# values). A DeleteMessage erases attachments under the same lock, so the two never cross.
_THUMBNAIL_TARGET = """
    SELECT a.status, a.message_id::text, a.thumbnail_key IS NOT NULL
    FROM attachments a
    WHERE a.tenant_id = %(tenant)s AND a.id = %(id)s AND a.conversation_id = %(conversation_id)s
    """
_THUMBNAIL_ATTACHMENTS = """(SELECT jsonb_agg(jsonb_build_object(
        'id', a.id, 'filename', a.filename, 'content_type', a.content_type,
        'size_bytes', a.size_bytes,
        'width', CASE WHEN a.id = %(id)s THEN %(width)s ELSE coalesce(a.width, 0) END,
        'height', CASE WHEN a.id = %(id)s THEN %(height)s ELSE coalesce(a.height, 0) END,
        'thumbnail_ready', a.id = %(id)s OR a.thumbnail_key IS NOT NULL) ORDER BY a.position)
        FROM attachments a WHERE a.tenant_id = msg.tenant_id AND a.message_id = msg.id)"""
_SET_THUMBNAIL = """
    WITH conv AS (
        UPDATE conversations c SET last_pos = c.last_pos + 1
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
        RETURNING c.id, c.last_pos, c.member_ids
    ), upd AS (
        UPDATE attachments SET width = %(width)s, height = %(height)s,
                               thumbnail_key = %(thumbnail_key)s
         WHERE tenant_id = %(tenant)s AND id = %(id)s
    ), msg AS (
        SELECT m.* FROM messages m WHERE m.tenant_id = %(tenant)s AND m.id = %(message_id)s
    )""" + change_ctes(
    MESSAGE_UPDATED, source="conv, msg", pos="conv.last_pos",
    refs={"message_id": "msg.id", "user_id": "msg.sender_id"}, recipients="conv.member_ids",
    payload=message_payload("msg.deleted_at IS NOT NULL", _THUMBNAIL_ATTACHMENTS)) + """
    SELECT 1 FROM conv
    """
# A thumbnail made while its message was being deleted: recorded on the erased row, so the
# sweeper deletes it with the file (no event: the message is a tombstone without attachments).
_ERASED_THUMBNAIL = """
    UPDATE attachments SET thumbnail_key = %(thumbnail_key)s
     WHERE tenant_id = %(tenant)s AND id = %(id)s AND status = 'erased'
       AND thumbnail_key IS NULL
    """


def _upload(row: tuple[Any, ...]) -> UploadRecord:
    return UploadRecord(id=row[0], conversation_id=row[1], uploader=row[2], filename=row[3],
                        content_type=row[4], size_bytes=int(row[5]), object_key=row[6],
                        attached=bool(row[7]), thumbnail_key=row[8], attached_with_key=row[9])


class AttachmentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, upload_id: str, conversation_id: str, user_id: str,
                     filename: str, content_type: str, size_bytes: int, object_key: str
                     ) -> datetime | None:
        """Records an upload; None when the user is not a member of the conversation."""
        row = await self._db.fetchone("db.create_upload", _CREATE, {
            "tenant": tenant, "id": upload_id, "conversation_id": conversation_id,
            "user_id": user_id, "filename": filename, "content_type": content_type,
            "size_bytes": size_bytes, "object_key": object_key}, tenant=tenant)
        return row[0] if row is not None else None

    async def for_send(self, tenant: str, user_id: str, ids: list[str]) -> list[UploadRecord]:
        rows = await self._db.fetchall("db.uploads_for_send", _FOR_SEND,
                                       {"tenant": tenant, "user_id": user_id, "ids": ids},
                                       tenant=tenant)
        return [_upload(r) for r in rows]

    async def for_download(self, tenant: str, user_id: str, attachment_id: str
                           ) -> UploadRecord | None:
        row = await self._db.fetchone("db.attachment_for_download", _FOR_DOWNLOAD,
                                      {"tenant": tenant, "user_id": user_id,
                                       "id": attachment_id}, tenant=tenant)
        return _upload(row) if row is not None else None

    async def of_message(self, tenant: str, message_id: str
                         ) -> list[tuple[str, str, int, str, str | None]]:
        """(id, object key, size, content type, thumbnail key) of a message's attachments."""
        rows = await self._db.fetchall("db.attachments_of_message", _OF_MESSAGE_FOR_THUMBNAILS,
                                       {"tenant": tenant, "message_id": message_id},
                                       tenant=tenant)
        return [(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]

    async def set_thumbnail(self, tenant: str, conversation_id: str, attachment_id: str,
                            width: int, height: int, thumbnail_key: str) -> bool:
        """Records the thumbnail and announces it (``message.updated`` at a new pos); False
        when there was nothing to announce: the attachment is gone, already has one, or its
        message was deleted (then the thumbnail is queued for deletion with the file)."""
        params = {"tenant": tenant, "conversation_id": conversation_id, "id": attachment_id,
                  "width": width, "height": height, "thumbnail_key": thumbnail_key}
        async with locked(self._db, "db.set_thumbnail", tenant, conversation_id, None,
                          (_THUMBNAIL_TARGET, params)) as (conn, conv, row):
            if conv is None or row is None:
                return False
            status, message_id, has_thumbnail = row
            if status == "erased":
                await conn.execute(_ERASED_THUMBNAIL, params)
                return False
            if status != "attached" or has_thumbnail:
                return False
            await conn.execute(_SET_THUMBNAIL, {**params, "message_id": message_id})
            return True

    async def tenants(self) -> list[str]:
        rows = await self._db.fetchall("db.attachment_tenants", _TENANTS)
        return [r[0] for r in rows]

    async def sweep(self, tenant: str, before: datetime, limit: int) -> list[tuple[str, int]]:
        """Deletes up to ``limit`` of the tenant's uploads never attached and created before
        ``before``; their (object key, size)."""
        rows = await self._db.fetchall("db.sweep_uploads", _SWEEP,
                                       {"tenant": tenant, "before": before, "limit": limit},
                                       tenant=tenant)
        return [(r[0], int(r[1])) for r in rows]

    async def sweep_erased(self, tenant: str, limit: int) -> list[str]:
        """Deletes up to ``limit`` of the tenant's erased attachments (their message was
        deleted); the store keys to delete: files and thumbnails."""
        rows = await self._db.fetchall("db.sweep_erased", _SWEEP_ERASED,
                                       {"tenant": tenant, "limit": limit}, tenant=tenant)
        return [key for row in rows for key in row if key]
