"""The gateway's catch-up reads (chat_ws_gateway.history) against real PostgreSQL.

Why: a reconnecting client is caught up from here one page at a time; a page must cost one
page whatever plan PostgreSQL picks, and no resume position (any int64) may break the read.
"""

from __future__ import annotations

import pytest
from chat_shared.db import sqlalchemy_url
from chat_ws_gateway.history import _AFTER, History
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import create_conversation, send_many


@pytest.fixture
async def engine(db_source: str):
    engine = create_async_engine(sqlalchemy_url(db_source), isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


def _scans_of_messages(node: dict) -> list[dict]:
    found = [node] if node.get("Relation Name") == "messages" else []
    for child in node.get("Plans", []):
        found += _scans_of_messages(child)
    return found


async def test_pages_walk_the_conversation_in_seq_order_for_members_only(stub, engine) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 7)
    history = History(engine, page_size=3)
    pages = [await history.messages_after("bob", conv.id, after) for after in (0, 3, 6, 7)]
    assert [[m.seq for m in p] for p in pages] == [[1, 2, 3], [4, 5, 6], [7], []]
    assert pages[0][0].content == "m0" and pages[0][0].conversation_id == conv.id
    assert await history.messages_after("mallory", conv.id, 0) == []


async def test_a_position_at_the_int64_limit_reads_nothing_instead_of_failing(stub,
                                                                              engine) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 2)
    assert await History(engine, page_size=50).messages_after("bob", conv.id, 2**63 - 1) == []


async def test_a_page_reads_only_its_own_rows_whatever_plan_postgresql_picks(stub,
                                                                             engine) -> None:
    # Index scans off: the plan that stale statistics lead to (bitmap scan, then sort).
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 300)
    params = {"conversation_id": conv.id, "user_id": "bob", "after": 100, "limit": 20}
    async with engine.connect() as conn:
        await conn.execute(text("SET enable_indexscan = off"))
        await conn.execute(text("SET enable_indexonlyscan = off"))
        result = await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + _AFTER.text),
                                    params)
        plan = result.scalar_one()[0]["Plan"]
    read = _scans_of_messages(plan)
    assert read and read[0]["Node Type"] == "Bitmap Heap Scan", read
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in read) == 20  # not 200
