"""The sweeper: uploads never attached are deleted after ATTACHMENT_ORPHAN_AFTER (24 h), and
the files of deleted messages on the next pass.

DeleteMessage erases a message's attachments in its own statement (``storage.message_changes``):
from its commit on no read names them, and their rows, marked ``erased``, are the queue of the
objects (file and thumbnail) to delete from the store; each pass deletes those rows and objects
the same way as orphans (``AttachmentRepository.sweep_erased``).

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
ERASED_SWEPT = Counter("chat_attachment_erased_objects_swept_total",
                       "Objects (files and thumbnails) of deleted messages' attachments that "
                       "the sweeper deleted")
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
        """One pass over every tenant; how many orphan uploads and objects of deleted
        messages it deleted."""
        before = self._clock() - self._orphan_after
        swept = 0
        for tenant in await self._repo.tenants():
            swept += await self._sweep_erased(tenant)
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

    async def _sweep_erased(self, tenant: str) -> int:
        swept = 0
        while True:
            keys = await self._repo.sweep_erased(tenant, BATCH)
            if not keys:
                return swept
            swept += len(keys)
            ERASED_SWEPT.inc(len(keys))
            try:
                await self._store.delete(keys)
            except ObjectStoreError:
                SWEEP_FAILURES.inc()
                log.warning("erased_delete_failed", tenant=tenant, keys=keys[:20],
                            count=len(keys))
            if len(keys) < BATCH:
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
