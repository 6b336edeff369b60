"""The WebSocket side of tenant isolation, against a real ``chat-ws-gateway`` process.

The same user id connects in two tenants: an event reaches only the sockets of its own tenant,
a resume with another tenant's conversation ids and positions answers "no such conversation"
and no message, and a disabled (or unknown) tenant's sockets close with 4403.
"""

from __future__ import annotations

import pathlib
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest

from chat_shared import events
from chat_shared.events import MESSAGE_CREATED, Event, encode_entry, stream_key
from tests.conftest import make_token
from tests.helpers import redis_async
from tests.support.ws_stack import Gateway, base_env, close_code, messages, next_frame

pytestmark = pytest.mark.redis_cluster

A, B = "acme", "globex"
CLOSE_TENANT_DENIED = 4403


@pytest.fixture
async def producer(redis_addr: str) -> Any:
    client = redis_async(redis_addr, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def gateway(db_source: str, redis_addr: str, tmp_path: pathlib.Path) -> Any:
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id) VALUES (%s), (%s)", (A, B))
    gw = await Gateway(base_env(db_source, redis_addr, WS_TENANT_CHECK_INTERVAL="0.3"),
                       tmp_path, "ws").start().ready()
    yield gw
    gw.stop()


async def connect(session: aiohttp.ClientSession, gw: Gateway, user: str, tenant: str,
                  positions: dict[str, int] | None = None) -> aiohttp.ClientWebSocketResponse:
    token = make_token(user, tenant=tenant)
    ws = await session.ws_connect(f"{gw.url}/v1/ws", heartbeat=None, autoping=True,
                                  headers={"Authorization": f"Bearer {token}"})
    await ws.send_json({"type": "resume", "positions": positions or {}})
    return ws


async def frames_until_pong(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every frame the socket got before the answer to a ping (anything queued comes first)."""
    await ws.send_json({"type": "ping"})
    out = []
    while (frame := await next_frame(ws))["type"] != "pong":
        out.append(frame)
    return out


def event(tenant: str, conversation_id: str, seq: int, recipients: list[str]) -> Event:
    now = datetime.now(UTC)
    return Event(event_id=str(uuid.uuid4()), type=MESSAGE_CREATED,
                 conversation_id=conversation_id, seq=seq, occurred_at=now,
                 recipients=recipients, tenant=tenant,
                 payload=dict(events.message_created(events.message(
                     str(uuid.uuid4()), conversation_id, "alice", f"{tenant}-{seq}", seq, now))))


def b_conversation(db_source: str, messages: int) -> str:
    """A conversation of tenant B with alice as a member and ``messages`` messages."""
    cid = str(uuid.uuid4())
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("INSERT INTO conversations (tenant_id, id, created_by, member_ids, last_seq,"
                     " last_pos, last_root_seq)"
                     " VALUES (%s, %s, 'alice', '{alice,bob}', %s, %s, %s)",
                     (B, cid, messages, messages, messages))
        conn.execute("INSERT INTO conversation_members (tenant_id, conversation_id, user_id,"
                     " last_activity_at) VALUES (%s, %s, 'alice', now()), (%s, %s, 'bob', now())",
                     (B, cid, B, cid))
        for seq in range(1, messages + 1):
            conn.execute("INSERT INTO messages (tenant_id, id, conversation_id, seq, root_seq,"
                         " sender_id, content, idempotency_key) VALUES (%s, gen_random_uuid(),"
                         " %s, %s, %s, 'bob', %s, %s)", (B, cid, seq, seq, f"b{seq}", f"k{seq}"))
            # Each message is its conversation's change at pos == seq (the gateway resumes
            # from the change log).
            conn.execute("INSERT INTO conversation_changes (tenant_id, conversation_id, pos,"
                         " change_type, message_id, user_id, actor_id) SELECT tenant_id,"
                         " conversation_id, seq, 'message.created', id, sender_id, sender_id"
                         " FROM messages WHERE tenant_id = %s AND conversation_id = %s"
                         " AND seq = %s", (B, cid, seq))
    return cid


async def test_an_event_reaches_only_its_own_tenants_sockets(gateway, session, producer) -> None:
    alice_a = await connect(session, gateway, "alice", A)
    alice_b = await connect(session, gateway, "alice", B)
    assert await frames_until_pong(alice_a) == []
    assert await frames_until_pong(alice_b) == []
    conv = str(uuid.uuid4())
    await producer.xadd(stream_key(conv, 1), encode_entry(event(B, conv, 1, ["alice"])))
    got_b = await next_frame(alice_b)
    assert got_b["type"] == "message.created" and got_b["message"]["content"] == "globex-1"
    # alice of A is another person: nothing was queued for her.
    assert await frames_until_pong(alice_a) == []
    await producer.xadd(stream_key(conv, 1), encode_entry(event(A, conv, 2, ["alice"])))
    assert (await next_frame(alice_a))["message"]["content"] == "acme-2"
    assert await frames_until_pong(alice_b) == []


async def test_a_resume_with_another_tenants_ids_gets_nothing(gateway, session,
                                                                 db_source) -> None:
    cid = b_conversation(db_source, 3)
    cases = 0
    for user in ("alice", "bob", "mallory"):
        for position in (0, 1, 3, 2**62):
            cases += 1
            ws = await connect(session, gateway, user, A, positions={cid: position})
            frames = await frames_until_pong(ws)
            assert [f["type"] for f in frames] == ["error"], frames
            assert frames[0]["code"] == "not_found" or "no such" in frames[0]["message"]
            await ws.close()
    assert cases == 12
    # The same resume in B's own tenant does catch up (the test can tell the difference).
    ws = await connect(session, gateway, "alice", B, positions={cid: 0})
    assert [f["message"]["content"] for f in await messages(ws, 3)] == ["b1", "b2", "b3"]


async def test_a_disabled_tenants_sockets_close_with_4403(gateway, session, db_source) -> None:
    alice_a = await connect(session, gateway, "alice", A)
    alice_b = await connect(session, gateway, "alice", B)
    assert await frames_until_pong(alice_a) == []
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET status = 'disabled' WHERE id = %s", (A,))
    code, _ = await close_code(alice_a, within=5)
    assert code == CLOSE_TENANT_DENIED
    # While disabled, a new socket is closed at once; the other tenant keeps its socket.
    again = await connect(session, gateway, "bob", A)
    assert (await close_code(again, within=5))[0] == CLOSE_TENANT_DENIED
    assert await frames_until_pong(alice_b) == []
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET status = 'active' WHERE id = %s", (A,))
    back = await connect(session, gateway, "alice", A)
    assert await frames_until_pong(back) == []


async def test_an_unknown_tenant_is_closed_with_4403(gateway, session) -> None:
    ws = await connect(session, gateway, "alice", "initech")
    assert (await close_code(ws, within=5))[0] == CLOSE_TENANT_DENIED
