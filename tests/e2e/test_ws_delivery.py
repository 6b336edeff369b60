"""The whole pipeline as real processes: chat-api (gRPC) -> outbox -> chat-outbox-relay ->
Redis Streams -> two chat-ws-gateway replicas -> real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid

import aiohttp
import grpc
import pytest

from chat_shared.protos.chat.v1 import chat_pb2_grpc
from tests.helpers import create_conversation, redis_async, send
from tests.support.ws_stack import (
    Api,
    Gateway,
    Relay,
    base_env,
    messages,
    next_frame,
    ws_connect,
)

pytestmark = pytest.mark.redis_cluster


class Stack:
    def __init__(self, api: Api, relay: Relay, gateways: list[Gateway],
                 stub: chat_pb2_grpc.ChatServiceStub) -> None:
        self.api, self.relay, self.gateways, self.stub = api, relay, gateways, stub


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    env = base_env(db_source, redis_addr)
    api = Api(env, tmp_path).start()
    relay = Relay(env, tmp_path).start()
    gateways = [Gateway(env, tmp_path, f"ws{i}").start() for i in (1, 2)]
    services = [api, relay, *gateways]
    try:
        await asyncio.gather(api.ready(), relay.ready(), *(g.ready() for g in gateways))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
            yield Stack(api, relay, gateways, chat_pb2_grpc.ChatServiceStub(channel))
    finally:
        for service in services:
            service.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_message_sent_over_grpc_reaches_every_members_socket_on_both_replicas(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, gw2 = stack.gateways
    conv = await create_conversation(stack.stub, "alice", ["bob", "carol"], "trio")
    sockets = {
        "alice@1": await ws_connect(session, gw1, "alice"),
        "alice@2": await ws_connect(session, gw2, "alice"),
        "bob@1": await ws_connect(session, gw1, "bob"),
        "carol@2": await ws_connect(session, gw2, "carol"),
    }
    outsider = await ws_connect(session, gw2, "mallory")
    sent = await send(stack.stub, "alice", conv.id, "hello, everyone")
    for name, ws in sockets.items():
        [frame] = await messages(ws, 1)
        assert frame["type"] == "message.created", name
        assert frame["seq"] == 1 and frame["conversation_id"] == conv.id
        uuid.UUID(frame["event_id"])
        assert frame["message"]["id"] == sent.id
        assert frame["message"]["content"] == "hello, everyone"
        assert frame["message"]["sender_id"] == "alice"
    # The outsider's queue would hold the event before the pong, had it been sent there.
    await outsider.send_json({"type": "ping"})
    assert (await next_frame(outsider))["type"] == "pong"
    # And a reply from a socket on the other replica comes back to everyone.
    await send(stack.stub, "carol", conv.id, "hi alice")
    for ws in sockets.values():
        [frame] = await messages(ws, 1)
        assert (frame["seq"], frame["message"]["sender_id"]) == (2, "carol")


async def test_resume_after_100_missed_messages_delivers_all_in_order_then_live(
        stack: Stack, session: aiohttp.ClientSession, redis_addr: str):
    gw1, gw2 = stack.gateways
    conv = await create_conversation(stack.stub, "alice", ["bob"])
    bob = await ws_connect(session, gw1, "bob")
    await send(stack.stub, "alice", conv.id, "before")
    [first] = await messages(bob, 1)
    assert first["seq"] == 1
    await bob.close()
    for i in range(100):
        await send(stack.stub, "alice", conv.id, f"missed {i}")
    # Wait for the relay to publish them, then empty the streams: the 100 can only come from
    # PostgreSQL now.
    redis = redis_async(redis_addr, decode_responses=True)
    try:
        for _ in range(300):
            if await redis.xlen("chat:events:0") >= 101:
                break
            await asyncio.sleep(0.05)
        assert await redis.xlen("chat:events:0") >= 101
        await redis.xtrim("chat:events:0", maxlen=0)
    finally:
        await redis.aclose()
    bob = await ws_connect(session, gw2, "bob", positions={conv.id: 1})
    # Live sends race the catch-up: they must follow it without a gap or a duplicate.
    live = asyncio.ensure_future(asyncio.gather(
        *(send(stack.stub, "alice", conv.id, f"live {i}") for i in range(5))))
    got, others = [], []
    while len(got) < 105 or not others:  # the 105 messages and the "resumed" marker
        frame = await next_frame(bob)
        (got if frame["type"] == "message.created" else others).append(frame)
        assert len(got) + len(others) < 200, "far more frames than expected"
    await live
    assert others == [{"type": "resumed", "conversation_id": conv.id, "seq": others[0]["seq"],
                       "pos": others[0]["seq"]}]
    assert others[0]["seq"] >= 101  # the catch-up covered at least the 100 missed
    assert [f["seq"] for f in got] == list(range(2, 107))
    contents = [f["message"]["content"] for f in got]
    assert contents[:100] == [f"missed {i}" for i in range(100)]
    assert sorted(contents[100:]) == [f"live {i}" for i in range(5)]
    # Nothing more (no duplicate): the next frame after a ping is the pong.
    await bob.send_json({"type": "ping"})
    assert await next_frame(bob) == {"type": "pong"}
    assert gw2.metric("ws_catch_up_messages_total") >= 100


async def test_ordering_under_concurrent_senders(stack: Stack, session: aiohttp.ClientSession):
    gw1, gw2 = stack.gateways
    users = ["alice", "bob", "carol"]
    conv = await create_conversation(stack.stub, "alice", ["bob", "carol"])
    watchers = [await ws_connect(session, gw1, "alice"), await ws_connect(session, gw2, "bob"),
                await ws_connect(session, gw2, "carol")]
    per_sender = 30

    async def sender(user: str) -> None:
        for i in range(per_sender):
            await send(stack.stub, user, conv.id, f"{user} {i}")

    await asyncio.gather(*(sender(u) for u in users))
    total = per_sender * len(users)
    for ws in watchers:
        got = await messages(ws, total)
        assert [f["seq"] for f in got] == list(range(1, total + 1))
        by_sender: dict[str, list[str]] = {}
        for f in got:
            by_sender.setdefault(f["message"]["sender_id"], []).append(f["message"]["content"])
        # Each sender's own messages keep the order they were sent in.
        assert by_sender == {u: [f"{u} {i}" for i in range(per_sender)] for u in users}


async def test_resume_positions_of_other_peoples_conversations_leak_nothing(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, _ = stack.gateways
    private = await create_conversation(stack.stub, "alice", ["bob"])
    mine = await create_conversation(stack.stub, "mallory", ["eve"])
    await send(stack.stub, "alice", private.id, "secret")
    await send(stack.stub, "mallory", mine.id, "own")
    ws = await ws_connect(session, gw1, "mallory", positions={private.id: 0, mine.id: 0})
    frames = [await next_frame(ws) for _ in range(3)]
    by_type = {f["type"]: f for f in frames}
    assert by_type["error"] == {"type": "error", "code": "not_found",
                                "message": "no such conversation",
                                "conversation_id": private.id}
    assert by_type["message.created"]["message"]["content"] == "own"
    assert by_type["resumed"] == {"type": "resumed", "conversation_id": mine.id, "seq": 1,
                                  "pos": 1}
    assert "secret" not in str(frames)
