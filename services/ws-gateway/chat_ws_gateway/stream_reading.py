"""Reads every stream shard from its tail and hands each event to the hub.

Plain XREAD, not a consumer group: a group would split the events between replicas, while each
replica needs all of them (its clients may be recipients of any event). The reader starts at
each stream's newest entry; anything older a client needs comes from PostgreSQL on resume.
After a Redis error it reconnects and continues from the last entry it read, so an outage
loses nothing the streams still hold; what they do not hold is filled from PostgreSQL when the
next event of that conversation shows the gap.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from chat_shared.backoff import Backoff
from chat_shared.events import decode_entry
from chat_shared.observability.logging import get_logger
from chat_ws_gateway.hub import Hub
from chat_ws_gateway.metrics import STREAM_EVENTS, STREAM_UP

log = get_logger(__name__)


class StreamReader:
    def __init__(self, redis: aioredis.Redis, keys: list[str], hub: Hub, *, block_ms: int,
                 count: int) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._block_ms = block_ms
        self._count = count
        self._ids: dict[str, str] | None = None
        self.positioned = asyncio.Event()
        """Set once the reader knows each stream's tail: events after it will be delivered."""

    async def _tails(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        for key in self._keys:
            newest = await self._redis.xrevrange(key, count=1)
            ids[key] = str(newest[0][0]) if newest else "0-0"
        return ids

    async def run(self) -> None:
        retry = Backoff(0.1, 5.0)
        while True:
            try:
                if self._ids is None:
                    self._ids = await self._tails()
                    self.positioned.set()
                response = await self._redis.xread(self._ids, count=self._count,  # type: ignore[arg-type]
                                                   block=self._block_ms)
                STREAM_UP.set(1)
                retry.reset()
                await self._handle(response)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reading after any Redis failure
                STREAM_UP.set(0)
                delay = retry.next_delay()
                log.warning("stream_read_failed", error=f"{type(exc).__name__}: {exc}",
                            retry_in=delay)
                await asyncio.sleep(delay)

    async def _handle(self, response: Any) -> None:
        if not response:
            return
        items = response.items() if isinstance(response, dict) else response
        assert self._ids is not None
        for key, entries in items:
            for entry_id, fields in entries:
                self._ids[key] = entry_id
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
