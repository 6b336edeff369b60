"""End-to-end encryption through the whole pipeline as real processes: chat-api -> outbox ->
chat-outbox-relay -> Redis Streams -> chat-ws-gateway -> a real WebSocket client, with the
reference client (``chat_devtools.e2ee_client``, vodozemac) on every device, each receiving its
room keys pushed on its own socket.

Why: the server must store, relay and deliver ciphertext it cannot read: every current member
device decrypts, and the plaintext is nowhere on the server side, neither in any table (the
outbox included) nor in Redis, and an acknowledged room key is gone from both. A client that
restarts must still decrypt: its state, kept in a file sealed with a passphrase, brings back
its keys and sessions, and the file gives nothing away without the passphrase.
"""

from __future__ import annotations

import base64
import json
import pathlib
import uuid

import aiohttp
import psycopg
import pytest
import redis.asyncio as aioredis

from chat_devtools.e2ee_client import E2EEDevice, StateError
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.support.ws_stack import base_env, messages, running_stack, ws_connect


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    async with running_stack(base_env(db_source, redis_addr), tmp_path) as running:
        yield running.stub, running.gateway


async def _database_text(db_source: str) -> str:
    """Every row of every table of the database, as text (the superuser bypasses RLS)."""
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        tables = await (await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).fetchall()
        parts = []
        for (table,) in tables:
            rows = await (await conn.execute(
                f'SELECT t::text FROM "{table}" t')).fetchall()  # noqa: S608 - catalog names
            parts.extend(r[0] for r in rows)
    assert any("outbox" == t for (t,) in tables)
    return "\n".join(parts)


async def _redis_bytes(redis_addr: str) -> bytes:
    """Every key and value in Redis (streams entry by entry)."""
    host, port = redis_addr.rsplit(":", 1)
    client = aioredis.Redis(host=host, port=int(port))
    out: list[bytes] = []
    try:
        async for key in client.scan_iter(count=1000):
            out.append(key)
            kind = await client.type(key)
            if kind == b"stream":
                for entry_id, fields in await client.xrange(key):
                    out.append(entry_id)
                    for k, v in fields.items():
                        out.extend((k, v))
            elif kind == b"string":
                out.append(await client.get(key) or b"")
    finally:
        await client.aclose()
    return b"\n".join(out)


def _from_frame(frame_message: dict) -> chat_pb2.Message:
    c = frame_message["ciphertext"]
    return chat_pb2.Message(
        id=frame_message["id"], conversation_id=frame_message["conversation_id"],
        sender_id=frame_message["sender_id"], content=frame_message["content"],
        seq=frame_message["seq"],
        ciphertext=chat_pb2.Ciphertext(algorithm=c["algorithm"],
                                       sender_device=c["sender_device"],
                                       body=base64.b64decode(c["body"])))


