"""Warms a new pooled connection before the pool hands it out.

A new PostgreSQL server process knows nothing yet: its first statement on a table loads the
table's and its indexes' catalog entries, and each statement is parsed and planned in full
(and, prepared, planned again for each of its first five executions before PostgreSQL settles
on a generic plan). Measured with chat-bench's scaling phase (quick size), the first
GetConversations on a fresh connection took 2.3-8.6 ms against a warm 0.5 ms. The pool
recycles connections (and replaces them after errors), so a fraction of calls kept paying it.

``warm_connection`` runs in the pool's ``configure`` hook (in the pool's worker, before the
connection serves anyone) and executes every hot statement once, prepared. With the API's
sessions in ``plan_cache_mode=force_generic_plan`` (``Database(generic_plans=True)``) that one
execution leaves each statement's generic plan cached: the connection's first real call plans
nothing.

- The reads run with one real membership of the default tenant, so that they return rows: a
  first execution that returns rows also runs what only rows reach (the page's lateral scans,
  the reactions' and attachments' sub-selects, the sort, the result types' output functions),
  which an empty execution leaves for the first caller. The membership is the first at or after
  a random conversation id (one probe of the members' primary key), so that warm-ups do not all
  read one conversation's pages; an empty database warms with the values below throughout.
- The writes (sends, read marks, edits, reactions) run with values that match nothing (an
  all-zero conversation id, an empty user): they find no conversation, so nothing is read,
  locked or written.

The session names the default tenant throughout (``chat_shared.db.name_tenant``) and is left
naming it, as if its last unit of work had been for that tenant: the first call for it then
runs its statement alone, not after the tenant's setting in a pipeline (psycopg's pipeline cost
the client 0.1-0.25 ms of CPU more than the statement alone, measured on fresh connections; the
setting itself costs the server 0.02 ms). A deployment without tenants makes every call for the
default tenant; a call for another tenant sets its own and work without a tenant clears it, as
after any call, so row-level security sees what it saw before.

What remains of a fresh connection's first call is the new backend's first touch of the pages
that call reads: a shared buffer is mapped into a process's page table on its first access
there. Measured on a fresh connection (a page of 50 messages before a timestamp, 100,000
messages in the conversation), the first call mapped 384 KB of shared buffers (512 KB and two
relation files opened when the warm-up's reads matched nothing) and cost the server about
0.1 ms more than the second (0.2 ms when the reads matched nothing). Huge pages (PostgreSQL's
``huge_pages``) make that mapping cheaper.

Every int goes as int8 on the API's connections: psycopg sends a Python int as int2, int4 or
int8 by its value and prepares a statement once per parameter types, so a page cursor of 100
and one of 100,000 were two prepared statements, the second unwarmed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.numeric import Int8Dumper

from chat_api.storage.conversations import _LIST_AFTER, _LIST_FIRST
from chat_api.storage.message_changes import ONE_ROUND_TRIP_STATEMENTS
from chat_api.storage.messages import (
    _BY_KEY,
    _PAGE,
    _ROOT_PAGE,
    _SEND,
    _SEND_PLAIN,
    _THREAD_PAGE,
)
from chat_api.storage.reads import _MARK
from chat_shared.db import name_tenant
from chat_shared.observability.logging import get_logger
from chat_shared.tenancy import DEFAULT_TENANT

log = get_logger(__name__)

HOT_READS: tuple[str, ...] = (_LIST_FIRST, _LIST_AFTER, *_ROOT_PAGE.values(), *_PAGE.values(),
                              *_THREAD_PAGE.values(), _BY_KEY)
"""The reads made most (lists, timelines and threads, a retried send's lookup): warmed with a
real membership."""
HOT_WRITES: tuple[str, ...] = (_SEND_PLAIN, _SEND, _MARK, *ONE_ROUND_TRIP_STATEMENTS)
"""The writes made most (sends, read marks, edits and reactions): warmed with values that match
nothing."""
HOT_STATEMENTS: tuple[str, ...] = HOT_READS + HOT_WRITES

_NOBODY = "00000000-0000-0000-0000-000000000000"
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_VALUES: dict[str, Any] = {
    "user_id": "", "sender_id": "", "conversation_id": _NOBODY, "after_id": _NOBODY,
    "limit": 50, "cursor": 100, "up_to_seq": 0, "content": "", "idempotency_key": "",
    "attachment_ids": [], "attachment_sizes": [], "attachment_types": [],  # no attachments
    "root_id": _NOBODY, "after": 100, "message_id": _NOBODY, "emoji": "", "thread_root_id": None,
    "ciphertext": None,  # what a send in a plain conversation passes
    "before": _FAR_FUTURE, "after_time": _FAR_FUTURE,  # the newest page: rows, for a member
}
"""One value for every parameter a hot statement names, of the types real calls send (psycopg
sends a small int as int2: a statement is prepared per parameter types)."""

# Row-level security limits both to the session's tenant; the second is for a random id past
# the last conversation. The random id is a parameter: a volatile function (gen_random_uuid())
# cannot be an index condition, and the probe would read every member row.
_A_MEMBER = ("SELECT m.conversation_id::text, m.user_id FROM conversation_members m"
             " WHERE m.tenant_id = %(tenant)s AND m.conversation_id >= %(random_id)s"
             " ORDER BY m.tenant_id, m.conversation_id, m.user_id LIMIT 1")
_FIRST_MEMBER = ("SELECT m.conversation_id::text, m.user_id FROM conversation_members m"
                 " WHERE m.tenant_id = %(tenant)s"
                 " ORDER BY m.tenant_id, m.conversation_id, m.user_id LIMIT 1")
"""(Qualified: unqualified, ORDER BY would sort by the output column, the id as text, and so
read and sort every member row.)"""


async def warm_connection(conn: AsyncConnection[Any], tenant: str = DEFAULT_TENANT) -> None:
    """Executes each hot statement once, prepared, with the session naming ``tenant``: the
    reads for one of its members, the writes matching nothing; leaves the session naming
    ``tenant`` (module docstring).

    A statement that fails for want of schema (the API started before its migrations) leaves
    the connection cold but usable; a lost connection raises, and the pool discards it.
    """
    conn.adapters.register_dumper(int, Int8Dumper)
    values = {**_VALUES, "tenant": tenant}
    try:
        await name_tenant(conn, tenant)
        member = (await (await conn.execute(_A_MEMBER, {**values, "random_id": uuid.uuid4()})
                         ).fetchone()
                  or await (await conn.execute(_FIRST_MEMBER, values)).fetchone())
        reads = values if member is None else {
            **values, "conversation_id": member[0], "user_id": member[1],
            "sender_id": member[1]}
        for params, statements in ((reads, HOT_READS), (values, HOT_WRITES)):
            for sql in statements:
                await (await conn.execute(sql, params, prepare=True)).fetchall()
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.warning("connection_warmup_failed", error=f"{type(exc).__name__}: {exc}")
