"""Read-only calls on a streaming replica, without ever showing a writer a state older than its
own write (docs/read-replicas.md).

The position is PostgreSQL's own: a WAL location (LSN, ``16/B374D848``). After a write the API
reads the primary's WAL insert location, which is past the write's commit record because the
commit returned first, and hands it to the client (``X-Chat-Position``). A client that sends the
largest position it holds with its reads (``X-Chat-Read-After``) is served by the replica only
once the replica has replayed at least that far (``pg_last_wal_replay_lsn()``), and by the
primary until then. A read without a position goes to the replica whatever its lag: that
caller has no write of its own to miss.

Why an LSN rather than a conversation's position: one number covers every read (an inbox and a
search span conversations), the client keeps one value per session instead of one per
conversation, and the replica answers "how far am I" in one cheap call.

What the replica has replayed is cached here (``_replayed``) and only grows, so a position at or
below it needs no round trip. A position above it asks the replica once (concurrent askers share
the one question), and goes to the primary when the replica is still behind.

A replica that fails (cannot be reached, no pooled connection within its short
``DB_READ_POOL_TIMEOUT``, a statement cancelled by a recovery conflict, no answer in its share
of the caller's deadline) costs one bounded attempt: the read then runs on the primary, and
reads skip the replica for ``DB_READ_RETRY_AFTER`` seconds before trying it again. The replica
gets at most half of what is left of the caller's deadline, so the primary always has the other
half.

Which calls may read the replica is the transport's decision (``replica_read`` around the
call); everything else, and every unit of work of several statements, runs on the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import TupleRow

from chat_shared import deadlines
from chat_shared.db import AsyncConn, Database
from chat_shared.errors import DeadlineExceeded, Unavailable
from chat_shared.observability.logging import get_logger

__all__ = [
    "POSITION_HEADER", "READ_AFTER_HEADER", "ReplicaReads", "format_position",
    "parse_position", "replica_read",
]

log = get_logger(__name__)

POSITION_HEADER = "X-Chat-Position"
"""Response header (gRPC: trailing metadata ``x-chat-position``) of a write: its position."""
READ_AFTER_HEADER = "X-Chat-Read-After"
"""Request header (gRPC: metadata ``x-chat-read-after``): the largest position the client holds."""

READS = Counter("chat_db_reads_total",
                "Replica-eligible database reads by the server that answered and why",
                ["source", "reason"])

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class _NotAReplicaRead:
    pass


_PRIMARY_ONLY = _NotAReplicaRead()
_READ_AFTER: ContextVar[int | None | _NotAReplicaRead] = ContextVar(
    "chat_read_after", default=_PRIMARY_ONLY)
"""Within a replica-eligible call: the position it must see (None: any); else primary only."""


def parse_position(text: str) -> int:
    """A position as the client sent it (``16/B374D848``) as one number.

    Raises:
        ValueError: not a position.
    """
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a position (hex/hex, as X-Chat-Position gives it): {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_position(lsn: int) -> str:
    """The position as PostgreSQL writes an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@contextlib.contextmanager
def replica_read(after: int | None) -> Iterator[None]:
    """Within the block, single-statement reads may run on the replica once it has replayed
    ``after`` (None: at once)."""
    token = _READ_AFTER.set(after)
    try:
        yield
    finally:
        _READ_AFTER.reset(token)


