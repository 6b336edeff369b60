"""CreateConversation and GetConversations over gRPC against real PostgreSQL.

The direct-conversation rule (one other member, no title -> the same conversation every time,
from either side, also under concurrency) is enforced by a unique key in the database; the
listing is ordered by last activity and paged with opaque tokens.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import create_conversation, error_info, send


async def invalid_field(call) -> str:
    """Awaits a call that must fail with INVALID_ARGUMENT; returns the field it names."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None and info.reason == "INVALID_FIELD"
    assert exc.value.details().startswith(info.metadata["field"] + ":")
    return info.metadata["field"]


async def list_conversations(stub, user: str, limit: int = 0, page_token: str = ""):
    return await stub.GetConversations(
        chat_pb2.GetConversationsRequest(limit=limit, page_token=page_token), metadata=auth(user))


async def conversation_rows(db_source: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_source) as conn:
        cur = await conn.execute("SELECT count(*) FROM conversations")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_create_adds_the_caller_and_sorts_members(stub) -> None:
    conv = await create_conversation(stub, "mallory", ["zed", "bob"], title="Project X")
    assert list(conv.member_ids) == ["bob", "mallory", "zed"]
    assert conv.title == "Project X"
    assert str(uuid.UUID(conv.id)) == conv.id
    assert conv.last_seq == 0 and not conv.HasField("last_message_at")
    assert conv.HasField("created_at")


async def test_member_ids_read_back_everywhere_as_created_and_as_the_member_rows(
    stub, db_source: str
) -> None:
    # The list is stored twice (conversations.member_ids for reads, conversation_members for
    # membership checks); both must say the same, in the same code-point order everywhere.
    conv = await create_conversation(stub, "Zoe", ["bob", "Al", "_x"], title="copies")
    assert list(conv.member_ids) == ["Al", "Zoe", "_x", "bob"]
    listed = (await list_conversations(stub, "bob")).conversations[0].conversation
    assert listed.id == conv.id and list(listed.member_ids) == list(conv.member_ids)
    async with await psycopg.AsyncConnection.connect(db_source) as conn:
        rows = await (await conn.execute(
            "SELECT user_id FROM conversation_members WHERE conversation_id = %s",
            (conv.id,))).fetchall()
    assert sorted(r[0] for r in rows) == list(conv.member_ids)
    direct = await create_conversation(stub, "bob", ["Al"])
    assert list((await create_conversation(stub, "Al", ["bob"])).member_ids) == ["Al", "bob"]
    assert list(direct.member_ids) == ["Al", "bob"]


async def test_create_refuses_duplicate_members(stub) -> None:
    # chat.proto declares member_ids unique: a repeated id is a client's mistake, said so.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await create_conversation(stub, "alice", ["bob", "bob", "alice"], title="dupes")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == "member_ids: must not list the same value twice"


async def test_listing_the_caller_alone_makes_a_conversation_of_one(stub) -> None:
    conv = await create_conversation(stub, "alice", ["alice"], title="notes")
    assert list(conv.member_ids) == ["alice"]


async def test_title_is_trimmed(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="  Lunch  ")
    assert conv.title == "Lunch"


async def test_direct_conversation_is_returned_again(stub, db_source: str) -> None:
    first = await create_conversation(stub, "alice", ["bob"])
    again = await create_conversation(stub, "alice", ["bob"])
    assert again.id == first.id
    assert list(again.member_ids) == ["alice", "bob"]
    assert await conversation_rows(db_source) == 1


async def test_direct_conversation_from_the_other_side_is_the_same(stub) -> None:
    first = await create_conversation(stub, "alice", ["bob"])
    other_side = await create_conversation(stub, "bob", ["alice"])
    assert other_side.id == first.id


async def test_direct_conversation_returned_again_keeps_its_messages(stub) -> None:
    first = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", first.id, "hello")
    again = await create_conversation(stub, "bob", ["alice"])
    assert (again.id, again.last_seq) == (first.id, 1)
    assert again.HasField("last_message_at")


async def test_concurrent_direct_creations_make_exactly_one_conversation(
    stub, db_source: str
) -> None:
    calls = [create_conversation(stub, *(("alice", ["bob"]) if i % 2 else ("bob", ["alice"])))
             for i in range(10)]
    results = await asyncio.gather(*calls)
    assert len({c.id for c in results}) == 1
    assert all(list(c.member_ids) == ["alice", "bob"] for c in results)
    assert await conversation_rows(db_source) == 1


async def test_titled_conversation_with_the_same_two_users_is_new(stub) -> None:
    direct = await create_conversation(stub, "alice", ["bob"])
    titled = await create_conversation(stub, "alice", ["bob"], title="Planning")
    titled_again = await create_conversation(stub, "alice", ["bob"], title="Planning")
    assert len({direct.id, titled.id, titled_again.id}) == 3


async def test_group_of_three_is_never_deduplicated(stub) -> None:
    a = await create_conversation(stub, "alice", ["bob", "carol"])
    b = await create_conversation(stub, "alice", ["bob", "carol"])
    assert a.id != b.id


@pytest.mark.parametrize(
    ("members", "field"),
    [
        ([""], "member_ids[0]"),
        (["bob", "has space"], "member_ids[1]"),
        (["bob", "carol", "x" * 129], "member_ids[2]"),
        (["tab\there"], "member_ids[0]"),
    ],
)
async def test_bad_member_id_names_its_index(stub, members: list[str], field: str) -> None:
    call = stub.CreateConversation(chat_pb2.CreateConversationRequest(member_ids=members),
                                   metadata=auth("alice"))
    assert await invalid_field(call) == field


async def test_member_id_of_128_characters_is_accepted(stub) -> None:
    conv = await create_conversation(stub, "alice", ["x" * 128])
    assert "x" * 128 in conv.member_ids


