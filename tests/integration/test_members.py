"""AddMembers, RemoveMember, SetMemberRole and UpdateConversation over gRPC against real
PostgreSQL: roles, errors, events at gapless positions, and member_ids kept equal to the
member rows."""

from __future__ import annotations

import asyncio

import grpc
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, get_messages, rpc_error, send


def add(stub, caller: str, cid: str, users: list[str]):
    return stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=cid, member_ids=users),
                           metadata=auth(caller))


def remove(stub, caller: str, cid: str, user: str):
    return stub.RemoveMember(chat_pb2.RemoveMemberRequest(conversation_id=cid, user_id=user),
                             metadata=auth(caller))


def set_role(stub, caller: str, cid: str, user: str, role: str):
    return stub.SetMemberRole(chat_pb2.SetMemberRoleRequest(conversation_id=cid, user_id=user,
                                                            role=role), metadata=auth(caller))


async def copies_agree(db_source: str) -> None:
    """conversations.member_ids equals the member rows of every conversation."""
    rows = await db_rows(db_source, """
        SELECT c.id, c.member_ids,
               coalesce((SELECT array_agg(m.user_id ORDER BY m.user_id COLLATE "C")
                           FROM conversation_members m
                          WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id),
                        '{}')
        FROM conversations c""")
    for cid, copy, truth in rows:
        assert sorted(copy) == list(truth), cid


async def positions(db_source: str, cid: str) -> list[tuple[int, str]]:
    return [(int(p), t) for p, t in await db_rows(
        db_source, "SELECT seq, event_type FROM outbox WHERE conversation_id = %s"
                   " AND event_type <> 'conversation.read' ORDER BY id", cid)]


async def positions_of(stub, user: str, cid: str) -> int:
    listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                         metadata=auth(user))
    return next(s.conversation.last_pos for s in listed.conversations
                if s.conversation.id == cid)


async def test_the_creator_is_owner_and_adds_members_who_see_history_and_get_an_event(
        stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="team")
    assert conv.role == "owner"
    await send(stub, "alice", conv.id, "before carol")
    resp = await add(stub, "alice", conv.id, ["carol", "dave", "bob"])
    assert list(resp.conversation.member_ids) == ["alice", "bob", "carol", "dave"]
    assert resp.conversation.last_pos == 3
    page = await get_messages(stub, "carol", conv.id)
    assert [m.content for m in page.messages] == ["before carol"]
    listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                         metadata=auth("carol"))
    [summary] = listed.conversations
    assert summary.conversation.role == "member" and summary.unread_count == 0
    assert await positions(db_source, conv.id) == [
        (1, "message.created"), (2, "member.added"), (3, "member.added")]
    [(recipients,)] = await db_rows(db_source, "SELECT recipients FROM outbox WHERE seq = 3"
                                               " AND conversation_id = %s", conv.id)
    assert sorted(recipients) == ["alice", "bob", "carol", "dave"]
    await copies_agree(db_source)


async def test_a_conversation_that_hides_history_shows_new_members_only_what_follows(
        stub) -> None:
    resp = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="private", history_visible_to_new_members=False),
        metadata=auth("alice"))
    cid = resp.conversation.id
    assert not resp.conversation.history_visible_to_new_members
    await send(stub, "alice", cid, "old")
    await add(stub, "alice", cid, ["carol"])
    await send(stub, "bob", cid, "new")
    assert [m.content for m in (await get_messages(stub, "carol", cid)).messages] == ["new"]
    assert [m.content for m in (await get_messages(stub, "bob", cid)).messages] == ["new", "old"]


async def test_a_removed_member_gets_not_found_at_once_and_is_out_of_the_events(
        stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="t")
    await remove(stub, "alice", conv.id, "bob")
    for call in (get_messages(stub, "bob", conv.id), send(stub, "bob", conv.id, "hi"),
                 remove(stub, "bob", conv.id, "bob")):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    [(recipients, payload)] = await db_rows(
        db_source, "SELECT recipients, payload FROM outbox WHERE event_type = 'member.removed'")
    assert sorted(recipients) == ["alice", "bob", "carol"]
    assert payload == {"conversation_id": conv.id, "user_id": "bob", "actor_id": "alice"}
    await send(stub, "carol", conv.id, "after")
    [(after,)] = await db_rows(db_source, "SELECT recipients FROM outbox"
                                          " WHERE event_type = 'message.created'")
    assert sorted(after) == ["alice", "carol"]
    await copies_agree(db_source)


