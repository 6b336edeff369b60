"""The shared database layer (chat_shared.db) against real PostgreSQL.

Why: every service reaches PostgreSQL through it, so its conventions are the whole system's:
a statement never runs longer than DB_STATEMENT_TIMEOUT, sessions read and write time in UTC,
``pg_stat_activity`` names each process, single statements autocommit, several statements
commit together only inside ``transaction()``, and "the database is gone" is Unavailable (for
pooled and dedicated, async and sync connections alike) while every other error passes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chat_devtools.local_postgres import LocalPostgres
from chat_shared import deadlines
from chat_shared.config import DatabaseSettings
from chat_shared.db import (
    Database,
    _session_options,
    commit,
    connect,
    connect_sync,
    conninfo,
)
from chat_shared.errors import DeadlineExceeded, Unavailable
from chat_shared.observability import tracing


def settings(db_source: str, **values: object) -> DatabaseSettings:
    return DatabaseSettings(_env_file=None, db_source=db_source, **values)  # type: ignore[arg-type]


@pytest.fixture
async def db(db_source: str) -> AsyncIterator[Database]:
    database = Database(settings(db_source), application_name="chat-test-db")
    await database.open(wait=True)
    yield database
    await database.close()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test (an SDK provider is installed when none is yet)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_recording(True)
    yield exporter
    tracing.set_recording(False)


# --- session options --------------------------------------------------------------------------

async def test_a_statement_longer_than_db_statement_timeout_is_cancelled_as_unavailable(
        db_source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT", "200ms")
    database = Database(settings(db_source), application_name="chat-test-db")
    await database.open(wait=True)
    try:
        assert await database.fetchone("db.show", "SHOW statement_timeout") == ("200ms",)
        started = time.monotonic()
        with pytest.raises(Unavailable) as err:
            await database.fetchone("db.sleep", "SELECT pg_sleep(5)")
        assert isinstance(err.value.__cause__, psycopg.errors.QueryCanceled)
        assert time.monotonic() - started < 4  # cancelled, not waited out
        # The pool's connection survived the cancellation.
        assert await database.fetchone("db.one", "SELECT 1") == (1,)
    finally:
        await database.close()


async def test_dedicated_connections_get_the_same_statement_timeout(db_source: str) -> None:
    async with await connect(db_source, application_name="chat-test-db",
                             statement_timeout=0.2) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(5)")
    with connect_sync(db_source, application_name="chat-test-db",
                      statement_timeout=0.2) as sync_conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            sync_conn.execute("SELECT pg_sleep(5)")


async def test_sessions_run_in_utc_whatever_the_server_default(postgres: LocalPostgres,
                                                               db_source: str) -> None:
    # The database's own default is another zone: only the session option makes it UTC.
    dbname = db_source.rsplit("/", 1)[1].split("?")[0]
    postgres.psql(f"ALTER DATABASE \"{dbname}\" SET TimeZone = 'America/New_York'")
    database = Database(settings(db_source), application_name="chat-test-db")
    await database.open(wait=True)
    try:
        row = await database.fetchone(
            "db.time", "SELECT current_setting('TimeZone'), now(), to_json(now())::text")
        assert row is not None
        zone, now, rendered = row
        assert zone == "UTC"
        assert now.utcoffset() == timedelta(0)
        assert rendered.endswith('+00:00"')  # what outbox payloads carry
    finally:
        await database.close()
    async with await connect(db_source, application_name="x", statement_timeout=5) as conn:
        assert (await (await conn.execute("SHOW TimeZone")).fetchone()) == ("UTC",)
    with connect_sync(db_source, application_name="x", statement_timeout=5) as sync_conn:
        assert sync_conn.execute("SHOW TimeZone").fetchone() == ("UTC",)


async def test_a_dedicated_session_takes_further_settings_and_refuses_unsafe_ones(
        db_source: str) -> None:
    async with await connect(db_source, application_name="x", statement_timeout=5,
                             settings={"plan_cache_mode": "force_generic_plan",
                                       "work_mem": "8MB"}) as conn:
        shown = [(await (await conn.execute(f"SHOW {name}")).fetchone())
                 for name in ("plan_cache_mode", "work_mem", "TimeZone")]
    assert shown == [("force_generic_plan",), ("8MB",), ("UTC",)]
    # The startup packet's options are split on spaces: nothing may smuggle in another -c.
    for bad in ({"work_mem": "8MB -c role=postgres"}, {"work mem": "8MB"}, {"x": ""}):
        with pytest.raises(ValueError, match="cannot go in options"):
            await connect(db_source, application_name="x", statement_timeout=5, settings=bad)
    with pytest.raises(ValueError, match="transaction pooler"):
        _session_options(application_name="x", statement_timeout=5, pooled=True,
                         settings={"work_mem": "8MB"})


async def test_every_session_carries_its_application_name(db: Database, db_source: str) -> None:
    async with await connect(db_source, application_name="chat-test-dedicated",
                             statement_timeout=5) as conn:
        names = await (await conn.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database()")).fetchall()
    assert {"chat-test-db", "chat-test-dedicated"} <= {n for (n,) in names}
    with connect_sync(db_source, application_name="chat-test-sync",
                      statement_timeout=5) as sync_conn:
        assert sync_conn.execute("SHOW application_name").fetchone() == ("chat-test-sync",)


def test_db_source_in_sqlalchemy_form_is_accepted() -> None:
    assert conninfo("postgresql+psycopg://u:p@h:5/d?sslmode=disable") == \
        "postgresql://u:p@h:5/d?sslmode=disable"
    assert conninfo("postgresql://u@h/d") == "postgresql://u@h/d"
    assert conninfo("host=h dbname=d") == "host=h dbname=d"


# --- statements and units of work --------------------------------------------------------------

async def test_named_parameters_are_psycopgs_own_and_may_repeat(db: Database) -> None:
    row = await db.fetchone("db.params", "SELECT %(n)s::int + %(n)s::int, %(text)s::text",
                            {"n": 21, "text": ":not_a_parameter"})
    assert row == (42, ":not_a_parameter")
    assert await db.fetchall("db.rows", "SELECT g FROM generate_series(1, %(n)s) g",
                             {"n": 3}) == [(1,), (2,), (3,)]


async def test_single_statements_autocommit(db: Database, db_source: str) -> None:
    async with db.connection("db.create") as conn:
        await conn.execute("CREATE TABLE t (v int)")
    assert await db.fetchone("db.insert", "INSERT INTO t VALUES (%(v)s) RETURNING v",
                             {"v": 1}) == (1,)
    # Seen from another session at once: nothing was left open.
    with connect_sync(db_source, application_name="x", statement_timeout=5) as other:
        assert other.execute("SELECT v FROM t").fetchall() == [(1,)]


async def test_a_transaction_commits_its_statements_together_or_not_at_all(
        db: Database) -> None:
    async with db.connection("db.create") as conn:
        await conn.execute("CREATE TABLE t (v int PRIMARY KEY)")
    async with db.transaction("db.both") as conn:
        await conn.execute("INSERT INTO t VALUES (1)")
        await conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with db.transaction("db.half") as conn:
            await conn.execute("INSERT INTO t VALUES (3)")
            await conn.execute("INSERT INTO t VALUES (1)")  # fails: 3 must go too
    assert await db.fetchall("db.read", "SELECT v FROM t ORDER BY v") == [(1,), (2,)]


async def test_a_pipelined_transaction_commits_its_statements_together_or_not_at_all(
        db: Database, db_source: str, caplog: pytest.LogCaptureFixture) -> None:
    """``tenant_transaction`` sends BEGIN and COMMIT with its statements (pipeline mode) and
    holds to what ``transaction`` holds to: whether a statement fails at the commit or at a read
    in the block, the block raises, or the block commits early to read what it wrote."""
    async with db.connection("db.create") as conn:
        await conn.execute("CREATE TABLE t (v int PRIMARY KEY)")
    async with db.tenant_transaction("db.both", "t1") as conn:
        first = await conn.execute("INSERT INTO t VALUES (1) RETURNING v")
        assert await first.fetchone() == (1,)  # a read in the block: the transaction goes on
        await conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with db.tenant_transaction("db.half", "t1") as conn:
            await conn.execute("INSERT INTO t VALUES (3)")
            await conn.execute("INSERT INTO t VALUES (1)")  # fails (at the commit): 3 goes too
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with db.tenant_transaction("db.failed_read", "t1") as conn:
            await conn.execute("INSERT INTO t VALUES (4)")
            await (await conn.execute("INSERT INTO t VALUES (2) RETURNING v")).fetchone()
    with pytest.raises(ZeroDivisionError):
        async with db.tenant_transaction("db.raised", "t1") as conn:
            await conn.execute("INSERT INTO t VALUES (5)")
            count = await (await conn.execute("SELECT count(*) FROM t")).fetchone()
            assert count == (3,)  # its own insert, seen in the block
            raise ZeroDivisionError
    async with db.tenant_transaction("db.early", "t1") as conn:
        written = await conn.execute("INSERT INTO t VALUES (6) RETURNING v")
        await commit(conn)
        assert await written.fetchone() == (6,)
    assert await db.fetchall("db.read", "SELECT v FROM t ORDER BY v") == [(1,), (2,), (6,)]
    with connect_sync(db_source, application_name="x", statement_timeout=5) as other:
        assert other.execute("SELECT count(*) FROM t").fetchone() == (3,)
    # No connection went back to the pool inside a transaction (the pool would roll it back
    # and say so).
    assert "returned connection" not in caplog.text


async def test_a_rolled_back_pipelined_transaction_leaves_prepared_statements_usable(
        db_source: str) -> None:
    """A ROLLBACK clears psycopg's prepared-statement cache and queues a DEALLOCATE ALL. Sent
    inside a pipeline, that DEALLOCATE ran only after the connection's next statement, which
    had just been prepared again: its next use failed with 'prepared statement "_pg3_N" does
    not exist' (seen as INTERNAL on an HTTP call after a refused change). One connection, so
    every unit of work here uses the one the failed transaction left."""
    database = Database(settings(db_source, db_pool_size=1, db_max_overflow=0),
                        application_name="chat-test-db")
    await database.open(wait=True)
    try:
        for attempt in range(3):
            with pytest.raises(ZeroDivisionError):
                async with database.tenant_transaction("db.raised", f"t{attempt}") as conn:
                    await conn.execute("SELECT 1")
                    raise ZeroDivisionError
            for _ in range(3):  # clears the tenant (a prepared SET), then reads, each time
                assert await database.fetchone("db.after", "SELECT 2") == (2,)
                async with database.tenant_transaction("db.next", "t9") as conn:
                    await conn.execute("SELECT 3")
    finally:
        await database.close()


async def test_errors_other_than_unavailability_pass_through(db: Database) -> None:
    with pytest.raises(psycopg.errors.SyntaxError):
        await db.fetchone("db.bad", "SELEC 1")
    with pytest.raises(psycopg.errors.UndefinedTable):
        async with db.connection("db.bad") as conn:
            await conn.execute("SELECT * FROM no_such_table")


async def test_each_unit_of_work_is_a_span_named_after_it(db: Database,
                                                          spans: InMemorySpanExporter) -> None:
    await db.fetchone("db.first", "SELECT 1")
    await db.fetchall("db.second", "SELECT 1")
    async with db.connection("db.third") as conn:
        await conn.execute("SELECT 1")
    names = [s.name for s in spans.get_finished_spans()]
    assert names[-3:] == ["db.first", "db.second", "db.third"]


# --- PostgreSQL down ---------------------------------------------------------------------------

@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A server of this test's own, to stop without disturbing the others."""
    pg = LocalPostgres().start()
    yield pg
    pg.cleanup()


