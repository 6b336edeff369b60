"""SendMessage and GetMessages through a real gRPC channel against real PostgreSQL and Redis.

Why: seq is the cursor of everything downstream (paging, unread counts, real-time resume), the
outbox event must commit with its message, input errors must name the field, and a non-member
must learn nothing a stranger to a missing conversation would not.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from chat_shared.protos.chat.v1 import chat_pb2
from grpc_status import rpc_status

from tests.conftest import auth
from tests.helpers import (
    create_conversation,
    db_rows,
    error_info,
    get_messages,
    mark_as_read,
    rpc_error,
    send,
    send_many,
)


def _send_request(
    conversation_id: str, content: str = "hi", key: str | None = None
) -> chat_pb2.SendMessageRequest:
    return chat_pb2.SendMessageRequest(
        conversation_id=conversation_id,
        content=content,
        idempotency_key=uuid.uuid4().hex if key is None else key,
    )


def _assert_invalid(err: grpc.aio.AioRpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:"), err.details()
    info = error_info(err)
    assert info is not None and (info.reason, info.metadata["field"]) == ("INVALID_FIELD", field)


# --- SendMessage: the happy path -----------------------------------------------------------


async def test_send_returns_message_with_uuid_id_caller_as_sender_and_created_at(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    msg = await send(stub, "bob", conv.id, "hello there")

    assert str(uuid.UUID(msg.id)) == msg.id
    assert (msg.conversation_id, msg.sender_id, msg.content, msg.seq) == (
        conv.id,
        "bob",
        "hello there",
        1,
    )
    assert msg.HasField("created_at") and msg.created_at.seconds > 0
    [(created_at,)] = await db_rows(
        db_source, "SELECT created_at FROM messages WHERE id = %s", msg.id
    )
    assert msg.created_at.ToDatetime(tzinfo=UTC) == created_at


async def test_seq_counts_one_two_three_per_conversation(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    msgs = [await send(stub, sender, conv.id, "x") for sender in ("alice", "bob", "alice")]
    assert [m.seq for m in msgs] == [1, 2, 3]


async def test_seq_of_each_conversation_is_independent(stub):
    first = await create_conversation(stub, "alice", ["bob"])
    second = await create_conversation(stub, "alice", ["carol"])
    seqs: dict[str, list[int]] = {first.id: [], second.id: []}
    for cid in (first.id, second.id, first.id, first.id, second.id):
        seqs[cid].append((await send(stub, "alice", cid, "x")).seq)
    assert seqs == {first.id: [1, 2, 3], second.id: [1, 2]}


async def test_send_writes_message_and_its_outbox_event_together(stub, db_source):
    conv = await create_conversation(stub, "carol", ["bob", "alice"])
    msg = await send(stub, "bob", conv.id, "with event")

    messages = await db_rows(db_source, "SELECT id::text, seq, sender_id, content FROM messages")
    assert messages == [(msg.id, 1, "bob", "with event")]
    events = await db_rows(
        db_source, "SELECT event_type, conversation_id::text, seq, recipients, payload FROM outbox"
    )
    assert len(events) == 1
    event_type, conversation_id, seq, recipients, payload = events[0]
    assert (event_type, conversation_id, seq) == ("message.created", conv.id, 1)
    assert recipients == ["alice", "bob", "carol"]
    assert payload["message"]["id"] == msg.id
    assert (payload["message"]["seq"], payload["message"]["sender_id"]) == (1, "bob")


async def test_send_updates_conversation_last_seq(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)
    [(last_seq,)] = await db_rows(
        db_source, "SELECT last_seq FROM conversations WHERE id = %s", conv.id
    )
    assert last_seq == 3


# --- Validation: INVALID_ARGUMENT naming the field ----------------------------------------


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "123", str(uuid.uuid4()) + "x"])
async def test_send_rejects_malformed_conversation_id(stub, bad_id):
    err = await rpc_error(stub.SendMessage(_send_request(bad_id), metadata=auth("alice")))
    _assert_invalid(err, "conversation_id")


async def test_get_messages_rejects_malformed_conversation_id(stub):
    err = await rpc_error(get_messages(stub, "alice", "nope"))
    _assert_invalid(err, "conversation_id")


async def test_mark_as_read_rejects_malformed_conversation_id(stub):
    err = await rpc_error(mark_as_read(stub, "alice", "nope"))
    _assert_invalid(err, "conversation_id")


@pytest.mark.parametrize("content", ["", "   ", "\n\t  \n"], ids=["empty", "spaces", "whitespace"])
async def test_send_rejects_empty_or_blank_content(stub, db_source, content):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(stub.SendMessage(_send_request(conv.id, content), metadata=auth("alice")))
    _assert_invalid(err, "content")
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(0,)]


async def test_send_rejects_content_with_control_characters(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(
        stub.SendMessage(_send_request(conv.id, "a\x00b"), metadata=auth("alice"))
    )
    _assert_invalid(err, "content")


async def test_send_accepts_content_of_exactly_default_max_length(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    msg = await send(stub, "alice", conv.id, "é" * 4096)
    assert len(msg.content) == 4096


async def test_send_rejects_content_over_default_max_length(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(
        stub.SendMessage(_send_request(conv.id, "x" * 4097), metadata=auth("alice"))
    )
    _assert_invalid(err, "content")
    assert "4096" in err.details()


async def test_send_requires_idempotency_key(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(stub.SendMessage(_send_request(conv.id, key=""), metadata=auth("alice")))
    _assert_invalid(err, "idempotency_key")


async def test_send_accepts_idempotency_key_of_255_characters(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    assert (await send(stub, "alice", conv.id, "x", key="k" * 255)).seq == 1


async def test_send_rejects_idempotency_key_over_255_characters(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(
        stub.SendMessage(_send_request(conv.id, key="k" * 256), metadata=auth("alice"))
    )
    _assert_invalid(err, "idempotency_key")


@pytest.mark.parametrize("limit", [-1, 101])
async def test_get_messages_rejects_limit_out_of_range(stub, limit):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(get_messages(stub, "alice", conv.id, limit=limit))
    _assert_invalid(err, "limit")


@pytest.mark.parametrize(
    "token",
    ["garbage!!", "bm90IGpzb24", "eyJrIjoibSJ9", "W10"],
    ids=["not-base64", "not-json", "missing-fields", "json-list"],
)
async def test_get_messages_rejects_malformed_page_token(stub, token):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(get_messages(stub, "alice", conv.id, page_token=token))
    _assert_invalid(err, "page_token")


async def test_get_messages_rejects_page_token_of_another_conversation(stub):
    first = await create_conversation(stub, "alice", ["bob"])
    second = await create_conversation(stub, "alice", ["carol"])
    await send_many(stub, "alice", first.id, 2)
    token = (await get_messages(stub, "alice", first.id, limit=1)).next_page_token
    assert token
    err = await rpc_error(get_messages(stub, "alice", second.id, page_token=token))
    _assert_invalid(err, "page_token")


async def test_get_messages_rejects_page_token_of_conversation_listing(stub):
    await create_conversation(stub, "alice", ["bob"])
    conv = await create_conversation(stub, "alice", ["carol"])
    listing = await stub.GetConversations(
        chat_pb2.GetConversationsRequest(limit=1), metadata=auth("alice")
    )
    assert listing.next_page_token
    err = await rpc_error(get_messages(stub, "alice", conv.id, page_token=listing.next_page_token))
    _assert_invalid(err, "page_token")


async def test_get_messages_rejects_negative_after_seq(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(get_messages(stub, "alice", conv.id, after_seq=-1))
    _assert_invalid(err, "after_seq")


async def test_mark_as_read_rejects_negative_up_to_seq(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(mark_as_read(stub, "alice", conv.id, up_to_seq=-1))
    _assert_invalid(err, "up_to_seq")


# --- Non-members learn nothing ---------------------------------------------------------------

_CALLS = {
    "SendMessage": lambda stub, cid: stub.SendMessage(_send_request(cid), metadata=auth("mallory")),
    "GetMessages": lambda stub, cid: get_messages(stub, "mallory", cid),
    "MarkAsRead": lambda stub, cid: mark_as_read(stub, "mallory", cid),
}


@pytest.mark.parametrize("rpc", sorted(_CALLS))
async def test_non_member_gets_the_same_not_found_as_for_a_missing_conversation(stub, rpc):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "private")

    as_non_member = await rpc_error(_CALLS[rpc](stub, conv.id))
    as_missing = await rpc_error(_CALLS[rpc](stub, str(uuid.uuid4())))

    assert as_non_member.code() == as_missing.code() == grpc.StatusCode.NOT_FOUND
    assert as_non_member.details() == as_missing.details()
    assert rpc_status.from_call(as_non_member) == rpc_status.from_call(as_missing)


async def test_non_member_send_writes_nothing(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "before")

    err = await rpc_error(
        stub.SendMessage(_send_request(conv.id, "intrusion"), metadata=auth("mallory"))
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await db_rows(db_source, "SELECT sender_id, seq FROM messages") == [("alice", 1)]
    assert await db_rows(db_source, "SELECT seq FROM outbox") == [(1,)]
    assert await db_rows(db_source, "SELECT last_seq FROM conversations") == [(1,)]


# --- GetMessages: paging ----------------------------------------------------------------------


async def test_get_messages_is_newest_first_by_default(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)
    page = await get_messages(stub, "bob", conv.id)
    assert [m.seq for m in page.messages] == [3, 2, 1]
    assert [m.content for m in page.messages] == ["m2", "m1", "m0"]
    assert page.next_page_token == ""


async def test_get_messages_default_limit_is_fifty(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 60)

    first = await get_messages(stub, "alice", conv.id)
    assert [m.seq for m in first.messages] == list(range(60, 10, -1))
    assert first.next_page_token

    rest = await get_messages(stub, "alice", conv.id, page_token=first.next_page_token)
    assert [m.seq for m in rest.messages] == list(range(10, 0, -1))
    assert rest.next_page_token == ""


async def test_get_messages_accepts_limit_of_one_hundred(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 101)
    page = await get_messages(stub, "alice", conv.id, limit=100)
    assert [m.seq for m in page.messages] == list(range(101, 1, -1))
    assert page.next_page_token


async def _walk(
    stub, caller: str, conversation_id: str, limit: int, **first: object
) -> list[chat_pb2.Message]:
    """Every message of the pages from ``first`` on, following next_page_token (bounded)."""
    out: list[chat_pb2.Message] = []
    page = await get_messages(stub, caller, conversation_id, limit=limit, **first)
    for _ in range(1000):
        out.extend(page.messages)
        if not page.next_page_token:
            return out
        page = await get_messages(
            stub, caller, conversation_id, limit=limit, page_token=page.next_page_token
        )
    raise AssertionError("paging did not end within 1000 pages")


async def test_paging_to_the_end_returns_every_message_once_in_decreasing_seq(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    sent = await send_many(stub, "alice", conv.id, 23)

    walked = await _walk(stub, "bob", conv.id, limit=5)

    assert [m.seq for m in walked] == list(range(23, 0, -1))
    assert sorted(m.id for m in walked) == sorted(m.id for m in sent)


async def test_paging_while_messages_arrive_misses_and_repeats_nothing(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    before = await send_many(stub, "alice", conv.id, 30)
    sent_during: list[chat_pb2.Message] = []
    stop = asyncio.Event()
    sending = asyncio.Event()

    async def keep_sending() -> None:
        for i in range(500):  # bounded; stopped as soon as the walk ends
            if stop.is_set():
                return
            sent_during.append(await send(stub, "bob", conv.id, f"live{i}"))
            sending.set()

    sender = asyncio.create_task(keep_sending())
    try:
        # The walk starts once the sender's first send is through (its connection made, which
        # behind PgBouncer can take longer than the whole walk), so the two overlap.
        await asyncio.wait_for(sending.wait(), 30)
        walked = await _walk(stub, "alice", conv.id, limit=4)
        sent_while_walking = len(sent_during)
    finally:
        stop.set()
        await sender

    seqs = [m.seq for m in walked]
    assert all(a > b for a, b in itertools.pairwise(seqs)), "order must be strictly decreasing"
    assert len({m.id for m in walked}) == len(walked), "no message may repeat"
    assert {m.id for m in before} <= {m.id for m in walked}, "no earlier message may be missed"
    assert seqs[-1] == 1
    assert sent_while_walking > 0, "the walk should have overlapped with sending"


async def test_after_seq_returns_newer_messages_oldest_first_and_pages_onwards(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 10)

    first = await get_messages(stub, "bob", conv.id, after_seq=3, limit=3)
    assert [m.seq for m in first.messages] == [4, 5, 6]
    second = await get_messages(stub, "bob", conv.id, page_token=first.next_page_token, limit=3)
    assert [m.seq for m in second.messages] == [7, 8, 9]
    third = await get_messages(stub, "bob", conv.id, page_token=second.next_page_token, limit=3)
    assert [m.seq for m in third.messages] == [10]
    assert third.next_page_token == ""


async def test_after_seq_zero_pages_from_the_first_message_oldest_first(stub):
    # 0 is a position like any other ("after nothing"), not "not given": a client catching up
    # from the beginning must not get the newest page instead.
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 7)
    first = await get_messages(stub, "bob", conv.id, after_seq=0, limit=3)
    assert [m.seq for m in first.messages] == [1, 2, 3]
    second = await get_messages(stub, "bob", conv.id, page_token=first.next_page_token, limit=3)
    assert [m.seq for m in second.messages] == [4, 5, 6]


async def test_after_seq_left_out_pages_newest_first(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 7)
    page = await get_messages(stub, "bob", conv.id, limit=3)
    assert [m.seq for m in page.messages] == [7, 6, 5]


async def test_after_seq_zero_cannot_be_combined_with_before_timestamp(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(get_messages(stub, "alice", conv.id, after_seq=0,
                                       before_timestamp=Timestamp(seconds=1_700_000_000)))
    _assert_invalid(err, "after_seq")


async def test_after_seq_at_the_newest_message_returns_nothing(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 4)
    page = await get_messages(stub, "bob", conv.id, after_seq=4)
    assert list(page.messages) == [] and page.next_page_token == ""


async def test_after_seq_at_the_int64_limit_returns_an_empty_page_not_an_error(stub):
    # The statement adds the page size to the cursor; int64's largest value must not overflow.
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 2)
    page = await get_messages(stub, "bob", conv.id, after_seq=2**63 - 1)
    assert list(page.messages) == [] and page.next_page_token == ""


@pytest.mark.parametrize("mode", ["newest", "before_seq", "after_seq"])
async def test_a_page_reads_only_its_own_rows_whatever_plan_postgresql_picks(stub, db_source,
                                                                            mode):
    # With statistics that underestimate a conversation (normal for a new, busy one) the
    # planner may read the whole conversation and sort it; the page's seq range in the WHERE
    # clause bounds that plan too. Index and sequential scans off force exactly that plan
    # here (with only a few hundred rows in the table, the planner may otherwise prefer a
    # sequential scan, which says nothing about the index range).
    import psycopg
    from chat_api.storage.messages import _PAGE

    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 300)
    params = {"tenant": "default", "conversation_id": conv.id, "user_id": "bob", "limit": 11,
              "cursor": 150}
    async with await psycopg.AsyncConnection.connect(
            db_source, autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        await conn.execute("SET enable_indexscan = off")
        await conn.execute("SET enable_indexonlyscan = off")
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _PAGE[mode], params)
        plan = (await cur.fetchone())[0][0]["Plan"]
        rows = await (await conn.execute(_PAGE[mode], params)).fetchall()

    def scans(node: dict) -> list[dict]:
        found = [node] if node.get("Relation Name") == "messages" else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    read = scans(plan)
    assert read and read[0]["Node Type"] == "Bitmap Heap Scan", read
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in read) == 11  # not 300
    expected = {"newest": range(300, 289, -1), "before_seq": range(149, 138, -1),
                "after_seq": range(151, 162)}[mode]
    assert [r[2] for r in rows] == list(expected)


async def test_before_timestamp_returns_only_older_messages_newest_first(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    sent = await send_many(stub, "alice", conv.id, 5)
    cutoff = sent[3].created_at
    expected = [
        m.seq for m in reversed(sent) if m.created_at.ToMicroseconds() < cutoff.ToMicroseconds()
    ]
    assert 4 not in expected and 1 in expected  # the cutoff splits the conversation

    page = await get_messages(stub, "bob", conv.id, before_timestamp=cutoff)

    assert [m.seq for m in page.messages] == expected
    assert all(m.created_at.ToMicroseconds() < cutoff.ToMicroseconds() for m in page.messages)


async def test_empty_conversation_returns_no_messages_and_no_token(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    page = await get_messages(stub, "bob", conv.id)
    assert list(page.messages) == []
    assert page.next_page_token == ""
