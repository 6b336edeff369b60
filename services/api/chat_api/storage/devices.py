"""End-to-end encryption keys: devices, one-time keys, fallback keys (migration 0011e).

The server keeps public keys only, each as the client signed it; ``service.devices`` checks
the signatures before anything is written here. Every statement is one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat_api.models import ClaimedKeyRecord, DeviceRecord, OneTimeKeyRecord
from chat_shared.db import Database

_DEVICE_COLUMNS = "d.user_id, d.device_id, d.curve25519_key, d.ed25519_key, d.signature"

# Registering again with the same keys is a no-op that answers the device (a client that
# retries); with other keys nothing changes and no row comes back: a device id names one
# identity until it is removed.
_REGISTER = f"""
    INSERT INTO e2ee_devices AS d (tenant_id, user_id, device_id, curve25519_key,
                                   ed25519_key, signature)
    VALUES (%(tenant)s, %(user_id)s, %(device_id)s, %(curve25519)s, %(ed25519)s,
            %(signature)s)
    ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE SET signature = EXCLUDED.signature
     WHERE d.curve25519_key = EXCLUDED.curve25519_key AND d.ed25519_key = EXCLUDED.ed25519_key
    RETURNING {_DEVICE_COLUMNS}
    """

_DEVICE = f"""
    SELECT {_DEVICE_COLUMNS} FROM e2ee_devices d
    WHERE d.tenant_id = %(tenant)s AND d.user_id = %(user_id)s AND d.device_id = %(device_id)s
    """

# The keys are inserted only while the device exists (the device row is locked against a
# concurrent RemoveDevice); a key id already there keeps its key (a retried upload). The count
# is of the rows before this statement plus those it inserted (a statement does not see its
# own inserts).
_UPLOAD = """
    WITH dev AS (
        SELECT 1 FROM e2ee_devices d
        WHERE d.tenant_id = %(tenant)s AND d.user_id = %(user_id)s
          AND d.device_id = %(device_id)s
        FOR UPDATE
    ), ins AS (
        INSERT INTO e2ee_one_time_keys (tenant_id, user_id, device_id, key_id, public_key,
                                        signature)
        SELECT %(tenant)s, %(user_id)s, %(device_id)s, k.key_id, k.public_key, k.signature
        FROM unnest(CAST(%(key_ids)s AS text[]), CAST(%(keys)s AS text[]),
                    CAST(%(signatures)s AS text[])) AS k(key_id, public_key, signature)
        WHERE EXISTS (SELECT 1 FROM dev)
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), fb AS (
        UPDATE e2ee_devices d
           SET fallback_key_id = %(fallback_id)s, fallback_key = %(fallback)s,
               fallback_signature = %(fallback_signature)s
         WHERE d.tenant_id = %(tenant)s AND d.user_id = %(user_id)s
           AND d.device_id = %(device_id)s AND CAST(%(fallback)s AS text) IS NOT NULL
    )
    SELECT (SELECT count(*) FROM e2ee_one_time_keys k
             WHERE k.tenant_id = %(tenant)s AND k.user_id = %(user_id)s
               AND k.device_id = %(device_id)s)
           + (SELECT count(*) FROM ins)
    FROM dev
    """

# One key per listed device, handed out once: each device's first unclaimed key is locked
# with SKIP LOCKED (a concurrent claim takes the next key instead of waiting for this one or
# taking it too) and deleted in the same statement, which returns it. Only then is the
# device's fallback key the answer (its one-time keys exhausted, or all of them being claimed
# at this instant). Devices of users that are not in ``members`` are never read.
_CLAIM = f"""
    WITH wanted AS (
        SELECT DISTINCT w.user_id, w.device_id
        FROM unnest(CAST(%(user_ids)s AS text[]), CAST(%(device_ids)s AS text[]))
             AS w(user_id, device_id)
        WHERE w.user_id IN (SELECT unnest(CAST(%(members)s AS text[])))  -- hashed
    ), picked AS (
        SELECT k.user_id, k.device_id, k.key_id
        FROM wanted w
        CROSS JOIN LATERAL (
            SELECT k.user_id, k.device_id, k.key_id FROM e2ee_one_time_keys k
            WHERE k.tenant_id = %(tenant)s AND k.user_id = w.user_id
              AND k.device_id = w.device_id
            ORDER BY k.key_id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ) k
    ), claimed AS (
        DELETE FROM e2ee_one_time_keys k USING picked p
        WHERE k.tenant_id = %(tenant)s AND k.user_id = p.user_id
          AND k.device_id = p.device_id AND k.key_id = p.key_id
        RETURNING k.user_id, k.device_id, k.key_id, k.public_key, k.signature
    )
    SELECT {_DEVICE_COLUMNS}, coalesce(c.key_id, d.fallback_key_id),
           coalesce(c.public_key, d.fallback_key), coalesce(c.signature, d.fallback_signature),
           c.key_id IS NULL
    FROM wanted w
    JOIN e2ee_devices d ON d.tenant_id = %(tenant)s AND d.user_id = w.user_id
     AND d.device_id = w.device_id
    LEFT JOIN claimed c ON c.user_id = w.user_id AND c.device_id = w.device_id
    WHERE c.key_id IS NOT NULL OR d.fallback_key IS NOT NULL
    ORDER BY d.user_id, d.device_id
    """

_LIST = f"""
    SELECT {_DEVICE_COLUMNS} FROM e2ee_devices d
    WHERE d.tenant_id = %(tenant)s AND d.user_id = ANY(CAST(%(user_ids)s AS text[]))
    ORDER BY d.user_id, d.device_id
    """

_REMOVE = """
    DELETE FROM e2ee_devices d
    WHERE d.tenant_id = %(tenant)s AND d.user_id = %(user_id)s AND d.device_id = %(device_id)s
    RETURNING 1
    """

# The conversation's members, when the user is one of them (the row's own copy of the member
# list, written with the membership rows).
_MEMBERS = """
    SELECT c.member_ids FROM conversations c
    WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
      AND c.member_ids @> ARRAY[CAST(%(user_id)s AS text)]
    """


def _device(row: Sequence[Any], offset: int = 0) -> DeviceRecord:
    return DeviceRecord(*(str(v) for v in row[offset:offset + 5]))


class DeviceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def members(self, tenant: str, conversation_id: str, user_id: str
                      ) -> list[str] | None:
        """The conversation's members; None when ``user_id`` is not one of them."""
        row = await self._db.fetchone("db.e2ee_members", _MEMBERS, {
            "tenant": tenant, "conversation_id": conversation_id, "user_id": user_id},
            tenant=tenant)
        return None if row is None else list(row[0])

    async def register(self, tenant: str, device: DeviceRecord) -> DeviceRecord | None:
        """The device as registered; None when its id is taken by other keys."""
        row = await self._db.fetchone("db.register_device", _REGISTER, {
            "tenant": tenant, "user_id": device.user_id, "device_id": device.device_id,
            "curve25519": device.curve25519_key, "ed25519": device.ed25519_key,
            "signature": device.signature}, tenant=tenant)
        return None if row is None else _device(row)

    async def device(self, tenant: str, user_id: str, device_id: str) -> DeviceRecord | None:
        row = await self._db.fetchone("db.get_device", _DEVICE, {
            "tenant": tenant, "user_id": user_id, "device_id": device_id}, tenant=tenant)
        return None if row is None else _device(row)

    async def upload(self, tenant: str, user_id: str, device_id: str,
                     keys: Sequence[OneTimeKeyRecord], fallback: OneTimeKeyRecord | None
                     ) -> int | None:
        """Stores the keys (and the fallback key); the device's unclaimed one-time keys after
        it, None when the device does not exist (any more)."""
        row = await self._db.fetchone("db.upload_one_time_keys", _UPLOAD, {
            "tenant": tenant, "user_id": user_id, "device_id": device_id,
            "key_ids": [k.key_id for k in keys], "keys": [k.public_key for k in keys],
            "signatures": [k.signature for k in keys],
            "fallback_id": fallback.key_id if fallback else None,
            "fallback": fallback.public_key if fallback else None,
            "fallback_signature": fallback.signature if fallback else None}, tenant=tenant)
        return None if row is None else int(row[0])

    async def claim(self, tenant: str, members: Sequence[str],
                    devices: Sequence[tuple[str, str]]) -> list[ClaimedKeyRecord]:
        """One key of each listed (user, device) whose user is in ``members``."""
        rows = await self._db.fetchall("db.claim_keys", _CLAIM, {
            "tenant": tenant, "members": list(members),
            "user_ids": [u for u, _ in devices], "device_ids": [d for _, d in devices]},
            tenant=tenant)
        return [ClaimedKeyRecord(_device(r), OneTimeKeyRecord(str(r[5]), str(r[6]), str(r[7])),
                                 bool(r[8])) for r in rows]

    async def list(self, tenant: str, user_ids: Sequence[str]) -> list[DeviceRecord]:
        rows = await self._db.fetchall("db.list_devices", _LIST, {
            "tenant": tenant, "user_ids": list(user_ids)}, tenant=tenant)
        return [_device(r) for r in rows]

    async def remove(self, tenant: str, user_id: str, device_id: str) -> bool:
        """Removes the device with its keys and undelivered to-device messages (cascade)."""
        row = await self._db.fetchone("db.remove_device", _REMOVE, {
            "tenant": tenant, "user_id": user_id, "device_id": device_id}, tenant=tenant)
        return row is not None
