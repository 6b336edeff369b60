"""Conversations and their members."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_api.models import ConversationRecord, ConversationSummary, MessageRecord
from chat_shared.observability.tracing import tracer

_tracer = tracer(__name__)

_CREATE = text(
    """
    WITH ins AS (
        INSERT INTO conversations (id, title, direct_key, created_by)
        VALUES (gen_random_uuid(), :title, :direct_key, :creator)
        ON CONFLICT (direct_key) DO NOTHING
        RETURNING id, title, created_at, last_message_at, last_seq
    ), mem AS (
        INSERT INTO conversation_members (conversation_id, user_id)
        SELECT ins.id, u FROM ins, unnest(CAST(:members AS text[])) AS u
    )
    SELECT id, title, created_at, last_message_at, last_seq FROM ins
    """
)

_BY_DIRECT_KEY = text(
    """
    SELECT c.id, c.title, c.created_at, c.last_message_at, c.last_seq,
           ARRAY(SELECT user_id FROM conversation_members x
                 WHERE x.conversation_id = c.id ORDER BY user_id) AS member_ids
    FROM conversations c WHERE c.direct_key = :direct_key
    """
)

_LIST_COLUMNS = """
    SELECT c.id, c.title, c.created_at, c.last_message_at, c.last_seq, c.last_activity_at,
           cm.last_read_seq,
           ARRAY(SELECT user_id FROM conversation_members x
                 WHERE x.conversation_id = c.id ORDER BY user_id) AS member_ids,
           lm.id AS lm_id, lm.conversation_id AS lm_conversation_id, lm.sender_id AS lm_sender_id,
           lm.content AS lm_content, lm.seq AS lm_seq, lm.created_at AS lm_created_at
    FROM conversation_members cm
    JOIN conversations c ON c.id = cm.conversation_id
    LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq
    WHERE cm.user_id = :user_id
"""
_LIST_FIRST = text(
    _LIST_COLUMNS + " ORDER BY c.last_activity_at DESC, c.id DESC LIMIT :limit"
)
_LIST_AFTER = text(
    _LIST_COLUMNS
    + " AND (c.last_activity_at, c.id) < (:after_time, CAST(:after_id AS uuid))"
    + " ORDER BY c.last_activity_at DESC, c.id DESC LIMIT :limit"
)


def direct_key(a: str, b: str) -> str:
    """The unique key of the direct conversation between two users (order-independent)."""
    return json.dumps(sorted((a, b)), separators=(",", ":"))


class ConversationRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, creator: str, members: list[str], title: str, direct: str | None
    ) -> ConversationRecord:
        """Creates the conversation, or returns the existing direct one with the same key."""
        with _tracer.start_as_current_span("db.create_conversation"):
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        _CREATE,
                        {"title": title, "direct_key": direct, "creator": creator,
                         "members": members},
                    )
                ).first()
                if row is not None:
                    m = row._mapping
                    return ConversationRecord(
                        id=str(m["id"]), title=m["title"], member_ids=sorted(members),
                        created_at=m["created_at"], last_message_at=m["last_message_at"],
                        last_seq=int(m["last_seq"]),
                    )
                # The direct conversation already exists (maybe created concurrently: the
                # conflicting insert waited for it to commit, so this statement sees it).
                existing = (await conn.execute(_BY_DIRECT_KEY, {"direct_key": direct})).one()
                m = existing._mapping
                return ConversationRecord(
                    id=str(m["id"]), title=m["title"], member_ids=list(m["member_ids"]),
                    created_at=m["created_at"], last_message_at=m["last_message_at"],
                    last_seq=int(m["last_seq"]),
                )

    async def list_for_member(
        self, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[ConversationSummary]:
        """The member's conversations by most recent activity, strictly after ``after``."""
        params: dict[str, object] = {"user_id": user_id, "limit": limit}
        stmt = _LIST_FIRST
        if after is not None:
            stmt = _LIST_AFTER
            params["after_time"], params["after_id"] = after
        with _tracer.start_as_current_span("db.list_conversations"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt, params)).all()
        out = []
        for row in rows:
            m = row._mapping
            last = None
            if m["lm_id"] is not None:
                last = MessageRecord(
                    id=str(m["lm_id"]), conversation_id=str(m["lm_conversation_id"]),
                    sender_id=m["lm_sender_id"], content=m["lm_content"], seq=int(m["lm_seq"]),
                    created_at=m["lm_created_at"],
                )
            conv = ConversationRecord(
                id=str(m["id"]), title=m["title"], member_ids=list(m["member_ids"]),
                created_at=m["created_at"], last_message_at=m["last_message_at"],
                last_seq=int(m["last_seq"]),
            )
            out.append(
                ConversationSummary(
                    conversation=conv, last_read_seq=int(m["last_read_seq"]), last_message=last,
                    last_activity_at=m["last_activity_at"],
                )
            )
        return out
