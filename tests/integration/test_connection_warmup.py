"""Every pooled connection of the API serves its first call warm: the hot statements are
prepared (generic plans) by the pool's configure hook before anyone gets the connection, and
the warm-up itself reads, locks and writes nothing."""

from __future__ import annotations

from chat_api.storage.warmup import HOT_STATEMENTS
from tests.helpers import create_conversation, db_rows, send


async def test_a_new_pooled_connection_has_every_hot_statement_prepared(api, stub) -> None:
    async with api.db.pool.connection() as conn:
        mode = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
        prepared = await (await conn.execute(
            "SELECT statement, generic_plans FROM pg_prepared_statements")).fetchall()
    assert mode == ("force_generic_plan",)
    texts = [" ".join(row[0].split()) for row in prepared]
    for sql in HOT_STATEMENTS:
        # The text up to its first parameter (PostgreSQL shows it as $n).
        head = " ".join(sql.split())[:60].split("%(")[0]
        assert any(head in text for text in texts), head
    # Generic plans, built by the warm-up's own execution: the first real call plans nothing.
    assert all(row[1] >= 1 for row in prepared)


async def test_the_warmup_changes_no_data(stub, db_source: str) -> None:
    import psycopg

    from chat_api.storage.warmup import warm_connection

    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "hello")
    counts = ("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM outbox),"
              " (SELECT count(*) FROM conversations), (SELECT sum(last_seq) FROM conversations),"
              " (SELECT max(last_activity_at) FROM conversation_members)")
    before = await db_rows(db_source, counts)
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await warm_connection(conn)
        prepared = await (await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements")).fetchone()
    # Every statement ran (none failed), and the tenant setting that goes before each.
    assert prepared == (len(HOT_STATEMENTS) + 1,)
    assert await db_rows(db_source, counts) == before
