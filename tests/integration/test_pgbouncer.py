"""The API through a real PgBouncer in transaction pooling mode (docs/pgbouncer.md).

Runs in every test run (the ``pgbouncer`` fixture starts Debian's PgBouncer 1.18); the wider
integration subset runs through it with ``--through-pgbouncer`` (a CI step of its own).
Transaction pooling hands each transaction whichever server session is free, so what these tests
hold to is what breaks first there: a statement prepared on one session missing on the next, a
tenant or role left on a session for the next client, a session that is not the role it should
be.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import psycopg
import pytest

from chat_devtools.local_pgbouncer import LocalPgBouncer
from chat_shared.config import DatabaseSettings
from chat_shared.db import Database
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import make_token
from tests.helpers import create_conversation, send

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def pooled_stub(api_settings_factory: Callable[..., Any], pgbouncer: LocalPgBouncer,
                      db_source: str) -> AsyncIterator[Any]:
    from chat_api.app import build_app

    app = build_app(api_settings_factory(
        db_source=pgbouncer.through(db_source, "chat_app_pooled"), db_transaction_pooler=True,
        db_pool_size=4, db_max_overflow=0))
    await app.start()
    await app.probe_once()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            yield chat_pb2_grpc.ChatServiceStub(ch)
    finally:
        await app.stop(grace=1.0)


def tenant_auth(user: str, tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {make_token(user, tenant=tenant)}"),)


async def test_the_api_works_through_pgbouncer_past_psycopgs_prepare_threshold(
        pooled_stub: Any, db_source: str) -> None:
    """Four client connections over PgBouncer's shared server sessions, many more calls than
    psycopg's prepare threshold (5): a prepared statement would be missing on the next session
    ("prepared statement "_pg3_0" does not exist")."""
    conv = await create_conversation(pooled_stub, "alice", ["bob"])
    sent = await asyncio.gather(*(send(pooled_stub, "alice", conv.id, f"m{i}") for i in range(30)))
    assert sorted(m.seq for m in sent) == list(range(1, 31))
    for _ in range(3):
        pages = await asyncio.gather(*(pooled_stub.GetMessages(
            chat_pb2.GetMessagesRequest(conversation_id=conv.id, limit=50),
            metadata=(("authorization", f"Bearer {make_token('bob')}"),)) for _ in range(20)))
        assert all([m.seq for m in p.messages] == list(range(30, 0, -1)) for p in pages)  # newest first
    edited = await pooled_stub.EditMessage(chat_pb2.EditMessageRequest(
        conversation_id=conv.id, message_id=sent[0].id, content="edited"),
        metadata=(("authorization", f"Bearer {make_token('alice')}"),))
    assert edited.message.content == "edited"


async def test_ordered_changes_and_replies_work_through_pgbouncer(pooled_stub: Any) -> None:
    """The pipelined transactions of replies, edits, reactions and membership changes, many
    more than psycopg's prepare threshold, over PgBouncer's shared server sessions: the
    tenant is named for each transaction only and nothing is prepared on a session."""
    conv = await create_conversation(pooled_stub, "alice", ["bob", "carol"])
    alice = (("authorization", f"Bearer {make_token('alice')}"),)
    root = await send(pooled_stub, "alice", conv.id, "root")
    for i in range(8):
        reply = await pooled_stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=conv.id, content=f"reply {i}", idempotency_key=uuid.uuid4().hex,
            thread_root_id=root.id), metadata=alice)
        assert reply.message.thread_root_id == root.id
        edited = await pooled_stub.EditMessage(chat_pb2.EditMessageRequest(
            conversation_id=conv.id, message_id=reply.message.id, content=f"edited {i}"),
            metadata=alice)
        assert edited.message.content == f"edited {i}"
        reacted = await pooled_stub.AddReaction(chat_pb2.AddReactionRequest(
            conversation_id=conv.id, message_id=root.id, emoji="👍"), metadata=alice)
        assert [(r.emoji, r.count) for r in reacted.message.reactions] == [("👍", 1)]
        await pooled_stub.RemoveReaction(chat_pb2.RemoveReactionRequest(
            conversation_id=conv.id, message_id=root.id, emoji="👍"), metadata=alice)
        await pooled_stub.RemoveMember(chat_pb2.RemoveMemberRequest(
            conversation_id=conv.id, user_id="carol"), metadata=alice)
        await pooled_stub.AddMembers(chat_pb2.AddMembersRequest(
            conversation_id=conv.id, member_ids=["carol"]), metadata=alice)
    thread = await pooled_stub.GetThread(chat_pb2.GetThreadRequest(
        conversation_id=conv.id, root_id=root.id, limit=50), metadata=alice)
    assert thread.root.reply_count == 8
    assert [m.content for m in thread.messages] == [f"edited {i}" for i in range(7, -1, -1)]


async def test_tenants_stay_apart_on_shared_server_sessions(
        pooled_stub: Any, db_source: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ('acme') ON CONFLICT DO NOTHING")
    convs = {}
    for tenant in ("default", "acme"):
        resp = await pooled_stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["bob"]),
            metadata=tenant_auth("alice", tenant))
        convs[tenant] = resp.conversation.id
        await pooled_stub.SendMessage(chat_pb2.SendMessageRequest(
            conversation_id=resp.conversation.id, content=f"for {tenant}",
            idempotency_key=uuid.uuid4().hex), metadata=tenant_auth("alice", tenant))
    for _ in range(10):  # interleaved over the shared sessions
        for tenant, other in (("default", "acme"), ("acme", "default")):
            listed = await pooled_stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                        metadata=tenant_auth("bob", tenant))
            assert [c.conversation.id for c in listed.conversations] == [convs[tenant]]
            err = None
            try:
                await pooled_stub.GetMessages(
                    chat_pb2.GetMessagesRequest(conversation_id=convs[other]),
                    metadata=tenant_auth("bob", tenant))
            except grpc.aio.AioRpcError as exc:
                err = exc
            assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_login_that_is_not_database_role_is_refused_through_the_pooler(
        pgbouncer: LocalPgBouncer, db_source: str) -> None:
    """Through PgBouncer 1.18 the role cannot travel in the startup packet: a login role
    without ``role = chat_app`` among its settings (here the superuser) would bypass
    row-level security, so its sessions are refused instead."""
    db = Database(DatabaseSettings(_env_file=None, db_source=pgbouncer.through(db_source,
                                                                                "postgres"),
                                   database_role="chat_app", db_transaction_pooler=True,
                                   db_pool_size=1, db_max_overflow=0, db_pool_timeout=1),
                  application_name="test-pooler-refused")
    await db.open(wait=False)
    try:
        assert not await db.ping()
    finally:
        await db.close()
    pooled = Database(DatabaseSettings(_env_file=None, db_source=pgbouncer.through(
        db_source, "chat_app_pooled"), database_role="chat_app", db_transaction_pooler=True,
        db_pool_size=1, db_max_overflow=0, db_pool_timeout=5),
        application_name="test-pooler-accepted")
    await pooled.open(wait=True)
    try:
        assert await pooled.fetchone("t.who", "SELECT current_user, current_setting('TimeZone'),"
                                     " current_setting('random_page_cost')"
                                     ) == ("chat_app", "UTC", "1.1")
    finally:
        await pooled.close()

