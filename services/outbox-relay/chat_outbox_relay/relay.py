"""The relay loop: own partitions, claim a batch, publish it, settle it; repeat.

Wake-ups come from LISTEN outbox (the outbox trigger NOTIFYs at commit of every sending
transaction) with polling every OUTBOX_POLL_INTERVAL_MS as the fallback for a lost
notification or a retry that came due. While batches come back full the loop runs the next one
at once. Partition ownership is checked every OUTBOX_REBALANCE_INTERVAL, always between
batches, on the same connection that claims: if that connection dies, its locks go with it,
and the rows of a batch it had not settled are claimed again (same event_ids) by whoever owns
them next.

Four PostgreSQL connections, none from a pool (sessions of their own, with the shared
options of ``chat_shared.db.connect``): the work connection (locks + batches), the listener
(LISTEN), the probe (pending metrics, readiness) and the pruner (published rows past
OUTBOX_RETENTION, ``retention.py``; it connects only for a round).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import AsyncConnection

from chat_outbox_relay import metrics
from chat_outbox_relay.claiming import claim, settle
from chat_outbox_relay.partitions import RELAY_APPLICATION_NAME, PartitionOwnership
from chat_outbox_relay.publishing import StreamPublisher
from chat_outbox_relay.retention import prune_batch
from chat_outbox_relay.settings import RelaySettings
from chat_shared import db
from chat_shared.backoff import Backoff
from chat_shared.errors import Unavailable
from chat_shared.observability.dependencies import DependencyProbe
from chat_shared.observability.logging import get_logger
from chat_shared.outbox import read_backlog

log = get_logger(__name__)

_MAX_PAUSE = 5.0
"""Longest wait between checks while Redis or PostgreSQL is unavailable, seconds."""
_REDIS_PING_MAX = 1.0
"""Longest wait between two pings while publishing is paused for Redis, seconds."""


BOOKKEEPING_SESSION = {"synchronous_commit": "off", "plan_cache_mode": "force_generic_plan"}
"""The settings of the work connection's session, which claims, settles and holds the
partitions' locks: every statement there is the relay's own bookkeeping.

- ``synchronous_commit=off``: a settle's COMMIT returns before its WAL reaches the disk (the
  WAL writer flushes it within three ``wal_writer_delay``, 0.6 s by default), so the relay no
  longer waits on, and queues behind the API's commits for, one fsync per batch. What a crash
  of PostgreSQL can lose is the last settles only (WAL is flushed in order), never a message or
  an event: their rows are published again with the same event_ids, as after a relay killed
  between publish and settle, and consumers drop them (DESIGN.md: at least once). A lost
  reschedule or dead-letter move means one more attempt.
- ``plan_cache_mode=force_generic_plan``: the claim's custom plans were never dearer than its
  generic one, so PostgreSQL planned it again on every execution (15% of the work session's
  CPU, perf); its generic plan is the same index scan (``tests/integration/test_relay_plans.py``).

Measured on a local stack, sequential SendMessage: see docs/performance.md, "The relay's
sessions"."""


async def connect(settings: RelaySettings, application_name: str,
                  session: Mapping[str, str] | None = None) -> AsyncConnection[Any]:
    """A session of the relay's own (Unavailable when PostgreSQL cannot be reached);
    ``session``: further settings (``BOOKKEEPING_SESSION``)."""
    return await db.connect(settings.db_source, application_name=application_name,
                            statement_timeout=settings.db_statement_timeout,
                            role=settings.database_role, settings=session)


