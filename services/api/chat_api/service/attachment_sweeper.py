"""The orphan sweeper: uploads never attached are deleted after ATTACHMENT_ORPHAN_AFTER (24 h).

Every API process runs it (every ATTACHMENT_SWEEP_INTERVAL), so several replicas sweep at once:
each batch is claimed and deleted in one statement with ``FOR UPDATE SKIP LOCKED``
(``AttachmentRepository.sweep``), so two sweepers never take the same row and a sweeper never
waits on a send that is attaching the upload right now (the send holds the row lock; the
sweeper skips the row, and once attached it is no orphan). Tenants are swept one at a time, each
under its own row-level security (the API's role sees one tenant per statement).

Rows go first, then their objects: a row never names a deleted object. A store delete that
fails leaves an object no row names (counted in ``chat_attachment_sweep_failures_total`` and
logged with its keys, for an operator or a bucket lifecycle rule to remove).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from chat_api.storage.attachments import AttachmentRepository
from chat_api.storage.objects import ObjectStore, ObjectStoreError
from chat_shared.observability.logging import get_logger

log = get_logger(__name__)

ORPHANS_SWEPT = Counter("chat_attachment_orphans_swept_total",
                        "Uploads never attached, deleted by the sweeper")
SWEEP_FAILURES = Counter("chat_attachment_sweep_failures_total",
                         "Sweeps whose store delete failed (their objects stay, unnamed)")
BATCH = 500


class OrphanSweeper:
    def __init__(self, repo: AttachmentRepository, store: ObjectStore, *,
                 orphan_after: float, clock: Callable[[], datetime] | None = None) -> None:
        self._repo = repo
        self._store = store
        self._orphan_after = timedelta(seconds=orphan_after)
        self._clock = clock or (lambda: datetime.now(UTC))

    async def sweep_once(self) -> int:
        """One pass over every tenant; how many uploads it deleted."""
        before = self._clock() - self._orphan_after
        swept = 0
        for tenant in await self._repo.tenants():
            while True:
                rows = await self._repo.sweep(tenant, before, BATCH)
                if not rows:
                    break
                swept += len(rows)
                ORPHANS_SWEPT.inc(len(rows))
                keys = [key for key, _ in rows]
                try:
                    await self._store.delete(keys)
                except ObjectStoreError:
                    SWEEP_FAILURES.inc()
                    log.warning("orphan_delete_failed", tenant=tenant, keys=keys[:20],
                                count=len(keys))
                if len(rows) < BATCH:
                    break
        return swept

    async def run(self, interval: float) -> None:
        """Sweeps every ``interval`` seconds until cancelled; a failed pass is logged."""
        while True:
            try:
                swept = await self.sweep_once()
                if swept:
                    log.info("orphans_swept", count=swept)
            except Exception:  # noqa: BLE001 - the sweeper must outlive any single failure
                log.exception("orphan_sweep_failed")
            await asyncio.sleep(interval)


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
