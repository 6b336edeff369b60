"""RegisterDevice, UploadOneTimeKeys, ClaimKeys, ListDevices, RemoveDevice: public keys only.

The server never holds a private key (docs/e2ee.md). It checks the one thing it can check:
that each key a device publishes is signed by that device's Ed25519 key, over the canonical
statements of ``chat_shared.e2ee``; a bad signature refuses the whole call, so a client never
claims a key its owner did not publish. Whether a device's Ed25519 key really is its user's is
for users to verify between themselves (the server could lie about that; docs/e2ee.md).

Signatures are checked with vodozemac's Ed25519 (the same vetted library the reference client
uses for all of its cryptography), not hand-written code.

Membership: a device's keys are listed and claimed only through a conversation the caller is a
member of, and only for that conversation's members; the answer for a non-member is NOT_FOUND,
as for a conversation that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import vodozemac

from chat_api.models import ClaimedKeyRecord, DeviceRecord, OneTimeKeyRecord
from chat_api.service import validation
from chat_api.service.reads import NOT_FOUND
from chat_api.storage.devices import DeviceRepository
from chat_shared.auth import Principal
from chat_shared.e2ee import device_statement, one_time_key_statement
from chat_shared.errors import AlreadyExists, InvalidArgument, NotFound

DEVICE_NOT_FOUND = "device not found"


def signature_valid(ed25519_key: str, statement: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``ed25519_key``'s Ed25519 signature of ``statement``."""
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(ed25519_key)
        key.verify_signature(statement, vodozemac.Ed25519Signature.from_base64(signature))
    except (vodozemac.KeyException, vodozemac.SignatureException,
            vodozemac.DecodeException, ValueError):
        return False
    return True


class DeviceService:
    def __init__(self, repo: DeviceRepository) -> None:
        self._repo = repo

    async def members(self, caller: Principal, conversation_id: str) -> list[str]:
        """The conversation's members; NotFound when the caller is not one of them."""
        members = await self._repo.members(caller.tenant_id,
                                           validation.conversation_id(conversation_id),
                                           caller.user_id)
        if members is None:
            raise NotFound(NOT_FOUND)
        return members

    async def register(self, caller: Principal, device_id: str, curve25519_key: str,
                       ed25519_key: str, signature: str) -> DeviceRecord:
        statement = device_statement(caller.user_id, device_id, curve25519_key, ed25519_key)
        if not signature_valid(ed25519_key, statement, signature):
            raise InvalidArgument("signature", "is not ed25519_key's signature of the "
                                               "device's keys")
        device = DeviceRecord(caller.user_id, device_id, curve25519_key, ed25519_key,
                              signature)
        registered = await self._repo.register(caller.tenant_id, device)
        if registered is None:
            raise AlreadyExists("device_id is registered with other keys (RemoveDevice it "
                                "first)", reason="DEVICE_EXISTS")
        return registered

    async def upload(self, caller: Principal, device_id: str,
                     keys: Sequence[OneTimeKeyRecord], fallback: OneTimeKeyRecord | None
                     ) -> int:
        """Checks every signature, then stores the keys; the device's unclaimed count."""
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("keys", "must not list the same key_id twice")
        device = await self._repo.device(caller.tenant_id, caller.user_id, device_id)
        if device is None:
            raise NotFound(DEVICE_NOT_FOUND)
        for i, key in enumerate(keys):
            statement = one_time_key_statement(caller.user_id, device_id, key.key_id,
                                               key.public_key)
            if not signature_valid(device.ed25519_key, statement, key.signature):
                raise InvalidArgument("keys", f"item {i}: its signature is not the device's "
                                              f"signature of the key")
        if fallback is not None:
            statement = one_time_key_statement(caller.user_id, device_id, fallback.key_id,
                                               fallback.public_key, fallback=True)
            if not signature_valid(device.ed25519_key, statement, fallback.signature):
                raise InvalidArgument("fallback_key.signature",
                                      "is not the device's signature of the key")
        count = await self._repo.upload(caller.tenant_id, caller.user_id, device_id, keys,
                                        fallback)
        if count is None:
            raise NotFound(DEVICE_NOT_FOUND)
        return count

    async def claim(self, caller: Principal, conversation_id: str,
                    devices: Sequence[tuple[str, str]]) -> list[ClaimedKeyRecord]:
        members = await self.members(caller, conversation_id)
        return await self._repo.claim(caller.tenant_id, members, devices)

    async def list(self, caller: Principal, conversation_id: str, user_id: str | None
                   ) -> list[DeviceRecord]:
        members = await self.members(caller, conversation_id)
        if user_id is not None:
            members = [m for m in members if m == user_id]
        return await self._repo.list(caller.tenant_id, members) if members else []

    async def remove(self, caller: Principal, device_id: str) -> None:
        if not await self._repo.remove(caller.tenant_id, caller.user_id, device_id):
            raise NotFound(DEVICE_NOT_FOUND)
