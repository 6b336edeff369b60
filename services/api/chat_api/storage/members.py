"""Membership and settings changes: AddMembers, RemoveMember, SetMemberRole, UpdateConversation.

``conversation_members`` is the truth about membership; ``conversations.member_ids`` is a
copy kept for the fan-out (an event's recipients) and written in the same statement as the
member rows, under the conversation's row lock, so the two never disagree
(tests/integration/test_members.py checks it after every kind of change).

Each change is an ordered change (``storage.changes``): the caller's ``check`` decides, with
the locked conversation as it is now, whether it may happen (raising the domain error when
not); then one statement makes it, logs it and writes its event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from chat_api.models import ConversationRecord
from chat_api.storage.changes import Locked, change_ctes, locked
from chat_shared.db import Database, commit
from chat_shared.events import (
    CONVERSATION_UPDATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_ROLE_CHANGED,
)

Check = Callable[[Locked], None]

_ACTOR = "CAST(%(user_id)s AS text)"
_TARGET = "CAST(%(target)s AS text)"

# Each added user takes a position of its own, in the order given: conv.last_pos is the last
# of them. A new member has read up to now (its unread count starts at 0) and, when the
# conversation hides its history, sees only the messages after now (visible_from_seq).
_ADD = """
    WITH conv AS (
        UPDATE conversations c
           SET last_pos = c.last_pos + CAST(%(count)s AS bigint),
               member_ids = CAST(%(members)s AS text[])
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
        RETURNING c.id, c.last_pos, c.member_ids, c.last_seq, c.last_activity_at,
                  c.history_visible_to_new_members
    ), added AS (
        SELECT a.user_id, a.n
        FROM unnest(CAST(%(added)s AS text[])) WITH ORDINALITY AS a(user_id, n)
    ), mem AS (
        INSERT INTO conversation_members (tenant_id, conversation_id, user_id, last_activity_at,
                                          last_read_seq, visible_from_seq, role)
        SELECT %(tenant)s, conv.id, added.user_id, conv.last_activity_at, conv.last_seq,
               CASE WHEN conv.history_visible_to_new_members THEN 0 ELSE conv.last_seq END,
               'member'
        FROM conv, added
    )""" + change_ctes(
    MEMBER_ADDED, source="conv, added", pos="conv.last_pos - CAST(%(count)s AS bigint) + added.n",
    refs={"user_id": "added.user_id", "role": "'member'", "actor_id": _ACTOR},
    recipients="conv.member_ids",
    payload={"conversation_id": "conv.id", "user_id": "added.user_id",
             "role": "CAST('member' AS text)", "actor_id": _ACTOR}) + """
    SELECT last_pos FROM conv
    """

# The removed user is a recipient of its own removal (so its clients learn of it) and of
# nothing after it: later events go to member_ids, which no longer holds it.
_REMOVE = """
    WITH conv AS (
        UPDATE conversations c
           SET last_pos = c.last_pos + 1, member_ids = CAST(%(members)s AS text[])
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
        RETURNING c.id, c.last_pos, c.member_ids
    ), gone AS (
        DELETE FROM conversation_members m
         WHERE m.tenant_id = %(tenant)s AND m.conversation_id = %(conversation_id)s
           AND m.user_id = %(target)s
    )""" + change_ctes(
    MEMBER_REMOVED, source="conv", pos="conv.last_pos",
    refs={"user_id": _TARGET, "actor_id": _ACTOR},
    recipients=f"conv.member_ids || {_TARGET}",
    payload={"conversation_id": "conv.id", "user_id": _TARGET, "actor_id": _ACTOR}) + """
    SELECT last_pos FROM conv
    """

_SET_ROLE = """
    WITH conv AS (
        UPDATE conversations c SET last_pos = c.last_pos + 1
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
        RETURNING c.id, c.last_pos, c.member_ids
    ), mem AS (
        UPDATE conversation_members m SET role = %(role)s
         WHERE m.tenant_id = %(tenant)s AND m.conversation_id = %(conversation_id)s
           AND m.user_id = %(target)s
    )""" + change_ctes(
    MEMBER_ROLE_CHANGED, source="conv", pos="conv.last_pos",
    refs={"user_id": _TARGET, "role": "CAST(%(role)s AS text)", "actor_id": _ACTOR},
    recipients="conv.member_ids",
    payload={"conversation_id": "conv.id", "user_id": _TARGET,
             "role": "CAST(%(role)s AS text)", "actor_id": _ACTOR}) + """
    SELECT last_pos FROM conv
    """

# The event carries the settings as they are; the log row only that they changed (a title is
# content: resume renders the current one).
_UPDATE = """
    WITH conv AS (
        UPDATE conversations c
           SET last_pos = c.last_pos + 1, title = %(title)s,
               history_visible_to_new_members = %(history_visible)s
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
        RETURNING c.id, c.last_pos, c.member_ids, c.title, c.history_visible_to_new_members
    )""" + change_ctes(
    CONVERSATION_UPDATED, source="conv", pos="conv.last_pos", refs={"actor_id": _ACTOR},
    recipients="conv.member_ids",
    payload={"conversation_id": "conv.id", "title": "conv.title",
             "history_visible_to_new_members": "conv.history_visible_to_new_members",
             "actor_id": _ACTOR}) + """
    SELECT last_pos FROM conv
    """

_MEMBER_ROLE = """
    SELECT role FROM conversation_members
    WHERE tenant_id = %(tenant)s AND conversation_id = %(conversation_id)s
      AND user_id = %(target)s
    """


def record(conv: Locked, *, member_ids: list[str] | None = None, last_pos: int | None = None,
           title: str | None = None, history_visible: bool | None = None,
           role: str | None = None) -> ConversationRecord:
    """The conversation as the caller sees it after a change."""
    return ConversationRecord(
        id=conv.id, title=conv.title if title is None else title,
        member_ids=conv.member_ids if member_ids is None else member_ids,
        created_at=conv.created_at, last_message_at=conv.last_message_at,
        last_seq=conv.last_seq, role=conv.role if role is None else role,
        history_visible_to_new_members=(conv.history_visible if history_visible is None
                                        else history_visible),
        last_pos=conv.last_pos if last_pos is None else last_pos, encrypted=conv.encrypted)


class MemberRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, tenant: str, conversation_id: str, actor: str, users: Sequence[str],
                  check: Callable[[Locked, list[str]], None]) -> ConversationRecord | None:
        """Adds the users that are not members yet; None when the actor is not a member.

        ``check(conversation, new_users)`` raises when the actor may not add them.
        """
        async with locked(self._db, "db.add_members", tenant, conversation_id, actor) as (
                conn, conv, _):
            if conv is None:
                return None
            present = set(conv.member_ids)
            new = list(dict.fromkeys(u for u in users if u not in present))
            check(conv, new)
            if not new:
                return record(conv)
            members = sorted(present | set(new))
            cur = await conn.execute(_ADD, {
                "tenant": tenant, "conversation_id": conversation_id, "user_id": actor,
                "count": len(new), "members": members, "added": new})
            await commit(conn)
            row = await cur.fetchone()
            assert row is not None  # the row is locked: it exists
            return record(conv, member_ids=members, last_pos=int(row[0]))

    async def remove(self, tenant: str, conversation_id: str, actor: str, target: str,
                     check: Callable[[Locked, str | None], None]) -> bool:
        """Removes ``target``; False when the actor is not a member (or no such conversation).
        A target who is not a member changes nothing (no event).

        ``check(conversation, target_role)`` raises when the actor may not (``target_role``
        None: the target is not a member).
        """
        async with locked(self._db, "db.remove_member", tenant, conversation_id, actor,
                          (_MEMBER_ROLE, {"target": target})) as (conn, conv, target_row):
            if conv is None:
                return False
            check(conv, target_row[0] if target_row else None)
            if target_row is None:
                return True
            members = [m for m in conv.member_ids if m != target]
            await conn.execute(_REMOVE, {
                "tenant": tenant, "conversation_id": conversation_id, "user_id": actor,
                "target": target, "members": members})
            return True

    async def set_role(self, tenant: str, conversation_id: str, actor: str, target: str,
                       role: str, check: Callable[[Locked, str | None], None]) -> bool:
        """Gives ``target`` the role; False when the actor is not a member. A role the target
        has already changes nothing (no event)."""
        async with locked(self._db, "db.set_member_role", tenant, conversation_id, actor,
                          (_MEMBER_ROLE, {"target": target})) as (conn, conv, target_row):
            if conv is None:
                return False
            current = target_row[0] if target_row else None
            check(conv, current)
            if current != role:
                await conn.execute(_SET_ROLE, {
                    "tenant": tenant, "conversation_id": conversation_id, "user_id": actor,
                    "target": target, "role": role})
            return True

    async def update(self, tenant: str, conversation_id: str, actor: str, title: str | None,
                     history_visible: bool | None, check: Check) -> ConversationRecord | None:
        """Changes the given settings; None when the actor is not a member. Settings equal
        to the current ones change nothing (no event)."""
        async with locked(self._db, "db.update_conversation", tenant, conversation_id,
                          actor) as (conn, conv, _):
            if conv is None:
                return None
            check(conv)
            new_title = conv.title if title is None else title
            new_visible = conv.history_visible if history_visible is None else history_visible
            if (new_title, new_visible) == (conv.title, conv.history_visible):
                return record(conv)
            cur = await conn.execute(_UPDATE, {
                "tenant": tenant, "conversation_id": conversation_id, "user_id": actor,
                "title": new_title, "history_visible": new_visible})
            await commit(conn)
            row = await cur.fetchone()
            assert row is not None
            return record(conv, last_pos=int(row[0]), title=new_title,
                          history_visible=new_visible)
