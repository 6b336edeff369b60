"""Every pooled connection of the API serves its first call warm: the hot statements are
prepared (generic plans) by the pool's configure hook before anyone gets the connection, the
session is left naming the default tenant, and the warm-up itself locks and writes nothing."""

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


async def test_a_large_cursor_reuses_the_warmed_statement(stub, db_source: str) -> None:
    """psycopg would send 100 as int2 and 100,000 as int4, two prepared statements of which the
    warm-up prepared one: on the API's connections every int goes as int8."""
    import psycopg

    from chat_api.storage.messages import _PAGE
    from chat_api.storage.warmup import warm_connection
    from chat_shared.db import tenant_execute

    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "hello")
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await warm_connection(conn)
        for cursor in (2, 40_000, 3_000_000_000):  # int2, int4 and int8 by value
            for _ in range(6):  # past psycopg's prepare threshold
                rows = await (await tenant_execute(conn, "default", _PAGE["before_seq"], {
                    "tenant": "default", "conversation_id": conv.id, "user_id": "alice",
                    "cursor": cursor, "limit": 50})).fetchall()
                # A page is a seq range below the cursor: only the smallest reaches seq 1.
                assert len([r for r in rows if r[0] is not None]) == (cursor == 2)
        prepared = await (await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements")).fetchone()
    assert prepared == (len(HOT_STATEMENTS) + 1,)  # and the tenant setting


async def test_the_first_call_for_the_default_tenant_sends_its_statement_alone(
        stub, db_source: str) -> None:
    """The warm-up leaves the session naming the default tenant: the first call for it sends
    no tenant setting before its statement (libpq's trace of what the client sent)."""
    import tempfile

    import psycopg
    from psycopg.pq import Trace

    from chat_api.storage.messages import _ROOT_PAGE
    from chat_api.storage.warmup import warm_connection
    from chat_shared.db import tenant_execute
    from chat_shared.tenancy import DEFAULT_TENANT

    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "hello")
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True,
                                                     options="-c role=chat_app") as conn:
        await warm_connection(conn)
        with tempfile.TemporaryFile() as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)
            rows = await (await tenant_execute(conn, DEFAULT_TENANT, _ROOT_PAGE["newest"], {
                "tenant": DEFAULT_TENANT, "conversation_id": conv.id, "user_id": "alice",
                "limit": 51})).fetchall()
            conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[2].split(" ")[0] for line in
                    trace.read().decode().splitlines() if line.startswith("F\t")]
    assert [row[0] is not None for row in rows] == [True]  # the message, so the tenant's rows
    # One statement, already prepared: no Parse, one Bind (the tenant's setting would be one).
    assert "Parse" not in sent
    assert sent.count("Bind") == 1, sent


async def test_work_without_a_tenant_on_a_warmed_connection_sees_no_tenants_rows(
        stub, db_source: str) -> None:
    """Leaving the default tenant named is what any call for it does: chat_shared.db knows it,
    so work without a tenant clears it first (clear_tenant, as Database.fetchone does)."""
    import psycopg

    from chat_api.storage.warmup import warm_connection
    from chat_shared.db import clear_tenant

    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "hello")
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True,
                                                     options="-c role=chat_app") as conn:
        await warm_connection(conn)
        named = await (await conn.execute("SELECT count(*) FROM messages")).fetchone()
        await clear_tenant(conn)
        cleared = await (await conn.execute("SELECT count(*) FROM messages")).fetchone()
    assert named == (1,)  # the warm-up named the default tenant
    assert cleared == (0,)  # and work without one sees none of its rows
