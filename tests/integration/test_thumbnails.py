"""Thumbnails off the request path: the API's worker consumes message.created from the stream
(published by the real relay) through its consumer group, stores a bounded JPEG, records it and
announces it with message.updated, an ordered change at the next pos whose payload is the whole
message (and which the gateway's catch-up renders from the change log with the attachments);
a decompression bomb is refused and counted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from PIL import Image

from chat_api.thumbnail_worker import GROUP, THUMBNAIL_FAILURES, ThumbnailWorker
from chat_outbox_relay.app import RelayApp, build_relay
from chat_outbox_relay.settings import RelaySettings
from chat_shared import events
from chat_shared.config import DatabaseSettings, RedisSettings
from chat_shared.db import Database
from chat_shared.protos.chat.v1 import chat_pb2
from chat_shared.redis_client import create_redis
from chat_ws_gateway.history import History
from chat_ws_gateway.protocol import stored_change_frame
from tests.attachment_helpers import (  # noqa: F401 - fixtures
    astub,
    attach_api,
    fetch,
    send_with,
    upload,
)
from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, get_messages
from tests.unit.test_thumbnails import _jpeg, _png_header_only


@pytest.fixture
async def relay(db_source: str, redis_addr: str) -> AsyncIterator[RelayApp]:
    app = build_relay(RelaySettings(  # type: ignore[call-arg]
        _env_file=None, environment="test", db_source=db_source, redis_addr=redis_addr,
        metrics_port=0, redis_timeout=2.0))
    await app.start()
    yield app
    await app.stop(grace=5.0)


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def stream_client(redis_addr: str) -> AsyncIterator[Any]:
    """A Redis client of the test's server (single or cluster), for the worker tests that
    drive ``ThumbnailWorker`` themselves."""
    client = create_redis(RedisSettings(redis_addr=redis_addr, redis_timeout=2.0))
    yield client
    await client.aclose()


async def test_an_image_gets_a_thumbnail_announced_by_message_updated(
        astub, relay, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    photo = _jpeg(1200, 800, orientation=6)  # shown upright as 800x1200
    upload_id = await upload(astub, "alice", conv.id, photo, "image/jpeg", "photo.jpg")
    msg = await send_with(astub, "alice", conv.id, [upload_id])
    assert not msg.attachments[0].thumbnail_ready

    async def updated() -> list[Any]:
        return await db_rows(db_source, "SELECT payload, seq, recipients FROM outbox"
                                        " WHERE event_type = 'message.updated'")
    [(payload, pos, recipients)] = await until(updated, 30, "message.updated")
    ready = {"id": upload_id, "filename": "photo.jpg", "content_type": "image/jpeg",
             "size_bytes": len(photo), "width": 800, "height": 1200, "thumbnail_ready": True}
    announced = events.decode_payload(events.MESSAGE_UPDATED, payload)["message"]
    assert announced["id"] == msg.id and announced["seq"] == msg.seq == 1
    assert (announced["content"], announced["version"], announced["deleted"]) == (
        "see attached", 1, False)
    assert announced["attachments"] == [ready]
    # An ordered change: the next pos after the send's, with its change-log row.
    assert (pos, sorted(recipients)) == (2, ["alice", "bob"])
    assert await db_rows(db_source, "SELECT pos, change_type, message_id::text"
                                    " FROM conversation_changes ORDER BY pos") == [
        (1, "message.created", msg.id), (2, "message.updated", msg.id)]
    assert await db_rows(db_source, "SELECT last_pos FROM conversations") == [(2,)]
    # The gateway's catch-up renders both changes from the log with the attachment as it is.
    gateway_db = Database(DatabaseSettings(_env_file=None, db_source=db_source,
                                           database_role="chat_app"),
                          application_name="test-thumbnails")
    await gateway_db.open(wait=True)
    try:
        changes = await History(gateway_db, page_size=50).changes_after(
            "default", "bob", conv.id, 0)
    finally:
        await gateway_db.close()
    assert changes is not None
    frames = [json.loads(f) for f in map(stored_change_frame, changes) if f is not None]
    assert [(f["type"], f["pos"], f["seq"]) for f in frames] == [
        ("message.created", 1, 1), ("message.updated", 2, 1)]
    assert [f["message"]["attachments"] for f in frames] == [[ready], [ready]]
    page = await get_messages(astub, "bob", conv.id)
    shown = page.messages[0].attachments[0]
    assert (shown.width, shown.height, shown.thumbnail_ready) == (800, 1200, True)
    resp = await astub.GetAttachmentUrl(
        chat_pb2.GetAttachmentUrlRequest(attachment_id=upload_id, thumbnail=True),
        metadata=auth("bob"))
    status, body, headers = await fetch(resp.url)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(body)) as thumb:
        assert max(thumb.size) == 320 and thumb.size[1] > thumb.size[0]
        assert not thumb.getexif()
    # The message.created event carried the attachment (the contract's optional field).
    [(created,)] = await db_rows(db_source, "SELECT payload FROM outbox"
                                            " WHERE event_type = 'message.created'")
    assert events.decode_payload(events.MESSAGE_CREATED, created)["message"]["attachments"] == [
        {**ready, "width": 0, "height": 0, "thumbnail_ready": False}]


async def test_a_decompression_bomb_gets_no_thumbnail(astub, relay, db_source) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    bomb = _png_header_only(60_000, 60_000)
    refused = THUMBNAIL_FAILURES.labels("refused")
    before = refused._value.get()
    upload_id = await upload(astub, "alice", conv.id, bomb, "image/png", "bomb.png")
    await send_with(astub, "alice", conv.id, [upload_id])

    async def counted() -> bool:
        return bool(refused._value.get() > before)
    await until(counted, 30, "the refusal")
    assert await db_rows(db_source, "SELECT thumbnail_key FROM attachments") == [(None,)]
    assert await db_rows(db_source, "SELECT count(*) FROM outbox"
                                    " WHERE event_type = 'message.updated'") == [(0,)]


@pytest.mark.redis_cluster
async def test_messages_without_images_are_acknowledged_in_one_batch_unread(
        stream_client) -> None:
    """The worker's common case: message.created without attachments (and other events) are
    acknowledged, with nothing read from the database or the store (neither is given here).
    Three streams (on a cluster: three hash slots, so one XREADGROUP each, routed by slot)."""
    client = stream_client
    streams = [f"chat:events:thumbs-test-{i}" for i in range(3)]
    worker = ThumbnailWorker(client, None, None, streams=streams,  # type: ignore[arg-type]
                             max_pixels=1, size=1, block=0.1)
    await worker._make_groups()
    for seq in range(1, 7):
        await client.xadd(streams[seq % 3], events.encode_entry(_created(seq)))
    assert await worker.poll_once() == 6
    for stream in streams:
        pending = await client.xpending(stream, GROUP)
        assert pending["pending"] == 0
    assert await worker.poll_once() == 0


def _created(seq: int) -> events.Event:
    """A message.created event without attachments (the worker acknowledges it unread)."""
    message = {"id": f"00000000-0000-0000-0000-{seq:012x}",
               "conversation_id": "00000000-0000-0000-0000-00000000000a",
               "sender_id": "alice", "content": "hi", "seq": seq,
               "created_at": "2026-01-01T00:00:00.000000Z", "version": 1,
               "edited_at": None, "deleted": False}
    return events.Event(
        event_id=f"e{seq}", type=events.MESSAGE_CREATED,
        conversation_id=message["conversation_id"], seq=seq,
        occurred_at=events.parse_time("2026-01-01T00:00:00.000000Z"),
        recipients=["alice", "bob"], payload={"message": message})


@pytest.mark.redis_cluster
async def test_entries_a_dead_consumer_read_are_taken_over_and_the_consumer_forgotten(
        stream_client) -> None:
    """A process that read entries and died before acknowledging them (its consumer, named
    for its pid, never reads again): a live worker takes them over once they have waited
    ``claim_idle``, acknowledges them, and removes the dead consumer; entries a live consumer
    read a moment ago are left to it."""
    client = stream_client
    streams = [f"chat:events:claim-test-{i}" for i in range(2)]

    def worker(claim_idle: float) -> ThumbnailWorker:
        return ThumbnailWorker(client, None, None, streams=streams,  # type: ignore[arg-type]
                               max_pixels=1, size=1, block=0.1, claim_idle=claim_idle,
                               forget_after=claim_idle)
    try:
        patient = worker(claim_idle=60.0)
        await patient._make_groups()
        for seq in range(1, 6):
            await client.xadd(streams[seq % 2], events.encode_entry(_created(seq)))
        for stream in streams:  # read by a consumer that then dies: pending under its name
            await client.xreadgroup(GROUP, "dead-host-1", {stream: ">"}, count=10)
            assert (await client.xpending(stream, GROUP))["pending"] > 0

        assert await patient.claim_stale() == 0  # read a moment ago: maybe still at work
        assert await patient.poll_once() == 0  # and not new: a plain read never sees them

        eager = worker(claim_idle=0.2)
        await asyncio.sleep(0.3)
        assert await eager.claim_stale() == 5
        for stream in streams:
            assert (await client.xpending(stream, GROUP))["pending"] == 0
            names = [c["name"] for c in await client.xinfo_consumers(stream, GROUP)]
            assert "dead-host-1" not in names
        assert await eager.claim_stale() == 0
    finally:
        for stream in streams:
            await client.delete(stream)


async def test_under_a_stream_of_events_the_worker_reads_in_batches(stream_client) -> None:
    """After a read that found fewer entries than it may take, the worker waits
    ``batch_wait`` before the next: 60 events sent 10 ms apart take a handful of reads, not
    one each; every one is acknowledged."""
    client = stream_client
    stream = "chat:events:batch-test"
    worker = ThumbnailWorker(client, None, None, streams=[stream],  # type: ignore[arg-type]
                             max_pixels=1, size=1, block=0.1, batch_wait=0.2)

    async def reads() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: client.exists(stream), 10, "the group's stream")
        before, started = await reads(), time.monotonic()
        for seq in range(1, 61):
            await client.xadd(stream, events.encode_entry(_created(seq)))
            await asyncio.sleep(0.01)

        async def all_acknowledged() -> bool:
            info = await client.xinfo_groups(stream)
            return bool(info[0]["pending"] == 0 and info[0]["last-delivered-id"]
                        == (await client.xinfo_stream(stream))["last-generated-id"])
        await until(all_acknowledged, 10, "every entry acknowledged")
        elapsed = time.monotonic() - started
        made = await reads() - before
        # At most one read per batch_wait (plus the blocking reads of idle moments, 0.1 s
        # each, and the first): far fewer than the 60 an unbatched worker makes.
        assert made <= elapsed / 0.2 + 3, (made, elapsed)
        assert made < 30, (made, elapsed)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.delete(stream)
