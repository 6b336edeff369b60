"""Threads through a real gRPC channel against real PostgreSQL: replies, GetThread, and the
root-level timeline of GetMessages.

Why: a reply takes the conversation's next seq like any message (seq stays gapless, unread
counts and resume keep working), but the main timeline shows root-level messages only and each
thread pages on its own, both in O(page) whatever the mix; a root carries its thread's counter,
exact under concurrent replies; a reply to a reply is refused naming the field, and a missing
root answers like a missing conversation.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC

import grpc
import pytest
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import (
    create_conversation,
    db_rows,
    error_info,
    get_messages,
    rpc_error,
    send,
)


async def reply(stub, caller: str, conversation_id: str, root_id: str, content: str = "re",
                key: str | None = None) -> chat_pb2.Message:
    resp = await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conversation_id, content=content,
                                    idempotency_key=key or uuid.uuid4().hex,
                                    thread_root_id=root_id),
        metadata=auth(caller))
    return resp.message


async def get_thread(stub, caller: str, conversation_id: str, root_id: str,
                     **fields) -> chat_pb2.GetThreadResponse:
    return await stub.GetThread(
        chat_pb2.GetThreadRequest(conversation_id=conversation_id, root_id=root_id, **fields),
        metadata=auth(caller))


def _assert_invalid(err: grpc.aio.AioRpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:"), err.details()
    info = error_info(err)
    assert info is not None and info.metadata["field"] == field


async def _not_found_details(stub) -> str:
    """What a stranger to a conversation that does not exist is told."""
    err = await rpc_error(get_messages(stub, "alice", str(uuid.uuid4())))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    return err.details()


# --- sending replies --------------------------------------------------------------------------


async def test_a_reply_takes_the_next_seq_and_the_root_counts_it(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "question")
    first = await reply(stub, "bob", conv.id, root.id, "answer")
    second = await reply(stub, "alice", conv.id, root.id, "thanks")
    after = await send(stub, "bob", conv.id, "next topic")

    assert (first.thread_root_id, first.seq, second.seq, after.seq) == (root.id, 2, 3, 4)
    assert after.thread_root_id == "" and root.thread_root_id == ""
    thread = await get_thread(stub, "bob", conv.id, root.id)
    assert thread.root.id == root.id and thread.root.reply_count == 2
    assert thread.root.last_reply_at == second.created_at
    assert [m.content for m in thread.messages] == ["thanks", "answer"]  # newest first
    assert all(m.reply_count == 0 and not m.HasField("last_reply_at") for m in thread.messages)
    [(count, last_reply_at)] = await db_rows(
        db_source, "SELECT reply_count, last_reply_at FROM messages WHERE id = %s", root.id)
    assert (count, last_reply_at) == (2, second.created_at.ToDatetime(tzinfo=UTC))


async def test_the_timeline_holds_root_level_messages_unless_replies_are_asked_for(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "one")
    await reply(stub, "bob", conv.id, root.id, "one.a")
    await send(stub, "bob", conv.id, "two")
    await reply(stub, "alice", conv.id, root.id, "one.b")

    timeline = await get_messages(stub, "bob", conv.id)
    assert [m.content for m in timeline.messages] == ["two", "one"]
    assert timeline.messages[1].reply_count == 2
    everything = await get_messages(stub, "bob", conv.id, include_thread_replies=True)
    assert [m.seq for m in everything.messages] == [4, 3, 2, 1]
    assert [m.thread_root_id for m in everything.messages] == [root.id, "", root.id, ""]
    catch_up = await get_messages(stub, "bob", conv.id, after_seq=1)
    assert [m.content for m in catch_up.messages] == ["two"]


async def test_concurrent_replies_count_exactly_and_take_gapless_positions(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    sent = await asyncio.gather(*(reply(stub, "bob", conv.id, root.id, f"r{i}")
                                  for i in range(20)))
    assert sorted(m.seq for m in sent) == list(range(2, 22))
    rows = await db_rows(db_source, "SELECT seq, thread_seq FROM messages"
                                    " WHERE thread_root_id = %s ORDER BY seq", root.id)
    assert [r[1] for r in rows] == list(range(1, 21))  # in seq order, no gap, no tie
    assert (await get_thread(stub, "alice", conv.id, root.id)).root.reply_count == 20


async def test_a_reply_to_a_reply_is_refused_naming_the_field(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    answer = await reply(stub, "bob", conv.id, root.id)
    err = await rpc_error(reply(stub, "alice", conv.id, answer.id))
    _assert_invalid(err, "thread_root_id")
    # Nothing was written: the next message still takes seq 3.
    assert (await send(stub, "alice", conv.id, "x")).seq == 3


async def test_a_malformed_thread_root_id_is_refused_naming_the_field(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(reply(stub, "alice", conv.id, "not-a-uuid"))
    _assert_invalid(err, "thread_root_id")


async def test_a_missing_root_a_root_elsewhere_and_a_stranger_all_get_the_same_not_found(stub):
    expected = await _not_found_details(stub)
    conv = await create_conversation(stub, "alice", ["bob"])
    other = await create_conversation(stub, "alice", ["carol"])
    elsewhere = await send(stub, "alice", other.id, "in another conversation")
    root = await send(stub, "alice", conv.id, "root")
    for caller, root_id in (("bob", str(uuid.uuid4())), ("bob", elsewhere.id),
                            ("mallory", root.id)):
        err = await rpc_error(reply(stub, caller, conv.id, root_id))
        assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, expected)
    assert (await send(stub, "alice", conv.id, "x")).seq == 2  # no seq was taken


async def test_a_retried_reply_is_a_duplicate_and_counts_once(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    other_root = await send(stub, "alice", conv.id, "another root")
    first = await reply(stub, "bob", conv.id, root.id, "same", key="k-1")
    err = await rpc_error(reply(stub, "bob", conv.id, root.id, "same", key="k-1"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(err)
    assert info is not None
    assert (info.reason, info.metadata["message_id"]) == ("DUPLICATE_REQUEST", first.id)
    err = await rpc_error(reply(stub, "bob", conv.id, other_root.id, "same", key="k-1"))
    assert error_info(err).reason == "IDEMPOTENCY_KEY_REUSED"
    assert (await get_thread(stub, "alice", conv.id, root.id)).root.reply_count == 1


async def test_a_replys_event_names_its_root_and_a_root_level_events_does_not(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    answer = await reply(stub, "bob", conv.id, root.id)
    rows = await db_rows(db_source, "SELECT seq, payload FROM outbox WHERE conversation_id = %s"
                                    " AND event_type = 'message.created' ORDER BY seq", conv.id)
    from chat_shared import events

    payloads = [events.decode_payload("message.created", p) for _, p in rows]
    assert "thread_root_id" not in payloads[0]["message"]
    assert payloads[1]["message"]["thread_root_id"] == root.id
    assert payloads[1]["message"]["id"] == answer.id


async def test_thread_replies_count_as_unread_like_any_message(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    await reply(stub, "alice", conv.id, root.id)
    listing = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                          metadata=auth("bob"))
    [summary] = [s for s in listing.conversations if s.conversation.id == conv.id]
    assert summary.unread_count == 2
    assert summary.last_message.thread_root_id == root.id


# --- GetThread ----------------------------------------------------------------------------------


async def test_get_thread_answers_not_found_for_a_stranger_and_a_missing_root(stub):
    expected = await _not_found_details(stub)
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    for caller, root_id in (("mallory", root.id), ("bob", str(uuid.uuid4()))):
        err = await rpc_error(get_thread(stub, caller, conv.id, root_id))
        assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, expected)


async def test_get_thread_of_a_reply_is_refused_naming_root_id(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    answer = await reply(stub, "bob", conv.id, root.id)
    _assert_invalid(await rpc_error(get_thread(stub, "bob", conv.id, answer.id)), "root_id")
    _assert_invalid(await rpc_error(get_thread(stub, "bob", conv.id, "x")), "root_id")


async def test_get_thread_refuses_a_token_of_another_thread_or_listing(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    roots = [await send(stub, "alice", conv.id, f"root {i}") for i in range(2)]
    for root in roots:
        for _ in range(3):
            await reply(stub, "bob", conv.id, root.id)
    token = (await get_thread(stub, "bob", conv.id, roots[0].id, limit=1)).next_page_token
    assert token
    _assert_invalid(await rpc_error(get_thread(stub, "bob", conv.id, roots[1].id,
                                               page_token=token)), "page_token")
    _assert_invalid(await rpc_error(get_messages(stub, "bob", conv.id, page_token=token)),
                    "page_token")
    listing = (await get_messages(stub, "bob", conv.id, limit=1)).next_page_token
    _assert_invalid(await rpc_error(get_thread(stub, "bob", conv.id, roots[0].id,
                                               page_token=listing)), "page_token")


async def test_an_empty_thread_has_its_root_and_no_replies(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    thread = await get_thread(stub, "bob", conv.id, root.id)
    assert thread.root.content == "root" and list(thread.messages) == []
    assert thread.next_page_token == "" and thread.root.reply_count == 0


# --- paging a random mix against a model ---------------------------------------------------------


async def _walk(fetch, **first) -> list[chat_pb2.Message]:
    """Every message of a listing, following next_page_token to the end (bounded); the
    next pages repeat the listing's fields except its starting position."""
    out: list[chat_pb2.Message] = []
    resp = await fetch(**first)
    again = {k: v for k, v in first.items() if k not in ("after_seq", "before_timestamp")}
    for _ in range(200):
        out += resp.messages
        if not resp.next_page_token:
            return out
        resp = await fetch(**again, page_token=resp.next_page_token)
    raise AssertionError("the listing did not end within 200 pages")


