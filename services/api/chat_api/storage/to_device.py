"""To-device messages: opaque messages for one device, kept until it acknowledges them.

Clients use them to share Megolm room keys, each Olm-encrypted for its device (docs/e2ee.md);
the server sees who sends to which device, when, and how much, never the content.
"""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ToDeviceRecord
from chat_shared.db import Database

# Stored only for devices that exist, of users in ``members``; the rest are dropped (the
# answer counts what was stored).
_SEND = """
    INSERT INTO e2ee_to_device (tenant_id, recipient_id, recipient_device, sender_id,
                                sender_device, message_type, body)
    SELECT %(tenant)s, m.recipient_id, m.recipient_device, %(sender_id)s, %(sender_device)s,
           m.message_type, m.body
    FROM unnest(CAST(%(recipients)s AS text[]), CAST(%(devices)s AS text[]),
                CAST(%(types)s AS text[]), CAST(%(bodies)s AS text[]))
         WITH ORDINALITY AS m(recipient_id, recipient_device, message_type, body, n)
    JOIN e2ee_devices d ON d.tenant_id = %(tenant)s AND d.user_id = m.recipient_id
     AND d.device_id = m.recipient_device
    WHERE m.recipient_id IN (SELECT unnest(CAST(%(members)s AS text[])))  -- hashed
    ORDER BY m.n
    RETURNING id
    """

_INBOX = """
    SELECT t.id, t.recipient_id, t.recipient_device, t.sender_id, t.sender_device,
           t.message_type, t.body, t.created_at
    FROM e2ee_to_device t
    WHERE t.tenant_id = %(tenant)s AND t.recipient_id = %(user_id)s
      AND t.recipient_device = %(device_id)s AND t.id > %(after_id)s
    ORDER BY t.id
    LIMIT %(limit)s
    """

_ACK = """
    WITH gone AS (
        DELETE FROM e2ee_to_device t
        WHERE t.tenant_id = %(tenant)s AND t.recipient_id = %(user_id)s
          AND t.recipient_device = %(device_id)s AND t.id <= %(up_to_id)s
        RETURNING 1
    )
    SELECT count(*) FROM gone
    """


class ToDeviceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def send(self, tenant: str, sender_id: str, sender_device: str,
                   members: Sequence[str], messages: Sequence[tuple[str, str, str, str]]
                   ) -> int:
        """Stores (recipient, device, type, body) messages; how many were stored."""
        rows = await self._db.fetchall("db.send_to_device", _SEND, {
            "tenant": tenant, "sender_id": sender_id, "sender_device": sender_device,
            "members": list(members), "recipients": [m[0] for m in messages],
            "devices": [m[1] for m in messages], "types": [m[2] for m in messages],
            "bodies": [m[3] for m in messages]}, tenant=tenant)
        return len(rows)

    async def inbox(self, tenant: str, user_id: str, device_id: str, after_id: int,
                    limit: int) -> list[ToDeviceRecord]:
        rows = await self._db.fetchall("db.to_device_inbox", _INBOX, {
            "tenant": tenant, "user_id": user_id, "device_id": device_id,
            "after_id": after_id, "limit": limit}, tenant=tenant)
        return [ToDeviceRecord(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7])
                for r in rows]

    async def acknowledge(self, tenant: str, user_id: str, device_id: str, up_to_id: int
                          ) -> int:
        row = await self._db.fetchone("db.to_device_ack", _ACK, {
            "tenant": tenant, "user_id": user_id, "device_id": device_id,
            "up_to_id": up_to_id}, tenant=tenant)
        return int(row[0]) if row is not None else 0
