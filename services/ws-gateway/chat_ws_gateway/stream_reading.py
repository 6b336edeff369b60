"""Reads every stream shard from its tail and hands each event to the hub.

Plain XREAD, not a consumer group: a group would split the events between replicas, while each
replica needs all of them (its clients may be recipients of any event). The reader starts at
each stream's newest entry; anything older a client needs comes from PostgreSQL on resume.
After a Redis error it reconnects and continues from the last entry it read, so an outage
loses nothing the streams still hold; what they do not hold is filled from PostgreSQL when the
next event of that conversation shows the gap.

On a Redis Cluster the streams are read one hash slot at a time, each in a task of its own:
XREAD's keys must share a slot there, and a master that fails over then stalls only its own
streams. A read that fails (the master died, or stepped down and unblocked its readers) backs
off briefly and continues from the last entry read, on whichever master holds the slot by then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chat_shared.backoff import Backoff
from chat_shared.events import decode_entry
from chat_shared.observability.logging import get_logger
from chat_shared.redis_client import RedisClient, group_by_slot, is_cluster, xread
from chat_ws_gateway.hub import Hub
from chat_ws_gateway.metrics import STREAM_EVENTS, STREAM_UP

log = get_logger(__name__)


class StreamReader:
    def __init__(self, redis: RedisClient, keys: list[str], hub: Hub, *, block_ms: int,
                 count: int) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._block_ms = block_ms
        self._count = count
        # One blocking XREAD per group: all keys at once on a single server; on a Redis
        # Cluster one read per hash slot (XREAD's keys must share a slot there), so a master
        # that is down or failing over stalls only the streams it holds.
        self._groups = group_by_slot(keys) if is_cluster(redis) else [list(keys)]
        self._ids: list[dict[str, str] | None] = [None] * len(self._groups)
        self._down: set[int] = set()
        self.positioned = asyncio.Event()
        """Set once the reader knows each stream's tail: events after it will be delivered."""

    async def _tails(self, keys: list[str]) -> dict[str, str]:
        ids: dict[str, str] = {}
        for key in keys:
            newest = await self._redis.xrevrange(key, count=1)
            ids[key] = str(newest[0][0]) if newest else "0-0"
        return ids

    async def run(self) -> None:
        if len(self._groups) == 1:
            await self._run_group(0)
            return
        tasks = [asyncio.create_task(self._run_group(i), name=f"stream-reader-{i}")
                 for i in range(len(self._groups))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_group(self, index: int) -> None:
        keys = self._groups[index]
        # At most a second between tries: one XREAD is cheap, and every second of wait after
        # Redis is back (a promoted replica, a restart) is a second of delivery lost.
        retry = Backoff(0.1, 1.0)
        while True:
            try:
                ids = self._ids[index]
                if ids is None:
                    ids = self._ids[index] = await self._tails(keys)
                    if all(i is not None for i in self._ids):
                        self.positioned.set()
                response = await xread(self._redis, ids, count=self._count,
                                       block_ms=self._block_ms)
                self._up(index)
                retry.reset()
                await self._handle(ids, response)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reading after any Redis failure
                self._down.add(index)
                STREAM_UP.set(0)
                delay = retry.next_delay()
                log.warning("stream_read_failed", error=f"{type(exc).__name__}: {exc}",
                            streams=keys if len(keys) <= 4 else len(keys), retry_in=delay)
                await asyncio.sleep(delay)

    def _up(self, index: int) -> None:
        self._down.discard(index)
        if not self._down:
            STREAM_UP.set(1)

    async def _handle(self, ids: dict[str, str], response: Any) -> None:
        if not response:
            return
        items = response.items() if isinstance(response, dict) else response
        for key, entries in items:
            for entry_id, fields in entries:
                ids[key] = entry_id
                try:
                    event = decode_entry(fields)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("stream_entry_invalid", stream=key, entry_id=entry_id,
                                error=str(exc))
                    continue
                STREAM_EVENTS.labels(event.type).inc()
                if self._hub.dispatch(event):
                    # Let the writers move this frame to their sockets before the next event,
                    # so a burst read in one XREAD does not pile up in every send queue.
                    await asyncio.sleep(0)
