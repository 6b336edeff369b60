"""Warms a new pooled connection before the pool hands it out.

A new PostgreSQL server process knows nothing yet: its first statement on a table loads the
table's and its indexes' catalog entries, and each statement is parsed and planned in full
(and, prepared, planned again for each of its first five executions before PostgreSQL settles
on a generic plan). Measured with chat-bench's scaling phase (quick size), the first
GetConversations on a fresh connection took 2.3-8.6 ms against a warm 0.5 ms. The pool
recycles connections (and replaces them after errors), so a fraction of calls kept paying it.

``warm_connection`` runs in the pool's ``configure`` hook (in the pool's worker, before the
connection serves anyone) and executes every hot statement once, prepared, with values that
match nothing (an all-zero conversation id, an empty user and tenant; no tenant is set either,
so row-level security shows the statements no row at all): the sends and read marks among
them find no conversation, so nothing is read, locked or written. With the API's sessions in
``plan_cache_mode=force_generic_plan`` (``Database(generic_plans=True)``) that one execution
leaves each statement's generic plan cached: the connection's first real call costs what its
hundredth does (same scaling run: 0.7-1.0 ms first call, 0.44 ms warm).

Every int goes as int8 on the API's connections: psycopg sends a Python int as int2, int4 or
int8 by its value and prepares a statement once per parameter types, so a page cursor of 100
and one of 100,000 were two prepared statements, the second unwarmed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from chat_shared.db import SET_TENANT
from chat_shared.observability.logging import get_logger

log = get_logger(__name__)

HOT_STATEMENTS: tuple[str, ...] = (_LIST_FIRST, _LIST_AFTER, *_ROOT_PAGE.values(),
                                   *_PAGE.values(), *_THREAD_PAGE.values(), _SEND_PLAIN, _SEND,
                                   _BY_KEY,
                                   _MARK, *ONE_ROUND_TRIP_STATEMENTS)
"""The statements of the calls made most (lists, timelines and threads, sends, retries, read
marks, edits and reactions)."""

_NOBODY = "00000000-0000-0000-0000-000000000000"
_VALUES: dict[str, Any] = {
    "tenant": "", "user_id": "", "sender_id": "", "conversation_id": _NOBODY, "after_id": _NOBODY,
    "limit": 50, "cursor": 100, "up_to_seq": 0, "content": "", "idempotency_key": "",
    "attachment_ids": [], "attachment_sizes": [], "attachment_types": [],  # no attachments
    "root_id": _NOBODY, "after": 100, "message_id": _NOBODY, "emoji": "", "thread_root_id": None,
    "ciphertext": None,  # what a send in a plain conversation passes
    "before": datetime(1970, 1, 1, tzinfo=UTC), "after_time": datetime(1970, 1, 1, tzinfo=UTC),
}
"""One value for every parameter a hot statement names, of the types real calls send (psycopg
sends a small int as int2: a statement is prepared per parameter types)."""


async def warm_connection(conn: AsyncConnection[Any]) -> None:
    """Executes each hot statement once, prepared, matching nothing (module docstring).

    A statement that fails for want of schema (the API started before its migrations) leaves
    the connection cold but usable; a lost connection raises, and the pool discards it.
    """
    conn.adapters.register_dumper(int, Int8Dumper)
    warm: list[tuple[str, Sequence[Any] | Mapping[str, Any]]] = [(SET_TENANT, ("",))]
    warm += [(sql, _VALUES) for sql in HOT_STATEMENTS]
    for sql, values in warm:
        try:
            await conn.execute(sql, values, prepare=True)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log.warning("connection_warmup_failed", error=f"{type(exc).__name__}: {exc}")
            return
