"""The plain send statement (``_SEND_PLAIN``: a root-level message without attachments) has
the same effects as the general one (``_SEND``) for such a message: the same row, the same
conversation, member, change-log and outbox rows (event payload included), the same answer to
a repeated key and to a non-member. The API picks the plain one for most sends
(``send_statement``) because its plan is smaller (docs/performance.md)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import psycopg._queries
from psycopg.adapt import Transformer

from chat_api.models import CiphertextRecord, StoredUpload
from chat_api.storage.messages import _SEND, _SEND_PLAIN, send_params, send_statement

MEMBERS = ["alice", "bob", "carol"]


def _ids(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012x}"


def _same(row: Any, conversation: str) -> Any:
    """A row with the values that differ by design (ids, times, the conversation) masked."""
    text = json.dumps(row, default=str)
    return json.loads(text.replace(conversation, "<conversation>"))


async def _state(conn: psycopg.AsyncConnection[Any], conversation: str) -> dict[str, Any]:
    async def rows(sql: str) -> list[Any]:
        cur = await conn.execute(sql, {"c": conversation})
        return [list(r) for r in await cur.fetchall()]

    return _same({
        "conversation": await rows(
            "SELECT last_seq, last_pos, last_root_seq, last_message_at = last_activity_at,"
            " member_ids FROM conversations WHERE id = %(c)s"),
        "members": await rows(
            "SELECT m.user_id, m.last_read_seq, m.deleted_unread,"
            " m.last_activity_at = c.last_activity_at FROM conversation_members m"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE m.conversation_id = %(c)s ORDER BY m.user_id"),
        "messages": await rows(
            "SELECT seq, root_seq, sender_id, content, idempotency_key, thread_root_id,"
            " thread_seq, reply_count, version, search_vector::text,"
            " created_at = (SELECT last_message_at FROM conversations WHERE id = %(c)s)"
            " OR seq < (SELECT last_seq FROM conversations WHERE id = %(c)s)"
            " FROM messages WHERE conversation_id = %(c)s ORDER BY seq"),
        "changes": await rows(
            "SELECT ch.pos, ch.change_type, m.seq, ch.user_id, ch.actor_id"
            " FROM conversation_changes ch JOIN messages m ON m.id = ch.message_id"
            " WHERE ch.conversation_id = %(c)s ORDER BY ch.pos"),
        "outbox": await rows(
            "SELECT o.event_type, o.seq, o.recipients,"
            " o.payload #- '{message,id}' #- '{message,created_at}',"
            " o.payload #>> '{message,id}' = m.id::text,"
            " o.payload #>> '{message,created_at}' ="
            "   to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            " FROM outbox o JOIN messages m ON m.conversation_id = o.conversation_id"
            "  AND m.seq = o.seq WHERE o.conversation_id = %(c)s ORDER BY o.id"),
    }, conversation)


async def test_the_plain_send_has_the_general_sends_effects(db_source: str) -> None:
    assert send_statement(None, None) is _SEND_PLAIN and send_statement([], None) is _SEND_PLAIN
    assert send_statement(["x"], None) is _SEND and send_statement(None, _ids(9)) is _SEND
    # An end-to-end encrypted message takes the general statement (the plain one has no
    # ciphertext).
    assert send_statement(None, None, CiphertextRecord("m.megolm.v1.aes-sha2", "D", b"x")) \
        is _SEND
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as owner:
        for n in (1, 2, 3):
            await owner.execute(
                "INSERT INTO conversations (id, title, created_by, member_ids, encrypted)"
                " VALUES (%s, 't', 'alice', %s, %s)", (_ids(n), MEMBERS, n == 3))
            for user in MEMBERS:
                await owner.execute(
                    "INSERT INTO conversation_members (conversation_id, user_id,"
                    " last_activity_at) VALUES (%s, %s, '2026-01-01')", (_ids(n), user))
        answers: dict[int, list[Any]] = {1: [], 2: []}
        async with await psycopg.AsyncConnection.connect(
                db_source, autocommit=True, options="-c role=chat_app") as app:
            await app.execute("SELECT set_config('app.tenant_id', 'default', false)")
            # Sends by several members, a repeated key (answered with the original, flagged),
            # and a non-member (nothing sent), through each statement in turn.
            calls = [("alice", "hello", "k1"), ("bob", "hi there", "k2"),
                     ("alice", "hello", "k1"), ("mallory", "let me in", "k3"),
                     ("carol", "café über", "k4"), ("alice", "again", "k5")]
            for sender, content, key in calls:
                for n, sql in ((1, _SEND), (2, _SEND_PLAIN)):
                    cur = await app.execute(sql, send_params(
                        "default", _ids(n), sender, content, f"{n}-{key}"))
                    answers[n].append([_same([r[0], *r[3:6], *r[7:]], _ids(n))
                                       for r in await cur.fetchall()])
            # Content into an end-to-end encrypted conversation: neither statement sends it.
            for sql in (_SEND, _SEND_PLAIN):
                cur = await app.execute(sql, send_params("default", _ids(3), "alice", "hi", "e"))
                assert await cur.fetchall() == []
        assert answers[1] == answers[2]
        assert [len(a) for a in answers[1]] == [1, 1, 1, 0, 1, 1]
        assert answers[1][2][0][0] is True  # the repeated key: the original, flagged
        general, plain = await _state(owner, _ids(1)), await _state(owner, _ids(2))
    for part in general:  # the keys differ by their statement's prefix only
        assert json.dumps(plain[part]).replace('"2-k', '"1-k') == json.dumps(general[part]), part
    assert len(general["messages"]) == len(general["changes"]) == 4
    assert len(general["outbox"]) == 4


def test_psycopg_caches_the_conversion_of_both_send_statements() -> None:
    # Unless cached, a statement's placeholders are converted again on every execution:
    # 0.17-0.37 ms of the API's CPU for the general one (chat_shared.db raises psycopg's limit).
    params = send_params(_ids(0), _ids(1), "alice", "hi", "k",
                         [StoredUpload(_ids(2), 10, "application/pdf")])
    for sql in (_SEND_PLAIN, _SEND):
        assert len(sql.encode()) <= psycopg._queries.MAX_CACHED_STATEMENT_LENGTH
        psycopg._queries.PostgresQuery(Transformer()).convert(sql, params)
        hits = psycopg._queries._query2pg.cache_info().hits
        psycopg._queries.PostgresQuery(Transformer()).convert(sql, params)
        assert psycopg._queries._query2pg.cache_info().hits == hits + 1
