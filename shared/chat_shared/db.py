"""PostgreSQL access: one async SQLAlchemy engine per process over psycopg 3.

DB_SOURCE keeps the seed's plain ``postgresql://`` form; the driver is chosen here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chat_shared.config import DatabaseSettings
from chat_shared.errors import Unavailable


def sqlalchemy_url(db_source: str) -> str:
    """``postgresql://...`` -> ``postgresql+psycopg://...`` (psycopg 3, sync or async)."""
    parts = urlsplit(db_source)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def redacted(db_source: str) -> str:
    """The URL with its password hidden, for logs."""
    parts = urlsplit(db_source)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def create_engine(
    settings: DatabaseSettings, *, application_name: str, autocommit: bool = False
) -> AsyncEngine:
    """The process's engine.

    ``autocommit=True`` suits a process whose every unit of work is one SQL statement (the
    API): a statement is atomic on its own, and skipping BEGIN/COMMIT saves two round trips
    per call. Processes that need multi-statement transactions (the relay) keep the default.
    """
    if not settings.db_source:
        raise ValueError("DB_SOURCE is not set")
    timeout_ms = int(settings.db_statement_timeout * 1000)
    extra = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_async_engine(
        sqlalchemy_url(settings.db_source),
        **extra,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "application_name": application_name,
            "options": f"-c statement_timeout={timeout_ms}",
            "connect_timeout": 5,
        },
    )


async def ping(engine: AsyncEngine) -> bool:
    """True when PostgreSQL answers a trivial query."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def create_pool(
    settings: DatabaseSettings, *, application_name: str, autocommit: bool = True
) -> AsyncConnectionPool:
    """A psycopg connection pool for hot paths (opened by the caller: ``await pool.open()``).

    Measured here, a checkout through SQLAlchemy's async pool costs about 0.25 ms more per
    statement than psycopg_pool (greenlet bridging), which is most of a 1 ms read; the API's
    statements are plain SQL already, so they run on psycopg directly. Statements that run
    often are prepared server-side by psycopg after a few executions per connection.

    Sessions run in the time zone named ``UTC``: psycopg then converts each timestamptz with
    Python's fixed UTC offset instead of a zoneinfo lookup (a page of 50 conversations reads
    150 timestamps; 181 -> 140 us measured). The instants are the same in any zone.
    """
    if not settings.db_source:
        raise ValueError("DB_SOURCE is not set")
    timeout_ms = int(settings.db_statement_timeout * 1000)
    return AsyncConnectionPool(
        settings.db_source,
        min_size=min(2, settings.db_pool_size),
        max_size=settings.db_pool_size + settings.db_max_overflow,
        timeout=settings.db_pool_timeout,
        kwargs={
            "autocommit": autocommit,
            "application_name": application_name,
            "options": f"-c statement_timeout={timeout_ms} -c TimeZone=UTC",
            "connect_timeout": 5,
        },
        name=application_name,
        open=False,
    )


async def ping_pool(pool: AsyncConnectionPool) -> bool:
    """True when PostgreSQL answers a trivial query through the pool."""
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:
        return False


@contextlib.contextmanager
def unavailable_on_connection_errors() -> Iterator[None]:
    """Turns "the database cannot be reached" into Unavailable (clients may retry)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise Unavailable("database unavailable") from exc
