"""Ordered changes: the conversation's row lock, the next position, the log row and the event.

Every ordered change (``chat_shared.events.ORDERED_TYPES``) other than a send, an edit and a
reaction runs as one transaction of two round trips, through ``locked`` (a pipelined transaction,
``Database.tenant_transaction``: BEGIN goes with the first round trip, COMMIT with the second):

1. BEGIN, the tenant setting (unless the session names the tenant already), ``SELECT ... FOR
   UPDATE`` of the conversation row, then the caller's membership and role (and whatever else
   the change needs to decide), each statement with its own snapshot, so everything read after
   the lock is current: every writer of ordered changes takes that same lock first;
2. the change itself, one statement: ``last_pos + n`` on the locked row, the rows changed, the
   ``conversation_changes`` rows and the ``outbox`` rows at those positions (``change_ctes``),
   then whatever the RPC answers with, and COMMIT.

Deciding between the two (in Python, with current data) is what keeps ``pos`` gapless: the
statement that takes a position never finds that its change does not apply. A single
statement that checked its conditions in sub-selects would read them from a snapshot taken
before it waited for the lock, and could take a position for a change that then matched no
row. (A send is a single statement and still safe: everything it writes follows from the
conversation row it updates, and its membership check reads ``member_ids`` of that row,
which PostgreSQL re-reads after the wait. A reply also depends on its root, which a deletion
changes, so a reply takes the lock first: ``MessageRepository._send_reply``.) An edit and a
reaction take the lock in a statement of their own too, then decide in the next statement of
the same round trip, whose snapshot follows the lock (``storage.message_changes``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chat_shared.db import AsyncConn, Database
from chat_shared.events import payload_sql

_LOCK = """
    SELECT c.id::text, c.title, c.created_at, c.last_message_at, c.last_seq, c.member_ids,
           c.direct_key IS NOT NULL, c.history_visible_to_new_members, c.last_pos, c.encrypted
    FROM conversations c
    WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
    FOR UPDATE
    """
_ROLE = """
    SELECT role FROM conversation_members
    WHERE tenant_id = %(tenant)s AND conversation_id = %(conversation_id)s
      AND user_id = %(user_id)s
    """

REF_COLUMNS = ("message_id", "user_id", "emoji", "role", "actor_id")
"""What a change row refers to; never content (see migration 0007)."""


@dataclass(frozen=True, slots=True)
class Locked:
    """The locked conversation as it is now, and the caller's role in it."""

    id: str
    title: str
    created_at: datetime
    last_message_at: datetime | None
    last_seq: int
    member_ids: list[str]
    direct: bool
    history_visible: bool
    last_pos: int
    role: str
    encrypted: bool = False


@asynccontextmanager
async def locked(db: Database, name: str, tenant: str, conversation_id: str,
                 user_id: str | None, extra: tuple[str, Mapping[str, Any]] | None = None,
                 *, role_in_extra: bool = False,
                 ) -> AsyncIterator[tuple[AsyncConn, Locked | None, Any]]:
    """A transaction holding the conversation's row lock.

    Yields the connection, the conversation with the caller's role (None when it does not
    exist or the caller is not a member: the same answer for both) and the first row of
    ``extra`` (a statement run after the lock in the same round trip), or None. A change the
    service makes itself (a thumbnail announced) has no caller: ``user_id`` None, role "".

    ``role_in_extra``: ``extra`` reads the caller's membership row itself and ends with its
    role, and its row is None when the caller is not a member (a message change's target, read
    through the caller's membership): the role's own statement is then left out, one statement
    fewer in the transaction (about 60 us of the API's CPU and 20 us of PostgreSQL's).

    The connection is in pipeline mode: what the block sends goes with COMMIT at its end, in
    one round trip, unless the block reads a result first (each read waits for a round trip);
    to answer with what the change wrote, send the read too and fetch it after
    ``chat_shared.db.commit(conn)``.
    """
    params = {"tenant": tenant, "conversation_id": conversation_id, "user_id": user_id}
    async with db.tenant_transaction(name, tenant) as conn:
        lock = await conn.execute(_LOCK, params)
        role = (await conn.execute(_ROLE, params) if user_id is not None and not role_in_extra
                else None)
        more = await conn.execute(extra[0], {**params, **extra[1]}) if extra else None
        conv = await lock.fetchone()
        extra_row = await more.fetchone() if more is not None else None
        if role_in_extra and user_id is not None:
            member = (extra_row[-1],) if extra_row is not None else None
        else:
            member = await role.fetchone() if role is not None else ("",)
        if conv is None or member is None:
            yield conn, None, extra_row
            return
        yield conn, Locked(conv[0], conv[1], conv[2], conv[3], int(conv[4]), list(conv[5]),
                           bool(conv[6]), bool(conv[7]), int(conv[8]), member[0],
                           bool(conv[9])), extra_row


def change_ctes(event_type: str, *, source: str, pos: str, refs: Mapping[str, str],
                recipients: str, payload: Mapping[str, Any]) -> str:
    """The CTEs ``chg`` and ``evt`` that log a change and write its event, one of each per row
    of ``source`` (a FROM list that names the CTE ``conv``, the updated conversation row).

    Args:
        pos: the SQL expression of each row's position (``conv.last_pos`` for one change).
        refs: SQL expressions of the change's references, by ``REF_COLUMNS`` name (others
            NULL).
        recipients: the SQL text[] of the event's recipients.
        payload: the payload's SQL expressions, checked against the contract (``payload_sql``).
    """
    unknown = set(refs) - set(REF_COLUMNS)
    if unknown:
        raise ValueError(f"unknown change references {sorted(unknown)}")
    ref_sql = ", ".join(refs.get(c, "NULL") for c in REF_COLUMNS)
    return f"""
    , chg AS (
        INSERT INTO conversation_changes (tenant_id, conversation_id, pos, change_type,
                                          {", ".join(REF_COLUMNS)})
        SELECT %(tenant)s, conv.id, {pos}, '{event_type}', {ref_sql}
        FROM {source}
    ), evt AS (
        INSERT INTO outbox (tenant_id, event_id, event_type, conversation_id, seq, recipients,
                            payload, message_id)
        SELECT %(tenant)s, gen_random_uuid(), '{event_type}', conv.id, {pos}, {recipients},
               {payload_sql(event_type, payload)}, {refs.get("message_id", "NULL")}
        FROM {source}
    )"""
