"""Every hot statement reads a bounded number of rows with either of the plans it can get.

psycopg runs a statement unprepared for its first executions on a connection and prepares it
after that; PostgreSQL then plans the first five executions of the prepared statement for the
values given (custom plans) before it may switch to a plan for any values (the generic plan).
A statement whose custom plan differs from its generic one therefore behaves differently on
a fresh connection: GetConversations for a member of 20,000 conversations took 400-540 ms on
each new connection (custom plan: a sequential scan of every message) and ~90 ms after.

So each statement runs here, over a data set large enough for the planner to prefer scanning
whole tables where it can (5,000 conversations of one member, 200,000 messages, 100,000 of them
in one conversation, and one of 100,000 where every tenth message is root-level and the others
answer the first: a thread of 90,000 replies), once on a fresh connection for the values given (the first call's plan)
and once with ``plan_cache_mode = force_generic_plan`` (the plan of the hundredth call). Each
plan must read no table ``messages``, ``conversation_members`` or ``message_reactions``
sequentially, and the rows it reads from them (returned by a scan, or removed by its filter)
must stay within a few pages, not grow with the data. (The reactions: 150 of them, a table of
two pages, which PostgreSQL's default ``random_page_cost`` had the generic plan of a page
scan whole for each of its messages; the API's sessions set ``API_RANDOM_PAGE_COST``.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from chat_api.storage.conversations import _BY_IDS, _LIST_AFTER, _LIST_FIRST
from chat_api.storage.messages import (
    _BATCH_PAGE,
    _BATCH_ROOT_PAGE,
    _BATCH_THREAD_PAGE,
    _PAGE,
    _ROOT_PAGE,
    _SEND,
    _SEND_PLAIN,
    _THREAD_PAGE,
)
from chat_api.storage.reads import _MARK
from chat_shared.db import API_RANDOM_PAGE_COST
from chat_ws_gateway.history import _AFTER, _MEMBER_OF

pytestmark = pytest.mark.timeout(180)

HEAVY = "heavy"  # a member of every conversation
BIG = "00000000-0000-0000-0000-000000000000"  # 100,000 messages
SMALL = "00000000-0000-0000-0000-000000000007"  # 20 messages
THREADED = "00000000-0000-0000-0001-000000000000"  # 10,000 roots and 90,000 replies
ROOT = "00000000-0000-0000-0002-000000000000"  # its first message, root of every reply
WATCHED = ("messages", "conversation_members", "message_reactions")

# One second between conversations' creations, one millisecond between messages; every
# conversation's last activity is its last message's time, as the send statement keeps it.
_GENERATE = """
    INSERT INTO conversations (id, title, created_by, created_at, last_message_at,
                               last_activity_at, last_seq, last_root_seq, member_ids)
    SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'c' || i, 'heavy',
           timestamptz '2026-01-01' + i * interval '1 second',
           timestamptz '2026-01-01' + i * interval '1 second' + n * interval '1 ms',
           timestamptz '2026-01-01' + i * interval '1 second' + n * interval '1 ms',
           n, n, ARRAY['heavy', 'other-' || i]
    FROM generate_series(0, 4999) i, LATERAL (SELECT CASE WHEN i = 0 THEN 100000 ELSE 20 END) n(n);
    INSERT INTO conversation_members (conversation_id, user_id, last_activity_at, last_read_seq)
    SELECT c.id, u, c.last_activity_at, 3 FROM conversations c, unnest(c.member_ids) u;
    INSERT INTO messages (id, conversation_id, seq, root_seq, sender_id, content,
                          idempotency_key, created_at)
    SELECT gen_random_uuid(), c.id, s, s, 'heavy', 'message ' || s, c.id::text || '-' || s,
           c.created_at + s * interval '1 ms'
    FROM conversations c, generate_series(1, c.last_seq) s;
    INSERT INTO conversations (id, title, created_by, created_at, last_message_at,
                               last_activity_at, last_seq, last_root_seq, member_ids)
    VALUES ('00000000-0000-0000-0001-000000000000', 'threads', 'heavy', '2025-12-01',
            timestamptz '2025-12-01' + 100000 * interval '1 ms',
            timestamptz '2025-12-01' + 100000 * interval '1 ms', 100000, 10000,
            ARRAY['heavy', 'other-t']);
    INSERT INTO conversation_members (conversation_id, user_id, last_activity_at, last_read_seq)
    SELECT c.id, u, c.last_activity_at, 3 FROM conversations c, unnest(c.member_ids) u
    WHERE c.id = '00000000-0000-0000-0001-000000000000';
    INSERT INTO messages (id, conversation_id, seq, root_seq, sender_id, content,
                          idempotency_key, created_at, reply_count, last_reply_at)
    VALUES ('00000000-0000-0000-0002-000000000000', '00000000-0000-0000-0001-000000000000', 1,
            1, 'heavy', 'root', 'root', timestamptz '2025-12-01' + interval '1 ms', 90000,
            timestamptz '2025-12-01' + 100000 * interval '1 ms');
    -- seq s is root-level when s % 10 = 1; (s + 9) / 10 roots are at or before it.
    INSERT INTO messages (id, conversation_id, seq, root_seq, thread_root_id, thread_seq,
                          sender_id, content, idempotency_key, created_at)
    SELECT gen_random_uuid(), '00000000-0000-0000-0001-000000000000', s, (s + 9) / 10,
           CASE WHEN s % 10 <> 1 THEN '00000000-0000-0000-0002-000000000000'::uuid END,
           CASE WHEN s % 10 <> 1 THEN s - (s + 9) / 10 END,
           'heavy', 'message ' || s, 'threaded-' || s,
           timestamptz '2025-12-01' + s * interval '1 ms'
    FROM generate_series(2, 100000) s;
    -- A few pages of reactions (on the small conversations' messages): a table the planner
    -- would rather scan whole than probe at PostgreSQL's default random_page_cost, once for
    -- each message of a page.
    INSERT INTO message_reactions (message_id, emoji, user_id, conversation_id)
    SELECT m.id, e, 'other', m.conversation_id
    FROM (SELECT id, conversation_id FROM messages
          WHERE conversation_id BETWEEN '00000000-0000-0000-0000-000000000001'
                                    AND '00000000-0000-0000-0000-000000000064'
          ORDER BY conversation_id, seq LIMIT 75) m, unnest(ARRAY['👍', '🎉']) e;
    ANALYZE;
"""


def _positional(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``%(name)s`` placeholders as ``$1, $2, ...`` (for PREPARE), and the values in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), [params[n] for n in names]


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _problems(plan: dict[str, Any], max_rows: int) -> list[str]:
    found, rows = [], 0
    for node in _nodes(plan):
        if node.get("Relation Name") not in WATCHED:
            continue
        # A node that never ran read nothing (the send's probe for a thread's root, planned
        # for a NULL root id, sits under a one-time filter that is false).
        if node["Node Type"] == "Seq Scan" and node.get("Actual Loops", 1) > 0:
            found.append(f"sequential scan of {node['Relation Name']}")
        rows += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                 + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    if rows > max_rows:
        found.append(f"read {rows} rows of {'/'.join(WATCHED)} (at most {max_rows} expected)")
    return found


async def _explain(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any],
                   generic: bool) -> dict[str, Any]:
    """The executed plan (in a transaction rolled back after: writes leave nothing)."""
    async with conn.transaction(force_rollback=True):
        if not generic:
            cur = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            return (await cur.fetchone())[0][0]["Plan"]
        text, values = _positional(sql, params)
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE hot AS {text}")
        try:
            literal = psycopg.AsyncClientCursor(conn)
            args = ", ".join(["%s"] * len(values))
            await literal.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE hot({args})", values)
            return (await literal.fetchone())[0][0]["Plan"]
        finally:
            await conn.execute("DEALLOCATE hot")


async def test_hot_statements_read_a_bounded_number_of_rows_on_a_fresh_connection_and_after(
        db_source: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await conn.execute(_GENERATE)
        cur = await conn.execute(
            "SELECT created_at FROM messages WHERE conversation_id = %s AND seq = 50000", (BIG,))
        middle = (await cur.fetchone())[0]
        cur = await conn.execute(
            "SELECT created_at FROM messages WHERE conversation_id = %s AND seq = 50005",
            (THREADED,))
        threaded_middle = (await cur.fetchone())[0]
        cur = await conn.execute(
            "SELECT last_activity_at, conversation_id::text FROM conversation_members"
            " WHERE user_id = %s ORDER BY last_activity_at, conversation_id"
            " OFFSET 2500 LIMIT 1", (HEAVY,))
        deep_page = await cur.fetchone()

    page = {"tenant": "default", "user_id": HEAVY, "limit": 51}
    cases: dict[str, tuple[str, dict[str, Any], int]] = {
        # statement: (SQL, values, rows of messages/conversation_members it may read)
        "GetConversations, first page": (_LIST_FIRST, page, 3 * 51),
        "GetConversations, a deep page": (
            _LIST_AFTER, {**page, "after_time": deep_page[0], "after_id": deep_page[1]}, 3 * 51),
        "GetConversations, a member of one": (_LIST_FIRST, {**page, "user_id": "other-7"}, 10),
        "GetMessages newest": (_PAGE["newest"], {**page, "conversation_id": BIG}, 2 * 51),
        "GetMessages before a seq": (
            _PAGE["before_seq"], {**page, "conversation_id": BIG, "cursor": 50000}, 2 * 51),
        "GetMessages after a seq": (
            _PAGE["after_seq"], {**page, "conversation_id": BIG, "cursor": 50000}, 2 * 51),
        "GetMessages before a time, 50,000 newer": (
            _PAGE["before_time"], {**page, "conversation_id": BIG, "before": middle}, 3 * 51),
        "GetMessages root-level, newest": (
            _ROOT_PAGE["newest"], {**page, "conversation_id": THREADED}, 2 * 51),
        "GetMessages root-level, newest, no replies": (
            _ROOT_PAGE["newest"], {**page, "conversation_id": BIG}, 2 * 51),
        "GetMessages root-level, before a seq": (
            _ROOT_PAGE["before_seq"], {**page, "conversation_id": THREADED, "cursor": 50005},
            2 * 51 + 2),
        "GetMessages root-level, after a seq": (
            _ROOT_PAGE["after_seq"], {**page, "conversation_id": THREADED, "cursor": 50005},
            2 * 51 + 2),
        "GetMessages root-level, before a time": (
            _ROOT_PAGE["before_time"],
            {**page, "conversation_id": THREADED, "before": threaded_middle}, 3 * 51),
        "GetMessages with replies, before a seq": (
            _PAGE["before_seq"], {**page, "conversation_id": THREADED, "cursor": 50005}, 2 * 51),
        "GetThread newest": (
            _THREAD_PAGE["newest"], {**page, "conversation_id": THREADED, "root_id": ROOT},
            2 * 51 + 2),
        "GetThread before a position": (
            _THREAD_PAGE["before"],
            {**page, "conversation_id": THREADED, "root_id": ROOT, "cursor": 45000}, 2 * 51 + 2),
        "GetThread after a position": (
            _THREAD_PAGE["after"],
            {**page, "conversation_id": THREADED, "root_id": ROOT, "cursor": 45000}, 2 * 51 + 2),
        # A binary search: about 17 probes for 90,000 replies, then the page.
        "GetThread after a seq": (
            _THREAD_PAGE["after_seq"],
            {**page, "conversation_id": THREADED, "root_id": ROOT, "after": 50005},
            2 * 51 + 2 + 20),
        # Batches (GraphQL's nested lists): each item's page as the single statement reads it.
        "GetMessages newest, a batch": (
            _BATCH_PAGE["newest"], {**page, "conversation_ids": [BIG, SMALL, THREADED],
                                    "cursors": [0, 0, 0]}, 3 * 2 * 51),
        "GetMessages after a seq, a batch": (
            _BATCH_PAGE["after_seq"], {**page, "conversation_ids": [BIG, THREADED],
                                       "cursors": [50000, 50005]}, 2 * 2 * 51),
        "GetMessages root-level, newest, a batch": (
            _BATCH_ROOT_PAGE["newest"], {**page, "conversation_ids": [THREADED, BIG, SMALL],
                                         "cursors": [0, 0, 0]}, 3 * 2 * 51),
        "GetMessages root-level, before a seq, a batch": (
            _BATCH_ROOT_PAGE["before_seq"], {**page, "conversation_ids": [THREADED, BIG],
                                             "cursors": [50005, 50000]}, 2 * (2 * 51 + 2)),
        "GetMessages root-level, after a seq, a batch": (
            _BATCH_ROOT_PAGE["after_seq"], {**page, "conversation_ids": [THREADED, BIG],
                                            "cursors": [50005, 50000]}, 2 * (2 * 51 + 2)),
        "GetThread newest, a batch": (
            _BATCH_THREAD_PAGE["newest"], {**page, "conversation_ids": [THREADED, THREADED],
                                           "root_ids": [ROOT, ROOT], "cursors": [0, 0]},
            2 * (2 * 51 + 2)),
        "GetThread after a seq, a batch": (
            _BATCH_THREAD_PAGE["after_seq"], {**page, "conversation_ids": [THREADED],
                                              "root_ids": [ROOT], "cursors": [50005]},
            2 * 51 + 2 + 20),
        "GetConversation, a batch": (
            _BY_IDS, {**page, "conversation_ids": [BIG, SMALL, THREADED, deep_page[1]]}, 3 * 4),
        "SendMessage": (_SEND, {"tenant": "default", "conversation_id": SMALL,
                                "sender_id": HEAVY, "content": "x",
                                "idempotency_key": "plan-test", "thread_root_id": None,
                                "attachment_ids": [], "attachment_sizes": [],
                                "attachment_types": [], "ciphertext": None}, 10),
        "SendMessage, plain": (_SEND_PLAIN, {"tenant": "default", "conversation_id": SMALL,
                                             "sender_id": HEAVY, "content": "x",
                                             "idempotency_key": "plan-test-plain"}, 10),
        "SendMessage, a reply": (_SEND, {"tenant": "default", "conversation_id": THREADED,
                                         "sender_id": HEAVY, "content": "x",
                                         "idempotency_key": "plan-test",
                                         "thread_root_id": ROOT,
                                         "attachment_ids": [], "attachment_sizes": [],
                                         "attachment_types": [], "ciphertext": None}, 12),
        "MarkAsRead": (_MARK, {"tenant": "default", "conversation_id": BIG, "user_id": HEAVY,
                               "up_to_seq": 0}, 10),
        "gateway: member of": (_MEMBER_OF, {"tenant": "default", "user_id": HEAVY,
                                            "ids": [BIG, SMALL]}, 10),
        "gateway: catch-up": (
            _AFTER, {"tenant": "default", "conversation_id": BIG, "user_id": HEAVY,
                     "after": 50000, "limit": 100},
            2 * 100),
    }
    failures = []
    for name, (sql, params, max_rows) in cases.items():
        for generic in (False, True):
            # A fresh connection per statement and plan: nothing cached from an earlier call.
            # As the services run it: the role row-level security holds, in the tenant's
            # context, so the plans include the tenant policy; with the API's planner costs.
            async with await psycopg.AsyncConnection.connect(
                    db_source, autocommit=True,
                    options=f"-c role=chat_app -c random_page_cost={API_RANDOM_PAGE_COST}"
                    ) as conn:
                await conn.execute("SELECT set_config('app.tenant_id', 'default', false)")
                plan = await _explain(conn, sql, params, generic)
            kind = "generic plan" if generic else "first call's plan"
            failures += [f"{name} ({kind}): {p}" for p in _problems(plan, max_rows)]
    assert not failures, "\n".join(failures)
