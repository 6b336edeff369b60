"""The gateway's catch-up reads (chat_ws_gateway.history) against real PostgreSQL.

Why: a reconnecting client is caught up from here one page at a time; a page must cost one
page whatever plan PostgreSQL picks, and no resume position (any int64) may break the read.
"""

from __future__ import annotations

import pytest

from chat_shared.config import DatabaseSettings
from chat_shared.db import Database, connect
from chat_ws_gateway.history import _AFTER, History
from tests.helpers import create_conversation, send_many


@pytest.fixture
async def db(db_source: str, db_pooler):
    """The gateway's pool; through PgBouncer as the pooled login with --through-pgbouncer."""
    pooled = {} if db_pooler is None else {
        "db_source": db_pooler.through(db_source, "chat_app_pooled"),
        "db_transaction_pooler": True}
    db = Database(DatabaseSettings(_env_file=None, **{"db_source": db_source, **pooled},
                                   database_role="chat_app"),
                  application_name="test-ws-history")
    await db.open(wait=True)
    yield db
    await db.close()


def _scans_of_messages(node: dict) -> list[dict]:
    found = [node] if node.get("Relation Name") == "messages" else []
    for child in node.get("Plans", []):
        found += _scans_of_messages(child)
    return found


async def test_pages_walk_the_conversation_in_seq_order_for_members_only(stub, db) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 7)
    history = History(db, page_size=3)
    pages = [await history.messages_after("default", "bob", conv.id, after)
             for after in (0, 3, 6, 7)]
    assert [[m.seq for m in p] for p in pages] == [[1, 2, 3], [4, 5, 6], [7], []]
    assert pages[0][0].content == "m0" and pages[0][0].conversation_id == conv.id
    assert await history.messages_after("default", "mallory", conv.id, 0) == []


async def test_a_position_at_the_int64_limit_reads_nothing_instead_of_failing(stub, db) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 2)
    assert await History(db, page_size=50).messages_after("default", "bob", conv.id,
                                                              2**63 - 1) == []


async def test_a_page_reads_only_its_own_rows_whatever_plan_postgresql_picks(stub,
                                                                             db_source) -> None:
    # Index scans off: the plan that stale statistics lead to (bitmap scan, then sort).
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 300)
    params = {"tenant": "default", "conversation_id": conv.id, "user_id": "bob", "after": 100,
              "limit": 20}
    async with await connect(db_source, application_name="test-explain",
                             statement_timeout=10) as conn:
        await conn.execute("SET enable_indexscan = off")
        await conn.execute("SET enable_indexonlyscan = off")
        result = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _AFTER, params)
        plan = (await result.fetchone())[0][0]["Plan"]
    read = _scans_of_messages(plan)
    assert read and read[0]["Node Type"] == "Bitmap Heap Scan", read
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in read) == 20  # not 200


async def test_the_change_log_pages_by_pos_rendered_from_current_rows_for_members_only(
        stub, db) -> None:
    from chat_shared.protos.chat.v1 import chat_pb2

    from tests.conftest import auth

    conv = await create_conversation(stub, "alice", ["bob"], title="log")
    [first, second] = await send_many(stub, "alice", conv.id, 2)
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(conversation_id=conv.id,
                                                           message_id=first.id),
                             metadata=auth("alice"))
    await stub.AddReaction(chat_pb2.AddReactionRequest(conversation_id=conv.id,
                                                       message_id=second.id, emoji="👍"),
                           metadata=auth("bob"))
    history = History(db, page_size=3)
    page = await history.changes_after("default", "bob", conv.id, 0)
    assert page is not None
    assert [(c.seq, c.type) for c in page] == [
        (1, "message.created"), (2, "message.created"), (3, "message.deleted")]
    # The deleted message's creation renders as it is now: a tombstone without content.
    assert (page[0].deleted, page[0].content) == (True, "")
    rest = await history.changes_after("default", "bob", conv.id, 3)
    assert rest is not None and [(c.seq, c.type, c.emoji) for c in rest] == [
        (4, "reaction.added", "👍")]
    assert await history.changes_after("default", "bob", conv.id, 4) == []
    assert await history.changes_after("default", "mallory", conv.id, 0) is None
