"""The thumbnail worker: a consumer of the event streams that makes thumbnails of images.

It is the first consumer outside the gateway, and it uses the published contract only
(``chat_shared.events``, docs/events.md): it reads every stream of the layout through the
consumer group ``thumbnails`` (XREADGROUP: each entry goes to one consumer of the group, so any
number of API processes and replicas share the work), decodes entries with ``decode_entry`` and
``decode_payload``, and looks at ``message.created`` events whose message carries image
attachments. For each image without a thumbnail it reads the object (at most its recorded
size), makes the thumbnail in a thread (``service.thumbnails``: Pillow, off the event loop),
stores it beside the original (``<key>.thumb.jpg``), and records it as an ordered change of the
conversation: a ``message.updated`` event at the next pos, with its change-log row and the
whole message as payload, in one transaction (``AttachmentRepository.set_thumbnail``).

At least once: an entry is acknowledged after its work is done, so a crash repeats it; a
repeated event finds the thumbnail recorded and does nothing. A refused image (too many pixels,
a decompression bomb, not an image) gets no thumbnail and is not tried again; a store or
database failure is counted, logged, and the entry acknowledged all the same (the message
simply has no thumbnail): a poisoned entry must not stall the group.

A crashed process's consumer (named for its host and pid) never reads again, so the entries it
read and never acknowledged would stay pending for ever: every ``claim_every`` seconds each
worker takes over (XAUTOCLAIM) the group's entries left unacknowledged for ``claim_idle``
seconds, far longer than any thumbnail takes, handles and acknowledges them, then removes
consumers with nothing pending that have not read for ``forget_after`` seconds.

Batched reads: a read returns at once when entries wait, so an image sent on a quiet system is
seen at once; after a read that found fewer than ``count`` entries the worker waits
``batch_wait`` before the next, so under load one read and one XACK carry many entries. The
worker reads every event of every conversation and acts on few; reading them one by one, its
wake-ups and round trips cost the API 0.6-0.8 ms of CPU per EditMessage beside it (2.1 ms of
API CPU per edit before, 1.3-1.6 ms after; mean edit 4.1-4.3 ms before, 3.1-3.4 ms after, 400
sequential edits three times each on a 2-core machine).

Runs in the API process (started by ``build_app`` when THUMBNAILS is on and REDIS_ADDR and
S3_ENDPOINT are set); Redis down only pauses it, with backoff.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from chat_api.service.attachments import is_image
from chat_api.service.thumbnails import THUMBNAIL_TYPE, ThumbnailRefused, make_thumbnail
from chat_api.storage.attachments import AttachmentRepository
from chat_api.storage.objects import ObjectStore
from chat_shared import events
from chat_shared.backoff import Backoff
from chat_shared.observability.logging import get_logger
from chat_shared.redis_client import RedisClient, group_by_slot, is_cluster, xreadgroup

log = get_logger(__name__)

GROUP = "thumbnails"
THUMBNAILS_MADE = Counter("chat_thumbnails_made_total", "Thumbnails made and announced")
THUMBNAIL_FAILURES = Counter(
    "chat_thumbnail_failures_total",
    "Images that got no thumbnail: refused (bomb, over the pixel limit, unreadable) or error "
    "(store or database)", ["reason"])
for _reason in ("refused", "error"):
    THUMBNAIL_FAILURES.labels(_reason)
THUMBNAIL_SECONDS = Histogram("chat_thumbnail_seconds",
                              "Seconds to make one thumbnail (read, decode, store, record)")


class ThumbnailWorker:
    def __init__(self, redis: RedisClient, repo: AttachmentRepository, store: ObjectStore,
                 *, streams: list[str], max_pixels: int, size: int, block: float = 1.0,
                 count: int = 100, batch_wait: float = 0.1, claim_idle: float = 300.0,
                 claim_every: float = 60.0, forget_after: float = 3600.0) -> None:
        self._redis = redis
        self._repo = repo
        self._store = store
        self._streams = streams
        self._max_pixels = max_pixels
        self._size = size
        self._block_ms = int(block * 1000)
        self._count = count
        self._batch_wait = batch_wait
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_every = claim_every
        self._forget_after_ms = int(forget_after * 1000)
        self._next_claim = 0.0  # at once on start: a restarted process finds its old entries
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._groups_made = False
        # XREADGROUP's streams must share a hash slot on a Redis Cluster: one read per slot.
        self._reads = group_by_slot(streams) if is_cluster(redis) else [list(streams)]

    async def _make_groups(self) -> None:
        for stream in self._streams:
            try:
                # From the stream's start: nothing sent while no worker ran is missed.
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_made = True

    async def run(self) -> None:
        """Consumes until cancelled; Redis failures back off (1 s, 2 s, ... 30 s)."""
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            try:
                if not self._groups_made:
                    await self._make_groups()
                now = asyncio.get_running_loop().time()
                if now >= self._next_claim:
                    await self.claim_stale()
                    self._next_claim = now + self._claim_every
                handled = await self.poll_once()
                backoff.reset()
                if 0 < handled < self._count:
                    await asyncio.sleep(self._batch_wait)
            except (aioredis.RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("thumbnail_worker_redis_failed", error=type(exc).__name__,
                            retry_in=delay)
                self._groups_made = False
                await asyncio.sleep(delay)

    async def poll_once(self) -> int:
        """One XREADGROUP (blocking up to ``block``); how many entries it handled."""
        answers: list[Any] = await asyncio.gather(*(
            xreadgroup(self._redis, GROUP, self.consumer, {s: ">" for s in streams},
                       count=self._count, block_ms=self._block_ms)
            for streams in self._reads))
        handled = 0
        for stream, entries in (item for answer in answers for item in _items(answer)):
            for _entry_id, fields in entries:
                await self._handle(fields)
            # One XACK for the stream's entries once all are handled (not one round trip per
            # entry: nearly every entry is a message without images, handled at once). A crash
            # before it repeats them, which at-least-once allows and a repeat makes harmless.
            if entries:
                await self._redis.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
                handled += len(entries)
        return handled

    async def claim_stale(self) -> int:
        """Takes over the group's entries unacknowledged for ``claim_idle`` seconds (their
        consumer died), handles and acknowledges them, then forgets dead consumers (module
        docstring); how many entries it handled."""
        handled = 0
        for stream in self._streams:
            start = "0-0"
            while True:
                answer = await self._redis.xautoclaim(
                    stream, GROUP, self.consumer, self._claim_idle_ms, start_id=start,
                    count=self._count)
                start, claimed = answer[0], answer[1]
                for _entry_id, fields in claimed:
                    if fields:  # None: trimmed from the stream (Redis 6.2 still lists it)
                        await self._handle(fields)
                if claimed:
                    await self._redis.xack(stream, GROUP, *(i for i, _ in claimed))
                    handled += len(claimed)
                    log.info("thumbnail_worker_claimed", stream=stream, entries=len(claimed))
                if start == "0-0":  # the whole pending list was scanned
                    break
            for consumer in await self._redis.xinfo_consumers(stream, GROUP):
                if (consumer["name"] != self.consumer and consumer["pending"] == 0
                        and consumer["idle"] >= self._forget_after_ms):
                    await self._redis.xgroup_delconsumer(stream, GROUP, consumer["name"])
        return handled

    async def _handle(self, fields: dict[str, str]) -> None:
        try:
            event = events.decode_entry(fields)
            if event.type != events.MESSAGE_CREATED:
                return
            # Most messages carry no attachment (the field is then absent): nothing to do, and
            # no need to check the whole payload against the contract for that.
            sent = event.payload.get("message")
            if isinstance(sent, dict) and not sent.get("attachments"):
                return
            payload = events.decode_payload(event.type, event.payload)
        except ValueError as exc:
            log.warning("thumbnail_worker_bad_entry", error=str(exc)[:200])
            return
        message: Any = payload["message"]
        if "ciphertext" in message:
            # End-to-end encrypted: its files are client-encrypted blobs, not images the
            # server can read (docs/e2ee.md); their content type is the client's claim only.
            return
        if not any(is_image(a["content_type"]) for a in message.get("attachments", ())):
            return
        for attachment_id, key, size, content_type, thumb in await self._repo.of_message(
                event.tenant, message["id"]):
            if thumb is None and is_image(content_type):
                await self._thumbnail(event.tenant, event.conversation_id, attachment_id, key,
                                      size)

    async def _thumbnail(self, tenant: str, conversation_id: str, attachment_id: str, key: str,
                         size: int) -> None:
        with THUMBNAIL_SECONDS.time():
            try:
                data = await self._store.read(key, size)
                if data is None:
                    raise FileNotFoundError(key)
                thumb = await asyncio.to_thread(make_thumbnail, data,
                                                max_pixels=self._max_pixels, size=self._size)
                thumb_key = f"{key}.thumb.jpg"
                await self._store.put(thumb_key, thumb.data, THUMBNAIL_TYPE)
                await self._repo.set_thumbnail(tenant, conversation_id, attachment_id,
                                               thumb.width, thumb.height, thumb_key)
            except ThumbnailRefused as exc:
                THUMBNAIL_FAILURES.labels("refused").inc()
                log.info("thumbnail_refused", tenant=tenant, attachment_id=attachment_id,
                         reason=str(exc)[:200])
                return
            except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the rest
                THUMBNAIL_FAILURES.labels("error").inc()
                log.warning("thumbnail_failed", tenant=tenant, attachment_id=attachment_id,
                            error=type(exc).__name__)
                return
        THUMBNAILS_MADE.inc()


def _items(answer: Any) -> list[Any]:
    """An XREADGROUP answer's (stream, entries) pairs (a list, or a dict under RESP3)."""
    if not answer:
        return []
    return list(answer.items()) if isinstance(answer, dict) else list(answer)