async def test_every_listing_pages_a_random_mix_of_roots_and_replies_exactly(stub):
    rng = random.Random(7)
    conv = await create_conversation(stub, "alice", ["bob"])
    roots: list[chat_pb2.Message] = []
    everything: list[chat_pb2.Message] = []
    for i in range(90):
        if roots and rng.random() < 0.65:
            # Most replies go to one busy thread, the rest anywhere.
            target = roots[0] if rng.random() < 0.6 else rng.choice(roots)
            msg = await reply(stub, rng.choice(["alice", "bob"]), conv.id, target.id, f"m{i}")
        else:
            msg = await send(stub, rng.choice(["alice", "bob"]), conv.id, f"m{i}")
            roots.append(msg)
        everything.append(msg)
    seqs = [m.seq for m in everything]
    assert seqs == list(range(1, 91))
    root_seqs = [m.seq for m in roots]

    def messages(**fields):
        return get_messages(stub, "bob", conv.id, **fields)

    for limit in (1, 4, 7):
        newest = await _walk(messages, limit=limit)
        assert [m.seq for m in newest] == root_seqs[::-1]
        oldest = await _walk(messages, limit=limit, after_seq=0)
        assert [m.seq for m in oldest] == root_seqs
        with_replies = await _walk(messages, limit=limit, include_thread_replies=True)
        assert [m.seq for m in with_replies] == seqs[::-1]
    # after_seq and before_timestamp at every position, reply or root.
    for position in range(0, 92, 3):
        after = await messages(after_seq=position, limit=100)
        assert [m.seq for m in after.messages] == [s for s in root_seqs if s > position]
    for msg in everything[::5]:
        before = await messages(before_timestamp=msg.created_at, limit=100)
        cutoff = msg.created_at.ToMicroseconds()
        assert [m.seq for m in before.messages] == [
            m.seq for m in reversed(roots) if m.created_at.ToMicroseconds() < cutoff]

    by_root = {r.id: [m.seq for m in everything if m.thread_root_id == r.id] for r in roots}
    for root in roots:
        def thread(root_id=root.id, **fields):
            return get_thread(stub, "alice", conv.id, root_id, **fields)

        expected = by_root[root.id]
        for limit in (1, 3):
            assert [m.seq for m in await _walk(thread, limit=limit)] == expected[::-1]
            assert [m.seq for m in await _walk(thread, limit=limit, after_seq=0)] == expected
        head = await thread(limit=100)
        assert head.root.reply_count == len(expected)
        if expected:
            assert head.root.last_reply_at == everything[expected[-1] - 1].created_at
    busy = roots[0]
    for position in range(0, 92):
        page = await get_thread(stub, "alice", conv.id, busy.id, after_seq=position, limit=5)
        assert [m.seq for m in page.messages] == [s for s in by_root[busy.id]
                                                  if s > position][:5]


