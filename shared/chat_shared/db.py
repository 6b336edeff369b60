"""PostgreSQL access: one async SQLAlchemy engine per process over psycopg 3.

DB_SOURCE keeps the seed's plain ``postgresql://`` form; the driver is chosen here.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chat_shared.config import DatabaseSettings


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
