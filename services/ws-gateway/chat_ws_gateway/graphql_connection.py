"""A graphql-transport-ws connection: the native Connection, speaking GraphQL on the wire.

Everything that makes delivery right is the native connection's, unchanged: the hub's fan-out,
per-conversation order and deduplication (``ordering``), catch-up from PostgreSQL on resume,
the bounded send queue and the slow-consumer close (4008), the token's expiry (4001). What
differs is only the wire: a ``subscribe`` takes the place of the native ``resume`` frame, and
the writer renders each queued frame as the subscription's ``next`` message
(``graphql_protocol``), dropping what the subscription did not ask for (other conversations).

One subscription per socket: the connection has one set of positions, and a client that wants
two independent subscriptions opens two sockets (both count against the per-user cap).
"""

from __future__ import annotations

from typing import Any

import orjson

from chat_shared.graphql_settings import GraphQLSettings
from chat_shared.observability.logging import get_logger
from chat_ws_gateway import graphql_protocol as gp
from chat_ws_gateway import protocol
from chat_ws_gateway.connection import Connection, Outgoing

log = get_logger(__name__)

GRAPHQL = "graphql"
"""The kind of a protocol message (ack, pong, error, complete): sent as it is."""


class GraphQLConnection(Connection):
    def __init__(self, *args: Any, graphql: GraphQLSettings, introspection: bool,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._graphql = graphql
        self._introspection = introspection
        self.subscription: gp.Subscription | None = None

    def send_message(self, message: dict[str, Any]) -> None:
        self._enqueue(Outgoing(gp.encode(message), GRAPHQL, None))

    def render(self, item: Outgoing) -> str | None:
        if item.kind == GRAPHQL:
            return item.text
        sub = self.subscription
        if sub is None or item.kind == "pong":
            return None
        frame = orjson.loads(item.text)
        cid = frame.get("conversation_id")
        if cid is not None and cid not in sub.conversation_ids:
            return None
        if item.kind == "error":
            return sub.render_error(frame)
        return sub.render(frame)

    async def on_message(self, text: str) -> None:
        """One client message after ``connection_ack``; a message the protocol does not allow
        closes the socket (4400, 4409, 4429), a refused operation is an ``error`` message."""
        try:
            msg = gp.parse_message(text)
        except gp.BadMessage as exc:
            self.close(gp.CLOSE_BAD_MESSAGE, str(exc), "graphql_bad_message")
            return
        match msg.type:
            case "ping":
                self.send_message({"type": "pong"})
            case "pong":
                pass
            case "connection_init":
                self.close(gp.CLOSE_TOO_MANY_INITS, "Too many initialisation requests",
                           "graphql_bad_message")
            case "complete":
                if self.subscription is not None and self.subscription.id == msg.id:
                    self.subscription = None
            case "subscribe":
                await self._subscribe(msg.id or "", msg.payload)

    async def _subscribe(self, sid: str, payload: dict[str, Any]) -> None:
        active = self.subscription
        if active is not None:
            if active.id == sid:
                self.close(gp.CLOSE_SUBSCRIBER_EXISTS, f"Subscriber for {sid} already exists",
                           "graphql_bad_message")
            else:
                self.send_message({"id": sid, "type": "error", "payload": [{
                    "message": "one subscription per connection: complete "
                               f"{active.id} first, or open another connection",
                    "extensions": {"code": "FAILED_PRECONDITION"}}]})
            return
        try:
            sub = gp.prepare(sid, payload, self._graphql, introspection=self._introspection,
                             max_conversations=self._max_positions)
        except gp.Refused as exc:
            self.send_message({"id": sid, "type": "error", "payload": exc.errors})
            return
        self.subscription = sub
        if sub.since is not None:
            await self._resume(sub.since)  # membership, catch-up, then live: as /v1/ws
            return
        # Live from now: membership is still checked, with the same answer as a resume's.
        if self._pending_timer is not None:
            self._pending_timer.cancel()
        try:
            members = await self._history.member_of(self.tenant_id, self.user_id,
                                                      list(sub.conversation_ids))
        except Exception:
            log.exception("graphql_subscribe_failed", user_id=self.user_id)
            self.send_error(protocol.CATCH_UP_FAILED, "subscribe failed; reconnect")
            self.close(1011, "subscribe failed", "catch_up_failed")
            return
        for cid in sorted(sub.conversation_ids - set(members)):
            self.send_error(protocol.NOT_FOUND, "no such conversation", conversation_id=cid)
        self._end_pending()