class OutboxRelay:
    def __init__(self, settings: RelaySettings, publisher: StreamPublisher,
                 ownership: PartitionOwnership | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.ownership = ownership or PartitionOwnership()
        self.dependencies = DependencyProbe(
            metrics.DEPENDENCY_UP,
            {"postgresql": self._probe_postgresql, "redis": self.publisher.ping},
            timeout=settings.db_statement_timeout + 1.0)
        self._probe_conn: AsyncConnection[Any] | None = None
        self._conn: AsyncConnection[Any] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._redis_paused = False
        self._partitions_of: frozenset[int] = frozenset()
        self._partitions_literal = "{}"
        self._tasks: list[asyncio.Task[None]] = []
        self._main: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="relay-loop")
        self._tasks = [
            asyncio.create_task(self._listen(), name="relay-listen"),
            asyncio.create_task(self._probe(), name="relay-probe"),
            asyncio.create_task(self._prune(), name="relay-prune"),
        ]

    def ready(self) -> bool:
        """Readiness: PostgreSQL and Redis both answered the last probe."""
        return self.dependencies.all_up() and not self._stopping

    async def stop(self, grace: float) -> bool:
        """Finishes the batch in hand (within ``grace``), releases the partitions.

        Returns False when the grace period ran out and the batch was rolled back instead.
        """
        self._stopping = True
        self._wake.set()
        clean = True
        if self._main is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._main), grace)
            except TimeoutError:
                clean = False
                self._main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._main
            except Exception:  # noqa: BLE001 - already logged by the loop
                clean = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        try:
            await asyncio.wait_for(self._close_work_connection(release=True), 5.0)
        except TimeoutError:
            log.warning("close_timeout")  # the locks go when the process exits anyway
        metrics.OWNED_PARTITIONS.set(0)
        return clean

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        next_rebalance = 0.0
        next_poll = 0.0
        db_retry = Backoff(s.outbox_retry_base, _MAX_PAUSE)
        while not self._stopping:
            try:
                conn = await self._work_connection()
                now = time.monotonic()
                due = self._wake.is_set() or now >= next_poll
                if now >= next_rebalance:
                    gained, released = await self.ownership.rebalance(conn)
                    next_rebalance = time.monotonic() + s.outbox_rebalance_interval
                    metrics.OWNED_PARTITIONS.set(len(self.ownership.owned))
                    if gained or released:
                        log.info("partitions_rebalanced", owned=len(self.ownership.owned),
                                 gained=len(gained), released=len(released))
                    due = due or bool(gained)
                if due and self._redis_paused:
                    await self._wait_for_redis()
                    continue
                if due:
                    self._wake.clear()
                    while not self._stopping:
                        claimed = await self._batch(conn)
                        if claimed < s.outbox_batch_size or self._redis_paused:
                            break
                    next_poll = time.monotonic() + s.poll_interval
                db_retry.reset()
                timeout = max(0.0, min(next_poll, next_rebalance) - time.monotonic())
                if not self._wake.is_set() and timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                # Connection lost (its locks and open batch went with it) or a statement
                # failed: start over on a fresh connection; claimed rows were rolled back.
                db_delay = db_retry.next_delay()
                if isinstance(exc, Unavailable | psycopg.OperationalError | psycopg.InterfaceError
                              | OSError):
                    log.warning("database_unavailable", error=str(exc.__cause__ or exc),
                                retry_in=db_delay)
                else:
                    log.exception("batch_failed", retry_in=db_delay)
                await self.dependencies.record("postgresql", False, str(exc.__cause__ or exc))
                await self._close_work_connection(release=False)
                await self._sleep(db_delay)
                next_rebalance = 0.0

    def _partitions(self) -> str:
        """The owned partitions as an array literal, rebuilt only when ownership changes.

        A literal because psycopg would otherwise dump the 64-element list on every claim.
        """
        owned = frozenset(self.ownership.owned)
        if owned != self._partitions_of:
            self._partitions_of = owned
            self._partitions_literal = "{" + ",".join(map(str, sorted(owned))) + "}"
        return self._partitions_literal

    async def _batch(self, conn: AsyncConnection[Any]) -> int:
        """One claim-publish-settle round; returns how many rows it claimed."""
        s = self.settings
        started = time.perf_counter()
        # No transaction around the batch: these partitions are ours alone (advisory locks),
        # so nobody else reads the rows between claim and settle, and rows leave the outbox
        # only in settle, after Redis acknowledged them; a crash in between publishes them
        # again (same event_ids). BEGIN and COMMIT would be two more round trips per batch:
        # about 12% of the relay's CPU per event at 500 events/s.
        rows = await claim(conn, self._partitions(), s.outbox_batch_size)
        if not rows:
            return 0
        outcome = await self.publisher.publish(rows)
        acked = time.time()
        dead = await settle(conn, outcome.published, outcome.rejected,
                            max_retries=s.outbox_max_retries, retry_base=s.outbox_retry_base)
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)
        if outcome.published:
            metrics.PROCESSED.inc(len(outcome.published))
            for row in outcome.published:
                metrics.PUBLISH_LAG.observe(max(0.0, acked - row.created_at.timestamp()))
        if outcome.rejected:
            metrics.PUBLISH_ERRORS.labels("rejected").inc(len(outcome.rejected))
            for failure in outcome.rejected:
                log.warning("publish_rejected", event_id=failure.row.event.event_id,
                            conversation_id=failure.row.event.conversation_id,
                            attempt=failure.row.attempts + 1, error=failure.error)
        if dead:
            metrics.DLQ.inc(len(dead))
            for failure in dead:
                log.error("event_dead_lettered", event_id=failure.row.event.event_id,
                          conversation_id=failure.row.event.conversation_id,
                          attempts=failure.row.attempts + 1, error=failure.error)
        if outcome.unavailable:
            metrics.PUBLISH_ERRORS.labels("unavailable").inc(len(outcome.unavailable))
            if not self._redis_paused:
                log.error("redis_unavailable", error=outcome.unavailable_error,
                          unpublished=len(outcome.unavailable))
            self._redis_paused = True
            await self.dependencies.record("redis", False, outcome.unavailable_error)
        log.debug("batch_done", claimed=len(rows), published=len(outcome.published),
                  rejected=len(outcome.rejected), dead=len(dead))
        return len(rows)

    async def _wait_for_redis(self) -> None:
        """Publishing is paused: wait (with backoff) until Redis answers again."""
        # Pings are cheap and the pause holds every conversation's events: ask at least every
        # _REDIS_PING_MAX seconds (a Redis Cluster promotes a replica within its node timeout
        # plus about a second, and publishing resumes at the next ping after that).
        retry = Backoff(min(self.settings.outbox_retry_base, _REDIS_PING_MAX), _REDIS_PING_MAX)
        while not self._stopping:
            if await self.publisher.ping(every_master=True):
                log.info("redis_available")
                self._redis_paused = False
                await self.dependencies.record("redis", True)
                self._wake.set()
                return
            await self._sleep(retry.next_delay())

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, but returns early on stop."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
        if not self._stopping:
            self._wake.set()  # notifications that came meanwhile must not be lost

    async def _work_connection(self) -> AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self.ownership.forget()
            self._conn = await connect(self.settings, RELAY_APPLICATION_NAME,
                                       BOOKKEEPING_SESSION)
        return self._conn

    async def _close_work_connection(self, *, release: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if release and not conn.closed:
            with contextlib.suppress(Exception):
                await self.ownership.release_all(conn)
        self.ownership.forget()
        with contextlib.suppress(Exception):
            await conn.close()

    # --- side tasks --------------------------------------------------------------------------

    async def _listen(self) -> None:
        retry = Backoff(0.1, _MAX_PAUSE)
        while not self._stopping:
            conn: AsyncConnection[Any] | None = None
            try:
                conn = await connect(self.settings, RELAY_APPLICATION_NAME + "-listen")
                await conn.execute("LISTEN outbox")
                self._wake.set()  # whatever was notified while we were not listening
                retry.reset()
                # notifies() holds the connection's lock while it lives: close the generator
                # explicitly (aclosing) before the connection, or closing would wait for it.
                async with contextlib.aclosing(conn.notifies()) as notifications:
                    async for _ in notifications:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap; keep trying
                delay = retry.next_delay()
                log.warning("listen_failed", error=str(exc.__cause__ or exc), retry_in=delay)
                await asyncio.sleep(delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _prune(self) -> None:
        """Every OUTBOX_PRUNE_INTERVAL, deletes what is past the retention, batch by batch."""
        while not self._stopping:
            await asyncio.sleep(self.settings.outbox_prune_interval)
            try:
                await self.prune_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("prune_failed", error=str(exc.__cause__ or exc))

    async def prune_round(self, max_batches: int = 10_000) -> int:
        """Prunes until nothing more is due (at most ``max_batches`` statements, so one round
        ends even if rows keep coming due); returns how many rows it deleted."""
        s = self.settings
        total = 0
        conn = await connect(s, RELAY_APPLICATION_NAME + "-prune")
        try:
            for _ in range(max_batches):
                if self._stopping:
                    break
                deleted = await prune_batch(conn, retention=s.outbox_retention,
                                            limit=s.outbox_prune_batch_size)
                total += deleted
                metrics.PRUNED.inc(deleted)
                if deleted < s.outbox_prune_batch_size:
                    break
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        if total:
            log.info("outbox_pruned", rows=total, retention_seconds=s.outbox_retention)
        return total

    async def _probe(self) -> None:
        try:
            # Checks the flag too: redis-py can swallow a cancellation that lands in a call.
            while not self._stopping:
                await self.dependencies.probe_once()
                await asyncio.sleep(self.settings.outbox_metrics_interval)
        finally:
            conn, self._probe_conn = self._probe_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _probe_postgresql(self) -> bool:
        """Refreshes the pending gauges on the probe's own connection: PostgreSQL answered."""
        try:
            if self._probe_conn is None or self._probe_conn.closed:
                self._probe_conn = await connect(self.settings, RELAY_APPLICATION_NAME + "-probe")
            backlog = await read_backlog(self._probe_conn)
        except BaseException:
            conn, self._probe_conn = self._probe_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise
        metrics.PENDING.set(backlog.pending)
        metrics.OLDEST_PENDING_AGE.set(backlog.oldest_age_seconds)
        return True
