"""To-device messages pushed over the WebSocket, through the whole pipeline as real processes:
chat-api (SendToDevice: the mailbox row and its ``to_device.created`` event in one transaction)
-> outbox -> chat-outbox-relay -> Redis Streams -> chat-ws-gateway -> a socket opened for the
device (``/v1/ws?device_id=...``), which reads the message from the mailbox and pushes it.

Why: a room key must reach the device it was encrypted for, without polling, and no other
socket (not the user's other devices, not another user's device of the same name); what the
device has not acknowledged must come again after a reconnect, and what it acknowledged must be
gone from the server; a removed device receives nothing more.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import aiohttp
import grpc
import pytest

from chat_devtools.e2ee_client import E2EEDevice
from chat_devtools.local_postgres import LocalPostgres
from chat_migrations.cli import upgrade
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import db_rows, redis_async, send
from tests.support.ws_stack import (
    Gateway,
    base_env,
    close_code,
    next_frame,
    running_stack,
    ws_connect,
)

TO_DEVICE = "to_device.created"
CLOSE_UNKNOWN_DEVICE = 4404


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    async with running_stack(base_env(db_source, redis_addr), tmp_path) as running:
        yield running.stub, running.gateway


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def _device(stub, user: str, device_id: str) -> E2EEDevice:
    device = E2EEDevice(stub, user, make_token(user), device_id)
    await device.register(one_time_keys=1)
    return device


async def _send(stub, sender: E2EEDevice, conversation_id: str,
                *targets: tuple[str, str, str]) -> None:
    """Opaque to-device messages (recipient, device, body) from ``sender``: the server does
    not look inside, so any bytes will do here."""
    resp = await stub.SendToDevice(chat_pb2.SendToDeviceRequest(
        conversation_id=conversation_id, sender_device=sender.device_id,
        messages=[chat_pb2.ToDeviceMessage(recipient_id=u, recipient_device=d,
                                           message_type="m.test", body=b)
                  for u, d, b in targets]), metadata=auth(sender.user_id))
    assert resp.stored == len(targets)


async def _to_device_frames(ws: aiohttp.ClientWebSocketResponse, count: int,
                            within: float = 30.0) -> list[dict[str, Any]]:
    """The next ``count`` to-device frames (the conversations' frames between them are
    skipped: they come on their own schedule)."""
    out: list[dict[str, Any]] = []
    for _ in range(count + 50):
        if len(out) == count:
            return out
        frame = await next_frame(ws, within)
        if frame["type"] == TO_DEVICE:
            out.append(frame)
        else:
            assert frame["type"] != "error", frame
    raise AssertionError(f"got {len(out)} of {count} to-device frames")


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    """The frames up to and including the first of type ``kind`` (bounded)."""
    out = []
    for _ in range(50):
        out.append(await next_frame(ws))
        if out[-1]["type"] == kind:
            return out
    raise AssertionError(f"no {kind} frame among {out}")


async def _device_socket(session: aiohttp.ClientSession, gateway: Gateway, user: str,
                         device_id: str, positions: dict[str, int] | None = None
                         ) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{gateway.url}/v1/ws", params={"device_id": device_id},
                                  headers={"Authorization": f"Bearer {make_token(user)}"},
                                  heartbeat=None)
    await ws.send_json({"type": "resume", "positions": positions or {}})
    return ws


async def test_a_to_device_message_reaches_the_sockets_of_its_device_and_no_other(
        stack, session):
    stub, gateway = stack
    alice = await _device(stub, "alice", "phone")
    await _device(stub, "bob", "phone")  # bob's device of the same name as alice's
    await _device(stub, "bob", "laptop")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"]), metadata=auth("alice"))).conversation
    bob_phone = [await _device_socket(session, gateway, "bob", "phone") for _ in range(2)]
    bob_laptop = await _device_socket(session, gateway, "bob", "laptop")
    alice_phone = await _device_socket(session, gateway, "alice", "phone")
    bob_plain = await ws_connect(session, gateway, "bob", positions={conv.id: 0})

    await _send(stub, alice, conv.id, ("bob", "phone", "for bob's phone"))
    # Then one message for each of the other sockets: a socket that had been given the first
    # would have received it before its own (a device's messages come in id order).
    await _send(stub, alice, conv.id, ("bob", "laptop", "for bob's laptop"),
                ("alice", "phone", "for alice's phone"))
    await send(stub, "alice", conv.id, "after the to-device messages")

    [inbox] = (await stub.GetToDeviceMessages(chat_pb2.GetToDeviceMessagesRequest(
        device_id="phone"), metadata=auth("bob"))).messages
    for ws in bob_phone:  # both sockets of the device
        [frame] = await _to_device_frames(ws, 1)
        assert frame["body"] == "for bob's phone"
        assert (frame["id"], frame["sender_id"], frame["sender_device"],
                frame["message_type"]) == (inbox.id, "alice", "phone", "m.test")
        assert frame["created_at"].endswith("Z")
    assert [f["body"] for f in await _to_device_frames(bob_laptop, 1)] == ["for bob's laptop"]
    assert [f["body"] for f in await _to_device_frames(alice_phone, 1)] == [
        "for alice's phone"]
    # A socket opened for no device receives the conversation's events and no to-device one.
    frames = await _until(bob_plain, "message.created")
    assert all(f["type"] != TO_DEVICE for f in frames), frames

    # A device of another user (or none at all) cannot be named: 4404 once its mailbox is read.
    for user, device in (("alice", "laptop"), ("carol", "phone")):
        ws = await _device_socket(session, gateway, user, device)
        assert (await close_code(ws))[0] == CLOSE_UNKNOWN_DEVICE
    async with session.get(f"{gateway.url}/v1/ws",
                           params={"device_id": "two words"},
                           headers={"Authorization": f"Bearer {make_token('bob')}",
                                    "Upgrade": "websocket", "Connection": "Upgrade",
                                    "Sec-WebSocket-Version": "13",
                                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 400  # a malformed device id: refused before the upgrade


async def test_unacknowledged_messages_come_again_on_reconnect_and_acknowledged_ones_are_gone(
        stack, session, db_source: str, redis_addr: str):
    stub, gateway = stack
    alice = await _device(stub, "alice", "a1")
    await _device(stub, "bob", "b1")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"]), metadata=auth("alice"))).conversation
    ws = await _device_socket(session, gateway, "bob", "b1")
    await _send(stub, alice, conv.id, ("bob", "b1", "one"))
    await _send(stub, alice, conv.id, ("bob", "b1", "two"))
    live = await _to_device_frames(ws, 2)
    assert [f["body"] for f in live] == ["one", "two"]
    one, two = (f["id"] for f in live)
    assert one < two
    await ws.close()

    # Sent while the device is away: waiting in its mailbox, with the unacknowledged ones.
    await _send(stub, alice, conv.id, ("bob", "b1", "three"))
    ws = await _device_socket(session, gateway, "bob", "b1")
    again = await _to_device_frames(ws, 3)
    assert [f["body"] for f in again] == ["one", "two", "three"]
    assert [f["id"] for f in again][:2] == [one, two]
    three = again[2]["id"]
    await stub.AckToDeviceMessages(chat_pb2.AckToDeviceMessagesRequest(
        device_id="b1", up_to_id=two), metadata=auth("bob"))
    assert await db_rows(db_source, "SELECT id FROM e2ee_to_device ORDER BY id") == [(three,)]
    await ws.close()

    ws = await _device_socket(session, gateway, "bob", "b1")
    [frame] = await _to_device_frames(ws, 1)
    assert (frame["id"], frame["body"]) == (three, "three")
    await _send(stub, alice, conv.id, ("bob", "b1", "four"))
    [frame] = await _to_device_frames(ws, 1)  # live again after the catch-up
    assert frame["body"] == "four"
    deleted = await stub.AckToDeviceMessages(chat_pb2.AckToDeviceMessagesRequest(
        device_id="b1", up_to_id=frame["id"]), metadata=auth("bob"))
    assert deleted.deleted == 2
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_to_device") == [(0,)]

    # The events only referred to the messages: no body in the outbox or in the stream.
    outbox = await db_rows(db_source, "SELECT payload, seq, recipients FROM outbox "
                                      "WHERE event_type = %s ORDER BY id", TO_DEVICE)
    assert [(p["id"], s, r) for p, s, r in outbox] == [
        (i, i, ["bob"]) for i in (one, two, three, frame["id"])]
    assert all(set(p) == {"id", "recipient_id", "recipient_device"} for p, _, _ in outbox)
    redis = redis_async(redis_addr)
    try:
        entries = [fields async for key in redis.scan_iter(match="chat:events:*")
                   if await redis.type(key) == b"stream"
                   for _, fields in await redis.xrange(key)]
    finally:
        await redis.aclose()
    assert sum(f[b"type"] == TO_DEVICE.encode() for f in entries) == 4
    for body in (b"one", b"two", b"three", b"four"):
        assert not any(body in value for f in entries for value in f.values())


async def test_a_removed_device_receives_nothing_more(stack, session, db_source: str):
    stub, gateway = stack
    alice = await _device(stub, "alice", "a1")
    await _device(stub, "bob", "b1")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"]), metadata=auth("alice"))).conversation
    ws = await _device_socket(session, gateway, "bob", "b1", positions={conv.id: 0})
    await _send(stub, alice, conv.id, ("bob", "b1", "before the removal"))
    [frame] = [f for f in await _until(ws, TO_DEVICE) if f["type"] == TO_DEVICE]
    assert frame["body"] == "before the removal"

    await stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(device_id="b1"), metadata=auth("bob"))
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_to_device") == [(0,)]
    resp = await stub.SendToDevice(chat_pb2.SendToDeviceRequest(
        conversation_id=conv.id, sender_device="a1", messages=[chat_pb2.ToDeviceMessage(
            recipient_id="bob", recipient_device="b1", message_type="m.test",
            body="after the removal")]), metadata=auth("alice"))
    assert resp.stored == 0
    assert await db_rows(db_source, "SELECT count(*) FROM outbox WHERE event_type = %s",
                         TO_DEVICE) == [(1,)]
    # The open socket goes on with the conversation, with no to-device message after the one,
    # until its device's next check (WS_DEVICE_CHECK_INTERVAL, 30 s here; see the next test).
    await send(stub, "alice", conv.id, "marker")
    frames = await _until(ws, "message.created")
    assert all(f["type"] != TO_DEVICE for f in frames), frames
    # A new socket for the removed device is closed.
    again = await _device_socket(session, gateway, "bob", "b1")
    assert (await close_code(again))[0] == CLOSE_UNKNOWN_DEVICE


async def test_a_removed_devices_open_socket_is_closed_within_the_check_interval(
        db_source: str, redis_addr: str, tmp_path: pathlib.Path, session):
    env = base_env(db_source, redis_addr, WS_DEVICE_CHECK_INTERVAL="0.3")
    async with running_stack(env, tmp_path) as running:
        stub, gateway = running.stub, running.gateway
        await _device(stub, "bob", "b1")
        await _device(stub, "bob", "b2")
        conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
            member_ids=["bob"]), metadata=auth("alice"))).conversation
        removed = await _device_socket(session, gateway, "bob", "b1", positions={conv.id: 0})
        kept = await _device_socket(session, gateway, "bob", "b2", positions={conv.id: 0})
        for ws in (removed, kept):
            await _until(ws, "resumed")
        await asyncio.sleep(1.0)  # three checks: an existing device's socket stays open
        await send(stub, "alice", conv.id, "before")
        for ws in (removed, kept):
            assert (await _until(ws, "message.created"))[-1]["message"]["content"] == "before"
        await stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(device_id="b1"),
                                metadata=auth("bob"))
        started = time.monotonic()
        assert (await close_code(removed, within=10))[0] == CLOSE_UNKNOWN_DEVICE
        print(f"\nremoved device's socket closed {time.monotonic() - started:.2f} s after "
              f"RemoveDevice (WS_DEVICE_CHECK_INTERVAL 0.3 s)")
        # The user's other device goes on.
        await send(stub, "alice", conv.id, "still here")
        created = [f for f in await _until(kept, "message.created")
                   if f["type"] == "message.created"]
        assert created[-1]["message"]["content"] == "still here"


async def test_a_device_socket_outlives_a_postgresql_outage_and_is_still_checked_after(
        redis_addr: str, tmp_path: pathlib.Path, session):
    """The periodic check reads PostgreSQL: while it is away the check fails and is tried again
    (the socket stays open, as a socket without a device does), and once it is back a removed
    device's socket closes as before."""
    pg = LocalPostgres().start()
    try:
        dsn = pg.create_database("chat")
        upgrade(dsn)
        env = base_env(dsn, redis_addr, WS_DEVICE_CHECK_INTERVAL="0.3")
        async with running_stack(env, tmp_path) as running:
            stub, gateway = running.stub, running.gateway
            await _device(stub, "bob", "b1")
            conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=["bob"]), metadata=auth("alice"))).conversation
            ws = await _device_socket(session, gateway, "bob", "b1", positions={conv.id: 0})
            await _until(ws, "resumed")
            pg.stop()
            await asyncio.sleep(1.5)  # five failed checks
            await ws.send_json({"type": "ping"})
            assert (await _until(ws, "pong"))[-1] == {"type": "pong"}
            pg.start()
            deadline = time.monotonic() + 30
            while True:  # the API's pool reconnects on its own schedule
                try:
                    await stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(device_id="b1"),
                                            metadata=auth("bob"), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() < deadline, "the API did not reconnect"
                    await asyncio.sleep(0.5)
            assert (await close_code(ws, within=10))[0] == CLOSE_UNKNOWN_DEVICE
    finally:
        pg.cleanup()
