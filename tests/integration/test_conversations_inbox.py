"""GetConversations as an index range per member, and GetMessages before a time, at their edges.

Why: the member rows carry each conversation's last activity (written by the send), so the
list's order, its keyset pages and its unread counts depend on the send keeping them in step;
a page before a time starts from one index probe, so ties and the oldest message are its edges.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, get_messages, send, send_many


async def _list_all(stub, user: str, limit: int) -> list[chat_pb2.ConversationSummary]:
    out, token = [], ""
    for _ in range(50):  # bounded: more pages than any test here makes
        resp = await stub.GetConversations(
            chat_pb2.GetConversationsRequest(limit=limit, page_token=token), metadata=auth(user))
        out += list(resp.conversations)
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("GetConversations never ended")


async def test_a_send_moves_the_conversation_to_the_top_for_every_member(stub) -> None:
    convs = [await create_conversation(stub, "alice", ["bob"], title=f"c{i}") for i in range(4)]
    await send(stub, "bob", convs[1].id, "hi")
    for user in ("alice", "bob"):
        listed = await _list_all(stub, user, 10)
        assert [s.conversation.id for s in listed] == [
            convs[1].id, convs[3].id, convs[2].id, convs[0].id]


async def test_keyset_pages_cover_every_conversation_once_with_ties_in_activity(
        stub, db_source: str) -> None:
    convs = [await create_conversation(stub, "alice", ["bob"], title=f"t{i}") for i in range(7)]
    # Ties: three conversations with the very same last activity (ordered by id among them).
    await db_rows(db_source, "UPDATE conversation_members SET last_activity_at = "
                  "'2026-06-01T00:00:00Z' WHERE conversation_id = ANY(%s::uuid[]) RETURNING 1",
                  [c.id for c in convs[2:5]])
    whole = [s.conversation.id for s in await _list_all(stub, "alice", 50)]
    paged = [s.conversation.id for s in await _list_all(stub, "alice", 2)]
    assert paged == whole and sorted(paged) == sorted(c.id for c in convs)
    tied = [cid for cid in whole if cid in {c.id for c in convs[2:5]}]
    assert tied == sorted(tied, reverse=True)


async def test_unread_counts_and_last_message_come_with_the_page(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)
    last = await send(stub, "alice", conv.id, "newest")
    [bob_view] = await _list_all(stub, "bob", 10)
    [alice_view] = await _list_all(stub, "alice", 10)
    assert (bob_view.unread_count, alice_view.unread_count) == (4, 0)
    assert bob_view.last_message.id == last.id


async def test_before_a_time_shared_by_several_messages_excludes_all_of_them(
        stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 6)
    # Messages 3, 4 and 5 share one timestamp (as clocks allow); 1 and 2 are older.
    await db_rows(db_source, "UPDATE messages SET created_at = '2030-01-01T00:00:00Z'"
                  " WHERE conversation_id = %s AND seq BETWEEN 3 AND 5 RETURNING 1", conv.id)
    await db_rows(db_source, "UPDATE messages SET created_at = '2031-01-01T00:00:00Z'"
                  " WHERE conversation_id = %s AND seq = 6 RETURNING 1", conv.id)
    at = Timestamp()
    at.FromDatetime(datetime.fromisoformat("2030-01-01T00:00:00+00:00"))
    page = await get_messages(stub, "bob", conv.id, before_timestamp=at)
    assert [m.seq for m in page.messages] == [2, 1]
    later = Timestamp()
    later.FromDatetime(datetime.fromisoformat("2030-01-01T00:00:00.000001+00:00"))
    page = await get_messages(stub, "bob", conv.id, before_timestamp=later, limit=2)
    assert [m.seq for m in page.messages] == [5, 4] and page.next_page_token
    rest = await get_messages(stub, "bob", conv.id, page_token=page.next_page_token, limit=10)
    assert [m.seq for m in rest.messages] == [3, 2, 1]


async def test_before_the_oldest_message_is_an_empty_page(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    sent = await send_many(stub, "alice", conv.id, 3)
    page = await get_messages(stub, "bob", conv.id, before_timestamp=sent[0].created_at)
    assert list(page.messages) == [] and page.next_page_token == ""


async def test_message_times_never_decrease_with_seq(stub, db_source: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "first")
    # The conversation's last activity in the future (a clock that stepped back since).
    await db_rows(db_source, "UPDATE conversations SET last_activity_at = '2099-01-01T00:00:00Z'"
                  " WHERE id = %s RETURNING 1", conv.id)
    second = await send(stub, "alice", conv.id, "second")
    assert second.created_at.ToDatetime().year == 2099


async def test_a_large_conversation_rewrites_its_members_rows_at_most_once_a_second(
        stub, db_source: str) -> None:
    from chat_api.storage.messages import EXACT_ORDER_MEMBERS

    others = [f"m{i}" for i in range(EXACT_ORDER_MEMBERS + 5)]
    conv = await create_conversation(stub, "alice", others)
    small = await create_conversation(stub, "alice", ["bob"])
    for c in (conv, small):  # every member's copy an hour behind
        await db_rows(db_source, "UPDATE conversation_members SET last_activity_at ="
                      " now() - interval '1 hour' WHERE conversation_id = %s RETURNING 1", c.id)

    async def copies(conversation_id: str) -> dict[str, datetime]:
        rows = await db_rows(db_source, "SELECT user_id, last_activity_at FROM"
                             " conversation_members WHERE conversation_id = %s", conversation_id)
        return dict(rows)

    first = await send(stub, "alice", conv.id, "one")
    after_first = await copies(conv.id)
    utc = after_first["m0"].tzinfo
    assert set(after_first.values()) == {first.created_at.ToDatetime(tzinfo=utc)}
    # Within the second: only the sender's own row moves; the others keep the first send's time.
    second = await send(stub, "m0", conv.id, "two")
    after_second = await copies(conv.id)
    assert after_second["m0"] > after_first["m0"]
    assert {u: t for u, t in after_second.items() if u != "m0"} == {
        u: t for u, t in after_first.items() if u != "m0"}
    assert second.created_at.ToDatetime(tzinfo=utc) == after_second["m0"]
    # A small conversation stays exact on every send.
    for text in ("a", "b"):
        sent = await send(stub, "alice", small.id, text)
        assert set((await copies(small.id)).values()) == {
            sent.created_at.ToDatetime(tzinfo=utc)}
