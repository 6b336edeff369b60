"""``chat-ws-gateway`` as a real process, fed by entries written to the stream in the documented
format (``encode_entry``: the relay's own encoder). Covers what does not need the API: auth,
bad frames, dedupe, the slow consumer, token expiry, SIGTERM, the probes and the dev tokens.
The whole pipeline (gRPC -> outbox -> relay -> gateway) is in test_ws_delivery.py.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
import redis.asyncio as aioredis

from chat_shared import events
from chat_shared.events import MESSAGE_CREATED, Event, encode_entry, stream_key
from tests.conftest import make_token
from tests.helpers import listening_hosts, redis_async
from tests.support.ws_stack import (
    Gateway,
    base_env,
    close_code,
    messages,
    next_frame,
    ws_connect,
)

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
async def producer(redis_addr: str):
    client = redis_async(redis_addr, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def message_event(conversation_id: str, seq: int, recipients: list[str], content: str = "",
                  sender: str = "alice", event_id: str | None = None) -> Event:
    now = datetime.now(UTC)
    return Event(event_id=event_id or str(uuid.uuid4()), type=MESSAGE_CREATED,
                 conversation_id=conversation_id, seq=seq, occurred_at=now,
                 recipients=recipients,
                 payload=dict(events.message_created(events.message(
                     str(uuid.uuid4()), conversation_id, sender, content or f"m{seq}", seq,
                     now))))


async def publish(redis: aioredis.Redis, *events: Event) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(stream_key(event.conversation_id, 1), encode_entry(event))
        await pipe.execute()


async def start_gateway(db_source: str, redis_addr: str, tmp_path: pathlib.Path,
                        name: str = "ws", **overrides: object) -> Gateway:
    return await Gateway(base_env(db_source, redis_addr, **overrides), tmp_path,
                         name).start().ready()


async def test_events_reach_each_recipient_connection_once_and_in_order(
        db_source, redis_addr, tmp_path, producer, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        conv = str(uuid.uuid4())
        alice1 = await ws_connect(session, gw, "alice")
        alice2 = await ws_connect(session, gw, "alice")
        bob = await ws_connect(session, gw, "bob")
        carol = await ws_connect(session, gw, "carol")  # not a recipient
        events = [message_event(conv, seq, ["alice", "bob"]) for seq in (1, 2, 3)]
        # At-least-once publishing: the same event twice, and an old seq again.
        await publish(producer, events[0], events[0], events[1],
                      message_event(conv, 1, ["alice", "bob"]), events[2])
        for ws in (alice1, alice2, bob):
            got = await messages(ws, 3)
            assert [f["seq"] for f in got] == [1, 2, 3]
            assert [f["event_id"] for f in got] == [e.event_id for e in events]
            assert got[0]["message"]["content"] == "m1"
            assert got[0]["message"]["sender_id"] == "alice"
            assert got[0]["conversation_id"] == conv
            assert got[0]["message"]["created_at"].endswith("Z")
        # Anything queued for these sockets would precede the pong.
        for ws in (alice1, carol):
            await ws.send_json({"type": "ping"})
            assert (await next_frame(ws))["type"] == "pong"
        assert gw.metric("ws_connections") == 4
        assert gw.metric("ws_frames_sent_total") >= 9
        assert gw.metric("ws_delivery_lag_seconds_count") >= 9
        assert gw.metric("ws_stream_duplicate_events_total") == 1
    finally:
        gw.stop()


async def test_auth_by_header_subprotocol_or_query_and_401_otherwise(
        db_source, redis_addr, tmp_path, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        token = make_token("alice")
        ws = await session.ws_connect(f"{gw.url}/v1/ws", protocols=("bearer", token))
        assert ws.protocol == "bearer"
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        await ws.close()
        ws = await session.ws_connect(f"{gw.url}/v1/ws?access_token={token}")
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        await ws.close()
        for kwargs in ({}, {"headers": {"Authorization": "Bearer nope"}},
                       {"headers": {"Authorization": f"Bearer {make_token('a', ttl=-120)}"}},
                       {"protocols": ("bearer",)}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(f"{gw.url}/v1/ws", **kwargs)
            assert err.value.status == 401
    finally:
        gw.stop()


async def test_bad_frames_get_error_frames_and_the_connection_keeps_working(
        db_source, redis_addr, tmp_path, producer, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        ws = await ws_connect(session, gw, "alice", resume=False)
        bad = {
            "not json": "bad_frame",
            "[1, 2]": "bad_frame",
            '{"type": "subscribe"}': "unknown_type",
            '{"no": "type"}': "unknown_type",
            '{"type": "resume"}': "bad_frame",
            '{"type": "resume", "positions": {"not-a-uuid": 1}}': "bad_frame",
            f'{{"type": "resume", "positions": {{"{uuid.uuid4()}": -1}}}}': "bad_frame",
            f'{{"type": "resume", "positions": {{"{uuid.uuid4()}": "7"}}}}': "bad_frame",
            f'{{"type": "resume", "positions": {{"{uuid.uuid4()}": 1.5}}}}': "bad_frame",
        }
        for text, code in bad.items():
            await ws.send_str(text)
            frame = await next_frame(ws)
            assert frame["type"] == "error" and frame["code"] == code, (text, frame)
            assert frame["message"]
        await ws.send_bytes(b"\x00\x01")
        assert (await next_frame(ws))["code"] == "bad_frame"
        # A position for a conversation that does not exist (or the user is not in):
        # the same not_found, nothing else.
        ghost = str(uuid.uuid4())
        await ws.send_json({"type": "resume", "positions": {ghost: 0}})
        frame = await next_frame(ws)
        assert frame == {"type": "error", "code": "not_found", "message": "no such conversation",
                         "conversation_id": ghost}
        # Still alive: pong, and live events still arrive.
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        conv = str(uuid.uuid4())
        await publish(producer, message_event(conv, 1, ["alice"]))
        assert [f["seq"] for f in await messages(ws, 1)] == [1]
        assert gw.metric("ws_bad_frames_total") == len(bad) + 2
        gw.alive()
    finally:
        gw.stop()


async def test_a_slow_consumer_is_cut_off_with_4008_while_others_get_everything(
        db_source, redis_addr, tmp_path, producer, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path, WS_SEND_QUEUE_SIZE=8,
                             WS_CLOSE_TIMEOUT=60)
    try:
        conv = str(uuid.uuid4())
        slow = await ws_connect(session, gw, "slow")  # never reads until the end
        fast = await ws_connect(session, gw, "fast")
        await fast.send_json({"type": "ping"})
        assert (await next_frame(fast))["type"] == "pong"
        big = "x" * 60_000  # 300 x 60 KB: more than every socket buffer on the way can hold
        count = 300
        events = [message_event(conv, seq, ["slow", "fast"], content=f"{seq}:{big}")
                  for seq in range(1, count + 1)]
        got = []
        for i in range(0, count, 4):  # paced by the fast reader: it never has more than 4 due
            await publish(producer, *events[i:i + 4])
            got += await messages(fast, len(events[i:i + 4]))
        assert [f["seq"] for f in got] == list(range(1, count + 1))
        # Only now does the slow client read: what was buffered, then the close frame.
        code, frames = await close_code(slow, within=60)
        assert code == 4008
        assert frames < count
        assert gw.metric("ws_slow_client_disconnects_total") == 1
        # The fast client is untouched.
        await fast.send_json({"type": "ping"})
        assert (await next_frame(fast))["type"] == "pong"
    finally:
        gw.stop()


async def test_a_client_that_reads_nothing_is_dropped_when_its_close_hangs(
        db_source, redis_addr, tmp_path, producer, session):
    """The close frame cannot reach a peer that stopped reading: after WS_CLOSE_TIMEOUT the
    gateway aborts the connection instead of waiting for buffers the peer never drains."""
    gw = await start_gateway(db_source, redis_addr, tmp_path, WS_SEND_QUEUE_SIZE=8,
                             WS_CLOSE_TIMEOUT=1)
    try:
        conv = str(uuid.uuid4())
        stalled = await ws_connect(session, gw, "stalled")  # never reads until the end
        fast = await ws_connect(session, gw, "fast")
        await fast.send_json({"type": "ping"})
        assert (await next_frame(fast))["type"] == "pong"
        big = "x" * 60_000
        seq = 0
        for _ in range(100):  # bounded: 400 x 60 KB is far more than the buffers hold
            if gw.metric("ws_slow_client_disconnects_total") == 1:
                break
            batch = [message_event(conv, seq + i, ["stalled", "fast"], content=big)
                     for i in range(1, 5)]
            seq += 4
            await publish(producer, *batch)
            await messages(fast, 4)
        assert gw.metric("ws_slow_client_disconnects_total") == 1
        for _ in range(200):  # the socket leaves the hub once the abort ends its read loop
            if gw.metric("ws_connections") == 1:
                break
            await asyncio.sleep(0.1)
        assert gw.metric("ws_connections") == 1, gw.log()[-3000:]
        code, _ = await close_code(stalled, within=30)
        assert code != 4008  # the close frame never left the server: the connection was cut
        await fast.send_json({"type": "ping"})
        assert (await next_frame(fast))["type"] == "pong"
    finally:
        gw.stop()


async def test_token_expiry_closes_the_socket_with_4001(db_source, redis_addr, tmp_path, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        ws = await ws_connect(session, gw, "alice", ttl=2)
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        code, _ = await close_code(ws, within=20)
        assert code == 4001
        assert gw.metric('ws_closes_total{reason="token_expired"}') == 1
    finally:
        gw.stop()


async def test_sigterm_closes_sockets_with_1001_and_exits_zero(
        db_source, redis_addr, tmp_path, session):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        sockets = [await ws_connect(session, gw, user) for user in ("alice", "bob", "alice")]
        for ws in sockets:
            await ws.send_json({"type": "ping"})
            assert (await next_frame(ws))["type"] == "pong"
        gw.signal(signal.SIGTERM)
        codes = await asyncio.gather(*(close_code(ws, within=20) for ws in sockets))
        assert [c for c, _ in codes] == [1001, 1001, 1001]
        assert await gw.wait_async(20) == 0, gw.log()
        assert '"ws_gateway_stopped"' in gw.log()
    finally:
        gw.stop()


async def test_probes_and_readiness_follow_redis(db_source, redis_addr, redis_server, tmp_path):
    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        assert gw.get(gw.metrics_port, "/healthz")[0] == 200
        assert gw.get(gw.metrics_port, "/readyz")[0] == 200
        status, text = gw.get(gw.metrics_port, "/metrics")
        assert status == 200 and "ws_connections" in text
        redis_server.stop()
        for _ in range(100):
            if gw.get(gw.metrics_port, "/readyz")[0] == 503:
                break
            await asyncio.sleep(0.1)
        assert gw.get(gw.metrics_port, "/readyz")[0] == 503
        assert gw.get(gw.metrics_port, "/healthz")[0] == 200
        gw.alive()
    finally:
        gw.stop()


async def test_demo_page_and_dev_tokens_only_in_development(
        db_source, redis_addr, tmp_path, session):
    dev = await start_gateway(db_source, redis_addr, tmp_path, "dev", ENVIRONMENT="development",
                              API_PUBLIC_URL="http://127.0.0.1:18080")
    prod = await start_gateway(db_source, redis_addr, tmp_path, "test")
    try:
        async with session.get(f"{dev.url}/") as r:
            assert r.status == 200 and "chat-service" in await r.text()
        async with session.get(f"{dev.url}/demo/app.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
        async with session.get(f"{dev.url}/demo/..%2Fserver.py") as r:
            assert r.status == 404
        async with session.get(f"{dev.url}/favicon.ico") as r:  # every browser asks for it
            assert r.status == 204 and "max-age" in r.headers["Cache-Control"]
        async with session.get(f"{dev.url}/demo/config.json") as r:
            assert await r.json() == {"api_url": "http://127.0.0.1:18080", "ws_path": "/v1/ws",
                                      "dev_tokens": True}
        async with session.post(f"{dev.url}/demo/token", json={"user_id": "bob"}) as r:
            assert r.status == 200
            token = (await r.json())["access_token"]
        ws = await session.ws_connect(f"{dev.url}/v1/ws", protocols=("bearer", token))
        await ws.send_json({"type": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        await ws.close()
        async with session.post(f"{prod.url}/demo/token", json={"user_id": "bob"}) as r:
            assert r.status == 404
        async with session.get(f"{prod.url}/demo/config.json") as r:
            assert (await r.json())["dev_tokens"] is False
    finally:
        dev.stop()
        prod.stop()


async def test_without_environment_there_is_no_demo_token_and_metrics_stay_on_loopback(
        db_source, redis_addr, tmp_path, session):
    """No ENVIRONMENT is production: no token minting for anyone who asks, and /metrics binds
    where the service binds (127.0.0.1 here), not every interface."""
    env = base_env(db_source, redis_addr)
    del env["ENVIRONMENT"], env["METRICS_ADDRESS"]
    gw = await Gateway(env, tmp_path, "noenv").start().ready()
    try:
        async with session.post(f"{gw.url}/demo/token", json={"user_id": "bob"}) as r:
            assert r.status == 404
        async with session.get(f"{gw.url}/demo/config.json") as r:
            assert (await r.json())["dev_tokens"] is False
        assert listening_hosts(gw.metrics_port) == {"127.0.0.1"}
    finally:
        gw.stop()


async def test_a_gap_in_the_stream_is_filled_from_postgresql_before_the_next_event(
        db_source, redis_addr, tmp_path, producer, session, stub):
    """The API's own outbox rows, published by hand with one missing in the middle."""
    from tests.helpers import create_conversation, db_rows, send

    gw = await start_gateway(db_source, redis_addr, tmp_path)
    try:
        conv = await create_conversation(stub, "alice", ["bob"])
        for i in range(1, 5):
            await send(stub, "alice", conv.id, f"n{i}")
        rows = await db_rows(db_source, "SELECT event_id::text, event_type, "
                             "conversation_id::text, seq, recipients, payload, created_at "
                             "FROM outbox WHERE event_type = 'message.created' ORDER BY seq")
        events = {r[3]: Event(r[0], r[1], r[2], r[3], r[6], list(r[4]), r[5]) for r in rows}
        bob = await ws_connect(session, gw, "bob")
        await publish(producer, events[1])
        assert [f["seq"] for f in await messages(bob, 1)] == [1]
        await publish(producer, events[4], events[2], events[3])  # 2 and 3 late
        got = await messages(bob, 3)
        assert [f["seq"] for f in got] == [2, 3, 4]
        assert [f["message"]["content"] for f in got] == ["n2", "n3", "n4"]
        # 2 and 3 come from PostgreSQL (no event id); so may 4, which PostgreSQL already has.
        assert got[0]["event_id"] is None and got[1]["event_id"] is None
        assert got[2]["event_id"] in (None, events[4].event_id)
        await bob.send_json({"type": "ping"})
        assert (await next_frame(bob))["type"] == "pong"  # 2 and 3 were not sent twice
    finally:
        gw.stop()
