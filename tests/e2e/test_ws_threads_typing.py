"""Thread replies and typing indicators on real sockets, with two gateway replicas.

Why: a reply is a message like any other on the wire (live and on resume), but it must say
which thread it belongs to; typing signals cross replicas through Redis pub/sub, reach only
the conversation's other members, and are throttled per user and conversation, whichever
replica and socket the user types from.

Nothing here waits for time to pass: "did not arrive" is shown by a later frame that travels
the same path arriving first (a socket's frames are queued in order).
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid

import aiohttp
import grpc
import pytest

from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth
from tests.helpers import create_conversation, send
from tests.support.ws_stack import Api, Gateway, Relay, base_env, messages, next_frame, ws_connect

pytestmark = pytest.mark.redis_cluster


class Stack:
    def __init__(self, gateways: list[Gateway], stub: chat_pb2_grpc.ChatServiceStub) -> None:
        self.gateways, self.stub = gateways, stub


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    # A window far longer than any test: the throttle is shown by counts, not by waiting.
    env = base_env(db_source, redis_addr, RATE_LIMIT_TYPING_INTERVAL="60")
    api = Api(env, tmp_path).start()
    relay = Relay(env, tmp_path).start()
    gateways = [Gateway(env, tmp_path, f"ws{i}").start() for i in (1, 2)]
    try:
        await asyncio.gather(api.ready(), relay.ready(), *(g.ready() for g in gateways))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
            yield Stack(gateways, chat_pb2_grpc.ChatServiceStub(channel))
    finally:
        for service in (api, relay, *gateways):
            service.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def _pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Reads up to the answer of a ping; fails on any other frame but 'resumed' before it."""
    await ws.send_json({"type": "ping"})
    for _ in range(10):
        frame = await next_frame(ws)
        if frame["type"] == "pong":
            return
        assert frame["type"] == "resumed", frame
    raise AssertionError("no pong")


async def _typing_frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict]:
    out: list[dict] = []
    for _ in range(count + 10):
        frame = await next_frame(ws)
        if frame["type"] == "resumed":
            continue
        out.append(frame)
        if len(out) == count:
            return out
    raise AssertionError(f"expected {count} frames, got {out}")


async def test_a_reply_reaches_sockets_and_a_resume_with_its_thread_root(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, gw2 = stack.gateways
    conv = await create_conversation(stack.stub, "alice", ["bob"])
    bob = await ws_connect(session, gw1, "bob")
    root = await send(stack.stub, "alice", conv.id, "question")
    answer = (await stack.stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv.id, content="answer",
                                    idempotency_key=uuid.uuid4().hex, thread_root_id=root.id),
        metadata=auth("bob"))).message
    live = await messages(bob, 2)
    assert "thread_root_id" not in live[0]["message"]
    assert live[1]["message"]["thread_root_id"] == root.id
    assert live[1]["message"]["id"] == answer.id and live[1]["seq"] == 2
    await bob.close()
    # On the other replica from the start: both come from PostgreSQL (no event id), the
    # reply still naming its root.
    again = await ws_connect(session, gw2, "bob", positions={conv.id: 0})
    caught_up = await messages(again, 2)
    assert [f["event_id"] for f in caught_up] == [None, None]
    assert "thread_root_id" not in caught_up[0]["message"]
    assert caught_up[1]["message"]["thread_root_id"] == root.id


async def test_typing_reaches_the_other_members_on_another_replica_and_no_one_else(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, gw2 = stack.gateways
    conv = await create_conversation(stack.stub, "alice", ["bob"], "pair and more")
    other = await create_conversation(stack.stub, "alice", ["bob"], "another")
    alice = await ws_connect(session, gw1, "alice")
    alice_elsewhere = await ws_connect(session, gw2, "alice")
    bob = await ws_connect(session, gw2, "bob")
    carol = await ws_connect(session, gw2, "carol")  # not a member
    for ws in (alice, alice_elsewhere, bob, carol):
        await _pong(ws)

    await alice.send_json({"type": "typing", "conversation_id": conv.id})
    [frame] = await _typing_frames(bob, 1)
    assert frame == {"type": "typing", "conversation_id": conv.id, "user_id": "alice",
                     "expires_in_ms": 5000}
    # A second signal, in another conversation, travels the same way after the first: had
    # the first gone to carol or to alice's own sockets, it would come before this one.
    await alice.send_json({"type": "typing", "conversation_id": other.id})
    [frame] = await _typing_frames(bob, 1)
    assert frame["conversation_id"] == other.id
    for ws in (alice, alice_elsewhere, carol):
        await _pong(ws)


async def test_typing_is_throttled_per_user_and_conversation_across_replicas(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, gw2 = stack.gateways
    convs = [await create_conversation(stack.stub, "alice", ["bob"], f"c{i}") for i in range(3)]
    alice = await ws_connect(session, gw1, "alice")
    alice_elsewhere = await ws_connect(session, gw2, "alice")
    bob = await ws_connect(session, gw2, "bob")
    for ws in (alice, alice_elsewhere, bob):
        await _pong(ws)
    for _ in range(5):
        await alice.send_json({"type": "typing", "conversation_id": convs[0].id})
    await alice.send_json({"type": "typing", "conversation_id": convs[1].id})
    frames = await _typing_frames(bob, 2)
    assert [f["conversation_id"] for f in frames] == [convs[0].id, convs[1].id]
    # From her socket on the other replica, within the window: dropped there too.
    await alice_elsewhere.send_json({"type": "typing", "conversation_id": convs[0].id})
    await alice_elsewhere.send_json({"type": "typing", "conversation_id": convs[2].id})
    [frame] = await _typing_frames(bob, 1)
    assert frame["conversation_id"] == convs[2].id
    # Dropping is not an error: the sender got no error frame.
    await _pong(alice)
    await _pong(alice_elsewhere)


async def test_typing_in_a_conversation_of_others_or_a_bad_id_is_answered_with_an_error(
        stack: Stack, session: aiohttp.ClientSession):
    gw1, _ = stack.gateways
    conv = await create_conversation(stack.stub, "alice", ["bob"])
    mallory = await ws_connect(session, gw1, "mallory")
    bob = await ws_connect(session, gw1, "bob")
    await _pong(bob)
    await mallory.send_json({"type": "typing", "conversation_id": conv.id})
    frame = await next_frame(mallory)
    if frame["type"] == "resumed":
        frame = await next_frame(mallory)
    assert (frame["type"], frame["code"], frame["conversation_id"]) == (
        "error", "not_found", conv.id)
    await mallory.send_json({"type": "typing", "conversation_id": "nope"})
    frame = await next_frame(mallory)
    assert (frame["type"], frame["code"]) == ("error", "bad_frame")
    assert "typing.conversation_id" in frame["message"]
    await _pong(bob)  # mallory's signal reached no member
