"""Conversations and their members."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chat_api.models import ConversationRecord, ConversationSummary
from chat_api.storage.rows import ATTACHMENTS_JSON, message_columns, message_from
from chat_shared.db import Database, tenant_execute
from chat_shared.replica_reads import ReplicaReads

_CREATE = """
    WITH ins AS (
        INSERT INTO conversations (tenant_id, id, title, direct_key, created_by, member_ids,
                                   history_visible_to_new_members, encrypted)
        VALUES (%(tenant)s, gen_random_uuid(), %(title)s, %(direct_key)s, %(creator)s,
                CAST(%(members)s AS text[]), %(history_visible)s, %(encrypted)s)
        ON CONFLICT (tenant_id, direct_key) DO NOTHING
        RETURNING id, title, created_at, last_message_at, last_seq, member_ids, last_activity_at,
                  history_visible_to_new_members, last_pos, encrypted
    ), mem AS (
        INSERT INTO conversation_members (tenant_id, conversation_id, user_id, last_activity_at,
                                          role)
        SELECT %(tenant)s, ins.id, u, ins.last_activity_at,
               CASE WHEN u = %(creator)s THEN 'owner' ELSE 'member' END
        FROM ins, unnest(ins.member_ids) AS u
    )
    SELECT id, title, created_at, last_message_at, last_seq, member_ids,
           history_visible_to_new_members, last_pos, 'owner', encrypted FROM ins
    """

_BY_DIRECT_KEY = """
    SELECT c.id, c.title, c.created_at, c.last_message_at, c.last_seq, c.member_ids,
           c.history_visible_to_new_members, c.last_pos, m.role, c.encrypted
    FROM conversations c
    JOIN conversation_members m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id
     AND m.user_id = %(creator)s
    WHERE c.tenant_id = %(tenant)s AND c.direct_key = %(direct_key)s
    """

# The member's page of the list comes from ix_conversation_members_inbox (tenant_id, user_id,
# last_activity_at, conversation_id), read backwards from the page token: the inner LIMIT is
# what keeps the statement's cost at one page, whatever the number of the member's
# conversations, and only that page's conversations and last messages are joined. (Joining
# all memberships first and sorting them cost 19 ms at 5,000 memberships, 75-96 ms at 20,000;
# with the caller's own statistics the planner then hashed all of ``messages``.)
#
# The conversation and its last message are each one probe of a primary or unique key, written
# as LATERAL ... LIMIT 1 so that it stays one probe in any plan: a generic plan made before the
# tables had statistics (the API prepares its statements when a connection opens, possibly on
# an empty database) otherwise joined the page to a bitmap scan of *every* conversation of the
# tenant per row, under row-level security (13.7 ms instead of 0.8 for a page of 51 of 200;
# the benchmark's GetConversations tripled), and found the last message through the
# (conversation, created_at) index, reading all of a conversation's messages.
#
# The last message carries its attachments as every Message does, aggregated inside the
# LATERAL after its one probe: one probe of ix_attachments_message per conversation of the page,
# which cost nothing measurable (a 51-row page of a member of 200 conversations, as chat_app,
# 16 alternating rounds of 200 statements: +0.05 ms at the median, slower in 8 of 16 rounds,
# load average 7). Its reactions are left out (proto: ConversationSummary.last_message): the
# same aggregate GetMessages runs per message added 1.1 ms to that page (+42%, slower in 16 of
# 16 rounds), for a list that does not show them.
#
# Columns: 0-4 the conversation, 5 last_activity_at, 6 last_read_seq, 7 member ids,
# 8-10 the caller's role, the history setting and last_pos, 11 deleted_unread,
# 12-25 the last message (``rows.MESSAGE_COLUMNS``; NULLs when there is none, or when the
# member may not see it), 26 its attachments, 27 whether the conversation is end-to-end
# encrypted.
_SUMMARY_COLUMNS = f"""
           c.id::text, c.title, c.created_at, c.last_message_at, c.last_seq, p.last_activity_at,
           p.last_read_seq, c.member_ids, p.role, c.history_visible_to_new_members, c.last_pos,
           p.deleted_unread, {message_columns("lm")}, lm.lm_attachments, c.encrypted"""
_MEMBER_ROWS = """
        SELECT cm.tenant_id, cm.conversation_id, cm.last_activity_at, cm.last_read_seq,
               cm.role, cm.visible_from_seq, cm.deleted_unread
        FROM conversation_members cm
        WHERE cm.tenant_id = %(tenant)s AND cm.user_id = %(user_id)s
"""
_SUMMARY_JOINS = f"""
    CROSS JOIN LATERAL (
        SELECT c.id, c.title, c.created_at, c.last_message_at, c.last_seq, c.member_ids,
               c.history_visible_to_new_members, c.last_pos, c.encrypted
        FROM conversations c WHERE c.tenant_id = p.tenant_id AND c.id = p.conversation_id
        LIMIT 1
    ) c
    LEFT JOIN LATERAL (
        SELECT m.*, {ATTACHMENTS_JSON.format(tenant="m.tenant_id", message="m.id")}
                      AS lm_attachments
        FROM messages m
        WHERE m.tenant_id = p.tenant_id AND m.conversation_id = c.id AND m.seq = c.last_seq
          AND m.seq > p.visible_from_seq
        LIMIT 1
    ) lm ON true
