"""Every ordered change reaches sockets live in pos order, and a resume from any position
rebuilds exactly the state the RPCs show: real chat-api, relay and gateway processes."""

from __future__ import annotations

import pathlib

import aiohttp
import pytest
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import create_conversation, send
from tests.support.client_state import ConversationView, server_view
from tests.support.ws_stack import (
    ORDERED,
    Stack,
    base_env,
    next_frame,
    ordered_frames,
    running_stack,
    ws_connect,
)


@pytest.fixture
async def stack(db_source: str, redis_addr: str, tmp_path: pathlib.Path):
    async with running_stack(base_env(db_source, redis_addr), tmp_path) as stack:
        yield stack


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def every_kind_of_change(stub, cid: str) -> None:
    """Nine ordered changes of every type after the conversation's first message."""
    a = auth("alice")
    first = await send(stub, "alice", cid, "first")
    await stub.EditMessage(chat_pb2.EditMessageRequest(conversation_id=cid, message_id=first.id,
                                                       content="first, edited"), metadata=a)
    await stub.AddReaction(chat_pb2.AddReactionRequest(conversation_id=cid, message_id=first.id,
                                                       emoji="🎉"), metadata=auth("bob"))
    await stub.AddReaction(chat_pb2.AddReactionRequest(conversation_id=cid, message_id=first.id,
                                                       emoji="👍"), metadata=a)
    await stub.RemoveReaction(chat_pb2.RemoveReactionRequest(
        conversation_id=cid, message_id=first.id, emoji="👍"), metadata=a)
    gone = await send(stub, "bob", cid, "soon gone")
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(conversation_id=cid,
                                                           message_id=gone.id), metadata=a)
    await stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=cid, member_ids=["dave"]),
                          metadata=a)
    await stub.SetMemberRole(chat_pb2.SetMemberRoleRequest(conversation_id=cid, user_id="bob",
                                                           role="admin"), metadata=a)
    await stub.UpdateConversation(chat_pb2.UpdateConversationRequest(conversation_id=cid,
                                                                      title="renamed"),
                                  metadata=a)
    await stub.RemoveMember(chat_pb2.RemoveMemberRequest(conversation_id=cid, user_id="carol"),
                            metadata=auth("bob"))


async def test_every_change_reaches_members_live_in_order_and_a_removed_member_gets_no_more(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    conv = await create_conversation(stack.stub, "alice", ["bob", "carol"], "all of it")
    view = ConversationView(conv.title, {"alice": "owner", "bob": "member", "carol": "member"})
    sockets = {u: await ws_connect(session, stack.gateway, u) for u in ("alice", "bob", "carol")}
    await every_kind_of_change(stack.stub, conv.id)
    frames = await ordered_frames(sockets["alice"], 11)
    assert [f["pos"] for f in frames] == list(range(1, 12))
    assert [f["type"] for f in frames] == [
        "message.created", "message.updated", "reaction.added", "reaction.added",
        "reaction.removed", "message.created", "message.deleted", "member.added",
        "member.role_changed", "conversation.updated", "member.removed"]
    for frame in frames:
        view.apply(frame)
    assert view.as_seen_by("alice") == await server_view(stack.stub, "alice", conv.id)
    assert frames[6]["message"]["content"] == "" and frames[6]["message"]["deleted"]
    assert await ordered_frames(sockets["bob"], 11) == frames
    # carol gets her own removal, then nothing of the conversation.
    assert [f["type"] for f in await ordered_frames(sockets["carol"], 11)][-1] == \
        "member.removed"
    await send(stack.stub, "alice", conv.id, "after carol left")
    [after] = await ordered_frames(sockets["bob"], 1)
    assert after["pos"] == 12
    await sockets["carol"].send_json({"type": "ping"})
    assert await next_frame(sockets["carol"]) == {"type": "pong"}
    # ... and a resume of it is refused like any conversation that is not hers.
    carol = await ws_connect(session, stack.gateway, "carol", positions={conv.id: 11})
    frame = await next_frame(carol)
    assert (frame["type"], frame["code"], frame["conversation_id"]) == \
        ("error", "not_found", conv.id)


async def test_a_resume_from_any_position_ends_in_the_servers_state(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    # One stack for every position (each in a conversation of its own): starting the API,
    # relay and gateway once per position cost more than the resumes themselves.
    for position in (0, 1, 4, 6, 9):
        await _resume_from(stack, session, position)


async def _resume_from(stack: Stack, session: aiohttp.ClientSession, position: int) -> None:
    conv = await create_conversation(stack.stub, "alice", ["bob", "carol"], f"resume {position}")
    watcher = await ws_connect(session, stack.gateway, "bob")
    await every_kind_of_change(stack.stub, conv.id)
    live = await ordered_frames(watcher, 11)
    await watcher.close()
    # The client saw the first ``position`` changes, then reconnects and resumes.
    view = ConversationView(conv.title, {"alice": "owner", "bob": "member", "carol": "member"})
    for frame in live[:position]:
        view.apply(frame)
    ws = await ws_connect(session, stack.gateway, "bob", positions={conv.id: position})
    for _ in range(40):
        frame = await next_frame(ws)
        if frame["type"] == "resumed":
            break
        assert frame["event_id"] is None and frame["type"] in ORDERED
        view.apply(frame)
    assert frame == {"type": "resumed", "conversation_id": conv.id, "pos": 11, "seq": 11}, \
        f"resuming from {position}"
    assert view.as_seen_by("bob") == await server_view(stack.stub, "bob", conv.id), \
        f"resuming from {position}"
    # What the replay says about the deleted message is its tombstone, never its content.
    assert "soon gone" not in str(view.messages)
    await ws.close()


async def test_a_new_member_of_a_conversation_hiding_history_resumes_only_what_follows(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    conv = (await stack.stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="private", history_visible_to_new_members=False),
        metadata=auth("alice"))).conversation
    old = await send(stack.stub, "alice", conv.id, "before carol")
    await stack.stub.AddReaction(chat_pb2.AddReactionRequest(
        conversation_id=conv.id, message_id=old.id, emoji="👀"), metadata=auth("bob"))
    await stack.stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=conv.id,
                                                           member_ids=["carol"]),
                                metadata=auth("alice"))
    await send(stack.stub, "bob", conv.id, "after carol")
    ws = await ws_connect(session, stack.gateway, "carol", positions={conv.id: 0})
    frames = []
    for _ in range(10):
        frame = await next_frame(ws)
        frames.append(frame)
        if frame["type"] == "resumed":
            break
    assert [(f["type"], f["pos"]) for f in frames] == [
        ("member.added", 3), ("message.created", 4), ("resumed", 4)]
    assert "before carol" not in str(frames) and "👀" not in str(frames)
