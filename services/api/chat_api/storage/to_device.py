"""To-device messages: opaque messages for one device, kept until it acknowledges them.

Clients use them to share Megolm room keys, each Olm-encrypted for its device (docs/e2ee.md);
the server sees who sends to which device, when, and how much, never the content. The gateway
pushes each one to its device's sockets (its ``to_device.created`` event says when) and reads
the body from here; the acknowledgement deletes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ToDeviceRecord
from chat_shared.db import Database
from chat_shared.events import TO_DEVICE_CREATED, payload_sql

# The event of each stored message, as the event contract describes it: a reference, never the
# body (which stays in the mailbox only, so that an acknowledgement deletes the one copy).
_TO_DEVICE_PAYLOAD = payload_sql(TO_DEVICE_CREATED, {
    "id": "s.id", "recipient_id": "s.recipient_id", "recipient_device": "s.recipient_device"})

# Stored only for devices that exist, of users in ``members``; the rest are dropped (the
# answer counts what was stored). Each stored message commits with its ``to_device.created``
# event (the transactional outbox), which the relay publishes and the gateway turns into a push
# to the device's sockets.
#
# A device's mailbox ids grow in commit order: the target devices' rows are locked (in key
# order, so two senders cannot deadlock) before their messages take ids from the table's
# identity (CACHE 1, so ids are handed out in the order they are asked for), and held until
# commit. So a reader that sees a device's message N also sees every earlier one of that
# device, and reading "after N" or acknowledging "up to N" can never skip or delete a message
# that was still committing: what the gateway's cursor and AckToDeviceMessages rely on.
# FOR NO KEY UPDATE conflicts with itself and with a device's removal, not with the foreign
# key checks of inserts (KEY SHARE). The devices are found from the (recipient, device) pairs
# alone: a first version joined them with the whole messages, and the planner rescanned those
# (100 bodies of 4 KB) once per device row: 60 to 90 ms for the largest call, about 10 now.
_SEND = f"""
    WITH targets AS MATERIALIZED (
        SELECT d.user_id, d.device_id
        FROM (SELECT DISTINCT r.user_id, r.device_id
              FROM unnest(CAST(%(recipients)s AS text[]), CAST(%(devices)s AS text[]))
                   AS r(user_id, device_id)
              WHERE r.user_id IN (SELECT unnest(CAST(%(members)s AS text[])))  -- hashed
             ) r
        JOIN e2ee_devices d ON d.tenant_id = %(tenant)s AND d.user_id = r.user_id
         AND d.device_id = r.device_id
        ORDER BY d.user_id, d.device_id
        FOR NO KEY UPDATE OF d
    ), stored AS (
        INSERT INTO e2ee_to_device (tenant_id, recipient_id, recipient_device, sender_id,
                                    sender_device, message_type, body)
        SELECT %(tenant)s, m.recipient_id, m.recipient_device, %(sender_id)s,
               %(sender_device)s, m.message_type, m.body
        FROM unnest(CAST(%(recipients)s AS text[]), CAST(%(devices)s AS text[]),
                    CAST(%(types)s AS text[]), CAST(%(bodies)s AS text[]))
             WITH ORDINALITY AS m(recipient_id, recipient_device, message_type, body, n)
        JOIN targets t ON t.user_id = m.recipient_id AND t.device_id = m.recipient_device
        ORDER BY m.n
        RETURNING id, recipient_id, recipient_device
    ), evt AS (
        INSERT INTO outbox (tenant_id, event_id, event_type, conversation_id, seq, recipients,
                            payload)
        SELECT %(tenant)s, gen_random_uuid(), '{TO_DEVICE_CREATED}',
               CAST(%(conversation_id)s AS uuid), s.id, ARRAY[s.recipient_id],
               {_TO_DEVICE_PAYLOAD}
        FROM stored s
        ORDER BY s.id
    )
    SELECT count(*) FROM stored
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

    async def send(self, tenant: str, conversation_id: str, sender_id: str, sender_device: str,
                   members: Sequence[str], messages: Sequence[tuple[str, str, str, str]]
                   ) -> int:
        """Stores (recipient, device, type, body) messages, each with its event in the
        conversation's outbox; how many were stored."""
        row = await self._db.fetchone("db.send_to_device", _SEND, {
            "tenant": tenant, "conversation_id": conversation_id, "sender_id": sender_id,
            "sender_device": sender_device, "members": list(members),
            "recipients": [m[0] for m in messages], "devices": [m[1] for m in messages],
            "types": [m[2] for m in messages], "bodies": [m[3] for m in messages]},
            tenant=tenant)
        return int(row[0]) if row is not None else 0

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
