"""An image's thumbnail reaches WebSocket clients as an ordered change: real chat-api (with its
thumbnail worker), relay, gateway and S3 server as processes.

A member connected to the gateway receives ``message.created`` (the attachment without a
thumbnail) and then, at the next pos, ``message.updated`` with ``thumbnail_ready`` and the
image's dimensions, before anything sent after it; a client that resumes from before the
thumbnail receives the same changes from the change log, rendered as the message is now, and
the thumbnail can be fetched with the URL GetAttachmentUrl gives.
"""

from __future__ import annotations

import io
import pathlib
from typing import Any

import aiohttp
import pytest
from chat_shared.protos.chat.v1 import chat_pb2
from PIL import Image

from tests.attachment_helpers import fetch, pdf_document, photo_jpeg, send_with, upload
from tests.conftest import auth
from tests.helpers import create_conversation, send
from tests.support.ws_stack import (
    ORDERED,
    Gateway,
    Stack,
    base_env,
    next_frame,
    ordered_frames,
    running_stack,
    ws_connect,
)


@pytest.fixture
async def stack(db_source: str, redis_addr: str, s3: Any, tmp_path: pathlib.Path):
    async with running_stack(base_env(db_source, redis_addr, **s3.env()), tmp_path) as stack:
        yield stack


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def resumed_from(session: aiohttp.ClientSession, gateway: Gateway, user: str,
                       cid: str, pos: int) -> tuple[list[dict], dict]:
    """The frames a client resuming ``cid`` from ``pos`` receives, and the resumed frame."""
    ws = await ws_connect(session, gateway, user, positions={cid: pos})
    try:
        frames: list[dict] = []
        for _ in range(40):
            frame = await next_frame(ws)
            if frame["type"] == "resumed":
                return frames, frame
            if frame["type"] in ORDERED:
                frames.append(frame)
        raise AssertionError(f"no resumed frame after {frames}")
    finally:
        await ws.close()


async def test_the_thumbnail_reaches_sockets_in_order_live_and_on_resume(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    stub = stack.stub
    conv = await create_conversation(stub, "alice", ["bob"], "photos")
    bob = await ws_connect(session, stack.gateway, "bob")
    alice = await ws_connect(session, stack.gateway, "alice")
    photo, pdf = photo_jpeg(1600, 1200), pdf_document()
    ids = [await upload(stub, "alice", conv.id, photo, "image/jpeg", "beach.jpg"),
           await upload(stub, "alice", conv.id, pdf, "application/pdf", "plan.pdf")]
    sent = await send_with(stub, "alice", conv.id, ids, content="")
    before = [{"id": ids[0], "filename": "beach.jpg", "content_type": "image/jpeg",
               "size_bytes": len(photo), "width": 0, "height": 0, "thumbnail_ready": False},
              {"id": ids[1], "filename": "plan.pdf", "content_type": "application/pdf",
               "size_bytes": len(pdf), "width": 0, "height": 0, "thumbnail_ready": False}]
    ready = [{**before[0], "width": 1600, "height": 1200, "thumbnail_ready": True}, before[1]]

    created, updated = await ordered_frames(bob, 2, within=60.0)
    assert (created["type"], created["pos"], created["seq"]) == ("message.created", 1, 1)
    assert created["message"]["id"] == sent.id and created["message"]["content"] == ""
    assert created["message"]["attachments"] == before
    assert (updated["type"], updated["pos"], updated["seq"]) == ("message.updated", 2, 1)
    assert updated["message"]["id"] == sent.id and updated["message"]["version"] == 1
    assert updated["message"]["attachments"] == ready
    assert updated["event_id"] and updated["event_id"] != created["event_id"]
    # The sender's own socket gets the same two changes, in the same order.
    assert [(f["type"], f["pos"], f["message"]["attachments"])
            for f in await ordered_frames(alice, 2)] == [
        ("message.created", 1, before), ("message.updated", 2, ready)]

    # What follows the thumbnail comes after it.
    later = await send(stub, "bob", conv.id, "nice photo")
    [after] = await ordered_frames(alice, 1)
    assert (after["type"], after["pos"], after["seq"], after["message"]["id"]) == (
        "message.created", 3, 2, later.id)

    # A client that saw nothing, or only the send, catches up from the log: each change is
    # rendered as the message is now, so the thumbnail is ready in both.
    for position, expected in ((0, [("message.created", 1), ("message.updated", 2),
                                    ("message.created", 3)]),
                               (1, [("message.updated", 2), ("message.created", 3)])):
        frames, resumed = await resumed_from(session, stack.gateway, "bob", conv.id, position)
        assert [(f["type"], f["pos"]) for f in frames] == expected
        assert all(f["event_id"] is None for f in frames)
        photo_frames = [f for f in frames if f["message"]["id"] == sent.id]
        assert [f["message"]["attachments"] for f in photo_frames] == [ready] * len(photo_frames)
        assert (resumed["conversation_id"], resumed["pos"]) == (conv.id, 3)

    # The announced thumbnail is there to fetch: a JPEG of at most 320 pixels a side.
    url = (await stub.GetAttachmentUrl(chat_pb2.GetAttachmentUrlRequest(
        attachment_id=ids[0], thumbnail=True), metadata=auth("bob"))).url
    status, body, headers = await fetch(url)
    assert (status, headers["Content-Type"]) == (200, "image/jpeg")
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.size == (320, 240)
