"""The PostgreSQL settings a run measured on, read back from the server (never assumed).

Whether a commit waits for its WAL to reach the disk decides much of what a send costs (one
fdatasync took about 1.2 ms on the machine of docs/performance.md), so every result records
the server's durability settings, what a group commit is tuned with (``commit_delay``,
``commit_siblings``), its cache size and its version, as the server reports them
(``current_setting``, i.e. ``SHOW``): for the stack started here and for a running one alike.
Every table of a run whose settings may lose committed data says so (``label``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from chat_shared.db import conninfo

DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
"""Off, any of these may lose committed transactions in a crash (fsync and full_page_writes:
or corrupt the cluster)."""

RECORDED = ("server_version", *DURABILITY, "wal_sync_method", "commit_delay", "commit_siblings",
            "shared_buffers")

_READ = "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name"


async def read_settings(db_source: str) -> dict[str, str]:
    """``RECORDED``'s values as the server at ``db_source`` reports them."""
    async with await psycopg.AsyncConnection.connect(conninfo(db_source),
                                                     connect_timeout=5) as conn:
        cur = await conn.execute(_READ, (list(RECORDED),))
        return {str(name): str(value) for name, value in await cur.fetchall()}


def analyze(db_source: str) -> bool:
    """``ANALYZE`` the database at ``db_source`` (blocking); False when there is no address.

    Why: a phase times calls on rows it has just written, in tables the stack created minutes
    before. A running deployment's tables have statistics (autovacuum gathers them once a
    table has changed by a tenth); these have none until autovacuum's next pass (a minute
    apart by default), so the planner guesses, and measured plans read every row of a tenant
    where an index finds one, then switch halfway through a phase when autovacuum comes. So
    every data load is followed by this, before the timing starts. A role that does not own
    the tables is told "skipping" and nothing is analysed: a running stack given by address
    is measured as it is.
    """
    if not db_source:
        return False
    with psycopg.connect(conninfo(db_source), autocommit=True, connect_timeout=5) as conn:
        conn.execute("ANALYZE")
    return True


OLD_LOCAL = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""What chat-bench's own PostgreSQL always ran with before results recorded its settings."""


def of(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """A result's database settings: as recorded, or for an older result of a stack started
    here, the settings chat-bench then always used (``inferred``); None when unknown."""
    if "database" in result:
        return dict(result["database"])
    if (result.get("target") or {}).get("started_here"):
        return {"settings": dict(OLD_LOCAL), "inferred": True}
    return None


def unsafe(database: Mapping[str, Any] | None) -> list[str]:
    """The durability settings that are off (``["fsync off", ...]``); empty when unknown."""
    settings = (database or {}).get("settings") or {}
    return [f"{name} off" for name in DURABILITY if settings.get(name) == "off"]


def label(database: Mapping[str, Any] | None, *, full: bool = False) -> str:
    """"unsafe: fsync off" (the first durability setting that is off; ``full``: all of them)
    for a run that measured a database which may lose commits; "" otherwise."""
    off = unsafe(database)
    if not off:
        return ""
    return "unsafe: " + (", ".join(off) if full else off[0])


def settings_line(database: Mapping[str, Any] | None) -> str:
    """One sentence: the server's version and settings, and what they mean for a commit."""
    if not database:
        return "PostgreSQL settings: not recorded by this run."
    settings: dict[str, str] = dict(database.get("settings") or {})
    if not settings:
        return ("PostgreSQL settings: unknown (a running stack given without --db-source, "
                "which they are read from).")
    version = settings.pop("server_version", "?")
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    if database.get("inferred"):
        shown += (" (not recorded by this run, which predates recording them: chat-bench's own "
                  "PostgreSQL always ran with these then)")
    given = database.get("set") or {}
    extra = (" (set for this run: " + ", ".join(f"{k}={v}" for k, v in given.items()) + ")"
             if given else "")
    off = unsafe(database)
    meaning = (f"NOT durable ({', '.join(off)}): a crash may lose committed messages; "
               "figures for comparison only" if off
               else "durable: each commit returns once its WAL is flushed to disk")
    server = f"PostgreSQL {version}" if version != "?" else "PostgreSQL"
    return f"{server} settings: {shown}{extra}; {meaning}."