@pytest.mark.parametrize("statement,mode", [
    ("root", "newest"), ("root", "before_seq"), ("root", "after_seq"),
    ("thread", "newest"), ("thread", "before"), ("thread", "after"), ("thread", "after_seq")])
async def test_a_root_or_thread_page_reads_only_its_rows_whatever_plan_postgresql_picks(
        stub, db_source, statement, mode):
    # As for GetMessages (test_messages.py): bitmap scans forced, the bounds in the WHERE clause
    # still keep the page to its own rows, here with replies and roots interleaved.
    import psycopg
    from chat_api.storage.messages import _ROOT_PAGE, _THREAD_PAGE

    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "root")
    for i in range(150):
        await reply(stub, "alice", conv.id, root.id, f"r{i}")
        await send(stub, "bob", conv.id, f"m{i}")
    # seq 1 the root; then a reply at even seqs 2..300 and a root-level message at odd 3..301.
    params = {"tenant": "default", "conversation_id": conv.id, "user_id": "bob", "limit": 11,
              "root_id": root.id, "cursor": 150 if statement == "root" else 100, "after": 150}
    sql = (_ROOT_PAGE if statement == "root" else _THREAD_PAGE)[mode]
    async with await psycopg.AsyncConnection.connect(
            db_source, autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        await conn.execute("SET enable_indexscan = off")
        await conn.execute("SET enable_indexonlyscan = off")
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        plan = (await cur.fetchone())[0][0]["Plan"]
        rows = await (await conn.execute(sql, params)).fetchall()

    def scans(node: dict) -> list[dict]:
        found = [node] if node.get("Relation Name") == "messages" else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans(plan))
    # The page, plus the cursor's probe or the root, plus a binary search's probes.
    assert read <= 11 + 1 + (10 if mode == "after_seq" and statement == "thread" else 0), read
    if statement == "root":
        seqs = [r[2] for r in rows]
        expected = {"newest": range(301, 279, -2), "before_seq": range(149, 127, -2),
                    "after_seq": range(151, 173, 2)}[mode]
    else:
        # The root's row, then the replies': the part, the root's id and flag, then the
        # message (seq its third column).
        assert rows[0][0] == 0
        seqs = [r[3 + 2] for r in rows[1:]]
        # thread_seq t is at seq 2t; the cursor (100) is a thread position, after_seq a seq.
        expected = {"newest": range(300, 278, -2), "before": range(198, 176, -2),
                    "after": range(202, 224, 2), "after_seq": range(152, 174, 2)}[mode]
    assert seqs == list(expected)