async def test_any_member_leaves_but_only_managers_add_remove_and_promote(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="t")
    for call in (add(stub, "bob", conv.id, ["x"]), remove(stub, "bob", conv.id, "carol"),
                 set_role(stub, "bob", conv.id, "carol", "admin"),
                 stub.UpdateConversation(chat_pb2.UpdateConversationRequest(
                     conversation_id=conv.id, title="no"), metadata=auth("bob"))):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    await set_role(stub, "alice", conv.id, "bob", "admin")
    await add(stub, "bob", conv.id, ["dave"])
    assert (await rpc_error(remove(stub, "bob", conv.id, "alice"))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    assert (await rpc_error(set_role(stub, "bob", conv.id, "alice", "member"))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    before = await positions_of(stub, "bob", conv.id)
    await remove(stub, "bob", conv.id, "nobody")  # not a member: nothing to do, no event
    assert await positions_of(stub, "bob", conv.id) == before
    await remove(stub, "carol", conv.id, "carol")  # leaving
    listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                         metadata=auth("bob"))
    assert listed.conversations[0].conversation.role == "admin"
    assert list(listed.conversations[0].conversation.member_ids) == ["alice", "bob", "dave"]


async def test_a_direct_conversation_takes_no_members_and_no_settings(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    assert (await rpc_error(add(stub, "alice", conv.id, ["carol"]))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    assert (await rpc_error(remove(stub, "alice", conv.id, "bob"))).code() == \
        grpc.StatusCode.PERMISSION_DENIED


async def test_update_conversation_changes_the_title_once_and_names_bad_fields(
        stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="old")
    req = chat_pb2.UpdateConversationRequest(conversation_id=conv.id, title="  new  ")
    resp = await stub.UpdateConversation(req, metadata=auth("alice"))
    assert resp.conversation.title == "new" and resp.conversation.last_pos == 1
    again = await stub.UpdateConversation(req, metadata=auth("alice"))
    assert again.conversation.last_pos == 1  # nothing changed: no event
    [(payload,)] = await db_rows(db_source, "SELECT payload FROM outbox"
                                            " WHERE event_type = 'conversation.updated'")
    assert payload == {"conversation_id": conv.id, "title": "new",
                       "history_visible_to_new_members": True, "actor_id": "alice"}
    bad = await rpc_error(stub.UpdateConversation(chat_pb2.UpdateConversationRequest(
        conversation_id=conv.id, title="a\x01"), metadata=auth("alice")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("title")
    missing = await rpc_error(stub.UpdateConversation(chat_pb2.UpdateConversationRequest(
        conversation_id=conv.id, title="x"), metadata=auth("mallory")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    bad_role = await rpc_error(set_role(stub, "alice", conv.id, "bob", "owner"))
    assert bad_role.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_role.details().startswith("role")


async def test_concurrent_changes_keep_positions_gapless_and_the_copies_equal(
        stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="busy")
    calls = []
    for i in range(12):
        calls.append(add(stub, "alice", conv.id, [f"u{i}"]))
        calls.append(send(stub, "bob", conv.id, f"m{i}"))
        if i % 3 == 0:
            calls.append(remove(stub, "alice", conv.id, f"u{i}"))
    await asyncio.gather(*calls, return_exceptions=True)
    got = [p for p, _ in await positions(db_source, conv.id)]
    assert got == list(range(1, len(got) + 1))
    [(last_pos,)] = await db_rows(db_source, "SELECT last_pos FROM conversations WHERE id = %s",
                                  conv.id)
    assert last_pos == len(got)
    logged = await db_rows(db_source, "SELECT pos FROM conversation_changes"
                                      " WHERE conversation_id = %s ORDER BY pos", conv.id)
    assert [p for (p,) in logged] == got
    await copies_agree(db_source)
