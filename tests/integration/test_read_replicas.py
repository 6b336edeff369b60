"""Read replicas on a real streaming replica: read-your-writes, lag, a replica that goes away,
tenancy on the standby (docs/read-replicas.md).

The replica is a hot standby of the session's PostgreSQL made by ``pg_basebackup -R``
(``LocalPostgres.start_replica``); it replays every test's database. Its
``recovery_min_apply_delay`` is changed while it runs (ALTER SYSTEM + reload), so a test holds
the replica back only while it needs a lagging replica.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import grpc
import psycopg
import pytest
from prometheus_client import REGISTRY

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.pytest_plugin import TEMPLATE_DB, pooled_pgbouncer
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from chat_shared.replica_reads import parse_position
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, rpc_error

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    """A primary of this module's own, migrated like the session's. ``pg_basebackup`` copies
    the whole cluster, and by this module the session's holds every earlier test's database
    (about 600 databases, 5 GB in a full run): the copy outlasted the replica's start timeout."""
    from chat_migrations.cli import upgrade

    pg = LocalPostgres().start()
    try:
        upgrade(pg.create_database(TEMPLATE_DB))
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture(scope="module")
def pgbouncer(postgres: LocalPostgres) -> Iterator[Any]:
    """PgBouncer (transaction pooling) in front of this module's primary."""
    yield from pooled_pgbouncer(postgres)


@pytest.fixture(scope="module")
def replica(postgres: LocalPostgres) -> Iterator[LocalPostgres]:
    standby = postgres.start_replica()
    try:
        yield standby
    finally:
        standby.cleanup()


def on_replica(db_source: str, replica: LocalPostgres) -> str:
    """The test database's DSN on the replica."""
    parts = urlsplit(db_source)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{replica.port}"))


async def eventually(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def replayed(replica: LocalPostgres) -> int:
    async with await psycopg.AsyncConnection.connect(replica.dsn(), autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_last_wal_replay_lsn()::text")).fetchone()
    assert row is not None and row[0] is not None, "the replica is not in recovery"
    return parse_position(row[0])


async def set_apply_delay(replica: LocalPostgres, delay: str) -> None:
    async with await psycopg.AsyncConnection.connect(replica.dsn(), autocommit=True) as conn:
        await conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        await conn.execute("SELECT pg_reload_conf()")
        # The reload is asynchronous: a new session reads the setting once it took effect.
    async def applied() -> bool:
        async with await psycopg.AsyncConnection.connect(replica.dsn(), autocommit=True) as c:
            row = await (await c.execute("SHOW recovery_min_apply_delay")).fetchone()
        return row is not None and row[0] == delay
    await eventually(applied, 10, f"recovery_min_apply_delay = {delay}")


async def replica_has(dsn: str) -> bool:
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
async def replica_dsn(db_source: str, replica: LocalPostgres) -> str:
    """The test's database on the replica, once the replica has it."""
    dsn = on_replica(db_source, replica)
    await eventually(lambda: replica_has(dsn), 30, "the test database on the replica")
    return dsn


@pytest.fixture
async def api_with_replica(api_settings_factory: Callable[..., Any],
                           replica_dsn: str) -> AsyncIterator[Any]:
    from chat_api.app import build_app

    app = build_app(api_settings_factory(db_read_source=replica_dsn, db_read_retry_after=60))
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def stub(api_with_replica: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api_with_replica.grpc_port}") as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch)


def reads(source: str, reason: str) -> float:
    return REGISTRY.get_sample_value("chat_db_reads_total",
                                     {"source": source, "reason": reason}) or 0.0


async def send_with_position(stub: Any, user: str, cid: str, content: str
                             ) -> tuple[chat_pb2.Message, str]:
    call = stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=cid, content=content, idempotency_key=uuid.uuid4().hex),
        metadata=auth(user))
    response = await call
    trailing = dict(await call.trailing_metadata())
    assert "x-chat-position" in trailing, trailing
    return response.message, trailing["x-chat-position"]


async def contents(stub: Any, user: str, cid: str, position: str | None = None,
                   deadline: float | None = None) -> list[str]:
    metadata = auth(user) + ((("x-chat-read-after", position),) if position else ())
    page = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=cid),
                                  metadata=metadata, timeout=deadline)
    return [m.content for m in page.messages]


