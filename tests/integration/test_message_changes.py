"""EditMessage, DeleteMessage (tombstones), AddReaction and RemoveReaction over gRPC against
real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from chat_shared.protos.chat.v1 import chat_pb2

from tests.conftest import auth
from tests.helpers import (
    create_conversation,
    db_rows,
    error_info,
    get_messages,
    mark_as_read,
    rpc_error,
    send,
)


def edit(stub, caller: str, cid: str, mid: str, content: str):
    return stub.EditMessage(chat_pb2.EditMessageRequest(conversation_id=cid, message_id=mid,
                                                        content=content), metadata=auth(caller))


def delete(stub, caller: str, cid: str, mid: str):
    return stub.DeleteMessage(chat_pb2.DeleteMessageRequest(conversation_id=cid, message_id=mid),
                              metadata=auth(caller))


def react(stub, caller: str, cid: str, mid: str, emoji: str, add: bool = True):
    cls = chat_pb2.AddReactionRequest if add else chat_pb2.RemoveReactionRequest
    call = stub.AddReaction if add else stub.RemoveReaction
    return call(cls(conversation_id=cid, message_id=mid, emoji=emoji), metadata=auth(caller))


async def test_the_sender_edits_and_every_read_shows_the_new_version(stub, db_source) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, "first")
    assert msg.version == 1 and not msg.HasField("edited_at")
    edited = (await edit(stub, "alice", conv.id, msg.id, "second")).message
    assert (edited.content, edited.version, edited.seq) == ("second", 2, 1)
    assert edited.HasField("edited_at")
    [read] = (await get_messages(stub, "bob", conv.id)).messages
    assert (read.content, read.version) == ("second", 2)
    assert (await rpc_error(edit(stub, "bob", conv.id, msg.id, "x"))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    assert (await rpc_error(edit(stub, "mallory", conv.id, msg.id, "x"))).code() == \
        grpc.StatusCode.NOT_FOUND
    [(payload,)] = await db_rows(db_source, "SELECT payload FROM outbox"
                                            " WHERE event_type = 'message.updated'")
    assert payload["message"]["content"] == "second" and payload["message"]["version"] == 2


async def test_a_deleted_message_is_a_tombstone_everywhere_and_no_longer_unread(
        stub, db_source) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    secret = await send(stub, "alice", conv.id, "secret words")
    await send(stub, "alice", conv.id, "kept")
    await react(stub, "bob", conv.id, secret.id, "👍")
    gone = (await delete(stub, "alice", conv.id, secret.id)).message
    assert gone.deleted and gone.content == "" and gone.seq == 1 and not gone.reactions
    again = (await delete(stub, "alice", conv.id, secret.id)).message
    assert again.deleted
    page = await get_messages(stub, "bob", conv.id)
    assert [(m.seq, m.deleted, m.content) for m in page.messages] == [
        (2, False, "kept"), (1, True, "")]
    listed = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                         metadata=auth("bob"))
    assert listed.conversations[0].unread_count == 1
    assert (await mark_as_read(stub, "bob", conv.id, 1)).unread_count == 1
    # A tombstone is edited by nobody and takes no reactions: the state forbids it.
    for refused in (edit(stub, "alice", conv.id, secret.id, "back"),
                    react(stub, "bob", conv.id, secret.id, "👍")):
        err = await rpc_error(refused)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        info = error_info(err)
        assert info is not None and info.reason == "MESSAGE_DELETED"
    # Removing a reaction from it changes nothing (it has none): no error, no event.
    assert not (await react(stub, "bob", conv.id, secret.id, "👍", add=False)).message.reactions
    [(content,)] = await db_rows(db_source, "SELECT content FROM messages WHERE id = %s",
                                 secret.id)
    assert content == ""
    types = [t for (t,) in await db_rows(db_source, "SELECT change_type FROM"
                                                    " conversation_changes ORDER BY pos")]
    assert types == ["message.created", "message.created", "reaction.added", "message.deleted"]


async def test_only_the_sender_or_a_manager_deletes(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="t")
    msg = await send(stub, "bob", conv.id, "mine")
    assert (await rpc_error(delete(stub, "carol", conv.id, msg.id))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    assert (await delete(stub, "alice", conv.id, msg.id)).message.deleted


async def test_reactions_are_one_per_user_and_emoji_idempotent_and_aggregated(stub,
                                                                             db_source) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="t")
    msg = await send(stub, "alice", conv.id, "react to me")
    await react(stub, "bob", conv.id, msg.id, "👍")
    await react(stub, "bob", conv.id, msg.id, "👍")  # again: nothing changes
    await react(stub, "carol", conv.id, msg.id, "👍")
    after = (await react(stub, "carol", conv.id, msg.id, "👨‍👩‍👧")).message
    assert [(r.emoji, r.count, r.reacted_by_me) for r in after.reactions] == [
        ("👍", 2, True), ("👨‍👩‍👧", 1, True)]
    [seen] = (await get_messages(stub, "alice", conv.id)).messages
    assert [(r.emoji, r.count, r.reacted_by_me) for r in seen.reactions] == [
        ("👍", 2, False), ("👨‍👩‍👧", 1, False)]
    await react(stub, "bob", conv.id, msg.id, "👍", add=False)
    await react(stub, "bob", conv.id, msg.id, "👍", add=False)
    [seen] = (await get_messages(stub, "bob", conv.id)).messages
    assert [(r.emoji, r.count, r.reacted_by_me) for r in seen.reactions] == [
        ("👍", 1, False), ("👨‍👩‍👧", 1, False)]
    types = [t for (t,) in await db_rows(db_source, "SELECT event_type FROM outbox"
                                                    " ORDER BY id")]
    assert types.count("reaction.added") == 3 and types.count("reaction.removed") == 1


async def test_at_most_twenty_reactions_most_used_first(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, "many")
    faces = [chr(0x1F600 + i) for i in range(22)]
    for face in faces:
        await react(stub, "alice", conv.id, msg.id, face)
    await react(stub, "bob", conv.id, msg.id, faces[-1])
    [seen] = (await get_messages(stub, "bob", conv.id)).messages
    assert len(seen.reactions) == 20
    assert (seen.reactions[0].emoji, seen.reactions[0].count) == (faces[-1], 2)


@pytest.mark.parametrize("emoji", ["a", "👍👍", "1", " ", "👍 "])
async def test_an_emoji_is_exactly_one_emoji(stub, emoji: str) -> None:
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, "x")
    err = await rpc_error(react(stub, "alice", conv.id, msg.id, emoji))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("emoji")


async def test_a_member_who_left_changes_nothing_and_learns_nothing(stub) -> None:
    conv = await create_conversation(stub, "alice", ["bob", "carol"], title="t")
    mine = await send(stub, "bob", conv.id, "before I left")
    await stub.RemoveMember(chat_pb2.RemoveMemberRequest(conversation_id=conv.id,
                                                         user_id="bob"), metadata=auth("bob"))
    for call in (edit(stub, "bob", conv.id, mine.id, "after"),
                 delete(stub, "bob", conv.id, mine.id),
                 react(stub, "bob", conv.id, mine.id, "👍"),
                 react(stub, "bob", conv.id, mine.id, "👍", add=False)):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    [kept] = (await get_messages(stub, "alice", conv.id)).messages
    assert (kept.content, kept.version, kept.deleted, list(kept.reactions)) == (
        "before I left", 1, False, [])


async def _rows_holding(db_source: str, needle: str) -> list[str]:
    """Every table.column of the public schema whose text form holds ``needle`` somewhere."""
    columns = await db_rows(
        db_source, "SELECT c.table_name, c.column_name FROM information_schema.columns c"
                   " JOIN information_schema.tables t USING (table_schema, table_name)"
                   " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
                   "   AND c.data_type IN ('text', 'character varying', 'jsonb', 'json',"
                   "                       'tsvector', 'ARRAY', 'bytea')")
    assert ("outbox", "payload") in columns and ("messages", "content") in columns
    found = []
    for table, column in columns:
        [(n,)] = await db_rows(db_source, f'SELECT count(*) FROM "{table}"'  # noqa: S608
                                          f' WHERE "{column}"::text LIKE %s', f"%{needle}%")
        if n:
            found.append(f"{table}.{column}")
    return found


async def test_after_a_deletion_no_row_anywhere_holds_the_content(stub, db_source) -> None:
    # The message's events from before the deletion: one published (kept for retention), one
    # waiting, one dead-lettered; each held the content, and the deletion scrubs them all.
    word = f"quokka{uuid.uuid4().hex[:12]}"
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, f"the {word} secret")
    other = await send(stub, "alice", conv.id, f"another {word}x kept")
    await edit(stub, "alice", conv.id, msg.id, f"the {word} secret, edited")
    await db_rows(db_source, "UPDATE outbox SET published_at = now()"
                             " WHERE event_type = 'message.created' RETURNING id")
    await db_rows(db_source,
                  "INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq,"
                  " recipients, payload, created_at, attempts, last_error, tenant_id,"
                  " message_id)"
                  " SELECT gen_random_uuid(), event_type, conversation_id, seq, recipients,"
                  "  jsonb_set(payload, '{message,attachments}', '[{\"filename\": \"f.png\"}]'),"
                  "  created_at, 3, 'redis down', tenant_id, message_id FROM outbox"
                  " WHERE message_id = %s RETURNING id", msg.id)
    held = await _rows_holding(db_source, f"{word} secret")
    assert {"messages.content", "outbox.payload", "outbox_dead_letter.payload"} <= set(held)

    await delete(stub, "alice", conv.id, msg.id)
    assert await _rows_holding(db_source, f"{word} secret") == []
    [(vector,)] = await db_rows(db_source, "SELECT search_vector::text FROM messages"
                                           " WHERE id = %s", msg.id)
    assert word not in vector
    # Each earlier event is now the tombstone, in place (same event, position and version).
    events = await db_rows(db_source, "SELECT event_type, seq, payload -> 'message' FROM outbox"
                                      " WHERE payload -> 'message' ->> 'id' = %s ORDER BY id",
                           msg.id)
    assert [(t, s) for t, s, _ in events] == [("message.created", 1), ("message.updated", 3),
                                               ("message.deleted", 4)]
    for _, _, m in events:
        assert (m["content"], m["deleted"], "attachments" in m) == ("", True, False)
    assert [m["version"] for _, _, m in events] == [1, 2, 2]
    dead = await db_rows(db_source, "SELECT payload -> 'message' FROM outbox_dead_letter")
    assert dead and all((m["content"], m["deleted"], "attachments" in m) == ("", True, False)
                        for (m,) in dead)
    # The other message, with the same word in it, is untouched everywhere.
    [(kept,)] = await db_rows(db_source, "SELECT payload -> 'message' ->> 'content' FROM outbox"
                                         " WHERE payload -> 'message' ->> 'id' = %s", other.id)
    assert kept == f"another {word}x kept"


async def test_the_scrub_finds_a_messages_events_by_index_under_row_level_security(
        stub, db_source) -> None:
    # The API's role sees the outbox through the tenant policy, under which only leakproof
    # conditions may drive an index: the message's events must still be an index lookup, not a
    # scan of the retention window (seqscan off: is the index usable at all?).
    import psycopg

    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, "hello")
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await conn.execute("SET ROLE chat_app")
        await conn.execute("SELECT set_config('app.tenant_id', 'default', false)")
        await conn.execute("SET enable_seqscan = off")
        for table, index in (("outbox", "ix_outbox_message"),
                             ("outbox_dead_letter", "ix_outbox_dead_letter_message")):
            plan = "\n".join(r[0] for r in await (await conn.execute(
                f"EXPLAIN SELECT id FROM {table} WHERE tenant_id = 'default'"  # noqa: S608
                f" AND message_id = %s", (msg.id,))).fetchall())
            assert index in plan, plan
        [(found,)] = await (await conn.execute(
            "SELECT count(*) FROM outbox WHERE tenant_id = 'default' AND message_id = %s",
            (msg.id,))).fetchall()
        assert found == 1


async def test_a_refused_or_empty_change_takes_no_position_and_writes_nothing(stub,
                                                                           db_source) -> None:
    # An edit or a reaction decides in the statement that would take the position: what it
    # refuses (not the sender, a tombstone) or finds already done (a reaction there, one not
    # there) must leave the change log, the outbox and the message as they were.
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    msg = await send(stub, "alice", conv.id, "hello")
    gone = await send(stub, "alice", conv.id, "soon gone")
    await react(stub, "bob", conv.id, msg.id, "👍")
    await delete(stub, "alice", conv.id, gone.id)
    before = await db_rows(db_source, "SELECT pos, change_type FROM conversation_changes"
                                      " ORDER BY pos")
    outbox = await db_rows(db_source, "SELECT count(*) FROM outbox")
    for refused in (edit(stub, "bob", conv.id, msg.id, "not mine"),
                    edit(stub, "alice", conv.id, gone.id, "back"),
                    react(stub, "bob", conv.id, gone.id, "🎉")):
        assert (await rpc_error(refused)).code() in (grpc.StatusCode.PERMISSION_DENIED,
                                                     grpc.StatusCode.FAILED_PRECONDITION)
    same = (await react(stub, "bob", conv.id, msg.id, "👍")).message
    assert [(r.emoji, r.count, r.reacted_by_me) for r in same.reactions] == [("👍", 1, True)]
    absent = (await react(stub, "alice", conv.id, msg.id, "🎉", add=False)).message
    assert (absent.content, absent.version) == ("hello", 1)
    assert await db_rows(db_source, "SELECT pos, change_type FROM conversation_changes"
                                    " ORDER BY pos") == before
    assert await db_rows(db_source, "SELECT count(*) FROM outbox") == outbox
    # The next change takes the next position: none was taken and left unused.
    await edit(stub, "alice", conv.id, msg.id, "edited")
    [(pos, kind)] = await db_rows(db_source, "SELECT pos, change_type FROM conversation_changes"
                                             " ORDER BY pos DESC LIMIT 1")
    assert (pos, kind) == (before[-1][0] + 1, "message.updated")


async def test_an_edit_racing_a_deletion_never_brings_the_content_back(stub, db_source) -> None:
    # Each edit reads the message in a statement whose snapshot follows the conversation's
    # row lock: one that waited for a deletion's lock sees the tombstone and is refused, never
    # writes content into it, and no position is taken twice or left unused.
    conv = await create_conversation(stub, "alice", ["bob"], title="t")
    messages = [await send(stub, "alice", conv.id, f"m{i}") for i in range(12)]
    outcomes = []
    for i, msg in enumerate(messages):
        calls = [edit(stub, "alice", conv.id, msg.id, f"edited {i}"),
                 delete(stub, "alice", conv.id, msg.id)]
        if i % 2:
            calls.reverse()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() == grpc.StatusCode.FAILED_PRECONDITION, result
                outcomes.append("refused")
    page = await get_messages(stub, "bob", conv.id, limit=50)
    assert all(m.deleted and m.content == "" for m in page.messages)
    rows = await db_rows(db_source, "SELECT pos, change_type, message_id::text"
                                    " FROM conversation_changes ORDER BY pos")
    assert [pos for pos, _, _ in rows] == list(range(1, len(rows) + 1))
    for msg in messages:
        kinds = [kind for _, kind, mid in rows if mid == msg.id]
        assert kinds[-1] == "message.deleted" and kinds.count("message.deleted") == 1, kinds
    [(content,)] = await db_rows(db_source, "SELECT count(*) FROM messages"
                                            " WHERE deleted_at IS NOT NULL AND content <> ''")
    assert content == 0
    edits = sum(kind == "message.updated" for _, kind, _ in rows)
    assert edits + len(outcomes) == len(messages)
