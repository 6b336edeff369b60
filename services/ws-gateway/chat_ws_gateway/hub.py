"""The registry of this replica's connections and the fan-out of each event to its recipients.

Every replica sees every event (it reads all stream shards), and delivers it only to the
recipients connected here, of the event's tenant: connections are keyed by (tenant, user),
since a user id names a person only within its tenant; a user with several connections gets
it on each of them. Events are deduplicated by ``event_id`` here once (the relay publishes at
least once), and the frame is encoded once for all the sockets it goes to.

A ``to_device.created`` event is for one device: it goes only to the sockets its user opened
for that device (``Connection.device_id``), never to the user's other sockets, and it carries
no frame: each of those sockets reads the message from the device's mailbox itself.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from chat_shared.events import TO_DEVICE_CREATED, Event
from chat_ws_gateway import protocol
from chat_ws_gateway.connection import Connection
from chat_ws_gateway.metrics import STREAM_DUPLICATES, WS_CONNECTIONS


class Hub:
    def __init__(self, *, remembered_event_ids: int = 50_000) -> None:
        self._by_user: dict[tuple[str, str], set[Connection]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remembered_event_ids
        self.count = 0

    def connections_of(self, tenant: str, user_id: str) -> int:
        """How many sockets ``user_id`` of ``tenant`` has open on this gateway."""
        conns = self._by_user.get((tenant, user_id))
        return len(conns) if conns else 0

    def tenants(self) -> set[str]:
        """The tenants with a connection open here."""
        return {tenant for tenant, _ in self._by_user}

    def close_tenant(self, tenant: str, code: int, message: str, reason: str) -> int:
        """Starts closing every connection of ``tenant``; returns how many."""
        conns = [c for (t, _), cs in self._by_user.items() if t == tenant for c in cs]
        for conn in conns:
            conn.close(code, message, reason)
        return len(conns)

    def add(self, conn: Connection) -> None:
        self._by_user.setdefault((conn.tenant_id, conn.user_id), set()).add(conn)
        self.count += 1
        WS_CONNECTIONS.inc()

    def remove(self, conn: Connection) -> None:
        key = (conn.tenant_id, conn.user_id)
        conns = self._by_user.get(key)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self._by_user[key]
        self.count -= 1
        WS_CONNECTIONS.dec()

    def dispatch(self, event: Event) -> int:
        """Queues the event for every local connection of its recipients; returns how many."""
        if event.event_id in self._seen:
            STREAM_DUPLICATES.inc()
            return 0
        self._seen[event.event_id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        if event.type == TO_DEVICE_CREATED:
            return self._announce_to_device(event)
        frame: str | None = None
        delivered = 0
        tenant = event.tenant
        for user_id in event.recipients:
            conns = self._by_user.get((tenant, user_id))
            if not conns:
                continue
            if frame is None:
                frame = protocol.event_frame(event)
                if frame is None:
                    return 0
            for conn in tuple(conns):
                conn.deliver(event, frame)
                delivered += 1
        return delivered

    def _announce_to_device(self, event: Event) -> int:
        device = event.payload.get("recipient_device")
        announced = 0
        for user_id in event.recipients:
            for conn in tuple(self._by_user.get((event.tenant, user_id), ())):
                if conn.device_id is not None and conn.device_id == device:
                    conn.announce_to_device(event.seq)
                    announced += 1
        return announced

    def deliver_typing(self, tenant: str, conversation_id: str, sender: str,
                       recipients: list[str], frame: str) -> int:
        """Queues a typing frame for the local sockets of ``recipients`` (never the sender's);
        returns how many. Ephemeral: outside the conversation's order, never replayed."""
        delivered = 0
        for user_id in recipients:
            if user_id == sender:
                continue
            for conn in tuple(self._by_user.get((tenant, user_id), ())):
                conn.send_ephemeral(frame, "typing")
                delivered += 1
        return delivered

    async def close_all(self, code: int, message: str, reason: str, grace: float) -> None:
        """Closes every connection with ``code`` and waits (up to ``grace`` s) for them."""
        conns = [c for cs in self._by_user.values() for c in cs]
        for conn in conns:
            conn.close(code, message, reason)
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.closed.wait()) for c in conns],
                               timeout=max(0.1, grace))
