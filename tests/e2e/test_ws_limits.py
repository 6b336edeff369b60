"""The gateway's per-client caps, against a real ``chat-ws-gateway`` process and real
WebSocket clients: sockets per user (4029 past the cap) and inbound frames per second per
socket (4030 past the rate). Other users, and the user's sockets within the cap, are unaffected.
"""

from __future__ import annotations

import pathlib
import uuid

import aiohttp
import pytest

from chat_ws_gateway import protocol
from tests.e2e.test_ws_gateway import message_event, publish, start_gateway
from tests.helpers import redis_async
from tests.support.ws_stack import Gateway, close_code, messages, next_frame, ws_connect

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def producer(redis_addr: str):
    client = redis_async(redis_addr, decode_responses=True)
    yield client
    await client.aclose()


async def _gateway(db_source: str, redis_addr: str, tmp_path: pathlib.Path,
                   **overrides: object) -> Gateway:
    return await start_gateway(db_source, redis_addr, tmp_path, **overrides)


async def test_a_user_past_the_connection_cap_is_closed_with_4029(
        db_source, redis_addr, tmp_path, session, producer):
    gw = await _gateway(db_source, redis_addr, tmp_path, WS_MAX_CONNECTIONS_PER_USER=3)
    try:
        alice = [await ws_connect(session, gw, "alice") for _ in range(3)]
        extra = await ws_connect(session, gw, "alice", resume=False)
        code, _ = await close_code(extra, within=10)
        assert code == protocol.CLOSE_TOO_MANY_CONNECTIONS
        bob = await ws_connect(session, gw, "bob")  # another user is not affected

        # The sockets within the cap still deliver, each once.
        conv = str(uuid.uuid4())
        await publish(producer, message_event(conv, 1, ["alice", "bob"]))
        for ws in (*alice, bob):
            [frame] = await messages(ws, 1)
            assert frame["seq"] == 1

        # A closed socket frees its place.
        await alice[0].close()
        for _ in range(100):  # the gateway notices the close asynchronously
            again = await ws_connect(session, gw, "alice")
            await again.send_json({"type": "ping"})
            msg = await again.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                assert msg.json()["type"] == "pong"
                break
            assert again.close_code == protocol.CLOSE_TOO_MANY_CONNECTIONS
        else:
            raise AssertionError("a closed socket never freed its place")
        assert gw.metric('ws_closes_total{reason="too_many_connections"}') >= 1
    finally:
        gw.stop()


async def test_a_client_flooding_frames_is_closed_with_4030(
        db_source, redis_addr, tmp_path, session):
    limit = 10
    gw = await _gateway(db_source, redis_addr, tmp_path,
                        WS_MAX_INBOUND_FRAMES_PER_SECOND=limit)
    try:
        calm = await ws_connect(session, gw, "alice")  # one frame: its resume
        # A burst of one second's worth is allowed (the resume frame was one of them).
        ok = await ws_connect(session, gw, "bob")
        for _ in range(limit - 1):
            await ok.send_json({"type": "ping"})
        pongs = 0
        while pongs < limit - 1:
            frame = await next_frame(ok, within=10)
            pongs += frame["type"] == "pong"
        flood = await ws_connect(session, gw, "mallory")
        for _ in range(limit * 20):
            if flood.closed:
                break
            await flood.send_json({"type": "ping"})
        code, _ = await close_code(flood, within=10)
        assert code == protocol.CLOSE_TOO_MANY_FRAMES
        # The others are still served.
        for ws in (calm,):
            await ws.send_json({"type": "ping"})
            assert (await next_frame(ws, within=10))["type"] == "pong"
        assert gw.metric('ws_closes_total{reason="too_many_frames"}') == 1
    finally:
        gw.stop()


async def _served_then_closed(session, gw: Gateway, user: str, served: int
                              ) -> aiohttp.WSMessage:
    """Opens ``served`` sockets that answer a ping, then one more that is closed with 4031
    (the connect limit); returns that close."""
    sockets = [await ws_connect(session, gw, user) for _ in range(served)]
    for ws in sockets:
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
    extra = await ws_connect(session, gw, user, resume=False)
    msg = await extra.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == protocol.CLOSE_CONNECT_RATE_LIMITED
    return msg


async def test_a_user_opening_sockets_too_fast_is_closed_with_4031(
        db_source, redis_addr, tmp_path, session):
    """The connect class of the shared rate limits (RATE_LIMIT_CONNECT_*), counted in Redis."""
    gw = await _gateway(db_source, redis_addr, tmp_path, RATE_LIMIT_ENABLED="true",
                        RATE_LIMIT_CONNECT_RATE="0.01", RATE_LIMIT_CONNECT_BURST="2")
    try:
        msg = await _served_then_closed(session, gw, "alice", 2)
        assert msg.extra.startswith("connect rate limit; retry after ")
        bob = await ws_connect(session, gw, "bob")  # another user is not affected
        await bob.send_json({"type": "ping"})
        assert (await next_frame(bob))["type"] == "pong"
        r = redis_async(redis_addr)
        assert await r.exists("chat:rl:{default}:u:alice:connect")
        await r.aclose()
    finally:
        gw.stop()


async def test_a_tenants_own_connect_limit_from_the_registry_applies(
        db_source, redis_addr, tmp_path, session, venv_bin):
    """``chat-tenant set-limit <tenant> rate_limit.connect.burst 4`` wins over the setting (2)
    at the next socket, as the API's classes honour their overrides."""
    import asyncio

    from tests.integration.test_tenant_cli import tenant as tenant_cli

    done = await asyncio.to_thread(tenant_cli, venv_bin, tmp_path, db_source, "set-limit",
                                   "default", "rate_limit.connect.burst", "4")
    assert done.returncode == 0, done.stderr
    gw = await _gateway(db_source, redis_addr, tmp_path, RATE_LIMIT_ENABLED="true",
                        RATE_LIMIT_CONNECT_RATE="0.01", RATE_LIMIT_CONNECT_BURST="2")
    try:
        await _served_then_closed(session, gw, "alice", 4)
    finally:
        gw.stop()
