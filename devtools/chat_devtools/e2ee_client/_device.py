"""One device of the reference client: its keys, sessions and the API calls that move them.

Wire formats (docs/e2ee.md, opaque to the server):

- a message's ``Ciphertext.body`` (algorithm ``m.megolm.v1.aes-sha2``) is canonical JSON
  ``{"session_id": ..., "ciphertext": <Megolm message, base64>}``; the Megolm plaintext is
  canonical JSON ``{"conversation_id": ..., "text": ...}``, so a message cannot be moved to
  another conversation by the server;
- a to-device ``body`` (type ``m.olm.v1.curve25519-aes-sha2``) is canonical JSON
  ``{"sender_key": <Curve25519>, "type": 0 or 1, "ciphertext": <Olm message, base64>}``; the
  Olm plaintext is the room key: ``{"type": "m.room_key", "conversation_id", "session_id",
  "session_key", "sender_ed25519"}``.

Room keys arrive pushed over the gateway's WebSocket (``connect`` opens the device's socket,
``receive_pushed_keys`` takes them) or by reading the mailbox (``receive_keys``); either way
the device acknowledges them with AckToDeviceMessages, after saving its state when it has a
state file (``persist``/``load``, ``_store``), so a key is never acknowledged and then lost.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import vodozemac

from chat_devtools.e2ee_client._store import DeviceStore
from chat_shared.e2ee import (
    MEGOLM_ALGORITHM,
    OLM_ALGORITHM,
    canonical_json,
    device_statement,
    one_time_key_statement,
)
from chat_shared.protos.chat.v1 import chat_pb2

ROOM_KEY = "m.room_key"
CLAIM_BATCH = 250
"""Devices per ClaimKeys call (chat.proto's limit)."""
TO_DEVICE_BATCH = 100
"""Messages per SendToDevice call (chat.proto's limit)."""
TO_DEVICE_FRAME = "to_device.created"
"""The WebSocket frame of a to-device message pushed to this device (docs/websocket.md)."""


class DecryptionError(Exception):
    """A message that this device cannot decrypt, or whose checks fail."""


@dataclass
class _InboundKey:
    session: vodozemac.InboundGroupSession
    conversation_id: str
    sender_id: str
    sender_device: str
    seen: dict[int, str] = field(default_factory=dict)
    """Megolm message index -> message id: the same index twice is a replay."""


@dataclass
class _Outbound:
    session: vodozemac.GroupSession
    shared_with: set[tuple[str, str]]


def _verify(ed25519_key: str, statement: bytes, signature: str) -> bool:
    try:
        vodozemac.Ed25519PublicKey.from_base64(ed25519_key).verify_signature(
            statement, vodozemac.Ed25519Signature.from_base64(signature))
    except ValueError:  # vodozemac's exceptions are ValueErrors
        return False
    return True


class E2EEDevice:
    """One device of ``user_id``, talking to the API through ``stub`` with ``token``."""

    def __init__(self, stub: Any, user_id: str, token: str, device_id: str | None = None,
                 *, account: vodozemac.Account | None = None) -> None:
        self.stub = stub
        self.user_id = user_id
        self.device_id = device_id or "dev-" + uuid.uuid4().hex[:12]
        self._token = token
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.account = account or vodozemac.Account()
        self.curve25519_key = self.account.curve25519_key.to_base64()
        self.ed25519_key = self.account.ed25519_key.to_base64()
        self._olm: dict[str, list[vodozemac.Session]] = {}  # by the peer's Curve25519 key
        self._outbound: dict[str, _Outbound] = {}  # by conversation
        self._inbound: dict[str, _InboundKey] = {}  # by Megolm session id
        self._inbox_after = 0
        """The last to-device message taken (mailbox ids of a device grow in commit order,
        so this is also how the device recognises one delivered again)."""
        self._store: DeviceStore | None = None
        self.failures: list[str] = []
        """Every message or to-device message that failed, in words (reported to the user)."""

    # ---- state -------------------------------------------------------------------------

    def persist(self, path: str | os.PathLike[str], passphrase: str) -> None:
        """Keeps this device's state in ``path``, encrypted with ``passphrase``: written now,
        and again before every acknowledgement of to-device messages (``save`` any time)."""
        self._store = DeviceStore.create(path, passphrase)
        self.save()

    def save(self) -> None:
        """Writes the state to the file given to ``persist`` or ``load``."""
        if self._store is None:
            raise RuntimeError("no state file: call persist(path, passphrase) first")
        self._store.write(self._state(self._store.pickle_key))

    @classmethod
    def load(cls, stub: Any, token: str, path: str | os.PathLike[str], passphrase: str
             ) -> E2EEDevice:
        """The device saved in ``path`` (its keys, sessions and mailbox position), talking to
        the API through ``stub`` with ``token``; ``StateError`` when the passphrase is wrong
        or the file was changed."""
        store, state = DeviceStore.open(path, passphrase)
        key = store.pickle_key
        device = cls(stub, state["user_id"], token, state["device_id"],
                     account=vodozemac.Account.from_pickle(state["account"], key))
        device._store = store
        device._inbox_after = int(state["inbox_after"])
        device._olm = {peer: [vodozemac.Session.from_pickle(p, key) for p in pickles]
                       for peer, pickles in state["olm"].items()}
        device._outbound = {
            cid: _Outbound(vodozemac.GroupSession.from_pickle(o["session"], key),
                           {(u, d) for u, d in o["shared_with"]})
            for cid, o in state["outbound"].items()}
        device._inbound = {
            sid: _InboundKey(vodozemac.InboundGroupSession.from_pickle(i["session"], key),
                             i["conversation_id"], i["sender_id"], i["sender_device"],
                             {int(index): mid for index, mid in i["seen"].items()})
            for sid, i in state["inbound"].items()}
        return device

    def _state(self, key: bytes) -> dict[str, Any]:
        """Everything the device needs after a restart, its vodozemac objects pickled with
        ``key`` (the store seals the whole)."""
        return {
            "user_id": self.user_id, "device_id": self.device_id,
            "account": self.account.pickle(key), "inbox_after": self._inbox_after,
            "olm": {peer: [s.pickle(key) for s in sessions]
                    for peer, sessions in self._olm.items()},
            "outbound": {cid: {"session": o.session.pickle(key),
                               "shared_with": sorted([u, d] for u, d in o.shared_with)}
                         for cid, o in self._outbound.items()},
            "inbound": {sid: {"session": i.session.pickle(key),
                              "conversation_id": i.conversation_id, "sender_id": i.sender_id,
                              "sender_device": i.sender_device,
                              "seen": {str(index): mid for index, mid in i.seen.items()}}
                        for sid, i in self._inbound.items()},
        }

    # ---- keys --------------------------------------------------------------------------

    async def register(self, one_time_keys: int = 10) -> None:
        """Registers the device's identity keys and uploads one-time keys and a fallback."""
        statement = device_statement(self.user_id, self.device_id, self.curve25519_key,
                                     self.ed25519_key)
        await self.stub.RegisterDevice(chat_pb2.RegisterDeviceRequest(
            device_id=self.device_id, curve25519_key=self.curve25519_key,
            ed25519_key=self.ed25519_key,
            signature=self.account.sign(statement).to_base64()), metadata=self._metadata)
        await self.upload_one_time_keys(one_time_keys, fallback=True)

    def _signed_keys(self, count: int, *, fallback: bool = False) -> list[chat_pb2.OneTimeKey]:
        """``count`` new one-time keys, or (``fallback``) a new fallback key, signed."""
        if fallback:
            # In the binding, not yet in its type stubs.
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            unpublished = self.account.fallback_key  # type: ignore[attr-defined]
        else:
            self.account.generate_one_time_keys(count)
            unpublished = self.account.one_time_keys
        keys = []
        for key_id, key in unpublished.items():
            public = key.to_base64()
            statement = one_time_key_statement(self.user_id, self.device_id, key_id, public,
                                               fallback=fallback)
            keys.append(chat_pb2.OneTimeKey(key_id=key_id, public_key=public,
                                            signature=self.account.sign(statement).to_base64()))
        self.account.mark_keys_as_published()
        return keys

    async def upload_one_time_keys(self, count: int, *, fallback: bool = False) -> int:
        """Generates, signs and uploads ``count`` one-time keys (and a new fallback key).

        The fallback key is vodozemac's own: unlike a one-time key it stays in the account after
        a session was made with it, so any number of senders can start sessions with it while
        the one-time keys are exhausted (docs/e2ee.md, "Key lifecycle").
        """
        keys = self._signed_keys(count)
        req = chat_pb2.UploadOneTimeKeysRequest(device_id=self.device_id, keys=keys)
        if fallback:
            req.fallback_key.CopyFrom(self._signed_keys(1, fallback=True)[0])
        resp = await self.stub.UploadOneTimeKeys(req, metadata=self._metadata)
        return int(resp.one_time_key_count)

    # ---- sessions ----------------------------------------------------------------------

    async def _member_devices(self, conversation_id: str) -> dict[tuple[str, str],
                                                                   chat_pb2.DeviceKeys]:
        """The conversation's devices whose self-signature holds (others are ignored)."""
        resp = await self.stub.ListDevices(chat_pb2.ListDevicesRequest(
            conversation_id=conversation_id), metadata=self._metadata)
        out = {}
        for d in resp.devices:
            statement = device_statement(d.user_id, d.device_id, d.curve25519_key,
                                         d.ed25519_key)
            if _verify(d.ed25519_key, statement, d.signature):
                out[(d.user_id, d.device_id)] = d
            else:
                self.failures.append(f"device {d.user_id}/{d.device_id}: bad signature")
        return out

    async def _olm_sessions_for(self, conversation_id: str,
                                devices: dict[tuple[str, str], chat_pb2.DeviceKeys]) -> None:
        """Starts an Olm session with every device that has none yet (one claimed key
        each, its signature checked)."""
        missing = [ref for ref, d in devices.items() if d.curve25519_key not in self._olm]
        claimed_keys: list[chat_pb2.ClaimedKey] = []
        for start in range(0, len(missing), CLAIM_BATCH):
            resp = await self.stub.ClaimKeys(chat_pb2.ClaimKeysRequest(
                conversation_id=conversation_id,
                devices=[chat_pb2.DeviceRef(user_id=u, device_id=d)
                         for u, d in missing[start:start + CLAIM_BATCH]]),
                metadata=self._metadata)
            claimed_keys.extend(resp.keys)
        for claimed in claimed_keys:
            known = devices.get((claimed.device.user_id, claimed.device.device_id))
            key = claimed.one_time_key
            statement = one_time_key_statement(known.user_id, known.device_id, key.key_id,
                                               key.public_key, fallback=claimed.fallback
                                               ) if known else b""
            if known is None or not _verify(known.ed25519_key, statement, key.signature):
                self.failures.append(f"claimed key of {claimed.device.user_id}/"
                                     f"{claimed.device.device_id}: bad signature")
                continue
            session = self.account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_base64(known.curve25519_key),
                vodozemac.Curve25519PublicKey.from_base64(key.public_key))
            self._olm.setdefault(known.curve25519_key, []).insert(0, session)

    async def ensure_group_session(self, conversation_id: str) -> None:
        """Makes sure every current device of the conversation holds this device's group
        session key, and that no device that left does: when one did (its member was
        removed, or it was removed), the session is replaced by a new one, shared with the
        current devices only."""
        devices = await self._member_devices(conversation_id)
        targets = {ref for ref in devices if ref != (self.user_id, self.device_id)}
        current = self._outbound.get(conversation_id)
        if current is None or not current.shared_with <= targets:
            current = _Outbound(vodozemac.GroupSession(), set())
            self._outbound[conversation_id] = current
            # Our own messages must decrypt on this device too.
            self._inbound[current.session.session_id] = _InboundKey(
                vodozemac.InboundGroupSession(current.session.session_key), conversation_id,
                self.user_id, self.device_id)
        new = {ref: devices[ref] for ref in targets - current.shared_with}
        if not new:
            return
        await self._olm_sessions_for(conversation_id, new)
        room_key = canonical_json({
            "type": ROOM_KEY, "conversation_id": conversation_id,
            "session_id": current.session.session_id,
            "session_key": current.session.session_key.to_base64(),
            "sender_ed25519": self.ed25519_key})
        messages = []
        for (user, device), keys in new.items():
            sessions = self._olm.get(keys.curve25519_key)
            if not sessions:
                continue  # no key could be claimed: that device cannot read this session
            kind, raw = sessions[0].encrypt(room_key).to_parts()
            body = canonical_json({"sender_key": self.curve25519_key, "type": kind,
                                   "ciphertext": base64.b64encode(raw).decode()}).decode()
            messages.append(chat_pb2.ToDeviceMessage(
                recipient_id=user, recipient_device=device, message_type=OLM_ALGORITHM,
                body=body))
            current.shared_with.add((user, device))
        for start in range(0, len(messages), TO_DEVICE_BATCH):
            await self.stub.SendToDevice(chat_pb2.SendToDeviceRequest(
                conversation_id=conversation_id, sender_device=self.device_id,
                messages=messages[start:start + TO_DEVICE_BATCH]), metadata=self._metadata)

    async def receive_keys(self) -> int:
        """Reads this device's to-device messages from its mailbox (GetToDeviceMessages),
        takes the room keys in them, and acknowledges them (the server then deletes them);
        how many keys it took."""
        resp = await self.stub.GetToDeviceMessages(chat_pb2.GetToDeviceMessagesRequest(
            device_id=self.device_id, after_id=self._inbox_after), metadata=self._metadata)
        taken = sum(self._take(m) is True for m in resp.messages)
        if resp.messages:
            await self._acknowledge()
        return taken

    async def connect(self, session: aiohttp.ClientSession, gateway_url: str,
                      positions: Mapping[str, int] | None = None
                      ) -> aiohttp.ClientWebSocketResponse:
        """Opens this device's WebSocket on the gateway (``/v1/ws?device_id=...``): the
        device's to-device messages are pushed on it, those waiting first, and the
        conversations' events as on any socket (resumed from ``positions``)."""
        ws = await session.ws_connect(
            f"{gateway_url}/v1/ws", params={"device_id": self.device_id},
            headers={"Authorization": f"Bearer {self._token}"}, heartbeat=None)
        await ws.send_json({"type": "resume", "positions": dict(positions or {})})
        return ws

    async def receive_pushed_keys(self, ws: aiohttp.ClientWebSocketResponse, count: int,
                                  within: float = 30.0) -> list[dict[str, Any]]:
        """Reads frames from the device's socket until ``count`` new to-device messages have
        been taken (one delivered again, already taken, does not count), then acknowledges
        them; every frame read, in order (the conversations' events among them are the
        caller's to apply).

        Raises:
            TimeoutError: fewer arrived within ``within`` seconds (those that did are
                acknowledged).
            ConnectionError: the server closed the socket (e.g. 4404: not a device of the
                user).
        """
        frames: list[dict[str, Any]] = []
        new = 0
        deadline = time.monotonic() + within
        try:
            while new < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{new} of {count} to-device messages arrived")
                msg = await ws.receive(timeout=left)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"the socket closed ({ws.close_code}): {msg.extra}")
                frame = json.loads(msg.data)
                frames.append(frame)
                if (frame.get("type") == TO_DEVICE_FRAME
                        and self._take(_from_frame(frame)) is not None):
                    new += 1
        finally:
            if new:
                await self._acknowledge()
        return frames

    def _take(self, m: chat_pb2.ToDeviceMessage) -> bool | None:
        """Takes the room key of one to-device message: True when it did, False when it
        failed (recorded in ``failures``), None for a message taken before."""
        if m.id <= self._inbox_after:
            return None
        self._inbox_after = m.id
        try:
            self._take_room_key(m)
        except (DecryptionError, ValueError, KeyError) as exc:
            self.failures.append(f"to-device {m.id} from {m.sender_id}/{m.sender_device}: "
                                 f"{exc}")
            return False
        return True

    async def _acknowledge(self) -> None:
        """Saves the state (when kept in a file) so the keys taken survive a restart, then
        lets the server delete the messages up to the last one taken."""
        if self._store is not None:
            self.save()
        await self.stub.AckToDeviceMessages(chat_pb2.AckToDeviceMessagesRequest(
            device_id=self.device_id, up_to_id=self._inbox_after), metadata=self._metadata)

    def _olm_decrypt(self, sender_key: str, kind: int, raw: bytes) -> bytes:
        message = vodozemac.AnyOlmMessage.from_parts(kind, raw)
        for session in self._olm.get(sender_key, []):
            try:
                return session.decrypt(message)
            except ValueError:
                continue
        pre_key = message.to_pre_key()
        if pre_key is None:
            raise DecryptionError("no Olm session with the sender")
        session, plaintext = self.account.create_inbound_session(
            vodozemac.Curve25519PublicKey.from_base64(sender_key), pre_key)
        self._olm.setdefault(sender_key, []).insert(0, session)
        return plaintext

    def _take_room_key(self, m: chat_pb2.ToDeviceMessage) -> None:
        if m.message_type != OLM_ALGORITHM:
            raise DecryptionError(f"unknown type {m.message_type!r}")
        envelope = json.loads(m.body)
        plaintext = self._olm_decrypt(envelope["sender_key"], int(envelope["type"]),
                                      base64.b64decode(envelope["ciphertext"]))
        key = json.loads(plaintext)
        if key.get("type") != ROOM_KEY:
            raise DecryptionError("not a room key")
        self._inbound[key["session_id"]] = _InboundKey(
            vodozemac.InboundGroupSession(vodozemac.SessionKey(key["session_key"])),
            key["conversation_id"], m.sender_id, m.sender_device)

    # ---- messages ----------------------------------------------------------------------

    def encrypt(self, conversation_id: str, text: str) -> chat_pb2.Ciphertext:
        """``text`` encrypted with the conversation's current group session (which
        ``ensure_group_session`` made and shared)."""
        outbound = self._outbound[conversation_id].session
        encrypted = outbound.encrypt(canonical_json({"conversation_id": conversation_id,
                                                     "text": text}))
        body = canonical_json({"session_id": outbound.session_id,
                               "ciphertext": encrypted.to_base64()})
        return chat_pb2.Ciphertext(algorithm=MEGOLM_ALGORITHM, sender_device=self.device_id,
                                   body=body)

    async def send(self, conversation_id: str, text: str) -> chat_pb2.Message:
        """Encrypts ``text`` with the conversation's group session (shared or rotated
        first, as ``ensure_group_session`` says) and sends it."""
        await self.ensure_group_session(conversation_id)
        resp = await self.stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, idempotency_key=uuid.uuid4().hex,
            ciphertext=self.encrypt(conversation_id, text)), metadata=self._metadata)
        sent: chat_pb2.Message = resp.message
        return sent

    def decrypt(self, message: chat_pb2.Message) -> str:
        """The text of an encrypted message; DecryptionError (also recorded in
        ``failures``) when this device has no key for it or a check fails."""
        try:
            return self._decrypt(message)
        except DecryptionError as exc:
            self.failures.append(f"message {message.id}: {exc}")
            raise

    def _decrypt(self, message: chat_pb2.Message) -> str:
        c = message.ciphertext
        if not message.HasField("ciphertext") or c.algorithm != MEGOLM_ALGORITHM:
            raise DecryptionError("not a Megolm message")
        try:
            envelope = json.loads(c.body)
            megolm = vodozemac.MegolmMessage.from_base64(envelope["ciphertext"])
            session_id = envelope["session_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DecryptionError(f"malformed ciphertext ({exc})") from None
        inbound = self._inbound.get(session_id)
        if inbound is None:
            raise DecryptionError("no key for its session (not shared with this device)")
        try:
            decrypted = inbound.session.decrypt(megolm)
        except ValueError as exc:  # MegolmDecryptionException: MAC or signature mismatch
            raise DecryptionError(f"does not decrypt: {exc}") from None
        seen = inbound.seen.setdefault(decrypted.message_index, message.id)
        if seen != message.id:
            raise DecryptionError("replay of an earlier message's ciphertext")
        if (inbound.sender_id, inbound.sender_device) != (message.sender_id, c.sender_device):
            raise DecryptionError("sent by another device than the session's owner")
        payload = json.loads(decrypted.plaintext)
        if payload.get("conversation_id") != message.conversation_id:
            raise DecryptionError("encrypted for another conversation")
        return str(payload["text"])


def _from_frame(frame: Mapping[str, Any]) -> chat_pb2.ToDeviceMessage:
    """A pushed ``to_device.created`` frame as the mailbox's message (the same fields)."""
    return chat_pb2.ToDeviceMessage(
        id=int(frame["id"]), recipient_id="", sender_id=str(frame["sender_id"]),
        sender_device=str(frame["sender_device"]), message_type=str(frame["message_type"]),
        body=str(frame["body"]))
