"""The benchmark's clients: one async API per transport for the load, blocking ones for latency.

``open_api`` gives the concurrent phases (data set, throughput, delivery) an ``AsyncApi`` over
the run's transport: ``GrpcApi`` (grpc.aio) or ``HttpApi`` (aiohttp, plain HTTP/JSON with
keep-alive connections, as any HTTP chat server would be driven). Both raise ``CallFailed``
with a short code for a failed call, so the phases count errors the same way whatever the
transport. ``Sequential`` measures per-RPC latency: each RPC has a gRPC and an HTTP form that
do the same thing and check the answer, so the phase can alternate them call by call (drift
on a noisy machine then hits both).
"""

from __future__ import annotations

import contextlib
import http.client
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import grpc
import orjson

from chat_shared.auth import issue_token
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

TOKEN_TTL = 6 * 3600.0
TRANSPORTS = ("grpc", "http")
TRANSPORT_NAMES = {"grpc": "gRPC", "http": "HTTP/JSON"}


class HttpError(Exception):
    """A non-2xx answer of the HTTP/JSON API."""


class CallFailed(Exception):
    """A failed call of an ``AsyncApi``; ``code`` names the failure (a gRPC status code name,
    ``HTTP <status>``, ``TIMEOUT`` or the connection error's type)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code} {detail}".strip())
        self.code = code


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


class AsyncApi(Protocol):
    """What the concurrent phases call, over either transport."""

    async def create_conversation(self, user: User, others: list[str], title: str) -> str:
        """The new conversation's id."""
        ...

    async def send(self, user: User, conv: str, content: str, deadline: float = 30) -> int:
        """SendMessage with a fresh idempotency key; the message's seq.

        Raises:
            CallFailed: the call failed (never retried).
        """
        ...


class GrpcApi:
    """``AsyncApi`` over grpc.aio."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub_class: Any = chat_pb2_grpc.ChatServiceStub  # generated, untyped
        self.stub = stub_class(channel)

    async def create_conversation(self, user: User, others: list[str], title: str) -> str:
        try:
            resp = await self.stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=others, title=title), metadata=user.meta, timeout=30)
        except grpc.aio.AioRpcError as e:
            raise CallFailed(e.code().name, str(e.details())) from e
        return str(resp.conversation.id)

    async def send(self, user: User, conv: str, content: str, deadline: float = 30) -> int:
        try:
            resp = await self.stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv, content=content, idempotency_key=uuid.uuid4().hex),
                metadata=user.meta, timeout=deadline)
        except grpc.aio.AioRpcError as e:
            raise CallFailed(e.code().name, str(e.details())) from e
        return int(resp.message.seq)


class HttpApi:
    """``AsyncApi`` over HTTP/JSON: aiohttp with a pool of keep-alive connections, one per call
    in flight (as many as there are concurrent calls), JSON encoded with orjson."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def _post(self, path: str, user: User, body: dict[str, Any], deadline: float) -> Any:
        timeout = self._timeouts.get(deadline)
        if timeout is None:
            timeout = self._timeouts[deadline] = aiohttp.ClientTimeout(total=deadline)
        headers = {**user.headers, "Content-Type": "application/json"}
        try:
            async with self.session.post(f"{self.base}{path}", data=orjson.dumps(body),
                                         headers=headers, timeout=timeout) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise CallFailed(f"HTTP {resp.status}", data[:300].decode(errors="replace"))
        except TimeoutError as e:
            raise CallFailed("TIMEOUT") from e
        except aiohttp.ClientError as e:
            raise CallFailed(type(e).__name__, str(e)) from e
        return orjson.loads(data)

    async def create_conversation(self, user: User, others: list[str], title: str) -> str:
        body = await self._post("/v1/conversations", user,
                                {"member_ids": others, "title": title}, 30)
        return str(body["conversation"]["id"])

    async def send(self, user: User, conv: str, content: str, deadline: float = 30) -> int:
        body = await self._post("/v1/messages", user, {
            "conversation_id": conv, "content": content, "idempotency_key": uuid.uuid4().hex},
            deadline)
        return int(body["message"]["seq"])


@contextlib.asynccontextmanager
async def open_api(transport: str, grpc_addr: str, http_base: str,
                   connections: int = 1) -> AsyncIterator[list[AsyncApi]]:
    """``connections`` APIs over ``transport`` (closed after), for callers to take in turn.

    gRPC: a channel each, on a TCP connection of its own when there are several (so the API's
    worker processes share the load). HTTP: one session whose pool opens a connection per
    call in flight, which spreads over the workers by itself; every entry is that session.
    """
    if transport == "grpc":
        channels = [grpc_channel(grpc_addr, own_connection=connections > 1)
                    for _ in range(connections)]
        try:
            yield [GrpcApi(channel) for channel in channels]
        finally:
            for channel in channels:
                await channel.close()
    elif transport == "http":
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = HttpApi(session, http_base)
            yield [api] * connections
    else:
        raise ValueError(f"unknown transport {transport!r}; choose from {TRANSPORTS}")


class Sequential:
    """The four measured RPCs over blocking clients, gRPC and HTTP: the sequential phase's client.

    One call at a time needs no event loop, and blocking clients spend less of each measured
    call in the client itself: grpc's blocking stub and a keep-alive ``http.client`` connection
    (figures in docs/performance.md). The calls block the caller's thread, so the phase runs
    them with nothing else going on. Without a gRPC address only the HTTP forms work.
    """

    def __init__(self, grpc_addr: str, http_base: str) -> None:
        self.channel = grpc.insecure_channel(grpc_addr) if grpc_addr else None
        stub_class: Any = chat_pb2_grpc.ChatServiceStub  # generated, untyped
        self.stub: Any = stub_class(self.channel) if self.channel is not None else None
        url = urllib.parse.urlsplit(http_base)
        self.http = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80,
                                               timeout=30)

    def close(self) -> None:
        if self.channel is not None:
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