async def test_a_writer_reads_its_own_message_at_once_while_the_replica_lags(
        stub: Any, replica: LocalPostgres) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])

    async def bob_sees_conversation() -> bool:
        try:
            await contents(stub, "bob", conv.id)
            return True
        except grpc.aio.AioRpcError:
            return False
    await eventually(bob_sees_conversation, 30, "the conversation on the replica")

    await set_apply_delay(replica, "5s")
    try:
        served_by_replica = reads("replica", "caught_up")
        _, position = await send_with_position(stub, "alice", conv.id, "hello")

        # The writer, with its position: the primary answers while the replica is behind.
        assert await contents(stub, "alice", conv.id, position) == ["hello"]
        # Another reader, without one: the replica answers, without the message yet.
        others_view = await contents(stub, "bob", conv.id)
        behind = await replayed(replica) < parse_position(position)
        assert behind, "the replica replayed the send before the check: the delay did not hold"
        assert reads("replica", "caught_up") > served_by_replica
        assert others_view == []
        assert reads("primary", "replica_behind") >= 1

        # Once the replica has replayed the send, the other reader sees it there.
        async def bob_sees_hello() -> bool:
            return await contents(stub, "bob", conv.id) == ["hello"]
        await eventually(bob_sees_hello, 60, "the message on the replica")
        # and the writer's position now reads from the replica too
        before = reads("replica", "caught_up")
        assert await contents(stub, "alice", conv.id, position) == ["hello"]
        assert reads("replica", "caught_up") == before + 1
    finally:
        await set_apply_delay(replica, "0")


