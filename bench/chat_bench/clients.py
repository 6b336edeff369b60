"""The benchmark's clients: grpc.aio for the concurrent phases, blocking ones for the sequential.

``Api`` (grpc.aio) loads the data set and drives the throughput and delivery phases, where many
calls are in flight. ``Sequential`` measures per-RPC latency: each RPC has a gRPC and an HTTP
form that do the same thing and check the answer, so the phase can alternate them call by call
(drift on a noisy machine then hits both).
"""

from __future__ import annotations

import http.client
import urllib.parse
import uuid
from typing import Any

import grpc
import orjson

from chat_shared.auth import issue_token
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

TOKEN_TTL = 6 * 3600.0


class HttpError(Exception):
    """A non-2xx answer of the HTTP/JSON API."""


def token(user: str, secret: str) -> str:
    return str(issue_token(user, secret=secret, ttl_seconds=TOKEN_TTL))


def grpc_channel(addr: str, *, own_connection: bool = False) -> grpc.aio.Channel:
    """A channel; ``own_connection`` gives it a TCP connection of its own.

    gRPC shares one connection among channels to the same target; API_WORKERS processes
    behind SO_REUSEPORT are spread per connection, so load needs several of them.
    """
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else None
    return grpc.aio.insecure_channel(addr, options=options)


class User:
    """One user's credentials in both forms (gRPC metadata, HTTP header)."""

    def __init__(self, user_id: str, secret: str) -> None:
        self.id = user_id
        tok = token(user_id, secret)
        self.meta = (("authorization", f"Bearer {tok}"),)
        self.headers = {"Authorization": f"Bearer {tok}"}


class Sequential:
    """The four measured RPCs over blocking clients, gRPC and HTTP: the sequential phase's client.

    One call at a time needs no event loop, and blocking clients spend less of each measured
    call in the client itself: grpc's blocking stub and a keep-alive ``http.client`` connection
    (figures in README "Performance"). The calls block the caller's thread, so the phase runs
    them with nothing else going on.
    """

    def __init__(self, grpc_addr: str, http_base: str) -> None:
        self.channel = grpc.insecure_channel(grpc_addr)
        stub_class: Any = chat_pb2_grpc.ChatServiceStub  # generated, untyped
        self.stub = stub_class(self.channel)
        url = urllib.parse.urlsplit(http_base)
        self.http = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80,
                                               timeout=30)

    def close(self) -> None:
        self.channel.close()
        self.http.close()

    # gRPC

    def send_grpc(self, user: User, conv: str, content: str) -> int:
        resp = self.stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conv, content=content, idempotency_key=uuid.uuid4().hex),
            metadata=user.meta, timeout=30)
        return int(resp.message.seq)

    def get_messages_grpc(self, user: User, conv: str, limit: int) -> int:
        resp = self.stub.GetMessages(chat_pb2.GetMessagesRequest(
            conversation_id=conv, limit=limit), metadata=user.meta, timeout=30)
        return len(resp.messages)

    def get_conversations_grpc(self, user: User, limit: int) -> int:
        resp = self.stub.GetConversations(chat_pb2.GetConversationsRequest(limit=limit),
                                          metadata=user.meta, timeout=30)
        return len(resp.conversations)

    def mark_read_grpc(self, user: User, conv: str, up_to: int) -> int:
        resp = self.stub.MarkAsRead(chat_pb2.MarkAsReadRequest(
            conversation_id=conv, up_to_seq=up_to), metadata=user.meta, timeout=30)
        return int(resp.last_read_seq)

    # HTTP/JSON

    def _http(self, method: str, path: str, user: User, body: dict[str, Any] | None = None
              ) -> Any:
        headers = dict(user.headers)
        payload = None
        if body is not None:
            payload = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        self.http.request(method, path, body=payload, headers=headers)
        resp = self.http.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise HttpError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return orjson.loads(data)

    def send_http(self, user: User, conv: str, content: str) -> int:
        body = self._http("POST", "/v1/messages", user, {
            "conversation_id": conv, "content": content, "idempotency_key": uuid.uuid4().hex})
        return int(body["message"]["seq"])

    def get_messages_http(self, user: User, conv: str, limit: int) -> int:
        body = self._http("GET", f"/v1/conversations/{conv}/messages?limit={limit}", user)
        return len(body["messages"])

    def get_conversations_http(self, user: User, limit: int) -> int:
        body = self._http("GET", f"/v1/conversations?limit={limit}", user)
        return len(body["conversations"])

    def mark_read_http(self, user: User, conv: str, up_to: int) -> int:
        body = self._http("POST", f"/v1/conversations/{conv}/read", user,
                          {"up_to_seq": str(up_to)})
        return int(body["last_read_seq"])


class Api:
    """CreateConversation and SendMessage over grpc.aio, for the data set and the load phases."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub_class: Any = chat_pb2_grpc.ChatServiceStub  # generated, untyped
        self.stub = stub_class(channel)

    async def create_conversation(self, user: User, others: list[str], title: str) -> str:
        resp = await self.stub.CreateConversation(chat_pb2.CreateConversationRequest(
            member_ids=others, title=title), metadata=user.meta, timeout=30)
        return str(resp.conversation.id)

    async def send_grpc(self, user: User, conv: str, content: str,
                        deadline: float = 30) -> int:
        resp = await self.stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conv, content=content, idempotency_key=uuid.uuid4().hex),
            metadata=user.meta, timeout=deadline)
        return int(resp.message.seq)
