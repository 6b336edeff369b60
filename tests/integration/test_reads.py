"""MarkAsRead and unread counts through a real gRPC channel against real PostgreSQL.

Why: a member's read position is a seq that only moves forward and never past the newest
message; unread counts everywhere are ``conversation.last_seq - member.last_read_seq`` (so a
member's own messages stay unread until they mark them); and other devices learn of a moved
position from the 'conversation.read' outbox event, which must not be written for a no-op.
"""

from __future__ import annotations

import grpc
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, mark_as_read, rpc_error, send, send_many


async def _summary(stub, caller: str, conversation_id: str) -> chat_pb2.ConversationSummary:
    listing = await stub.GetConversations(
        chat_pb2.GetConversationsRequest(limit=100), metadata=auth(caller)
    )
    [found] = [s for s in listing.conversations if s.conversation.id == conversation_id]
    return found


async def _unread(stub, users: list[str], conversation_id: str) -> dict[str, int]:
    return {u: (await _summary(stub, u, conversation_id)).unread_count for u in users}


async def _read_events(db_source: str) -> list[tuple]:
    return await db_rows(
        db_source,
        "SELECT conversation_id::text, seq, recipients, payload FROM outbox"
        " WHERE event_type = 'conversation.read' ORDER BY id",
    )


async def test_up_to_seq_zero_marks_everything_read(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)

    resp = await mark_as_read(stub, "bob", conv.id, up_to_seq=0)

    assert (resp.last_read_seq, resp.unread_count) == (3, 0)
    summary = await _summary(stub, "bob", conv.id)
    assert (summary.last_read_seq, summary.unread_count) == (3, 0)


async def test_mark_up_to_a_seq_leaves_the_rest_unread(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 5)
    resp = await mark_as_read(stub, "bob", conv.id, up_to_seq=2)
    assert (resp.last_read_seq, resp.unread_count) == (2, 3)


async def test_read_position_never_moves_backwards(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 6)
    await mark_as_read(stub, "bob", conv.id, up_to_seq=5)

    resp = await mark_as_read(stub, "bob", conv.id, up_to_seq=3)

    assert (resp.last_read_seq, resp.unread_count) == (5, 1)
    assert (await _summary(stub, "bob", conv.id)).last_read_seq == 5


async def test_up_to_seq_beyond_the_newest_message_is_clamped(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)

    resp = await mark_as_read(stub, "bob", conv.id, up_to_seq=10**12)
    assert (resp.last_read_seq, resp.unread_count) == (3, 0)

    # The stored position is the clamped one: the next message is unread.
    await send(stub, "alice", conv.id, "new")
    summary = await _summary(stub, "bob", conv.id)
    assert (summary.last_read_seq, summary.unread_count) == (3, 1)


async def test_mark_as_read_in_an_empty_conversation_stays_at_zero(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    resp = await mark_as_read(stub, "bob", conv.id)
    assert (resp.last_read_seq, resp.unread_count) == (0, 0)
    assert await _read_events(db_source) == []


async def test_unread_counts_follow_last_seq_minus_read_position_for_every_member(stub):
    members = ["alice", "bob", "carol"]
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="trio")
    for sender in ("alice", "alice", "bob", "carol", "carol"):
        await send(stub, sender, conv.id, f"from {sender}")

    # Sending moves the sender's read position to their message: own messages never count.
    assert await _unread(stub, members, conv.id) == {"alice": 3, "bob": 2, "carol": 0}

    assert (await mark_as_read(stub, "bob", conv.id, up_to_seq=3)).unread_count == 2
    assert (await mark_as_read(stub, "bob", conv.id, up_to_seq=4)).unread_count == 1
    assert (await mark_as_read(stub, "carol", conv.id)).unread_count == 0
    assert await _unread(stub, members, conv.id) == {"alice": 3, "bob": 1, "carol": 0}

    await send(stub, "alice", conv.id, "one more")
    assert await _unread(stub, members, conv.id) == {"alice": 0, "bob": 2, "carol": 1}
    for user in members:
        summary = await _summary(stub, user, conv.id)
        assert summary.unread_count == summary.conversation.last_seq - summary.last_read_seq


async def test_moving_the_read_position_writes_a_conversation_read_event(stub, db_source):
    conv = await create_conversation(stub, "carol", ["bob", "alice"])
    await send_many(stub, "alice", conv.id, 4)

    await mark_as_read(stub, "bob", conv.id, up_to_seq=3)

    [(conversation_id, seq, recipients, payload)] = await _read_events(db_source)
    assert (conversation_id, seq, recipients) == (conv.id, 3, ["alice", "bob", "carol"])
    assert (payload["user_id"], payload["last_read_seq"], payload["conversation_id"]) == (
        "bob",
        3,
        conv.id,
    )


async def test_each_forward_move_writes_its_own_event(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 4)

    await mark_as_read(stub, "bob", conv.id, up_to_seq=2)
    await mark_as_read(stub, "bob", conv.id, up_to_seq=0)

    assert [(e[1], e[3]["user_id"]) for e in await _read_events(db_source)] == [
        (2, "bob"),
        (4, "bob"),
    ]


async def test_mark_as_read_that_does_not_move_the_position_writes_no_event(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 5)
    await mark_as_read(stub, "bob", conv.id, up_to_seq=5)
    assert len(await _read_events(db_source)) == 1

    await mark_as_read(stub, "bob", conv.id, up_to_seq=3)  # backwards: ignored
    await mark_as_read(stub, "bob", conv.id, up_to_seq=5)  # same position
    await mark_as_read(stub, "bob", conv.id, up_to_seq=0)  # everything, already read
    await mark_as_read(stub, "bob", conv.id, up_to_seq=99)  # clamped to the same position

    assert [e[1] for e in await _read_events(db_source)] == [5]


async def test_failed_mark_as_read_by_non_member_writes_nothing(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 2)
    err = await rpc_error(mark_as_read(stub, "mallory", conv.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await _read_events(db_source) == []
    assert await db_rows(
        db_source, "SELECT user_id, last_read_seq FROM conversation_members ORDER BY user_id"
    ) == [("alice", 2), ("bob", 0)]  # alice's own sends moved hers; nothing else changed