# --- replies in the change log, edits, tombstones and reactions -------------------------------


async def test_a_reply_is_an_ordinary_change_edited_deleted_and_reacted_to_like_any_message(
        stub, db_source):
    # A reply is the conversation's next change (pos) like any message, and the changes to a
    # message work on replies; deleting a root leaves a tombstone that keeps its thread.
    from tests.integration.test_message_changes import delete, edit, react

    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "question")
    answer = await reply(stub, "bob", conv.id, root.id, "answer")
    changes = await db_rows(db_source, "SELECT pos, change_type, message_id::text"
                                       " FROM conversation_changes WHERE conversation_id = %s"
                                       " ORDER BY pos", conv.id)
    assert changes == [(1, "message.created", root.id), (2, "message.created", answer.id)]
    [(payload, pos)] = await db_rows(db_source, "SELECT payload, seq FROM outbox"
                                                " WHERE payload->'message'->>'id' = %s",
                                     answer.id)
    assert pos == 2 and payload["message"]["thread_root_id"] == root.id
    assert (payload["message"]["version"], payload["message"]["deleted"]) == (1, False)

    edited = (await edit(stub, "bob", conv.id, answer.id, "better answer")).message
    assert (edited.version, edited.thread_root_id) == (2, root.id)
    await react(stub, "alice", conv.id, answer.id, "👍")
    await react(stub, "bob", conv.id, root.id, "🎉")
    thread = await get_thread(stub, "alice", conv.id, root.id)
    [got] = thread.messages
    assert (got.content, got.version, got.HasField("edited_at")) == ("better answer", 2, True)
    assert [(r.emoji, r.count, r.reacted_by_me) for r in got.reactions] == [("👍", 1, True)]
    assert [(r.emoji, r.count, r.reacted_by_me) for r in thread.root.reactions] == \
        [("🎉", 1, False)]
    [listed] = (await get_messages(stub, "alice", conv.id)).messages  # root-level only
    assert (listed.id, listed.reply_count) == (root.id, 1)
    assert [r.emoji for r in listed.reactions] == ["🎉"]

    deleted_root = (await delete(stub, "alice", conv.id, root.id)).message
    assert deleted_root.deleted and deleted_root.content == ""
    thread = await get_thread(stub, "bob", conv.id, root.id)
    assert thread.root.deleted and thread.root.content == "" and not thread.root.reactions
    assert [m.content for m in thread.messages] == ["better answer"]
    gone = (await delete(stub, "bob", conv.id, answer.id)).message
    assert gone.deleted and gone.thread_root_id == root.id
    thread = await get_thread(stub, "bob", conv.id, root.id)
    assert [(m.id, m.deleted, m.content) for m in thread.messages] == [(answer.id, True, "")]
    types = [r[0] for r in await db_rows(
        db_source, "SELECT change_type FROM conversation_changes WHERE conversation_id = %s"
                   " ORDER BY pos", conv.id)]
    assert types == ["message.created", "message.created", "message.updated", "reaction.added",
                     "reaction.added", "message.deleted", "message.deleted"]
    [(payload,)] = await db_rows(db_source, "SELECT payload FROM outbox"
                                            " WHERE event_type = 'message.deleted'"
                                            " AND payload->'message'->>'id' = %s", answer.id)
    assert payload["message"]["thread_root_id"] == root.id


