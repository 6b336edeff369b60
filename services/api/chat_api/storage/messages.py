"""Messages: the send transaction (message + outbox event in one statement) and history."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime

import psycopg.errors

from chat_api.models import MessageRecord, ReactionCount
from chat_api.storage.rows import (
    ATTACHMENTS_JSON,
    MESSAGE_COLUMNS,
    message_columns,
    message_from,
)
from chat_shared.db import Database
from chat_shared.events import MESSAGE_CREATED, payload_sql

IDEMPOTENCY_CONSTRAINT = "uq_messages_sender_idempotency_key"

EXACT_ORDER_MEMBERS = 32
"""Up to this many members a send moves the conversation up every member's list at once;
above it, at most once a second (see ``_SEND``)."""

# The event's payload as the event contract describes it (built and checked at import). The
# attachments (the ``att`` CTE's rows) are NULL for a message without any, and ``payload_sql``
# then leaves the optional field out. No thumbnail is ready yet at the send.
_MESSAGE_CREATED_PAYLOAD = payload_sql(MESSAGE_CREATED, {"message": {
    "id": "msg.id", "conversation_id": "msg.conversation_id", "sender_id": "msg.sender_id",
    "content": "msg.content", "seq": "msg.seq", "created_at": "msg.created_at",
    "version": "msg.version", "edited_at": "msg.edited_at", "deleted": "false",
    "attachments": "(SELECT jsonb_agg(jsonb_build_object('id', att.id, 'filename', att.filename,"
                   " 'content_type', att.content_type, 'size_bytes', att.size_bytes,"
                   " 'width', 0, 'height', 0, 'thumbnail_ready', false)"
                   " ORDER BY att.position) FROM att)"}})

MAX_REACTIONS = 20
"""A message shows its 20 most used reactions (ties by emoji)."""

# One statement, one round trip: take the conversation's row lock while incrementing last_seq
# (only for a member), insert the message with that seq, write its outbox event with the
# members as recipients, and update the member rows: every member's copy of the
# conversation's last activity (the order of their conversation lists) and the sender's read
# position (one UPDATE for both: a row that two parts of one statement update keeps only one
# of the changes).
#
# The message's time is never earlier than the conversation's last activity (GREATEST): within
# a conversation, created_at never decreases with seq, even if the clock steps back, which is
# what lets a page "before a time" start from one index probe (``_PAGE["before_time"]``).
#
# The member rows make a send cost O(members): one row version and two index entries per
# member, about 13 us each (docs/performance.md, "The conversation list"). So a conversation
# of more than EXACT_ORDER_MEMBERS members rewrites its other members' rows at most once a
# second (when their copy is a second or more behind): their conversation lists order it to
# the second, and a busy 1,000-member conversation pays the 13 ms once a second instead of on
# every send. Smaller conversations (nearly all of them) stay exact.
#
# Positions: the same row update takes the message's seq and the change's pos (both gapless,
# see chat_shared.events "Positions"), writes the change log row and the event at that pos.
# Membership is checked on the conversation row's own copy (member_ids) besides the member
# row: after waiting for the row lock, PostgreSQL re-reads the locked row, not the sub-select,
# so a send that waited for a RemoveMember of its sender is refused.
#
# Attachments (docs/attachments.md): ``ready`` locks the listed uploads that are still free
# (uploaded by the sender to this conversation, not attached), and the statement sends only when
# every listed one is (``conv``'s count condition); ``att`` then moves them to the message in
# the same statement, so a message and its attachments commit together, and an upload belongs
# to one message: a concurrent send of the same upload waits on the row lock, then finds it
# attached and sends nothing (the caller tells that apart, ``MessageRepository.send``).
# ``ready`` runs before ``conv`` takes a position, so a send that finds an upload taken takes
# no seq and no pos (both stay gapless).
#
# Idempotency, without burning a seq (seq stays gapless): a key that already names a committed
# message (``prior``, one probe of the unique index) stops the statement before the row lock,
# and the statement answers with that original, flagged as a duplicate: a retry costs one read,
# no lock, no aborted write, no error. Concurrent sends of one key that all miss ``prior`` meet
# at the unique constraint, which aborts the later statements whole (UniqueViolation).
_SEND = f"""
    WITH prior AS (
        SELECT {message_columns("p")} FROM messages p
        WHERE p.tenant_id = %(tenant)s AND p.sender_id = %(sender_id)s
          AND p.idempotency_key = %(idempotency_key)s
    ), ready AS (
        SELECT a.id FROM attachments a
        WHERE a.tenant_id = %(tenant)s AND a.id = ANY(CAST(%(attachment_ids)s AS uuid[]))
          AND a.conversation_id = %(conversation_id)s AND a.uploader = %(sender_id)s
          AND a.status = 'uploaded'
          AND NOT EXISTS (SELECT 1 FROM prior)
        FOR UPDATE
    ), conv AS (
        UPDATE conversations c
           SET last_seq = c.last_seq + 1,
               last_pos = c.last_pos + 1,
               last_message_at = GREATEST(now.t, c.last_activity_at),
               last_activity_at = GREATEST(now.t, c.last_activity_at)
          FROM (SELECT clock_timestamp() AS t) now
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
           AND NOT EXISTS (SELECT 1 FROM prior)
           AND c.member_ids @> ARRAY[CAST(%(sender_id)s AS text)]
           AND (SELECT count(*) FROM ready) = cardinality(CAST(%(attachment_ids)s AS uuid[]))
           AND EXISTS (SELECT 1 FROM conversation_members m
                        WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id
                          AND m.user_id = %(sender_id)s)
        RETURNING c.id, c.last_seq, c.last_pos, c.last_message_at, c.member_ids,
                  cardinality(c.member_ids) AS members
    ), msg AS (
        INSERT INTO messages (tenant_id, id, conversation_id, seq, sender_id, content,
                              idempotency_key, created_at)
        SELECT %(tenant)s, gen_random_uuid(), conv.id, conv.last_seq, %(sender_id)s, %(content)s,
               %(idempotency_key)s, conv.last_message_at
        FROM conv
        RETURNING {message_columns("messages")}
    ), chg AS (
        INSERT INTO conversation_changes (tenant_id, conversation_id, pos, change_type,
                                          message_id, user_id, actor_id)
        SELECT %(tenant)s, conv.id, conv.last_pos, '{MESSAGE_CREATED}', msg.id, msg.sender_id,
               msg.sender_id
        FROM msg, conv
    ), att AS (
        UPDATE attachments a
           SET status = 'attached', message_id = msg.id,
               position = array_position(CAST(%(attachment_ids)s AS uuid[]), a.id)
          FROM msg
         WHERE a.tenant_id = %(tenant)s AND a.id IN (SELECT id FROM ready)
        RETURNING a.id, a.filename, a.content_type, a.size_bytes, a.position
    ), evt AS (
        INSERT INTO outbox (tenant_id, event_id, event_type, conversation_id, seq, recipients,
                            payload)
        SELECT %(tenant)s, gen_random_uuid(), '{MESSAGE_CREATED}', msg.conversation_id,
               conv.last_pos, conv.member_ids, {_MESSAGE_CREATED_PAYLOAD}
        FROM msg, conv
    ), members AS (
        -- Sending implies having read the conversation up to one's own message, so a user's
        -- own messages never count as unread for them.
        UPDATE conversation_members m
           SET last_activity_at = conv.last_message_at,
               last_read_seq = CASE WHEN m.user_id = %(sender_id)s
                                    THEN GREATEST(m.last_read_seq, conv.last_seq)
                                    ELSE m.last_read_seq END,
               deleted_unread = CASE WHEN m.user_id = %(sender_id)s THEN 0
                                     ELSE m.deleted_unread END
          FROM conv
         WHERE m.tenant_id = %(tenant)s AND m.conversation_id = conv.id
           AND (m.user_id = %(sender_id)s
                OR conv.members <= {EXACT_ORDER_MEMBERS}  -- not the array: once per row
                OR m.last_activity_at <= conv.last_message_at - interval '1 second')
    )
    SELECT false, *,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'id', att.id, 'filename', att.filename, 'content_type', att.content_type,
                'size_bytes', att.size_bytes, 'width', 0, 'height', 0,
                'thumbnail_ready', false) ORDER BY att.position), '[]'::jsonb) FROM att)
    FROM msg
    UNION ALL
    SELECT true, *, """ + ATTACHMENTS_JSON.format(tenant="%(tenant)s", message="prior.id") + """
    FROM prior
    """

_BY_KEY = f"""
    SELECT {message_columns("m")},
           """ + ATTACHMENTS_JSON.format(tenant="m.tenant_id", message="m.id") + """
    FROM messages m
    WHERE m.tenant_id = %(tenant)s AND m.sender_id = %(sender_id)s
      AND m.idempotency_key = %(idempotency_key)s
    """

# The reactions of a message in the page, aggregated in the page's own statement (one index
# range of message_reactions per message of the page, empty for most): the 20 most used, each
# as [emoji, count, whether the caller is among them].
REACTIONS_SQL = f"""
        (SELECT jsonb_agg(jsonb_build_array(r.emoji, r.n, r.mine) ORDER BY r.n DESC, r.emoji)
           FROM (SELECT x.emoji, count(*) AS n, bool_or(x.user_id = %(user_id)s) AS mine
                   FROM message_reactions x
                  WHERE x.tenant_id = %(tenant)s AND x.message_id = m.id
                  GROUP BY x.emoji ORDER BY count(*) DESC, x.emoji LIMIT {MAX_REACTIONS}) r)