async def test_postgresql_down_is_unavailable_everywhere(own_postgres: LocalPostgres) -> None:
    dsn = own_postgres.dsn()
    database = Database(settings(dsn, db_pool_timeout=1.0), application_name="chat-test-db")
    await database.open(wait=True)
    try:
        assert await database.fetchone("db.one", "SELECT 1") == (1,)
        assert await database.ping()
        own_postgres.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await database.fetchone("db.one", "SELECT 1")
        with pytest.raises(Unavailable):
            await database.fetchall("db.one", "SELECT 1")
        with pytest.raises(Unavailable):
            async with database.connection("db.one") as conn:
                await conn.execute("SELECT 1")
        assert not await database.ping()
        with pytest.raises(Unavailable):
            await connect(dsn, application_name="x", statement_timeout=5)
        with pytest.raises(Unavailable):
            connect_sync(dsn, application_name="x", statement_timeout=5)
        assert time.monotonic() - started < 30  # bounded: pool and connect timeouts
    finally:
        await database.close()


# --- bounded by the caller's deadline (a frozen server: tests/integration/test_postgres_freeze) --

async def test_a_statement_running_at_the_callers_deadline_ends_deadline_exceeded(
        db: Database) -> None:
    started = time.monotonic()
    with deadlines.deadline_after(0.3), pytest.raises(DeadlineExceeded):
        await db.fetchone("db.sleep", "SELECT pg_sleep(5)")
    assert time.monotonic() - started < 2.0
    # The connection it ran on was dropped, not returned busy: the next unit of work runs.
    assert await db.fetchone("db.one", "SELECT 1") == (1,)


async def test_a_deadline_already_passed_takes_no_connection(db: Database) -> None:
    before = db.stats().get("requests_num", 0)
    with deadlines.deadline_after(0.0), pytest.raises(DeadlineExceeded):
        await db.fetchall("db.one", "SELECT 1")
    assert db.stats().get("requests_num", 0) == before


async def test_work_within_the_callers_deadline_is_not_affected(db: Database) -> None:
    with deadlines.deadline_after(5.0):
        assert await db.fetchone("db.sleep", "SELECT 1 FROM pg_sleep(0.2)") == (1,)
        async with db.transaction("db.two") as conn:
            await conn.execute("SELECT pg_sleep(0.2)")
            await conn.execute("SELECT 1")