async def test_a_member_who_cannot_see_a_root_cannot_read_or_answer_its_thread(stub):
    from tests.integration.test_members import add

    resp = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="private", history_visible_to_new_members=False),
        metadata=auth("alice"))
    cid = resp.conversation.id
    old = await send(stub, "alice", cid, "old")
    await reply(stub, "bob", cid, old.id, "old answer")
    await add(stub, "alice", cid, ["carol"])
    expected = await _not_found_details(stub)
    err = await rpc_error(get_thread(stub, "carol", cid, old.id))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, expected)
    err = await rpc_error(reply(stub, "carol", cid, old.id, "late"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    new = await send(stub, "bob", cid, "new")
    answered = await reply(stub, "carol", cid, new.id, "seen")
    assert [m.id for m in (await get_thread(stub, "carol", cid, new.id)).messages] == \
        [answered.id]
    assert [m.content for m in (await get_messages(stub, "carol", cid)).messages] == ["new"]


async def test_a_reply_to_a_deleted_root_is_refused_and_changes_nothing(stub, db_source):
    from tests.integration.test_message_changes import delete

    conv = await create_conversation(stub, "alice", ["bob"])
    root = await send(stub, "alice", conv.id, "question")
    await reply(stub, "bob", conv.id, root.id, "first answer")
    await delete(stub, "alice", conv.id, root.id)
    err = await rpc_error(reply(stub, "bob", conv.id, root.id, "too late"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err.details().startswith("thread_root_id:"), err.details()
    info = error_info(err)
    assert info is not None and info.reason == "ROOT_DELETED"
    assert info.metadata["field"] == "thread_root_id"
    # Nothing was written: no seq, no change, no event, the root's count unchanged.
    thread = await get_thread(stub, "bob", conv.id, root.id)
    assert thread.root.reply_count == 1 and [m.content for m in thread.messages] == [
        "first answer"]
    [(last_seq, last_pos)] = await db_rows(
        db_source, "SELECT last_seq, last_pos FROM conversations WHERE id = %s", conv.id)
    assert (last_seq, last_pos) == (2, 3)
    # A stranger still gets NOT_FOUND, not the root's state.
    assert (await rpc_error(reply(stub, "mallory", conv.id, root.id))).code() == \
        grpc.StatusCode.NOT_FOUND
    # A retry of a reply that was sent before the deletion is still the duplicate it was.
    key = uuid.uuid4().hex
    other = await send(stub, "alice", conv.id, "another question")
    await reply(stub, "bob", conv.id, other.id, "answer", key=key)
    await delete(stub, "alice", conv.id, other.id)
    err = await rpc_error(reply(stub, "bob", conv.id, other.id, "answer", key=key))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_replies_racing_the_roots_deletion_never_land_on_a_tombstone(stub, db_source):
    # A reply waits for the conversation's lock that the deletion holds, and then must see the
    # deletion: each reply either commits before it (and the root counts it) or is refused.
    from tests.integration.test_message_changes import delete

    for i in range(5):
        conv = await create_conversation(stub, "alice", ["bob"], title=f"race {i}")
        root = await send(stub, "alice", conv.id, "question")
        outcomes = await asyncio.gather(
            *(reply(stub, "bob", conv.id, root.id, f"r{i}") for i in range(8)),
            delete(stub, "alice", conv.id, root.id), return_exceptions=True)
        refused = [o for o in outcomes[:-1] if isinstance(o, grpc.aio.AioRpcError)]
        assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused), refused
        [(late, replies)] = await db_rows(
            db_source, "SELECT count(*) FILTER (WHERE c.pos > d.pos), count(*)"
                       " FROM conversation_changes c JOIN messages m ON m.id = c.message_id"
                       " JOIN conversation_changes d ON d.conversation_id = c.conversation_id"
                       "  AND d.change_type = 'message.deleted' AND d.message_id = %s"
                       " WHERE c.conversation_id = %s AND c.change_type = 'message.created'"
                       "  AND m.thread_root_id = %s", root.id, conv.id, root.id)
        assert late == 0 and replies == 8 - len(refused)
        [(counted,)] = await db_rows(db_source, "SELECT reply_count FROM messages WHERE id = %s",
                                     root.id)
        assert counted == replies
