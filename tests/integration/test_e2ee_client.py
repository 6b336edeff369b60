"""The reference end-to-end client (``chat_devtools.e2ee_client``, vodozemac) against the real
API and PostgreSQL: group session rotation on membership changes, and tampering.

Why: a removed member must not decrypt what is sent after the removal, and a ciphertext
changed by anyone on the way (the server, an operator with the database) must fail to decrypt
and be reported, never shown as a message.
"""

from __future__ import annotations

import base64
import json

import pytest
from psycopg.types.json import Jsonb

from chat_devtools.e2ee_client import DecryptionError, E2EEDevice
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import db_rows


async def _devices(stub, *users: str) -> list[E2EEDevice]:
    out = [E2EEDevice(stub, user, make_token(user)) for user in users]
    for device in out:
        await device.register()
    return out


async def _messages(stub, conversation_id: str, user: str) -> list[chat_pb2.Message]:
    page = await stub.GetMessages(chat_pb2.GetMessagesRequest(
        conversation_id=conversation_id, after_seq=0), metadata=auth(user))
    return list(page.messages)


async def test_a_removed_members_devices_cannot_decrypt_later_messages(stub):
    alice, bob, carol, carol2 = await _devices(stub, "alice", "bob", "carol", "carol")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob", "carol"], title="trio", encrypted=True),
        metadata=auth("alice"))).conversation
    before = await alice.send(conv.id, "before the removal")
    for device in (bob, carol, carol2):
        assert await device.receive_keys() == 1
        assert device.decrypt(before) == "before the removal"
    await stub.RemoveMember(chat_pb2.RemoveMemberRequest(conversation_id=conv.id,
                                                         user_id="carol"),
                            metadata=auth("alice"))
    after = await alice.send(conv.id, "after the removal")
    assert after.ciphertext.body != before.ciphertext.body
    assert await bob.receive_keys() == 1  # the new group session
    assert bob.decrypt(after) == "after the removal"
    for device in (carol, carol2):
        assert await device.receive_keys() == 0  # never shared with carol's devices
        with pytest.raises(DecryptionError, match="no key for its session"):
            device.decrypt(after)
        assert device.failures and "no key" in device.failures[-1]
        # What it had before still decrypts: rotation is forward only.
        assert device.decrypt(before) == "before the removal"
    # The remaining members read it from the server as it was sent.
    assert [bob.decrypt(m) for m in await _messages(stub, conv.id, "bob")] == [
        "before the removal", "after the removal"]


async def test_a_new_device_receives_the_key_and_a_removed_device_loses_it(stub):
    alice, bob = await _devices(stub, "alice", "bob")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], encrypted=True), metadata=auth("alice"))).conversation
    await alice.send(conv.id, "one")
    [bob2] = await _devices(stub, "bob")
    two = await alice.send(conv.id, "two")  # shares the current session with bob2 too
    await bob.receive_keys()
    await bob2.receive_keys()
    assert bob2.decrypt(two) == "two" and bob.decrypt(two) == "two"
    await stub.RemoveDevice(chat_pb2.RemoveDeviceRequest(device_id=bob.device_id),
                            metadata=auth("bob"))
    three = await alice.send(conv.id, "three")  # rotated: bob's old device is gone
    await bob2.receive_keys()
    assert bob2.decrypt(three) == "three"
    with pytest.raises(DecryptionError):
        bob.decrypt(three)


async def test_with_its_one_time_keys_exhausted_a_device_is_reached_through_its_fallback_key(
        stub):
    # carol's device publishes no one-time keys: both senders claim the same fallback key and
    # each starts an Olm session with it. A one-time key would serve the first session only
    # (the account drops it once used); vodozemac's fallback key stays.
    alice, bob = await _devices(stub, "alice", "bob")
    carol = E2EEDevice(stub, "carol", make_token("carol"))
    await carol.register(one_time_keys=0)
    for sender, title in ((alice, "from alice"), (bob, "from bob")):
        conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
            member_ids=["carol"], title=title, encrypted=True),
            metadata=auth(sender.user_id))).conversation
        message = await sender.send(conv.id, title)
        assert await carol.receive_keys() == 1
        assert carol.decrypt(message) == title


async def test_tampered_ciphertext_fails_to_decrypt_and_is_reported(stub, db_source):
    alice, bob = await _devices(stub, "alice", "bob")
    conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], encrypted=True), metadata=auth("alice"))).conversation
    sent = await alice.send(conv.id, "pay 10 to carol")
    await bob.receive_keys()
    # An operator with the database flips one bit of the Megolm ciphertext.
    envelope = json.loads(sent.ciphertext.body)
    text = envelope["ciphertext"]  # vodozemac's base64 is unpadded
    raw = bytearray(base64.b64decode(text + "=" * (-len(text) % 4)))
    raw[len(raw) // 2] ^= 0x01
    envelope["ciphertext"] = base64.b64encode(bytes(raw)).decode().rstrip("=")
    tampered = json.dumps(envelope).encode()
    [(stored,)] = await db_rows(db_source, "SELECT ciphertext FROM messages WHERE id = %s",
                                sent.id)
    stored["body"] = base64.b64encode(tampered).decode()
    await db_rows(db_source, "UPDATE messages SET ciphertext = %s WHERE id = %s RETURNING 1",
                  Jsonb(stored), sent.id)
    [served] = await _messages(stub, conv.id, "bob")
    assert served.ciphertext.body == tampered  # the server relays what it has, unchanged
    with pytest.raises(DecryptionError, match="does not decrypt"):
        bob.decrypt(served)
    assert bob.failures == [f"message {sent.id}: " + bob.failures[0].split(": ", 1)[1]]
    # The same ciphertext moved to another message (a replay) is refused too.
    replay = chat_pb2.Message()
    replay.CopyFrom(sent)
    replay.id = "00000000-0000-4000-8000-000000000000"
    assert bob.decrypt(sent) == "pay 10 to carol"
    with pytest.raises(DecryptionError, match="replay"):
        bob.decrypt(replay)
