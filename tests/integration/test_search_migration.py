"""Migration 0008s on a database with messages: existing messages get their vectors, and
sends keep committing while the GIN index builds (CREATE INDEX CONCURRENTLY).

How the build is caught in the act: CREATE INDEX CONCURRENTLY waits, after building, for
every transaction whose snapshot is older than its own. The test holds such a transaction
open (on another table) before migrating, so the build stays in that wait, visible in
pg_stat_activity, for as long as the test wants; the sends run then, under a lock timeout,
so a send that a lock on messages held back fails instead of waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import subprocess
import uuid

import psycopg

from chat_devtools.local_postgres import LocalPostgres

_names = itertools.count()


async def wait_for_build(dsn: str, attempts: int = 600) -> None:
    """Until the migration's CREATE INDEX CONCURRENTLY waits for the old snapshot."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(attempts):
            row = await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX"
                " CONCURRENTLY%%' AND wait_event_type = 'Lock'")).fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the index build never reached its wait")


async def test_sends_commit_while_the_search_index_builds(postgres: LocalPostgres,
                                                          venv_bin: pathlib.Path,
                                                          tmp_path: pathlib.Path) -> None:
    dsn = postgres.create_database(f"search_migr_{os.getpid()}_{next(_names)}")
    env = {k: v for k, v in os.environ.items() if k.upper() != "DB_SOURCE"}
    env["DB_SOURCE"] = dsn

    def migrate(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(venv_bin / "chat-migrate"), *args], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = subprocess.run(  # noqa: ASYNC221 - nothing else runs on the loop yet
        [str(venv_bin / "chat-migrate"), "upgrade", "0007"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=90)
    assert first.returncode == 0, first.stderr
    conv = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO conversations (id, created_by, member_ids) VALUES (%s, 'a', '{a}')",
            (conv,))
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, content,"
            " idempotency_key) SELECT gen_random_uuid(), %s, g, 'a', 'older words ' || g,"
            " 'k' || g FROM generate_series(1, 12000) g", (conv,))
        await conn.execute("UPDATE conversations SET last_seq = 12000 WHERE id = %s", (conv,))

    old = await psycopg.AsyncConnection.connect(dsn)
    await old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    await old.execute("SELECT count(*) FROM tenants")
    running = migrate("upgrade", "0008s")
    try:
        await wait_for_build(dsn)
        assert running.poll() is None
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("SET lock_timeout = '5s'")
            for i in range(20):
                await conn.execute(
                    "WITH c AS (UPDATE conversations SET last_seq = last_seq + 1 WHERE id = %s"
                    " RETURNING last_seq) INSERT INTO messages (id, conversation_id, seq,"
                    " sender_id, content, idempotency_key) SELECT gen_random_uuid(), %s,"
                    " c.last_seq, 'a', %s, %s FROM c",
                    (conv, conv, f"newer Wörds {i}", f"n{i}"))
        assert running.poll() is None, "the build finished before the sends: nothing shown"
    finally:
        await old.rollback()
        await old.close()
        _, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        valid = await (await conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid ="
            " 'ix_messages_search'::regclass")).fetchone()
        assert valid == (True,)
        counts = await (await conn.execute(
            "SELECT count(*) FILTER (WHERE search_vector IS NULL),"
            " count(*) FILTER (WHERE search_vector @@ to_tsquery('chat_search', 'older')),"
            " count(*) FILTER (WHERE search_vector @@ to_tsquery('chat_search', 'words'))"
            " FROM messages")).fetchone()
        assert counts == (0, 12000, 12020)
