"""GraphQL subscriptions on the gateway's /graphql (graphql-transport-ws), with the services as
real processes (API, relay, gateway) and the `gql` client's websockets transport: a message
sent over gRPC reaches the subscription; resume from ``since``; the protocol's refusals (bad
token, subscribe before init, an invalid operation, a stranger's conversation) and the
per-user connection cap shared with /v1/ws.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from chat_shared.protos.chat.v1 import chat_pb2_grpc
from tests.conftest import make_token
from tests.helpers import create_conversation, send
from tests.integration.test_graphql_docs import examples
from tests.support.ws_stack import Api, Gateway, Relay, base_env, ws_connect

# The subscription example of docs/graphql.md, as written there.
EVENTS = next(op for op, _ in examples() if op.lstrip().startswith("subscription"))


class Stack:
    def __init__(self, gateway: Gateway, stub: chat_pb2_grpc.ChatServiceStub) -> None:
        self.gateway, self.stub = gateway, stub

    @property
    def url(self) -> str:
        return self.gateway.url.replace("http://", "ws://") + "/graphql"


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path
                ) -> AsyncIterator[Stack]:
    env = base_env(db_source, redis_addr, WS_MAX_CONNECTIONS_PER_USER=2)
    api, relay, gateway = Api(env, tmp_path).start(), Relay(env, tmp_path).start(), \
        Gateway(env, tmp_path, "ws").start()
    try:
        await asyncio.gather(api.ready(), relay.ready(), gateway.ready())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
            yield Stack(gateway, chat_pb2_grpc.ChatServiceStub(channel))
    finally:
        for service in (api, relay, gateway):
            service.stop()


def transport(stack: Stack, user: str) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=stack.url, init_payload={"authorization": f"Bearer {make_token(user)}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], ping_interval=None)


async def collect(stack: Stack, user: str, variables: dict[str, Any], count: int,
                  started: asyncio.Event) -> list[dict[str, Any]]:
    """The first ``count`` events of a subscription; ``started`` is set once it is running."""
    out: list[dict[str, Any]] = []
    async with Client(transport=transport(stack, user),
                      fetch_schema_from_transport=False) as session:
        stream = session.subscribe(GraphQLRequest(EVENTS, variable_values=variables))
        started.set()
        async for data in stream:
            out.append(data["conversationEvents"])
            if len(out) == count:
                break
    return out


async def running(started: asyncio.Event, task: asyncio.Task[Any]) -> None:
    await asyncio.wait_for(started.wait(), 20)
    await asyncio.sleep(0.3)  # the subscribe message is on the socket (no answer to wait for)
    assert not task.done(), task


async def test_a_message_sent_over_grpc_reaches_the_subscription(stack):
    conv = await create_conversation(stack.stub, "alice", ["bob"], "live")
    started = asyncio.Event()
    task = asyncio.create_task(collect(stack, "bob", {"ids": [conv.id]}, 1, started))
    await running(started, task)
    sent = await send(stack.stub, "alice", conv.id, "hello over graphql")
    (event,) = await asyncio.wait_for(task, 30)
    assert event["type"] == "message.created" and event["conversationId"] == conv.id
    assert event["pos"] == sent.seq == 1 and event["eventId"]
    assert event["message"]["message"]["content"] == "hello over graphql"
    assert event["message"]["message"]["id"] == sent.id


async def test_since_resumes_what_was_missed_then_live(stack):
    conv = await create_conversation(stack.stub, "alice", ["bob"])
    for i in range(3):
        await send(stack.stub, "alice", conv.id, f"m{i + 1}")
    started = asyncio.Event()
    task = asyncio.create_task(
        collect(stack, "bob", {"ids": [conv.id], "since": [1]}, 4, started))
    await running(started, task)
    await send(stack.stub, "alice", conv.id, "m4")
    events = await asyncio.wait_for(task, 30)
    assert [(e["type"], e["pos"]) for e in events] == [
        ("message.created", 2), ("message.created", 3), ("resumed", 3), ("message.created", 4)]
    assert [e["message"]["message"]["content"] for e in events if e["type"] != "resumed"] \
        == ["m2", "m3", "m4"]


# --- the protocol with a raw socket ----------------------------------------------------------

async def raw(stack: Stack, session: aiohttp.ClientSession, user: str | None = "alice",
              init: bool = True) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(stack.url, protocols=("graphql-transport-ws",))
    assert ws.protocol == "graphql-transport-ws"
    if init:
        payload = {"authorization": f"Bearer {make_token(user)}"} if user else {}
        await ws.send_json({"type": "connection_init", "payload": payload})
    return ws


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    while True:
        msg = await ws.receive(timeout=20)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING):
            return ws.close_code


async def test_refusals(stack, session):
    ws = await raw(stack, session, user=None)
    assert await closed_with(ws) == 4403  # no token in connection_init
    ws = await raw(stack, session, init=False)
    await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": EVENTS}})
    assert await closed_with(ws) == 4401  # subscribe before connection_ack
    async with session.get(stack.url.replace("ws://", "http://"),
                           headers={"Authorization": "Bearer nope", "Upgrade": "websocket",
                                    "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                    "Sec-WebSocket-Protocol": "graphql-transport-ws"}) as resp:
        assert resp.status == 401  # a bad header token: refused before the upgrade


async def test_operation_errors_and_a_strangers_conversation(stack, session):
    conv = await create_conversation(stack.stub, "alice", ["bob"])
    ws = await raw(stack, session, "mallory")
    assert (await ws.receive_json(timeout=20)) == {"type": "connection_ack"}
    await ws.send_json({"type": "subscribe", "id": "q", "payload": {
        "query": "query { subscriptionsOnly }"}})
    refused = await ws.receive_json(timeout=20)
    assert refused["type"] == "error" and refused["id"] == "q"
    assert refused["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    missing = str(uuid.uuid4())
    await ws.send_json({"type": "subscribe", "id": "s", "payload": {
        "query": EVENTS, "variables": {"ids": [conv.id, missing]}}})
    answers = [await ws.receive_json(timeout=20) for _ in range(2)]
    assert all(a["type"] == "next" and a["id"] == "s" for a in answers)
    errors = [a["payload"]["errors"][0] for a in answers]
    assert {e["extensions"]["code"] for e in errors} == {"NOT_FOUND"}
    # Not a member and no such conversation: the same answer.
    assert {e["extensions"]["conversationId"] for e in errors} == {conv.id, missing}
    assert errors[0]["message"] == errors[1]["message"]
    assert all(e["path"] == ["conversationEvents"] for e in errors)
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json(timeout=20)) == {"type": "pong"}
    await ws.close()


async def test_the_per_user_cap_counts_native_and_graphql_sockets(stack, session):
    native = await ws_connect(session, stack.gateway, "carol")
    first = await raw(stack, session, "carol")
    assert (await first.receive_json(timeout=20)) == {"type": "connection_ack"}
    second = await raw(stack, session, "carol")  # the third socket; the cap is 2
    assert await closed_with(second) == 4029
    await first.close()
    await native.close()