class ReplicaReads:
    """The units of work of the read paths: the primary's, except single-statement reads inside
    ``replica_read``, which go to the replica when it has what the caller must see.

    Args:
        primary: the primary's pool (every write, every multi-statement unit of work).
        replica: the replica's pool; None = every read on the primary.
        retry_after: seconds reads skip a replica that failed.
        clock: monotonic seconds (a test's clock in unit tests).
    """

    def __init__(self, primary: Database, replica: Database | None = None, *,
                 retry_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.replica = replica
        self._retry_after = retry_after
        self._clock = clock
        self._replayed = 0
        self._down_until = 0.0
        self._asking: asyncio.Task[None] | None = None

    async def fetchone(self, name: str, query: QueryNoTemplate, params: Params | None = None,
                       *, tenant: str | None = None) -> TupleRow | None:
        """``Database.fetchone`` on the server that may answer (module docstring)."""
        db = await self._source()
        if db is self.primary:
            return await db.fetchone(name, query, params, tenant=tenant)
        try:
            with self._replica_share():
                row = await db.fetchone(name, query, params, tenant=tenant)
        except (Unavailable, DeadlineExceeded) as exc:
            self._failed(exc)
            return await self.primary.fetchone(name, query, params, tenant=tenant)
        READS.labels("replica", "caught_up").inc()
        return row

    async def fetchall(self, name: str, query: QueryNoTemplate, params: Params | None = None,
                       *, tenant: str | None = None) -> list[TupleRow]:
        """``Database.fetchall`` on the server that may answer (module docstring)."""
        db = await self._source()
        if db is self.primary:
            return await db.fetchall(name, query, params, tenant=tenant)
        try:
            with self._replica_share():
                rows = await db.fetchall(name, query, params, tenant=tenant)
        except (Unavailable, DeadlineExceeded) as exc:
            self._failed(exc)
            return await self.primary.fetchall(name, query, params, tenant=tenant)
        READS.labels("replica", "caught_up").inc()
        return rows

    @contextlib.asynccontextmanager
    async def connection(self, name: str) -> AsyncIterator[AsyncConn]:
        """The primary's ``Database.connection``."""
        async with self.primary.connection(name) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, name: str) -> AsyncIterator[AsyncConn]:
        """The primary's ``Database.transaction``."""
        async with self.primary.transaction(name) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def tenant_transaction(self, name: str, tenant: str) -> AsyncIterator[AsyncConn]:
        """The primary's ``Database.tenant_transaction``."""
        async with self.primary.tenant_transaction(name, tenant) as conn:
            yield conn

    async def write_position(self) -> str | None:
        """The primary's WAL insert location: past every commit that has returned, so a
        replica that has replayed it shows them all. None without a replica (no position to
        keep) or when the primary did not answer (the write itself succeeded)."""
        if self.replica is None:
            return None
        try:
            row = await self.primary.fetchone("db.write_position",
                                              "SELECT pg_current_wal_insert_lsn()::text")
        except (Unavailable, DeadlineExceeded):
            log.warning("write_position_unavailable")
            return None
        return None if row is None else str(row[0])

    async def _source(self) -> Database:
        after = _READ_AFTER.get()
        if self.replica is None or isinstance(after, _NotAReplicaRead):
            return self.primary
        if self._clock() < self._down_until:
            READS.labels("primary", "replica_down").inc()
            return self.primary
        if after is not None and after > self._replayed:
            await self._ask_replica()
            if after > self._replayed:
                READS.labels("primary", "replica_behind").inc()
                return self.primary
        return self.replica

    async def _ask_replica(self) -> None:
        """Refreshes ``_replayed``; callers that ask meanwhile share the one question."""
        if self._asking is None or self._asking.done():
            with self._replica_share():  # the task takes the bounded deadline with it
                self._asking = asyncio.create_task(self._replay_location())
        # shield: one caller's cancellation must not cancel the others' question
        with contextlib.suppress(Unavailable, DeadlineExceeded):
            await asyncio.shield(self._asking)

    async def _replay_location(self) -> None:
        assert self.replica is not None
        try:
            row = await self.replica.fetchone("db.replica_position",
                                              "SELECT pg_last_wal_replay_lsn()::text")
        except (Unavailable, DeadlineExceeded) as exc:
            self._failed(exc)
            raise
        # NULL: not a standby (promoted, or misconfigured): no position is known to be there.
        if row is not None and row[0] is not None:
            self._replayed = max(self._replayed, parse_position(str(row[0])))

    @contextlib.contextmanager
    def _replica_share(self) -> Iterator[None]:
        """The replica's share of the caller's deadline: half of what is left, so the primary
        has the other half when the replica fails."""
        left = deadlines.remaining()
        if left is None or left <= 0:
            yield
            return
        with deadlines.deadline_after(left / 2):
            yield

    def _failed(self, exc: Exception) -> None:
        self._down_until = self._clock() + self._retry_after
        READS.labels("primary", "replica_failed").inc()
        log.warning("replica_read_failed", error=str(exc), retry_after=self._retry_after)

    def status(self) -> dict[str, Any]:
        """What the router knows of the replica (for logs and tests)."""
        return {"replayed": format_position(self._replayed),
                "down": self._clock() < self._down_until}
