"""Warms a new pooled connection before the pool hands it out.

A new PostgreSQL server process knows nothing yet: its first statement on a table loads the
table's and its indexes' catalog entries, and each statement is parsed and planned in full
(and, prepared, planned again for each of its first five executions before PostgreSQL settles
on a generic plan). Measured with chat-bench's scaling phase (quick size), the first
GetConversations on a fresh connection took 2.3-8.6 ms against a warm 0.5 ms. The pool
recycles connections (and replaces them after errors), so a fraction of calls kept paying it.

``warm_connection`` runs in the pool's ``configure`` hook (in the pool's worker, before the
connection serves anyone):

- **One parameter type per integer.** psycopg sends a Python int as int2, int4 or int8 by its
  value, and prepares a statement once per parameter types: a page cursor of 100 and one of
  100,000 were two prepared statements, the second unwarmed (parsed and planned in full for
  its first five calls). Every int goes as int8 on the API's connections.
- **Each hot statement executed once, prepared.** The reads run with one real membership
  (any row of ``conversation_members``) so that they return rows: a first execution that
  returns rows also loads what only returning rows needs (the result types' output
  functions, the sort and the lateral page's first run), which an empty execution leaves for
  the first caller. The writes (sends, read marks) run with values that match nothing (an
  all-zero conversation id, an empty user): they find no conversation, so nothing is read,
  locked or written. An empty database warms with those values throughout.

With the API's sessions in ``plan_cache_mode=force_generic_plan``
(``Database(generic_plans=True)``) each statement's generic plan is then cached. Measured (15
fresh connections each, 1,000 memberships and 50,000 messages, median of the first call against
the median warm call): GetConversations 0.65 ms against a warm 0.38 ms when warmed with values
that match nothing, 0.56 ms warmed with another member's row; ``before_timestamp`` 0.36 ms and
0.27 ms against a warm 0.17 ms.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.numeric import Int8Dumper

from chat_api.storage.conversations import _LIST_AFTER, _LIST_FIRST
from chat_api.storage.messages import _BY_KEY, _PAGE, _SEND
from chat_api.storage.reads import _MARK
from chat_shared.observability.logging import get_logger

log = get_logger(__name__)

HOT_READS: tuple[str, ...] = (_LIST_FIRST, _LIST_AFTER, *_PAGE.values(), _BY_KEY)
"""The reads made most (lists, pages, a retried send's lookup): warmed with a real member."""
HOT_WRITES: tuple[str, ...] = (_SEND, _MARK)
"""The writes made most: warmed with values that match nothing."""
HOT_STATEMENTS: tuple[str, ...] = HOT_READS + HOT_WRITES

_NOBODY = "00000000-0000-0000-0000-000000000000"
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_VALUES: dict[str, Any] = {
    "user_id": "", "sender_id": "", "conversation_id": _NOBODY, "after_id": _NOBODY,
    "limit": 50, "cursor": 100, "up_to_seq": 0, "content": "", "idempotency_key": "",
    "before": _FAR_FUTURE, "after_time": _FAR_FUTURE,
}
"""One value for every parameter a hot statement names, of the types real calls send."""

_ANY_MEMBER = "SELECT conversation_id::text, user_id FROM conversation_members LIMIT 1"


async def warm_connection(conn: AsyncConnection[Any]) -> None:
    """Sends ints as int8 and executes each hot statement once, prepared (module docstring).

    A statement that fails for want of schema (the API started before its migrations) leaves
    the connection cold but usable; a lost connection raises, and the pool discards it.
    """
    conn.adapters.register_dumper(int, Int8Dumper)
    try:
        member = await (await conn.execute(_ANY_MEMBER)).fetchone()
        reads = _VALUES if member is None else {
            **_VALUES, "conversation_id": member[0], "user_id": member[1],
            "sender_id": member[1]}
        for params, statements in ((reads, HOT_READS), (_VALUES, HOT_WRITES)):
            for sql in statements:
                await (await conn.execute(sql, params, prepare=True)).fetchall()
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.warning("connection_warmup_failed", error=f"{type(exc).__name__}: {exc}")
