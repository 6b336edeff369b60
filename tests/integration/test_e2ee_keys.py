"""End-to-end encryption's server side through a real gRPC channel and real PostgreSQL:
device and key RPCs, encrypted conversations' rules, to-device mailboxes.

Why: the server must hand out each one-time key once, whatever the concurrency; refuse keys
whose signatures do not hold; never take plaintext into an encrypted conversation; and keep
a to-device message exactly until its device acknowledges it.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import vodozemac

from chat_devtools.e2ee_client import E2EEDevice
from chat_shared.e2ee import MEGOLM_ALGORITHM, device_statement, one_time_key_statement
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import db_rows, rpc_error


async def _encrypted(stub, owner: str, members: list[str]) -> chat_pb2.Conversation:
    resp = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=members, title="secret", encrypted=True), metadata=auth(owner))
    return resp.conversation


async def _device(stub, user: str, keys: int = 5) -> E2EEDevice:
    device = E2EEDevice(stub, user, make_token(user))
    await device.register(one_time_keys=keys)
    return device


def _ciphertext(device: str, body: bytes = b"opaque") -> chat_pb2.Ciphertext:
    return chat_pb2.Ciphertext(algorithm=MEGOLM_ALGORITHM, sender_device=device, body=body)


async def test_register_checks_the_self_signature_and_keeps_a_device_id_to_its_keys(stub):
    account = vodozemac.Account()
    curve, ed = account.curve25519_key.to_base64(), account.ed25519_key.to_base64()
    good = account.sign(device_statement("alice", "d1", curve, ed)).to_base64()
    forged = account.sign(device_statement("mallory", "d1", curve, ed)).to_base64()
    req = chat_pb2.RegisterDeviceRequest(device_id="d1", curve25519_key=curve, ed25519_key=ed,
                                         signature=forged)
    err = await rpc_error(stub.RegisterDevice(req, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "signature" in err.details()
    req.signature = good
    first = await stub.RegisterDevice(req, metadata=auth("alice"))
    again = await stub.RegisterDevice(req, metadata=auth("alice"))  # a retry
    assert first.device == again.device and first.device.ed25519_key == ed
    other = vodozemac.Account()
    c2, e2 = other.curve25519_key.to_base64(), other.ed25519_key.to_base64()
    err = await rpc_error(stub.RegisterDevice(chat_pb2.RegisterDeviceRequest(
        device_id="d1", curve25519_key=c2, ed25519_key=e2,
        signature=other.sign(device_statement("alice", "d1", c2, e2)).to_base64()),
        metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_one_time_keys_with_a_bad_signature_are_refused_whole(stub, db_source):
    device = await _device(stub, "alice", keys=0)
    device.account.generate_one_time_keys(2)
    keys = []
    for key_id, key in device.account.one_time_keys.items():
        statement = one_time_key_statement("alice", device.device_id, key_id, key.to_base64())
        keys.append(chat_pb2.OneTimeKey(key_id=key_id, public_key=key.to_base64(),
                                        signature=device.account.sign(statement).to_base64()))
    keys[1].signature = keys[0].signature  # a signature of another key
    err = await rpc_error(stub.UploadOneTimeKeys(chat_pb2.UploadOneTimeKeysRequest(
        device_id=device.device_id, keys=keys), metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "item 1: its signature" in err.details()
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_one_time_keys") == [(0,)]


async def test_concurrent_claims_never_hand_out_a_one_time_key_twice(stub, db_source):
    bob = await _device(stub, "bob", keys=40)
    conv = await _encrypted(stub, "alice", ["bob", "carol", "dave"])
    ref = chat_pb2.DeviceRef(user_id="bob", device_id=bob.device_id)

    async def claim(user: str) -> chat_pb2.ClaimedKey:
        resp = await stub.ClaimKeys(chat_pb2.ClaimKeysRequest(
            conversation_id=conv.id, devices=[ref]), metadata=auth(user))
        [key] = resp.keys
        return key

    claimed = await asyncio.gather(*(claim(("alice", "carol", "dave")[i % 3])
                                     for i in range(60)))
    one_time = [c.one_time_key.key_id for c in claimed if not c.fallback]
    fallback = [c for c in claimed if c.fallback]
    print(f"60 concurrent claims of 40 keys: {len(one_time)} one-time, {len(fallback)} fallback")
    assert len(one_time) == len(set(one_time)), "a one-time key was handed out twice"
    # SKIP LOCKED may answer with the fallback while keys are being claimed at that instant,
    # never with a key twice; all 40 are gone once 60 claims are done.
    assert len(one_time) + len(fallback) == 60 and len(fallback) >= 20
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_one_time_keys") == [
        (40 - len(one_time),)]
    # Exhausted: the fallback key, again and again, never removed.
    for _ in range(2):
        again = await claim("alice")
        assert again.fallback and again.one_time_key.key_id == fallback[0].one_time_key.key_id


async def test_keys_and_devices_are_for_members_only(stub):
    bob = await _device(stub, "bob")
    conv = await _encrypted(stub, "alice", ["bob"])
    listed = await stub.ListDevices(chat_pb2.ListDevicesRequest(conversation_id=conv.id),
                                    metadata=auth("alice"))
    assert [(d.user_id, d.device_id) for d in listed.devices] == [("bob", bob.device_id)]
    ref = chat_pb2.DeviceRef(user_id="bob", device_id=bob.device_id)
    for call in (stub.ListDevices(chat_pb2.ListDevicesRequest(conversation_id=conv.id),
                                  metadata=auth("mallory")),
                 stub.ClaimKeys(chat_pb2.ClaimKeysRequest(conversation_id=conv.id,
                                                          devices=[ref]),
                                metadata=auth("mallory"))):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    # A member claims only members' devices: a device of a non-member is not answered.
    mallory = await _device(stub, "mallory")
    resp = await stub.ClaimKeys(chat_pb2.ClaimKeysRequest(conversation_id=conv.id, devices=[
        chat_pb2.DeviceRef(user_id="mallory", device_id=mallory.device_id)]),
        metadata=auth("alice"))
    assert list(resp.keys) == []


async def test_an_encrypted_conversation_takes_ciphertext_only(stub, db_source):
    alice = await _device(stub, "alice")
    conv = await _encrypted(stub, "alice", ["bob"])
    assert conv.encrypted
    plain = chat_pb2.SendMessageRequest(conversation_id=conv.id, content="attack at dawn",
                                        idempotency_key=uuid.uuid4().hex)
    err = await rpc_error(stub.SendMessage(plain, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "encrypted" in err.details()
    unknown = chat_pb2.SendMessageRequest(conversation_id=conv.id,
                                          idempotency_key=uuid.uuid4().hex,
                                          ciphertext=_ciphertext("no-such-device"))
    err = await rpc_error(stub.SendMessage(unknown, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    both = chat_pb2.SendMessageRequest(conversation_id=conv.id, content="x",
                                       idempotency_key=uuid.uuid4().hex,
                                       ciphertext=_ciphertext(alice.device_id))
    err = await rpc_error(stub.SendMessage(both, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = chat_pb2.SendMessageRequest(conversation_id=conv.id, idempotency_key="k1",
                                     ciphertext=_ciphertext(alice.device_id, b"\x00\xffopaque"))
    sent = (await stub.SendMessage(ok, metadata=auth("alice"))).message
    assert sent.content == "" and sent.ciphertext == ok.ciphertext and sent.seq == 1
    # A retry is a duplicate of the same ciphertext.
    err = await rpc_error(stub.SendMessage(ok, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    # Stored unchanged, never indexed for search; not editable (an edit is plaintext).
    page = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv.id),
                                  metadata=auth("bob"))
    assert [m.ciphertext for m in page.messages] == [ok.ciphertext]
    assert await db_rows(db_source, "SELECT search_vector FROM messages") == [(None,)]
    err = await rpc_error(stub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=conv.id, message_id=sent.id, content="attack at dawn"),
        metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # And a plain conversation refuses ciphertext; the encrypted direct one is another.
    direct = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"]), metadata=auth("alice"))).conversation
    assert direct.id != conv.id and not direct.encrypted
    err = await rpc_error(stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=direct.id, idempotency_key=uuid.uuid4().hex,
        ciphertext=_ciphertext(alice.device_id)), metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "ciphertext" in err.details()
    # Neither content nor ciphertext: the field is named.
    err = await rpc_error(stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=direct.id, idempotency_key=uuid.uuid4().hex), metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "content" in err.details()


async def test_to_device_messages_wait_for_their_device_then_go_on_acknowledgement(stub,
                                                                                    db_source):
    alice = await _device(stub, "alice")
    bob1, bob2 = await _device(stub, "bob"), await _device(stub, "bob")
    conv = await _encrypted(stub, "alice", ["bob"])
    resp = await stub.SendToDevice(chat_pb2.SendToDeviceRequest(
        conversation_id=conv.id, sender_device=alice.device_id, messages=[
            chat_pb2.ToDeviceMessage(recipient_id="bob", recipient_device=bob1.device_id,
                                     message_type="m.test", body="one"),
            chat_pb2.ToDeviceMessage(recipient_id="bob", recipient_device="gone",
                                     message_type="m.test", body="dropped")]),
        metadata=auth("alice"))
    assert resp.stored == 1
    inbox = chat_pb2.GetToDeviceMessagesRequest(device_id=bob1.device_id)
    [m] = (await stub.GetToDeviceMessages(inbox, metadata=auth("bob"))).messages
    assert (m.sender_id, m.sender_device, m.body) == ("alice", alice.device_id, "one")
    assert list((await stub.GetToDeviceMessages(chat_pb2.GetToDeviceMessagesRequest(
        device_id=bob2.device_id), metadata=auth("bob"))).messages) == []
    # Another user cannot read bob's mailbox, even naming the device.
    err = await rpc_error(stub.GetToDeviceMessages(inbox, metadata=auth("alice")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # A non-member cannot send into the conversation's devices.
    mallory = await _device(stub, "mallory")
    err = await rpc_error(stub.SendToDevice(chat_pb2.SendToDeviceRequest(
        conversation_id=conv.id, sender_device=mallory.device_id, messages=[
            chat_pb2.ToDeviceMessage(recipient_id="bob", recipient_device=bob1.device_id,
                                     message_type="m.test", body="x")]),
        metadata=auth("mallory")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    ack = await stub.AckToDeviceMessages(chat_pb2.AckToDeviceMessagesRequest(
        device_id=bob1.device_id, up_to_id=m.id), metadata=auth("bob"))
    assert ack.deleted == 1
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_to_device") == [(0,)]
    # Removing a device removes its keys too.
    await stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(device_id=bob1.device_id),
                            metadata=auth("bob"))
    assert await db_rows(db_source, "SELECT count(*) FROM e2ee_one_time_keys WHERE device_id"
                                    " = %s", bob1.device_id) == [(0,)]
    err = await rpc_error(stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(
        device_id=bob1.device_id), metadata=auth("bob")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
