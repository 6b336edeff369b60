"""Tenants kept apart: by the API's own queries and, underneath, by PostgreSQL's row-level security.

The cross-tenant matrix: a user of tenant A calls every RPC, over gRPC and over HTTP, with the
ids a user of tenant B holds (conversation and message ids, page tokens, read and page
positions, attachment and upload ids) and with B's users as members; every case must answer
NOT_FOUND (FAILED_PRECONDITION for attaching someone else's upload, the answer a made-up id
gets) or an answer that holds only A's data. The same user id exists in both tenants, so a
query that forgot the tenant would match. The WebSocket side of the matrix is in tests/e2e/test_ws_tenancy.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2

from chat_shared.errors import ChatError
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import make_token
from tests.attachment_helpers import post_form
from tests.helpers import db_rows, error_info

A, B = "acme", "globex"


def md(user: str, tenant: str | None) -> tuple[tuple[str, str], ...]:
    token = make_token(user, tenant=tenant) if tenant else make_token(user)
    return (("authorization", f"Bearer {token}"),)


def register(db_source: str, *tenants: str) -> None:
    with psycopg.connect(db_source, autocommit=True) as conn:
        for tenant in tenants:
            conn.execute("INSERT INTO tenants (id) VALUES (%s) ON CONFLICT DO NOTHING", (tenant,))


@pytest.fixture
async def tenant_api(api_settings_factory: Callable[..., Any], db_source: str, s3: Any
                     ) -> AsyncIterator[Any]:
    from chat_api.app import build_app

    register(db_source, A, B)
    store = {k.lower(): v for k, v in s3.env().items()}
    app = build_app(api_settings_factory(tenant_cache_ttl=0.2, **store))
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def tstub(tenant_api: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tenant_api.grpc_port}") as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch)


async def code_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err


async def conversation(stub: Any, tenant: str, user: str, members: list[str],
                       title: str = "") -> chat_pb2.Conversation:
    resp = await stub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=members, title=title),
        metadata=md(user, tenant))
    return resp.conversation


async def send(stub: Any, tenant: str, user: str, cid: str, text: str,
               key: str | None = None) -> chat_pb2.Message:
    resp = await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=cid, content=text,
                                    idempotency_key=key or uuid.uuid4().hex),
        metadata=md(user, tenant))
    return resp.message


# --- the same user id in two tenants --------------------------------------------------------

async def test_same_user_id_in_two_tenants_is_two_people(tstub: Any) -> None:
    in_a = await conversation(tstub, A, "alice", ["bob"])
    in_b = await conversation(tstub, B, "alice", ["bob"])
    # The direct conversation of alice and bob exists once per tenant.
    assert in_a.id != in_b.id
    await send(tstub, A, "alice", in_a.id, "for acme", key="k1")
    # The idempotency key is per tenant: the same sender and key in B is a new message.
    sent_b = await send(tstub, B, "alice", in_b.id, "for globex", key="k1")
    assert sent_b.content == "for globex"
    for tenant, own in ((A, in_a.id), (B, in_b.id)):
        for user in ("alice", "bob"):
            listed = await tstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                  metadata=md(user, tenant))
            assert [c.conversation.id for c in listed.conversations] == [own]
            page = await tstub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=own),
                                           metadata=md(user, tenant))
            assert [m.content for m in page.messages] == [
                "for acme" if tenant == A else "for globex"]


async def test_token_without_tenant_is_the_default_tenant(tstub: Any, db_source: str) -> None:
    conv = await conversation(tstub, None, "alice", ["bob"])  # type: ignore[arg-type]
    rows = await db_rows(db_source, "SELECT tenant_id FROM conversations WHERE id = %s", conv.id)
    assert rows == [("default",)]
    code, _ = await code_of(tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv.id), metadata=md("alice", A)))
    assert code == grpc.StatusCode.NOT_FOUND


# --- the cross-tenant matrix ----------------------------------------------------------------

async def b_world(stub: Any) -> dict[str, Any]:
    """What a user of B holds: a conversation with messages, its ids, tokens and positions."""
    conv = await conversation(stub, B, "alice", ["bob", "carol"], title="b-only")
    sent = [await send(stub, B, "alice", conv.id, f"b{i}", key=f"k-b{i}") for i in range(5)]
    # An attachment of B's (sent) and an upload of B's (not yet attached).
    pdf = b"%PDF-1.4\n%%EOF\n"
    ids = []
    for _ in range(2):
        ticket = await stub.CreateUpload(
            chat_pb2.CreateUploadRequest(conversation_id=conv.id, filename="b.pdf",
                                         content_type="application/pdf", size_bytes=len(pdf)),
            metadata=md("alice", B))
        status, body = await post_form(ticket, pdf)
        assert status == 204, body
        ids.append(ticket.upload_id)
    await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv.id, content="file",
                                    idempotency_key="k-b-file", attachment_ids=ids[:1]),
        metadata=md("alice", B))
    first = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv.id, limit=2),
                                   metadata=md("bob", B))
    ascending = await stub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv.id, limit=2, after_seq=0),
        metadata=md("bob", B))
    for i in range(3):
        await conversation(stub, B, "alice", [f"x{i}"], title=f"t{i}")
    listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=1),
                                         metadata=md("alice", B))
    found = await stub.SearchMessages(chat_pb2.SearchMessagesRequest(query="b0 OR b1", limit=1),
                                      metadata=md("bob", B))
    assert first.next_page_token and ascending.next_page_token and listed.next_page_token
    assert found.next_page_token
    return {"conv": conv, "sent": sent, "messages_token": first.next_page_token,
            "search_token": found.next_page_token,
            "ascending_token": ascending.next_page_token,
            "conversations_token": listed.next_page_token, "attachment": ids[0],
            "upload": ids[1]}


async def b_snapshot(stub: Any) -> list[Any]:
    """Everything B's users see, to prove A's calls changed nothing of B."""
    out: list[Any] = []
    for user in ("alice", "bob", "carol"):
        listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=100),
                                             metadata=md(user, B))
        out.append(sorted((c.conversation.id, c.conversation.last_seq, c.unread_count)
                          for c in listed.conversations))
    return out


async def test_cross_tenant_matrix_grpc_and_http(tstub: Any, tenant_api: Any,
                                                 db_source: str) -> None:
    world = await b_world(tstub)
    conv_b: str = world["conv"].id
    before_b = await b_snapshot(tstub)
    own_a = await conversation(tstub, A, "alice", ["dave"])
    ts = timestamp_pb2.Timestamp()
    ts.FromSeconds(int(time.time()) + 60)
    cases: list[tuple[str, Callable[[str], Awaitable[tuple[str, Any]]]]] = []

    # gRPC: every RPC with B's ids, for A users that share ids with B's members.
    def grpc_case(name: str, make: Callable[[str], Awaitable[Any]]) -> None:
        async def run(user: str) -> tuple[str, Any]:
            code, value = await code_of(make(user))
            return code.name, value
        cases.append((f"grpc {name}", run))

    grpc_case("SendMessage conversation_id", lambda u: tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv_b, content="x",
                                    idempotency_key=uuid.uuid4().hex), metadata=md(u, A)))
    grpc_case("SendMessage reused B idempotency key", lambda u: tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv_b, content="b0",
                                    idempotency_key="k-b0"), metadata=md(u, A)))
    grpc_case("GetMessages newest", lambda u: tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv_b), metadata=md(u, A)))
    grpc_case("GetMessages page_token", lambda u: tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv_b, page_token=world["messages_token"]),
        metadata=md(u, A)))
    grpc_case("GetMessages ascending page_token", lambda u: tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv_b,
                                    page_token=world["ascending_token"]), metadata=md(u, A)))
    grpc_case("GetMessages after_seq", lambda u: tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv_b, after_seq=0), metadata=md(u, A)))
    grpc_case("GetMessages before_timestamp", lambda u: tstub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conv_b, before_timestamp=ts),
        metadata=md(u, A)))
    grpc_case("MarkAsRead", lambda u: tstub.MarkAsRead(
        chat_pb2.MarkAsReadRequest(conversation_id=conv_b), metadata=md(u, A)))
    grpc_case("MarkAsRead up_to_seq", lambda u: tstub.MarkAsRead(
        chat_pb2.MarkAsReadRequest(conversation_id=conv_b, up_to_seq=3), metadata=md(u, A)))
    grpc_case("GetConversations page_token", lambda u: tstub.GetConversations(
        chat_pb2.GetConversationsRequest(page_token=world["conversations_token"]),
        metadata=md(u, A)))
    grpc_case("GetConversations", lambda u: tstub.GetConversations(
        chat_pb2.GetConversationsRequest(limit=100), metadata=md(u, A)))
    grpc_case("SearchMessages all conversations", lambda u: tstub.SearchMessages(
        chat_pb2.SearchMessagesRequest(query="b0 OR b1 OR b2 OR b3 OR b4"), metadata=md(u, A)))
    grpc_case("SearchMessages conversation_id", lambda u: tstub.SearchMessages(
        chat_pb2.SearchMessagesRequest(query="b0", conversation_id=conv_b), metadata=md(u, A)))
    grpc_case("SearchMessages page_token", lambda u: tstub.SearchMessages(
        chat_pb2.SearchMessagesRequest(query="b0 OR b1", limit=1,
                                       page_token=world["search_token"]), metadata=md(u, A)))
    grpc_case("CreateConversation with B's members", lambda u: tstub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob", "carol"], title="b-only"),
        metadata=md(u, A)))
    for which in ("attachment", "upload"):
        for thumbnail in (False, True):
            grpc_case(f"GetAttachmentUrl B's {which} thumbnail={thumbnail}",
                      lambda u, w=which, t=thumbnail: tstub.GetAttachmentUrl(
                          chat_pb2.GetAttachmentUrlRequest(attachment_id=world[w], thumbnail=t),
                          metadata=md(u, A)))
    grpc_case("CreateUpload in B's conversation", lambda u: tstub.CreateUpload(
        chat_pb2.CreateUploadRequest(conversation_id=conv_b, filename="a.pdf",
                                     content_type="application/pdf", size_bytes=5),
        metadata=md(u, A)))
    grpc_case("SendMessage attachment_ids B's upload", lambda u: tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=own_a.id, content="x",
                                    idempotency_key=uuid.uuid4().hex,
                                    attachment_ids=[world["upload"]]), metadata=md(u, A)))
    grpc_case("SendMessage attachment_ids B's attachment", lambda u: tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=own_a.id, content="x",
                                    idempotency_key=uuid.uuid4().hex,
                                    attachment_ids=[world["attachment"]]), metadata=md(u, A)))
    grpc_case("CreateConversation direct with B's member", lambda u: tstub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob"]), metadata=md(u, A)))

    # The changes to a conversation and its messages, with B's ids (and B's message in A's own
    # conversation): nothing changes for B, nothing of B's is named.
    b_msg = world["sent"][0].id
    grpc_case("AddMembers", lambda u: tstub.AddMembers(
        chat_pb2.AddMembersRequest(conversation_id=conv_b, member_ids=["mallory"]),
        metadata=md(u, A)))
    grpc_case("RemoveMember", lambda u: tstub.RemoveMember(
        chat_pb2.RemoveMemberRequest(conversation_id=conv_b, user_id="bob"), metadata=md(u, A)))
    grpc_case("SetMemberRole", lambda u: tstub.SetMemberRole(
        chat_pb2.SetMemberRoleRequest(conversation_id=conv_b, user_id="bob", role="admin"),
        metadata=md(u, A)))
    grpc_case("UpdateConversation", lambda u: tstub.UpdateConversation(
        chat_pb2.UpdateConversationRequest(conversation_id=conv_b, title="hijacked"),
        metadata=md(u, A)))
    grpc_case("EditMessage", lambda u: tstub.EditMessage(
        chat_pb2.EditMessageRequest(conversation_id=conv_b, message_id=b_msg, content="x"),
        metadata=md(u, A)))
    grpc_case("EditMessage B's message in A's conversation", lambda u: tstub.EditMessage(
        chat_pb2.EditMessageRequest(conversation_id=own_a.id, message_id=b_msg, content="x"),
        metadata=md(u, A)))
    grpc_case("DeleteMessage", lambda u: tstub.DeleteMessage(
        chat_pb2.DeleteMessageRequest(conversation_id=conv_b, message_id=b_msg),
        metadata=md(u, A)))
    grpc_case("DeleteMessage B's message in A's conversation", lambda u: tstub.DeleteMessage(
        chat_pb2.DeleteMessageRequest(conversation_id=own_a.id, message_id=b_msg),
        metadata=md(u, A)))
    grpc_case("AddReaction", lambda u: tstub.AddReaction(
        chat_pb2.AddReactionRequest(conversation_id=conv_b, message_id=b_msg, emoji="👍"),
        metadata=md(u, A)))
    grpc_case("RemoveReaction", lambda u: tstub.RemoveReaction(
        chat_pb2.RemoveReactionRequest(conversation_id=conv_b, message_id=b_msg,
                                       emoji="👍"), metadata=md(u, A)))

    # HTTP: the same calls through the gateway's routes.
    base = f"http://127.0.0.1:{tenant_api.http_port}"
    session = aiohttp.ClientSession()

    def http_case(name: str, method: str, path: str, body: Any = None,
                  params: dict[str, str] | None = None) -> None:
        async def run(user: str) -> tuple[str, Any]:
            headers = {"Authorization": md(user, A)[0][1]}
            async with session.request(method, base + path, json=body, params=params,
                                       headers=headers) as resp:
                payload = await resp.json()
                return ("OK" if resp.status == 200 else
                        {404: "NOT_FOUND", 400: "INVALID_ARGUMENT"}.get(resp.status,
                                                                        str(resp.status))), payload
        cases.append((f"http {method} {name}", run))

    msgs = f"/v1/conversations/{conv_b}/messages"
    http_case("messages", "GET", msgs)
    http_case("messages page_token", "GET", msgs, params={"page_token": world["messages_token"]})
    http_case("messages ascending page_token", "GET", msgs,
              params={"page_token": world["ascending_token"]})
    http_case("messages after_seq", "GET", msgs, params={"after_seq": "0"})
    http_case("messages before_timestamp", "GET", msgs,
              params={"before_timestamp": ts.ToJsonString()})
    http_case("send", "POST", "/v1/messages",
              {"conversation_id": conv_b, "content": "x", "idempotency_key": uuid.uuid4().hex})
    http_case("read", "POST", f"/v1/conversations/{conv_b}/read", {})
    http_case("read up_to_seq", "POST", f"/v1/conversations/{conv_b}/read", {"up_to_seq": 2})
    http_case("conversations", "GET", "/v1/conversations", params={"limit": "100"})
    http_case("conversations page_token", "GET", "/v1/conversations",
              params={"page_token": world["conversations_token"]})
    http_case("search", "GET", "/v1/messages:search", params={"query": "b0 OR b1 OR b2"})
    http_case("search conversation_id", "GET", "/v1/messages:search",
              params={"query": "b0", "conversation_id": conv_b})
    http_case("create with B's members", "POST", "/v1/conversations",
              {"member_ids": ["bob", "carol"], "title": "b-only"})
    http_case("upload", "POST", f"/v1/conversations/{conv_b}/uploads",
              {"filename": "a.pdf", "content_type": "application/pdf", "size_bytes": "5"})
    for which in ("attachment", "upload"):
        http_case(f"attachment url of B's {which}", "GET", f"/v1/attachments/{world[which]}/url")

    http_case("add members", "POST", f"/v1/conversations/{conv_b}/members",
              {"member_ids": ["mallory"]})
    http_case("remove member", "DELETE", f"/v1/conversations/{conv_b}/members/bob")
    http_case("update conversation", "PATCH", f"/v1/conversations/{conv_b}",
              {"title": "hijacked"})
    http_case("edit message", "PATCH", f"{msgs}/{b_msg}", {"content": "x"})
    http_case("delete message", "DELETE", f"{msgs}/{b_msg}")
    http_case("add reaction", "POST", f"{msgs}/{b_msg}/reactions", {"emoji": "\U0001f44d"})

    b_ids = {conv_b, *(c for c, _, _ in before_b[0])}
    b_message_ids = {m.id for m in world["sent"]} | {world["attachment"], world["upload"], B}
    # What a made-up upload id gets: attaching B's must answer the same, naming nothing.
    made_up = await code_of(tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=own_a.id, content="x",
                                    idempotency_key=uuid.uuid4().hex,
                                    attachment_ids=[str(uuid.uuid4())]), metadata=md("dave", A)))
    assert made_up[0] == grpc.StatusCode.FAILED_PRECONDITION
    leaks: list[str] = []
    run_count = 0
    try:
        # alice, bob and carol of A share their ids with B's members; dave is only in A.
        for user in ("alice", "bob", "carol", "dave"):
            for name, run in cases:
                run_count += 1
                code, value = await run(user)
                text = str(value)
                if "attachment_ids" in name and code == "FAILED_PRECONDITION" and \
                        value.details() == made_up[1].details():
                    continue
                if code not in ("OK", "NOT_FOUND"):
                    leaks.append(f"{user} {name}: {code} {text[:200]}")
                elif any(x in text for x in b_ids | b_message_ids):
                    leaks.append(f"{user} {name}: the answer names B's data: {text[:300]}")
    finally:
        await session.close()
    print(f"cross-tenant matrix: {run_count} cases run, {len(leaks)} leaks")
    assert run_count == 4 * 55
    assert not leaks, "\n".join(leaks)
    # A's calls changed nothing B sees: no message, no read position, no conversation.
    assert await b_snapshot(tstub) == before_b
    rows = await db_rows(db_source, "SELECT DISTINCT tenant_id FROM messages"
                                    " WHERE conversation_id = %s", conv_b)
    assert rows == [(B,)]
    # And A's own conversation is still A's alone.
    listed = await tstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                          metadata=md("dave", A))
    assert own_a.id in [c.conversation.id for c in listed.conversations]


# --- row-level security underneath ----------------------------------------------------------

async def test_an_unfiltered_select_through_the_service_connection_sees_only_its_tenant(
        tstub: Any, tenant_api: Any) -> None:
    for tenant in (A, B):
        conv = await conversation(tstub, tenant, "alice", ["bob"], title=tenant)
        for i in range(3):
            await send(tstub, tenant, "alice", conv.id, f"{tenant}-{i}")
    db = tenant_api.db  # the API's own pool: its role, its session settings
    for table in ("messages", "conversations", "conversation_members", "outbox"):
        rows = await db.fetchall("test.unfiltered", f"SELECT * FROM {table}", tenant=A)
        assert rows, table
        tenants = await db.fetchall("test.unfiltered", f"SELECT DISTINCT tenant_id FROM {table}",
                                    tenant=A)
        assert tenants == [(A,)], table
    contents = await db.fetchall("test.unfiltered", "SELECT content FROM messages", tenant=A)
    assert sorted(r[0] for r in contents) == [f"{A}-{i}" for i in range(3)]
    # Without a tenant the service's connection sees nothing at all.
    assert await db.fetchall("test.unfiltered", "SELECT * FROM messages") == []
    # It is not the owner, not a superuser and cannot bypass row-level security.
    role = await db.fetchone("test.role", "SELECT current_user, r.rolsuper, r.rolbypassrls,"
                             " (SELECT tableowner FROM pg_tables WHERE tablename = 'messages')"
                             " FROM pg_roles r WHERE r.rolname = current_user")
    assert role is not None
    assert role[0] == "chat_app" and role[1] is False and role[2] is False and role[3] != "chat_app"
    # Nor can it write a row of another tenant from tenant A's context.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await db.fetchone("test.write", "UPDATE conversations SET tenant_id = %(b)s"
                          " WHERE tenant_id = %(a)s", {"a": A, "b": B}, tenant=A)
    # Nor turn row-level security off for itself.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await db.fetchone("test.off", "ALTER TABLE messages DISABLE ROW LEVEL SECURITY")


async def test_the_relay_role_reads_every_tenants_outbox_and_nothing_else(
        tstub: Any, db_source: str) -> None:
    for tenant in (A, B):
        conv = await conversation(tstub, tenant, "alice", ["bob"])
        await send(tstub, tenant, "alice", conv.id, "hi")
    async with await psycopg.AsyncConnection.connect(
            db_source, autocommit=True, options="-c role=chat_relay") as conn:
        rows = await (await conn.execute(
            "SELECT DISTINCT tenant_id FROM outbox ORDER BY 1")).fetchall()
        assert rows == [(A,), (B,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM messages")


# --- the registry: unknown, disabled, automatic, required ------------------------------------

async def test_unknown_tenant_is_permission_denied(tstub: Any) -> None:
    code, err = await code_of(tstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                     metadata=md("alice", "initech")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(err).reason == "TENANT_UNKNOWN"


async def test_unknown_tenant_is_registered_with_auto_create(
        api_settings_factory: Callable[..., Any], db_source: str) -> None:
    from chat_api.app import build_app

    app = build_app(api_settings_factory(tenant_auto_create=True))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            conv = await conversation(stub, "initech", "alice", ["bob"])
            assert conv.id
    finally:
        await app.stop(grace=1.0)
    rows = await db_rows(db_source, "SELECT status FROM tenants WHERE id = 'initech'")
    assert rows == [("active",)]


async def test_require_tenant_refuses_tokens_without_the_claim(
        api_settings_factory: Callable[..., Any], db_source: str) -> None:
    from chat_api.app import build_app

    app = build_app(api_settings_factory(require_tenant=True))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            code, _ = await code_of(stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                          metadata=md("alice", None)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await app.stop(grace=1.0)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def test_disable_and_enable_a_tenant(tstub: Any, db_source: str) -> None:
    conv = await conversation(tstub, A, "alice", ["bob"])
    other = await conversation(tstub, B, "alice", ["bob"])

    async def a_code() -> grpc.StatusCode:
        code, _ = await code_of(tstub.GetMessages(
            chat_pb2.GetMessagesRequest(conversation_id=conv.id), metadata=md("bob", A)))
        return code

    async def denied() -> bool:
        return await a_code() == grpc.StatusCode.PERMISSION_DENIED

    async def allowed() -> bool:
        return await a_code() == grpc.StatusCode.OK

    with psycopg.connect(db_source, autocommit=True) as c:
        c.execute("UPDATE tenants SET status = 'disabled' WHERE id = %s", (A,))
    await until(denied, 5, "a disabled tenant's calls answer PERMISSION_DENIED")
    code, err = await code_of(tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv.id, content="x",
                                    idempotency_key="d1"), metadata=md("alice", A)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(err).reason == "TENANT_DISABLED"
    # The other tenant is untouched.
    await send(tstub, B, "alice", other.id, "still here")
    with psycopg.connect(db_source, autocommit=True) as c:
        c.execute("UPDATE tenants SET status = 'active' WHERE id = %s", (A,))
    await until(allowed, 5, "an enabled tenant's calls work again")


# --- per-tenant limits ------------------------------------------------------------------------

async def test_per_tenant_limits_from_the_registry(tstub: Any, db_source: str) -> None:
    with psycopg.connect(db_source, autocommit=True) as c:
        c.execute("""UPDATE tenants SET limits = '{"max_members": 3, "max_message_length": 5}'
                     WHERE id = %s""", (A,))
    await asyncio.sleep(0.3)  # the API remembers registry entries for 0.2 s here
    code, err = await code_of(tstub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["b", "c", "d"]), metadata=md("a", A)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 3 members" in err.details()
    conv = await conversation(tstub, A, "a", ["b", "c"])  # three with the creator: allowed
    code, err = await code_of(tstub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv.id, content="123456",
                                    idempotency_key="l1"), metadata=md("a", A)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "content: at most 5 characters" in err.details()
    assert (await send(tstub, A, "a", conv.id, "12345")).content == "12345"
    # Tenant B keeps the settings' limits.
    conv_b = await conversation(tstub, B, "a", ["b", "c", "d", "e"])
    assert (await send(tstub, B, "a", conv_b.id, "123456")).content == "123456"


def test_chat_error_codes_are_transport_free() -> None:
    # PermissionDenied is a domain error with its own stable code, mapped per transport.
    from chat_api.transport.grpc_errors import GRPC_CODES
    from chat_api.transport.http_errors import HTTP_STATUS
    from chat_shared.errors import PermissionDenied

    exc: ChatError = PermissionDenied("tenant is disabled")
    assert GRPC_CODES[exc.code] == grpc.StatusCode.PERMISSION_DENIED
    assert HTTP_STATUS[exc.code] == 403


async def test_a_sessions_tenant_never_reaches_work_for_another_or_for_none(
    db_source: str,
) -> None:
    # One pooled connection, so every unit of work below runs on the same session, which keeps
    # the last tenant it served (so that tenant's next statement costs nothing extra).
    from chat_shared.config import DatabaseSettings
    from chat_shared.db import Database

    db = Database(DatabaseSettings(_env_file=None, db_source=db_source, db_pool_size=1,
                                   db_max_overflow=0, database_role="chat_app"),
                  application_name="test-tenant-setting")
    await db.open(wait=True)
    try:
        setting = "SELECT coalesce(current_setting('app.tenant_id', true), '')"
        backend = "SELECT pg_backend_pid()"
        pid = await db.fetchone("t.pid", backend, tenant=A)
        assert await db.fetchone("t.in", setting, tenant=A) == (A,)
        assert await db.fetchone("t.other", setting, tenant=B) == (B,)
        assert await db.fetchone("t.none", setting) == ("",)
        assert await db.fetchone("t.again", setting, tenant=A) == (A,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await db.fetchone("t.fail", "SELECT 1 / 0", tenant=B)
        assert await db.fetchone("t.after_failure", setting) == ("",)
        assert await db.fetchone("t.after_failure_a", setting, tenant=A) == (A,)
        async with db.connection("t.conn") as conn:
            assert await (await conn.execute(setting)).fetchone() == ("",)
        await db.fetchone("t.b", setting, tenant=B)
        async with db.transaction("t.txn") as conn:
            assert await (await conn.execute(setting)).fetchone() == ("",)
        # A pipelined transaction names its tenant for the session (it commits the setting),
        # and the next unit of work for none or another tenant knows it.
        async with db.tenant_transaction("t.ptx", A) as conn:
            assert await (await conn.execute(setting)).fetchone() == (A,)
        assert await db.fetchone("t.after_ptx", setting) == ("",)
        async with db.tenant_transaction("t.ptx_b", B) as conn:
            assert await (await conn.execute(setting)).fetchone() == (B,)
        async with db.tenant_transaction("t.ptx_b_again", B) as conn:
            assert await (await conn.execute(setting)).fetchone() == (B,)
        assert await db.fetchone("t.after_ptx_a", setting, tenant=A) == (A,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with db.tenant_transaction("t.ptx_fail", B) as conn:
                await (await conn.execute("SELECT 1 / 0")).fetchone()
        assert await db.fetchone("t.after_ptx_failure", setting) == ("",)
        # The one session served all of it.
        assert await db.fetchone("t.pid2", backend, tenant=B) == pid
        assert db.stats().get("pool_size") == 1
    finally:
        await db.close()


async def test_behind_a_transaction_pooler_the_tenant_lives_in_each_statements_transaction(
    db_source: str, pgbouncer: Any,
) -> None:
    """Through a real PgBouncer in transaction mode, as the pooled login (docs/pgbouncer.md)."""
    from chat_shared.config import DatabaseSettings
    from chat_shared.db import Database

    db = Database(DatabaseSettings(_env_file=None,
                                   db_source=pgbouncer.through(db_source, "chat_app_pooled"),
                                   db_pool_size=1, db_max_overflow=0, database_role="chat_app",
                                   db_transaction_pooler=True),
                  application_name="test-tenant-pooler")
    await db.open(wait=True)
    try:
        setting = "SELECT coalesce(current_setting('app.tenant_id', true), '')"
        assert await db.fetchone("t.in", setting, tenant=A) == (A,)
        # Nothing stays on the session for the next client of the server connection (the
        # pool's own checkout: Database's would clear a remembered tenant first).
        async with db.pool.connection() as conn:
            assert await (await conn.execute(setting)).fetchone() == ("",)
        assert await db.fetchone("t.again", setting, tenant=A) == (A,)
        assert await db.fetchone("t.other", setting, tenant=B) == (B,)
        assert db.stats().get("pool_size") == 1
    finally:
        await db.close()