async def test_too_long_title_is_invalid(stub) -> None:
    call = stub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob"], title="t" * 201),
        metadata=auth("alice"))
    assert await invalid_field(call) == "title"


async def test_title_with_control_characters_is_invalid(stub) -> None:
    call = stub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob"], title="bell\x07"),
        metadata=auth("alice"))
    assert await invalid_field(call) == "title"


async def test_invalid_request_creates_nothing(stub, db_source: str) -> None:
    call = stub.CreateConversation(chat_pb2.CreateConversationRequest(member_ids=["bob", ""]),
                                   metadata=auth("alice"))
    await invalid_field(call)
    assert await conversation_rows(db_source) == 0


async def test_listing_is_most_recent_activity_first(stub) -> None:
    c1 = await create_conversation(stub, "alice", ["bob"])
    c2 = await create_conversation(stub, "alice", ["carol"])
    c3 = await create_conversation(stub, "alice", ["dave"])
    resp = await list_conversations(stub, "alice")
    assert [s.conversation.id for s in resp.conversations] == [c3.id, c2.id, c1.id]


async def test_sending_into_an_older_conversation_moves_it_to_the_top(stub) -> None:
    c1 = await create_conversation(stub, "alice", ["bob"])
    c2 = await create_conversation(stub, "alice", ["carol"])
    c3 = await create_conversation(stub, "alice", ["dave"])
    await send(stub, "bob", c1.id, "bump")
    resp = await list_conversations(stub, "alice")
    assert [s.conversation.id for s in resp.conversations] == [c1.id, c3.id, c2.id]


async def test_listing_carries_unread_count_and_last_message(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "first")
    last = await send(stub, "alice", conv.id, "second")
    resp = await list_conversations(stub, "bob")
    (summary,) = resp.conversations
    assert (summary.unread_count, summary.last_read_seq) == (2, 0)
    assert summary.last_message.id == last.id
    assert (summary.last_message.content, summary.last_message.seq,
            summary.last_message.sender_id) == ("second", 2, "alice")
    assert summary.conversation.last_seq == 2


async def test_listing_of_a_conversation_without_messages_has_no_last_message(stub) -> None:
    await create_conversation(stub, "alice", ["bob"])
    (summary,) = (await list_conversations(stub, "bob")).conversations
    assert summary.unread_count == 0
    assert not summary.HasField("last_message")


async def test_unread_count_drops_after_mark_as_read(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    for text in ("a", "b", "c"):
        await send(stub, "alice", conv.id, text)
    await stub.MarkAsRead(chat_pb2.MarkAsReadRequest(conversation_id=conv.id, up_to_seq=2),
                          metadata=auth("bob"))
    (summary,) = (await list_conversations(stub, "bob")).conversations
    assert (summary.unread_count, summary.last_read_seq) == (1, 2)


async def test_paging_walks_every_conversation_exactly_once(stub) -> None:
    created = [await create_conversation(stub, "alice", [f"peer{i}"]) for i in range(7)]
    seen: list[str] = []
    token, pages = "", 0
    while pages < 10:  # bounded: 7 conversations at 3 per page need 3 pages
        resp = await list_conversations(stub, "alice", limit=3, page_token=token)
        assert len(resp.conversations) <= 3
        seen += [s.conversation.id for s in resp.conversations]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [c.id for c in reversed(created)]


async def test_exact_page_boundary_ends_with_an_empty_token(stub) -> None:
    for i in range(4):
        await create_conversation(stub, "alice", [f"peer{i}"])
    first = await list_conversations(stub, "alice", limit=2)
    second = await list_conversations(stub, "alice", limit=2, page_token=first.next_page_token)
    assert first.next_page_token != ""
    assert len(second.conversations) == 2 and second.next_page_token == ""


async def test_default_limit_returns_up_to_fifty(stub) -> None:
    for i in range(3):
        await create_conversation(stub, "alice", [f"peer{i}"])
    resp = await list_conversations(stub, "alice", limit=0)
    assert len(resp.conversations) == 3 and resp.next_page_token == ""


@pytest.mark.parametrize("token", ["garbage!", "eyJrIjoibSJ9", "A" * 1000])
async def test_bad_page_token_is_invalid_argument(stub, token: str) -> None:
    await create_conversation(stub, "alice", ["bob"])
    assert await invalid_field(list_conversations(stub, "alice", page_token=token)) == "page_token"


@pytest.mark.parametrize("limit", [-1, 101])
async def test_limit_out_of_range_is_invalid_argument(stub, limit: int) -> None:
    assert await invalid_field(list_conversations(stub, "alice", limit=limit)) == "limit"


async def test_users_see_only_their_own_conversations(stub) -> None:
    ours = await create_conversation(stub, "alice", ["bob"])
    theirs = await create_conversation(stub, "carol", ["dave"])
    await send(stub, "carol", theirs.id, "private")
    alice = await list_conversations(stub, "alice")
    carol = await list_conversations(stub, "carol")
    eve = await list_conversations(stub, "eve")
    assert [s.conversation.id for s in alice.conversations] == [ours.id]
    assert [s.conversation.id for s in carol.conversations] == [theirs.id]
    assert list(eve.conversations) == []


async def test_page_token_of_another_user_reveals_nothing(stub) -> None:
    # A token only says where to continue; used by someone else it still lists only their own.
    for i in range(3):
        await create_conversation(stub, "alice", [f"peer{i}"])
    mine = await create_conversation(stub, "eve", ["frank"])
    token = (await list_conversations(stub, "alice", limit=1)).next_page_token
    resp = await list_conversations(stub, "eve", page_token=token)
    assert {s.conversation.id for s in resp.conversations} <= {mine.id}
