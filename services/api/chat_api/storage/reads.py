"""Read positions: MarkAsRead moves a member's last_read_seq forward and records an event."""

from __future__ import annotations

from chat_api.models import ReadPosition
from chat_shared.db import Database
from chat_shared.events import CONVERSATION_READ, payload_sql

# The event's payload as the event contract describes it (built and checked at import).
_CONVERSATION_READ_PAYLOAD = payload_sql(CONVERSATION_READ, {
    "conversation_id": "t.conversation_id", "user_id": "t.user_id",
    "last_read_seq": "t.new_seq", "read_at": "clock_timestamp()"})

# GREATEST keeps the position from moving backwards; LEAST clamps it to the newest message.
# The event is written only when the position moved, in the same statement.
#
# Deleted messages do not count as unread: ``deleted_unread`` (the tombstones after the read
# position) is recomputed when the position moves, from the tombstones' partial index
# (ix_messages_deleted: nearly always an empty range, as a member usually reads up to the end).
_MARK = f"""
    WITH target AS (
        SELECT m.conversation_id, m.user_id, m.last_read_seq AS old_seq, c.last_seq,
               c.member_ids, m.deleted_unread, m.visible_from_seq,
               GREATEST(m.last_read_seq,
                        LEAST(CASE WHEN CAST(%(up_to_seq)s AS bigint) = 0 THEN c.last_seq
                                   ELSE CAST(%(up_to_seq)s AS bigint) END,
                              c.last_seq)) AS new_seq
        FROM conversation_members m
        JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = %(conversation_id)s
          AND m.user_id = %(user_id)s
        FOR UPDATE OF m
    ), counted AS (
        SELECT t.*, CASE WHEN t.new_seq > t.old_seq THEN (
                   SELECT count(*) FROM messages d
                    WHERE d.tenant_id = %(tenant)s AND d.conversation_id = t.conversation_id
                      AND d.deleted_at IS NOT NULL AND d.seq > t.new_seq
                      AND d.seq > t.visible_from_seq)
                   ELSE t.deleted_unread END AS deleted_after
        FROM target t
    ), upd AS (
        UPDATE conversation_members m SET last_read_seq = t.new_seq,
                                          deleted_unread = t.deleted_after
        FROM counted t
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = t.conversation_id
          AND m.user_id = t.user_id
          AND t.new_seq > t.old_seq
    ), evt AS (
        INSERT INTO outbox (tenant_id, event_id, event_type, conversation_id, seq, recipients,
                            payload)
        SELECT %(tenant)s, gen_random_uuid(), '{CONVERSATION_READ}', t.conversation_id, t.new_seq,
               t.member_ids, {_CONVERSATION_READ_PAYLOAD}
        FROM target t WHERE t.new_seq > t.old_seq
    )
    SELECT new_seq, GREATEST(0, last_seq - new_seq - deleted_after) AS unread FROM counted
    """


def mark_params(tenant: str, conversation_id: str, user_id: str, up_to_seq: int
                ) -> dict[str, object]:
    """The values ``_MARK`` takes, as the API passes them (chat-bench's scaling phase too)."""
    return {"tenant": tenant, "conversation_id": conversation_id, "user_id": user_id,
            "up_to_seq": up_to_seq}


class ReadRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark(self, tenant: str, conversation_id: str, user_id: str, up_to_seq: int
                   ) -> ReadPosition | None:
        """Moves the read position; None when the user is not a member."""
        params = mark_params(tenant, conversation_id, user_id, up_to_seq)
        row = await self._db.fetchone("db.mark_as_read", _MARK, params, tenant=tenant)
        if row is None:
            return None
        return ReadPosition(last_read_seq=int(row[0]), unread_count=int(row[1]))