async def test_two_users_with_two_devices_each_exchange_messages_the_server_cannot_read(
        stack, db_source: str, redis_addr: str):
    stub, gateway = stack
    devices = [E2EEDevice(stub, user, make_token(user)) for user in ("alice", "alice", "bob",
                                                                     "bob")]
    for device in devices:
        await device.register()
    alice1, alice2, bob1, bob2 = devices
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], encrypted=True), metadata=auth("alice"))).conversation
    secrets = [f"attack at dawn {uuid.uuid4().hex}", f"retreat at dusk {uuid.uuid4().hex}"]
    async with aiohttp.ClientSession() as session:
        sockets = [await device.connect(session, gateway.url) for device in devices]
        ws = await ws_connect(session, gateway, "bob")
        first = await alice1.send(conv.id, secrets[0])
        second = await bob2.send(conv.id, secrets[1])
        frames = await messages(ws, 2)
        # A client resuming from the start is caught up from PostgreSQL: the same bytes.
        resumed = await messages(await ws_connect(session, gateway, "alice",
                                                  positions={conv.id: 0}), 2)
        # The room keys come pushed, each on its device's socket: one from each sender's
        # group session, for every device but the sender's own.
        pushed = []
        for device, socket in zip(devices, sockets, strict=True):
            keys = 1 if device in (alice1, bob2) else 2
            pushed += [f for f in await device.receive_pushed_keys(socket, keys)
                       if f["type"] == "to_device.created"]
    assert len(pushed) == 6
    for frame, sent in zip(resumed, (first, second), strict=True):
        assert frame["event_id"] is None  # read from the change log, not the stream
        assert _from_frame(frame["message"]).ciphertext == sent.ciphertext
    page = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv.id,
                                                              after_seq=0),
                                  metadata=auth("alice"))
    assert [m.id for m in page.messages] == [first.id, second.id]
    for device in devices:
        assert [device.decrypt(m) for m in page.messages] == secrets, device.device_id
        assert device.failures == []
    # Delivered over the WebSocket unchanged: the same bytes, decryptable by every device.
    for frame, sent in zip(frames, (first, second), strict=True):
        assert frame["message"]["content"] == ""
        assert _from_frame(frame["message"]).ciphertext == sent.ciphertext
    assert bob1.decrypt(_from_frame(frames[0]["message"])) == secrets[0]
    # The server side holds no plaintext: no table (the outbox and the change log included),
    # no Redis key or stream entry. Room keys were acknowledged, so their rows are gone, and
    # their events (in the outbox and the stream) only ever referred to them.
    text = await _database_text(db_source)
    stored = await _redis_bytes(redis_addr)
    assert base64.b64encode(first.ciphertext.body).decode() in text  # the check can see
    assert b"message.created" in stored and b"to_device.created" in stored
    for secret in secrets:
        assert secret not in text
        assert secret.encode() not in stored
        assert secret.split()[-1] not in text  # not even the random part alone
    for frame in pushed:  # the Olm-encrypted room keys, acknowledged: no copy anywhere
        olm = json.loads(frame["body"])["ciphertext"]
        assert olm not in text and olm.encode() not in stored
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        left = await (await conn.execute("SELECT count(*) FROM e2ee_to_device")).fetchone()
    assert left == (0,)


async def test_a_restarted_client_loads_its_sealed_state_and_still_decrypts(
        stack, tmp_path: pathlib.Path):
    stub, gateway = stack
    alice = E2EEDevice(stub, "alice", make_token("alice"))
    bob = E2EEDevice(stub, "bob", make_token("bob"))
    for device in (alice, bob):
        await device.register()
    state, passphrase = tmp_path / "bob.e2ee", "correct horse battery staple"
    bob.persist(state, passphrase)
    first = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], encrypted=True), metadata=auth("alice"))).conversation
    async with aiohttp.ClientSession() as session:
        ws = await bob.connect(session, gateway.url)
        before = await alice.send(first.id, "before the restart")
        await bob.receive_pushed_keys(ws, 1)  # saved, then acknowledged
        await ws.close()
    sealed = state.read_bytes()
    device_id = bob.device_id
    del bob

    # Nothing readable in the file, also once its base64 is undone: not the conversation,
    # not the device, not the names of the state's parts.
    document = json.loads(sealed)
    assert set(document) == {"format", "kdf", "nonce", "ciphertext"}
    raw = base64.b64decode(document["ciphertext"])
    for clear in (first.id, device_id, "inbox_after", "shared_with", "conversation_id"):
        assert clear.encode() not in sealed and clear.encode() not in raw
    with pytest.raises(StateError, match="wrong passphrase"):
        E2EEDevice.load(stub, make_token("bob"), state, "wrong horse")
    tampered = tmp_path / "tampered.e2ee"
    body = bytearray(raw)
    body[len(body) // 2] ^= 1
    tampered.write_text(json.dumps({**document, "ciphertext": base64.b64encode(body).decode()}))
    with pytest.raises(StateError):
        E2EEDevice.load(stub, make_token("bob"), tampered, passphrase)

    restarted = E2EEDevice.load(stub, make_token("bob"), state, passphrase)
    assert (restarted.user_id, restarted.device_id) == ("bob", device_id)
    assert restarted.decrypt(before) == "before the restart"  # the Megolm key came back
    # A new room key comes through the Olm session alice started before the restart: it
    # decrypts only with that session restored (its one-time key is used up).
    second = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="second", encrypted=True), metadata=auth("alice"))
    ).conversation
    async with aiohttp.ClientSession() as session:
        ws = await restarted.connect(session, gateway.url)
        after = await alice.send(second.id, "after the restart")
        await restarted.receive_pushed_keys(ws, 1)
    assert restarted.decrypt(after) == "after the restart"
    assert restarted.failures == []