"""

# The membership row drives a lateral page of messages: no row at all means "not a member or
# no such conversation"; one row of NULLs means "a member, and the page is empty".
#
# seq is gapless (1..last_seq, never deleted), so a page by seq is also a seq *range*, and
# the range is in the WHERE clause, not only in ORDER BY ... LIMIT. That keeps the statement's
# cost bounded by the page size whatever plan PostgreSQL picks: with statistics that think a
# conversation holds a few dozen rows (they always do for a new, busy one), the planner chose a
# bitmap scan of the *whole* conversation plus a sort, 1.07 ms for 3,000 messages instead of
# 0.045 ms, and the cost grew with the conversation. Measured on the bench data set.
# (The CASTs: psycopg sends a small Python int as smallint, and smallint + smallint overflows.)
#
# A member added to a conversation that hides its history sees the messages after
# ``visible_from_seq`` only (0 for everyone else).
_PAGE_HEAD = f"""
    SELECT p.* FROM conversation_members cm
    JOIN conversations c ON c.tenant_id = cm.tenant_id AND c.id = cm.conversation_id
    LEFT JOIN LATERAL (
        SELECT {message_columns("m")},
               """ + ATTACHMENTS_JSON.format(tenant="m.tenant_id", message="m.id") + f""",
               {REACTIONS_SQL}
        FROM messages m
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = cm.conversation_id
          AND m.seq > cm.visible_from_seq
"""
_PAGE_TAIL = """
    ) p ON true
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
"""
# The seq of the newest message older than %(before)s: the newest time before it (one
# backward probe of ix_messages_conversation_created), then the highest seq at exactly that
# time (messages may share a timestamp). created_at never decreases with seq within a
# conversation (``_SEND``), so every message up to that seq is older too. Computed for the
# conversation named, member or not: the page below joins it only to a membership row.
_BEFORE_TIME_POSITION = """
    WITH pos AS (
        SELECT max(s.seq) AS k, max(s.seq) - CAST(%(limit)s AS bigint) AS lo FROM messages s
        WHERE s.tenant_id = %(tenant)s AND s.conversation_id = %(conversation_id)s
          AND s.created_at = (SELECT max(t.created_at) FROM messages t
                              WHERE t.tenant_id = %(tenant)s
                                AND t.conversation_id = %(conversation_id)s
                                AND t.created_at < %(before)s)
    )
