"""Read-only PostgreSQL queries for catch-up: who is a member, the changes after a pos, and a
device's waiting to-device messages.

The stream only holds recent events; PostgreSQL holds every change of a conversation in its
permanent log (``conversation_changes``, one row per ``pos``: see chat_shared.events,
"Positions"), so a reconnecting client is caught up from here, by ``pos``, the cursor that
has neither gaps nor ties. The log holds references only; each change is rendered from the
rows as they are now (``protocol.stored_change_frame``): a message renders as it is now (a
since-deleted one as its tombstone), so the client ends in the server's state, and content
erased by a deletion never comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chat_shared.db import Database
from chat_shared.events import Attachment, Ciphertext

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
    SELECT m.id::text, m.seq, m.sender_id, m.content, m.created_at, m.thread_root_id::text,
           m.ciphertext
    FROM conversation_members cm
    JOIN messages m ON m.tenant_id = cm.tenant_id AND m.conversation_id = cm.conversation_id
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
      AND m.seq > %(after)s AND m.seq <= CAST(%(after)s AS bigint) + CAST(%(limit)s AS bigint)
    ORDER BY m.seq
    LIMIT %(limit)s
    """

# The page of changes after a position, with what renders each: the message it is about (as it
# is now, with its attachments: NULL when it has none, and a deleted message has none, its
# deletion erased them), the conversation's settings, and the member's visibility limit. The
# attachments' JSON is the shape of chat_shared.events.Attachment (the API's ATTACHMENTS_AGG).
# Membership is joined in, like _AFTER; pos is gapless, so the page is the range
# (after, after + limit].
_CHANGES_AFTER = """
    SELECT x.* FROM conversation_members cm
    JOIN conversations c ON c.tenant_id = cm.tenant_id AND c.id = cm.conversation_id
    LEFT JOIN LATERAL (
        SELECT ch.pos, ch.change_type, ch.message_id::text, ch.user_id, ch.emoji, ch.role,
               ch.actor_id, m.seq, m.sender_id, m.content, m.created_at, m.version,
               m.edited_at, m.deleted_at IS NOT NULL, c.title,
               c.history_visible_to_new_members, cm.visible_from_seq, m.thread_root_id::text,
               (SELECT jsonb_agg(jsonb_build_object(
                    'id', a.id, 'filename', a.filename, 'content_type', a.content_type,
                    'size_bytes', a.size_bytes, 'width', coalesce(a.width, 0),
                    'height', coalesce(a.height, 0),
                    'thumbnail_ready', a.thumbnail_key IS NOT NULL) ORDER BY a.position)
                  FROM attachments a
                 WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id),
               m.ciphertext
        FROM conversation_changes ch
        LEFT JOIN messages m ON m.tenant_id = ch.tenant_id AND m.id = ch.message_id
        WHERE ch.tenant_id = cm.tenant_id AND ch.conversation_id = cm.conversation_id
          AND ch.pos > %(after)s
          AND ch.pos <= CAST(%(after)s AS bigint) + CAST(%(limit)s AS bigint)
        ORDER BY ch.pos
        LIMIT %(limit)s
    ) x ON true
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
    ORDER BY x.pos
    """

# One page of a device's mailbox after an id, when the device is the user's: no row at all when
# it is not (never registered, or removed), one row of NULLs when nothing is waiting. The
# mailbox index (tenant, recipient, device, id) serves the page.
_TO_DEVICE_AFTER = """
    SELECT t.id, t.sender_id, t.sender_device, t.message_type, t.body, t.created_at
    FROM e2ee_devices d
    LEFT JOIN LATERAL (
        SELECT t.id, t.sender_id, t.sender_device, t.message_type, t.body, t.created_at
        FROM e2ee_to_device t
        WHERE t.tenant_id = d.tenant_id AND t.recipient_id = d.user_id
          AND t.recipient_device = d.device_id AND t.id > %(after)s
        ORDER BY t.id
        LIMIT %(limit)s
    ) t ON true
    WHERE d.tenant_id = %(tenant)s AND d.user_id = %(user_id)s AND d.device_id = %(device_id)s
    ORDER BY t.id
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
    ciphertext: Ciphertext | None = None
    """An end-to-end encrypted message's body, as its event carries it (docs/e2ee.md)."""


@dataclass(frozen=True, slots=True)
class StoredChange:
    """One change of the log with what renders it (message columns None when it is about no
    message)."""

    conversation_id: str
    seq: int
    """The change's position (``pos``); named ``seq`` for the ordering state machine."""
    type: str
    message_id: str | None
    user_id: str | None
    emoji: str | None
    role: str | None
    actor_id: str | None
    message_seq: int | None
    sender_id: str | None
    content: str | None
    created_at: datetime | None
    version: int | None
    edited_at: datetime | None
    deleted: bool
    title: str
    history_visible: bool
    visible_from_seq: int
    thread_root_id: str | None = None
    """A thread reply's root-level message (a reply is an ordered change like any message)."""
    attachments: list[Attachment] | None = None
    """The message's attachments as events carry them; None when it has none."""
    ciphertext: Ciphertext | None = None
    """An end-to-end encrypted message's body (None on a plain message or a tombstone)."""


@dataclass(frozen=True, slots=True)
class StoredToDevice:
    """A to-device message waiting in a device's mailbox (ciphertext, opaque here)."""

    id: int
    sender_id: str
    sender_device: str
    message_type: str
    body: str
    created_at: datetime


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
        return [StoredMessage(r[0], conversation_id, int(r[1]), r[2], r[3], r[4], r[5], r[6])
                for r in rows]

    async def changes_after(self, tenant: str, user_id: str, conversation_id: str,
                            after_pos: int) -> list[StoredChange] | None:
        """One page (``page_size``) of the conversation's changes with pos > after_pos; None
        when the user is not a member (no row at all; a member with nothing new gets one row
        of NULLs)."""
        rows = await self._db.fetchall("db.ws_changes_after", _CHANGES_AFTER,
                                       {"tenant": tenant, "conversation_id": conversation_id,
                                        "user_id": user_id,
                                        "after": min(after_pos, MAX_POSITION),
                                        "limit": self.page_size}, tenant=tenant)
        if not rows:
            return None
        return [StoredChange(conversation_id, int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6],
                             r[7], r[8], r[9], r[10], r[11], r[12], bool(r[13]), r[14],
                             bool(r[15]), int(r[16]), r[17], r[18], r[19]) for r in rows
                if r[0] is not None]

    async def to_device_after(self, tenant: str, user_id: str, device_id: str, after_id: int
                              ) -> list[StoredToDevice] | None:
        """One page (``page_size``) of the device's to-device messages with an id above
        ``after_id``, oldest first; None when ``device_id`` is not a device of the user."""
        rows = await self._db.fetchall("db.ws_to_device_after", _TO_DEVICE_AFTER,
                                       {"tenant": tenant, "user_id": user_id,
                                        "device_id": device_id,
                                        "after": min(after_id, MAX_POSITION),
                                        "limit": self.page_size}, tenant=tenant)
        if not rows:
            return None
        return [StoredToDevice(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows
                if r[0] is not None]
