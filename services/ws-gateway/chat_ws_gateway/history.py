"""Read-only PostgreSQL queries for catch-up: who is a member, and the messages after a seq.

The stream only holds recent events; PostgreSQL holds every message, so a reconnecting client
is caught up from here (by ``seq``, the only cursor that has neither gaps nor ties).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chat_shared.db import Database

# One probe of the primary key (conversation_id, user_id) per id: the LATERAL ... LIMIT 1
# keeps the planner from reading all of the user's memberships instead (the members' index
# starts at user_id), which its generic plan, expecting a user to be in few conversations,
# would do: 5,000 rows for a member of 5,000 conversations.
_MEMBER_OF = """
    SELECT i.id::text FROM unnest(CAST(%(ids)s AS uuid[])) AS i(id)
    CROSS JOIN LATERAL (
        SELECT 1 FROM conversation_members m
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = i.id AND m.user_id = %(user_id)s
        LIMIT 1) found
    """

# The conversation's members as its row keeps them (the copy ``member_ids``, written with the
# membership rows): the recipients of a typing signal. One probe of the primary key.
_MEMBERS = """
    SELECT c.member_ids FROM conversations c
    WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
    """

# Membership is joined in, so a user removed meanwhile gets nothing rather than history.
# seq is gapless, so the page is also the range (after, after + limit]: with it in the WHERE
# clause the statement reads one page whatever plan PostgreSQL picks, also when statistics
# underestimate a conversation and the planner would otherwise read (and sort) all of its
# messages after the position (the same fix and measurements as the API's GetMessages).
# The CASTs: a small int is sent as smallint, and smallint + smallint overflows.
_AFTER = """
    SELECT m.id::text, m.seq, m.sender_id, m.content, m.created_at, m.thread_root_id::text
    FROM conversation_members cm
    JOIN messages m ON m.tenant_id = cm.tenant_id AND m.conversation_id = cm.conversation_id
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
      AND m.seq > %(after)s AND m.seq <= CAST(%(after)s AS bigint) + CAST(%(limit)s AS bigint)
    ORDER BY m.seq
    LIMIT %(limit)s
    """

# Far beyond any real seq and far enough below bigint's end that after + limit cannot
# overflow; a larger position (the protocol accepts any int64) reads as this one: nothing.
MAX_POSITION = 2**62


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    content: str
    created_at: datetime
    thread_root_id: str | None = None
    """A thread reply's root-level message (replies are caught up like any message)."""


class History:
    def __init__(self, db: Database, page_size: int) -> None:
        self._db = db
        self.page_size = page_size

    async def member_of(self, tenant: str, user_id: str, conversation_ids: list[str]
                        ) -> set[str]:
        """The subset of ``conversation_ids`` (canonical UUID text) the user of ``tenant`` is
        a member of."""
        if not conversation_ids:
            return set()
        rows = await self._db.fetchall("db.ws_member_of", _MEMBER_OF,
                                       {"tenant": tenant, "user_id": user_id,
                                        "ids": conversation_ids}, tenant=tenant)
        return {r[0] for r in rows}

    async def members(self, tenant: str, conversation_id: str) -> list[str]:
        """The user ids of the conversation's members (empty when there is no such one)."""
        row = await self._db.fetchone("db.ws_members", _MEMBERS,
                                      {"tenant": tenant, "conversation_id": conversation_id},
                                      tenant=tenant)
        return list(row[0]) if row is not None else []

    async def messages_after(self, tenant: str, user_id: str, conversation_id: str,
                             after_seq: int) -> list[StoredMessage]:
        """One page (``page_size``) of the conversation's messages with seq > after_seq."""
        rows = await self._db.fetchall("db.ws_messages_after", _AFTER,
                                       {"tenant": tenant, "conversation_id": conversation_id,
                                        "user_id": user_id,
                                        "after": min(after_seq, MAX_POSITION),
                                        "limit": self.page_size}, tenant=tenant)
        return [StoredMessage(r[0], conversation_id, int(r[1]), r[2], r[3], r[4], r[5])
                for r in rows]