async def test_positions_over_http_and_a_bad_position_is_invalid_argument(
        api_with_replica: Any, stub: Any) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api_with_replica.http_port}") as http:
        async with http.post("/v1/messages", headers=headers, json={
                "conversation_id": conv.id, "content": "hi",
                "idempotency_key": uuid.uuid4().hex}) as resp:
            assert resp.status == 200
            position = resp.headers["X-Chat-Position"]
        parse_position(position)
        async with http.get(f"/v1/conversations/{conv.id}/messages",
                            headers={**headers, "X-Chat-Read-After": position}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert [m["content"] for m in body["messages"]] == ["hi"]
            assert "X-Chat-Position" not in resp.headers  # a read changes nothing
        async with http.get(f"/v1/conversations/{conv.id}/messages",
                            headers={**headers, "X-Chat-Read-After": "not-a-position"}) as resp:
            assert resp.status == 400
    err = await rpc_error(stub.GetConversations(
        chat_pb2.GetConversationsRequest(),
        metadata=auth("alice") + (("x-chat-read-after", "zz/1"),)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reads_fall_back_to_the_primary_within_the_deadline_when_the_replica_is_down(
        stub: Any, replica: LocalPostgres) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    _, position = await send_with_position(stub, "alice", conv.id, "before")

    async def replica_caught_up() -> bool:
        return await replayed(replica) >= parse_position(position)
    await eventually(replica_caught_up, 30, "the replica to replay the send")
    failed = reads("primary", "replica_failed")
    replica.stop()
    try:
        _, position = await send_with_position(stub, "alice", conv.id, "after")
        # Every read-only call answers from the primary within its deadline.
        # (newest first)
        assert await contents(stub, "bob", conv.id, deadline=3) == ["after", "before"]
        assert await contents(stub, "alice", conv.id, position, deadline=3) == ["after", "before"]
        convs = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                            metadata=auth("bob"), timeout=3)
        assert [c.conversation.id for c in convs.conversations] == [conv.id]
        thread = await stub.GetThread(chat_pb2.GetThreadRequest(
            conversation_id=conv.id, root_id=(await stub.GetMessages(
                chat_pb2.GetMessagesRequest(conversation_id=conv.id),
                metadata=auth("bob"), timeout=3)).messages[-1].id),
            metadata=auth("bob"), timeout=3)
        assert thread.root.content == "before"
        found = await stub.SearchMessages(chat_pb2.SearchMessagesRequest(query="after"),
                                          metadata=auth("bob"), timeout=3)
        assert [h.message.content for h in found.hits] == ["after"]
        assert reads("primary", "replica_failed") == failed + 1  # tried once, then skipped
        assert reads("primary", "replica_down") >= 4
    finally:
        replica.start()


async def test_row_level_security_and_the_app_role_hold_on_the_replica(
        stub: Any, replica_dsn: str) -> None:
    """The standby is a copy of the whole cluster: the app's role, its grants and the policies
    are there, and ``set_config`` of the tenant works in a read-only session."""
    conv = await create_conversation(stub, "alice", ["bob"])
    _, position = await send_with_position(stub, "alice", conv.id, "tenant default")

    async def on_standby(tenant: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(
                replica_dsn, autocommit=True, options="-c role=chat_app") as conn:
            async with conn.pipeline():
                await conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
                cur = await conn.execute("SELECT content FROM messages")
            return await cur.fetchall()

    async def replicated() -> bool:
        return await on_standby("default") == [("tenant default",)]
    await eventually(replicated, 30, "the message on the replica")
    assert await on_standby("other") == []
    assert await on_standby("") == []
    async with await psycopg.AsyncConnection.connect(
            replica_dsn, autocommit=True, options="-c role=chat_app") as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await conn.execute("DELETE FROM messages")


async def test_behind_pgbouncer_the_replica_keeps_sessions_of_its_own(
        api_settings_factory: Callable[..., Any], replica_dsn: str, db_source: str,
        pgbouncer: Any) -> None:
    """Writes through PgBouncer (transaction pooling), reads on a replica reached directly: the
    replica's sessions carry their role in the startup packet as usual (DB_READ_TRANSACTION_POOLER
    is false), so a login that is not itself chat_app still reads there."""
    from chat_api.app import build_app

    app = build_app(api_settings_factory(
        db_source=pgbouncer.through(db_source, "chat_app_pooled"), db_transaction_pooler=True,
        db_read_source=replica_dsn))
    await app.start()
    await app.probe_once()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            pooled = chat_pb2_grpc.ChatServiceStub(ch)
            conv = await create_conversation(pooled, "alice", ["bob"])
            _, position = await send_with_position(pooled, "alice", conv.id, "pooled")
            served, failed = reads("replica", "caught_up"), reads("primary", "replica_failed")

            async def replica_answers() -> bool:
                return await contents(pooled, "alice", conv.id, position) == ["pooled"] and \
                    reads("replica", "caught_up") > served
            await eventually(replica_answers, 30, "a read answered by the replica")
            assert reads("primary", "replica_failed") == failed
    finally:
        await app.stop(grace=1.0)


async def test_graphql_carries_positions_so_a_writer_reads_its_own_message(
        api_with_replica: Any, stub: Any, replica: LocalPostgres) -> None:
    """GraphQL answers a mutation with X-Chat-Position and honours X-Chat-Read-After on a
    query, as HTTP/JSON does: while the replica lags the writer still sees its message."""
    conv = await create_conversation(stub, "alice", ["bob"])
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    query = ("query Q($id: ID!) { conversation(id: $id) { messages(first: 10) "
             "{ edges { node { content } } } } }")

    async def graphql(http: aiohttp.ClientSession, body: dict[str, Any],
                      extra: dict[str, str] | None = None) -> tuple[dict[str, Any], Any]:
        async with http.post("/graphql", json=body, headers={**headers, **(extra or {})}) as r:
            payload = await r.json()
            assert r.status == 200 and "errors" not in payload, payload
            return payload["data"], r.headers

    async with aiohttp.ClientSession(f"http://127.0.0.1:{api_with_replica.http_port}") as http:
        async def on_replica_already() -> bool:
            async with http.post("/graphql", json={"query": query, "variables": {"id": conv.id}},
                                 headers=headers) as r:
                return r.status == 200 and "errors" not in await r.json()
        await eventually(on_replica_already, 30, "the conversation on the replica")

        await set_apply_delay(replica, "5s")
        try:
            _, answer_headers = await graphql(http, {
                "query": 'mutation S($id: ID!) { sendMessage(conversationId: $id, '
                         'content: "via graphql", idempotencyKey: "g-1") { seq } }',
                "variables": {"id": conv.id}})
            position = answer_headers["X-Chat-Position"]
            data, _ = await graphql(http, {"query": query, "variables": {"id": conv.id}},
                                    {"X-Chat-Read-After": position})
            edges = data["conversation"]["messages"]["edges"]
            assert [e["node"]["content"] for e in edges] == ["via graphql"]
            assert await replayed(replica) < parse_position(position), \
                "the replica replayed the send before the read: the delay did not hold"
        finally:
            await set_apply_delay(replica, "0")