"""
_LIST_HEAD = f"""
    SELECT {_SUMMARY_COLUMNS}
    FROM ({_MEMBER_ROWS}"""
_LIST_TAIL = f"""
        ORDER BY cm.last_activity_at DESC, cm.conversation_id DESC LIMIT %(limit)s
    ) p{_SUMMARY_JOINS}
    ORDER BY p.last_activity_at DESC, p.conversation_id DESC
"""
_LIST_FIRST = _LIST_HEAD + _LIST_TAIL
_LIST_AFTER = (
    _LIST_HEAD
    + " AND (cm.last_activity_at, cm.conversation_id)"
      " < (%(after_time)s, CAST(%(after_id)s AS uuid))"
    + _LIST_TAIL
)

# GetConversation: the caller's conversations of the ids given, each as the list shows it (the
# same columns, after the position in the batch), in one statement whatever their number: one
# probe of the member's row per id (no row: not a member, or no such conversation), then the
# list's probes of the conversation and its last message.
_BY_IDS = f"""
    SELECT q.n, {_SUMMARY_COLUMNS}
    FROM unnest(CAST(%(conversation_ids)s AS uuid[])) WITH ORDINALITY AS q(id, n)
    CROSS JOIN LATERAL ({_MEMBER_ROWS}          AND cm.conversation_id = q.id
        LIMIT 1
    ) p{_SUMMARY_JOINS}"""


def direct_key(a: str, b: str) -> str:
    """The unique key of the direct conversation between two users (order-independent)."""
    return json.dumps(sorted((a, b)), separators=(",", ":"))


def _conversation(row: Sequence[Any], members: list[str], role: str, history_visible: bool,
                  last_pos: int, encrypted: bool) -> ConversationRecord:
    return ConversationRecord(
        id=str(row[0]), title=row[1], member_ids=members, created_at=row[2],
        last_message_at=row[3], last_seq=int(row[4]), role=role,
        history_visible_to_new_members=history_visible, last_pos=last_pos,
        encrypted=encrypted,
    )


class ConversationRepository:
    def __init__(self, db: Database | ReplicaReads) -> None:
        self._db = db

    async def create(
        self, tenant: str, creator: str, members: list[str], title: str, direct: str | None,
        history_visible: bool = True, encrypted: bool = False,
    ) -> ConversationRecord:
        """Creates the conversation, or returns the existing direct one with the same key."""
        params = {"tenant": tenant, "title": title, "direct_key": direct, "creator": creator,
                  "members": sorted(members), "history_visible": history_visible,
                  "encrypted": encrypted}
        async with self._db.connection("db.create_conversation") as conn:
            row = await (await tenant_execute(conn, tenant, _CREATE, params)).fetchone()
            if row is None:
                # The direct conversation already exists (maybe created concurrently: the
                # conflicting insert waited for it to commit, so this statement sees it).
                row = await (await tenant_execute(
                    conn, tenant, _BY_DIRECT_KEY,
                    {"tenant": tenant, "direct_key": direct, "creator": creator})).fetchone()
        if row is None:
            raise RuntimeError("direct conversation vanished between insert and select")
        return _conversation(row, list(row[5]), row[8], bool(row[6]), int(row[7]),
                             bool(row[9]))

    async def list_for_member(
        self, tenant: str, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[ConversationSummary]:
        """The member's conversations by most recent activity, strictly after ``after``."""
        params: dict[str, object] = {"tenant": tenant, "user_id": user_id, "limit": limit}
        stmt = _LIST_FIRST
        if after is not None:
            stmt = _LIST_AFTER
            params["after_time"], params["after_id"] = after
        rows = await self._db.fetchall("db.list_conversations", stmt, params, tenant=tenant)
        return [_summary(row) for row in rows]

    async def for_member(self, tenant: str, user_id: str, ids: Sequence[str]
                         ) -> list[ConversationSummary | None]:
        """The member's conversations of ``ids`` as ``list_for_member`` shows them, in the
        order of ``ids``; None for an id the user is not a member of (or that names none)."""
        rows = await self._db.fetchall("db.get_conversations_by_id", _BY_IDS, {
            "tenant": tenant, "user_id": user_id, "conversation_ids": list(ids)}, tenant=tenant)
        out: list[ConversationSummary | None] = [None] * len(ids)
        for row in rows:
            out[row[0] - 1] = _summary(row[1:])
        return out


def _summary(row: Sequence[Any]) -> ConversationSummary:
    """A summary from ``_SUMMARY_COLUMNS``."""
    return ConversationSummary(
        conversation=_conversation(row, list(row[7]), row[8], bool(row[9]), int(row[10]),
                                   bool(row[27])),
        last_read_seq=int(row[6]),
        last_message=message_from(row, 12, attachments=True) if row[12] is not None else None,
        last_activity_at=row[5],
        deleted_unread=int(row[11]),
    )