"""
_PAGE = {
    "newest": _PAGE_HEAD + " AND m.seq > c.last_seq - CAST(%(limit)s AS bigint)"
              " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    "before_seq": _PAGE_HEAD + " AND m.seq < %(cursor)s"
                  " AND m.seq >= CAST(%(cursor)s AS bigint) - CAST(%(limit)s AS bigint)"
                  " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    # A time is a position too: the newest message before it is found through the
    # (conversation_id, created_at) index in one probe (``_BEFORE_TIME_POSITION``), and the page
    # is then the seq range below it, like any other page. (Walking the seq index backwards
    # with created_at as a filter read every newer message: 207 ms with 1,000,000 newer.)
    # The bounds are joined columns (``pos.k``, ``pos.lo``), not sub-selects or arithmetic on
    # a column: under row-level security only leakproof conditions may run before the tenant
    # policy, and neither a sub-select nor int8 subtraction (it can overflow) is leakproof, so
    # such a bound could not be an index condition and the page read every older message
    # (50,002 rows instead of 51: tests/integration/test_plan_stability.py).
    "before_time": _BEFORE_TIME_POSITION
                   + _PAGE_HEAD.replace("FROM messages m\n", "FROM pos, messages m\n")
                   + " AND m.seq <= pos.k"
                     " AND m.seq > pos.lo"
                     " AND m.created_at < %(before)s"
                     " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    "after_seq": _PAGE_HEAD + " AND m.seq > %(cursor)s"
                 " AND m.seq <= CAST(%(cursor)s AS bigint) + CAST(%(limit)s AS bigint)"
                 " ORDER BY m.seq ASC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq ASC",
}


# Far beyond any real seq, far enough below bigint's end that cursor + limit cannot overflow:
# a larger cursor (an int64 after_seq, a crafted page token) pages exactly as this one.
MAX_CURSOR = 2**62


class PageMode(enum.Enum):
    NEWEST = "newest"
    BEFORE_SEQ = "before_seq"
    BEFORE_TIME = "before_time"
    AFTER_SEQ = "after_seq"


class DuplicateKey(Exception):
    """The (tenant, sender, idempotency_key) triple already names a committed message."""

    # A plain class, not a frozen dataclass: ``raise`` sets __traceback__/__cause__ on the
    # instance, which a frozen (slotted) dataclass refuses, so the raise itself would fail.
    def __init__(self, original: MessageRecord) -> None:
        super().__init__(original.id)
        self.original = original


class MessageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def send(
        self, tenant: str, conversation_id: str, sender_id: str, content: str,
        idempotency_key: str, attachment_ids: list[str] | None = None,
    ) -> MessageRecord | None:
        """Commits the message, its attachments and its outbox event; None when the sender is
        not a member, or when an upload listed is not free (attached by now, not the
        sender's, not of this conversation: the caller checked them before, so only a
        concurrent send of the same upload gets here).

        Raises DuplicateKey (with the original message) when the key was used before.
        """
        params = {"tenant": tenant, "conversation_id": conversation_id, "sender_id": sender_id,
                  "content": content, "idempotency_key": idempotency_key,
                  "attachment_ids": attachment_ids or []}
        try:
            row = await self._db.fetchone("db.send_message", _SEND, params, tenant=tenant)
        except psycopg.errors.UniqueViolation as exc:  # a concurrent send of the same key
            if exc.diag.constraint_name != IDEMPOTENCY_CONSTRAINT:
                raise
            original = await self.by_idempotency_key(tenant, sender_id, idempotency_key)
            if original is None:
                raise
            raise DuplicateKey(original) from exc
        if row is None:
            return None
        if row[0]:
            raise DuplicateKey(message_from(row, 1, attachments=True))
        return message_from(row, 1, attachments=True)

    async def by_idempotency_key(self, tenant: str, sender_id: str, key: str
                                 ) -> MessageRecord | None:
        """The committed message that (tenant, sender, key) names, if any."""
        row = await self._db.fetchone("db.message_by_key", _BY_KEY,
                                      {"tenant": tenant, "sender_id": sender_id,
                                       "idempotency_key": key}, tenant=tenant)
        return message_from(row, attachments=True) if row is not None else None

    async def page(
        self, tenant: str, conversation_id: str, user_id: str, mode: PageMode, limit: int,
        cursor: int = 0, before: datetime | None = None,
    ) -> list[MessageRecord] | None:
        """One page of messages in the mode's order; None when the user is not a member."""
        params: dict[str, object] = {"tenant": tenant, "conversation_id": conversation_id,
                                     "user_id": user_id, "limit": limit}
        if mode in (PageMode.BEFORE_SEQ, PageMode.AFTER_SEQ):
            params["cursor"] = min(cursor, MAX_CURSOR)
        elif mode is PageMode.BEFORE_TIME:
            params["before"] = before
        rows = await self._db.fetchall("db.get_messages", _PAGE[mode.value], params,
                                       tenant=tenant)
        if not rows:
            return None
        return [with_reactions(message_from(r, attachments=True), r[MESSAGE_COLUMNS + 1])
                for r in rows if r[0] is not None]


def with_reactions(message: MessageRecord, aggregated: list[list[object]] | None
                   ) -> MessageRecord:
    """The message with its reactions as ``REACTIONS_SQL`` aggregates them."""
    if not aggregated:
        return message
    return dataclasses.replace(message, reactions=tuple(
        ReactionCount(str(e), int(n), bool(mine))  # type: ignore[call-overload]
        for e, n, mine in aggregated))
