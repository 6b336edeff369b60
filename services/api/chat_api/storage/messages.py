"""Messages: the send transaction (message + outbox event in one statement) and history."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg.errors
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from chat_api.models import CiphertextRecord, MessageRecord, StoredUpload
from chat_api.storage.rows import (
    ATTACHMENTS_AGG,
    ATTACHMENTS_JSON,
    ciphertext_json,
    message_columns,
    message_from,
)
from chat_shared.db import Database, commit
from chat_shared.events import MESSAGE_CREATED, payload_sql
from chat_shared.replica_reads import ReplicaReads

IDEMPOTENCY_CONSTRAINT = "uq_messages_sender_idempotency_key"

EXACT_ORDER_MEMBERS = 32
"""Up to this many members a send moves the conversation up every member's list at once;
above it, at most once a second (see ``_SEND``)."""

# The event's payload as the event contract describes it (built and checked at import). The
# attachments (the ``att`` CTE's rows) are NULL for a message without any, and ``payload_sql``
# then leaves the optional field out. No thumbnail is ready yet at the send.
_MESSAGE_CREATED_PAYLOAD = payload_sql(MESSAGE_CREATED, {"message": {
    "id": "msg.id", "conversation_id": "msg.conversation_id", "sender_id": "msg.sender_id",
    "content": "msg.content", "seq": "msg.seq", "created_at": "msg.created_at",
    "version": "msg.version", "edited_at": "msg.edited_at", "deleted": "false",
    "thread_root_id": "msg.thread_root_id", "ciphertext": "msg.ciphertext",
    "attachments": "(SELECT jsonb_agg(jsonb_build_object('id', att.id, 'filename', att.filename,"
                   " 'content_type', att.content_type, 'size_bytes', att.size_bytes,"
                   " 'width', 0, 'height', 0, 'thumbnail_ready', false)"
                   " ORDER BY att.position) FROM att)"}})

# A plain send's (``_SEND_PLAIN``): no attachments and no thread root, so the optional fields
# are left out as ``payload_sql`` leaves NULL ones out of the general payload.
_PLAIN_MESSAGE_CREATED_PAYLOAD = payload_sql(MESSAGE_CREATED, {"message": {
    "id": "msg.id", "conversation_id": "msg.conversation_id", "sender_id": "msg.sender_id",
    "content": "msg.content", "seq": "msg.seq", "created_at": "msg.created_at",
    "version": "msg.version", "edited_at": "msg.edited_at", "deleted": "false"}})

MAX_REACTIONS = 20
"""A message shows its 20 most used reactions (ties by emoji)."""

# One statement, one round trip: take the conversation's row lock while incrementing last_seq
# (only for a member), insert the message with that seq, write its outbox event with the
# members as recipients, and update the member rows: every member's copy of the
# conversation's last activity (the order of their conversation lists) and the sender's read
# position (one UPDATE for both: a row that two parts of one statement update keeps only one
# of the changes).
#
# The message's time is never earlier than the conversation's last activity (GREATEST): within
# a conversation, created_at never decreases with seq, even if the clock steps back, which is
# what lets a page "before a time" start from one index probe (``_PAGE["before_time"]``).
#
# The member rows make a send cost O(members): one row version and two index entries per
# member, about 13 us each (docs/performance.md, "The conversation list"). So a conversation
# of more than EXACT_ORDER_MEMBERS members rewrites its other members' rows at most once a
# second (when their copy is a second or more behind): their conversation lists order it to
# the second, and a busy 1,000-member conversation pays the 13 ms once a second instead of on
# every send. Smaller conversations (nearly all of them) stay exact.
#
# Positions: the same row update takes the message's seq and the change's pos (both gapless,
# see chat_shared.events "Positions"), writes the change log row and the event at that pos.
# Membership is checked on the conversation row's own copy (member_ids) besides the member
# row: after waiting for the row lock, PostgreSQL re-reads the locked row, not the sub-select,
# so a send that waited for a RemoveMember of its sender is refused.
#
# Attachments (docs/attachments.md): ``ready`` locks the listed uploads that are still free
# (uploaded by the sender to this conversation, not attached) and that the store holds as their
# rows declare (the caller's probe of each upload's object, ``<tenant>/<conversation>/<id>``,
# found the size and type passed in ``attachment_sizes`` and ``attachment_types``, at the
# upload's position in ``attachment_ids``), and the statement sends only when every listed one
# is (``conv``'s count condition); so checking an upload costs the send no statement of its
# own: the rows are read only to say why a send was refused. ``att`` then moves them to the
# message in the same statement, so a message and its attachments commit together, and an
# upload belongs to one message: a concurrent send of the same upload waits on the row lock,
# then finds it attached and sends nothing (the caller tells that apart,
# ``MessageRepository.send``).
# ``ready`` runs before ``conv`` takes a position, so a send that finds an upload taken takes
# no seq and no pos (both stay gapless).
#
# Idempotency, without burning a seq (seq stays gapless): a key that already names a committed
# message (``prior``, one probe of the unique index) stops the statement before the row lock,
# and the statement answers with that original, flagged as a duplicate: a retry costs one read,
# no lock, no aborted write, no error. Concurrent sends of one key that all miss ``prior`` meet
# at the unique constraint, which aborts the later statements whole (UniqueViolation).
#
# Threads (migration 0009): a reply (``thread_root_id`` given) is sent only when the root is a
# root-level message of the same conversation that the sender may see and that is not deleted
# (``root``, one probe of the primary key and one of the sender's membership:
# ``visible_from_seq``). A reply runs after ``_LOCK_FOR_REPLY`` in the same transaction, so
# ``root`` reads a snapshot taken under the conversation's lock, which DeleteMessage takes
# too: a root deleted while the reply waited is seen as deleted (read before the lock, the
# deletion would be missed and the reply attached to a tombstone). The
# root's ``reply_count`` and ``last_reply_at`` are updated here (``thread``), after the
# conversation's row lock, which serialises the conversation's sends, so the counter is exact
# and the reply's ``thread_seq`` (the new count) gapless. A root-level message takes the next
# ``last_root_seq``; a reply keeps the current one (see the migration for why both exist).
# Nothing sent when the root is missing, deleted or a reply: the caller asks
# ``thread_root_state`` why.
#
# Two statements from this one text (``_send_sql``): the general one, and a plain one for a
# root-level message without attachments (most sends), without the attachment and thread CTEs.
# PostgreSQL builds every node of a plan on each execution, run or not: the plain plan costs
# 12% less of PostgreSQL's CPU per send (0.96 -> 0.84 ms, interleaved batches as chat_app,
# bench-like conversations of 2-50 members). tests/integration/test_send_statements.py holds
# the two to the same effects.
def _unindented(sql: str) -> str:
    """``sql`` without its lines' indentation (no literal or comment here spans lines).

    psycopg caches the conversion of a statement's ``%(name)s`` placeholders only for a
    statement of at most 4,096 characters by default (``psycopg._queries.
    MAX_CACHED_STATEMENT_LENGTH``) and converts a longer one again on every execution: 39 us
    of the API's CPU per plain send (4,389 characters; 3,607 unindented, then 2.8 us),
    measured with timeit under load 7-9. ``chat_shared.db`` now raises that limit (the general
    statement is 6,395 characters even unindented); shorter texts still cost less to encode
    and hash.
    """
    return re.sub(r"\n +", "\n", sql)


def _send_sql(general: bool) -> str:
    """The send statement (see above). ``general`` takes attachments and replies; the plain one
    (``general=False``), for a root-level message without attachments, leaves out the CTEs and
    conditions that only those need, so PostgreSQL builds and runs a smaller plan for the sends
    made most."""
    ready_root = """, ready AS (
        SELECT a.id FROM attachments a
        WHERE a.tenant_id = %(tenant)s AND a.id = ANY(CAST(%(attachment_ids)s AS uuid[]))
          AND a.conversation_id = %(conversation_id)s AND a.uploader = %(sender_id)s
          AND a.status = 'uploaded'
          AND a.object_key = concat(a.tenant_id, '/', a.conversation_id, '/', a.id)
          AND (a.size_bytes, a.content_type) = (
              (CAST(%(attachment_sizes)s AS bigint[]))[
                  array_position(CAST(%(attachment_ids)s AS uuid[]), a.id)],
              (CAST(%(attachment_types)s AS text[]))[
                  array_position(CAST(%(attachment_ids)s AS uuid[]), a.id)])
          AND NOT EXISTS (SELECT 1 FROM prior)
        FOR UPDATE
    ), root AS (
        SELECT r.id FROM messages r
        JOIN conversation_members rm ON rm.tenant_id = r.tenant_id
         AND rm.conversation_id = r.conversation_id AND rm.user_id = %(sender_id)s
        WHERE r.tenant_id = %(tenant)s AND r.id = CAST(%(thread_root_id)s AS uuid)
          AND r.conversation_id = %(conversation_id)s AND r.thread_root_id IS NULL
          AND r.seq > rm.visible_from_seq AND r.deleted_at IS NULL
    )""" if general else ""
    root_step = ("""
                               + CASE WHEN CAST(%(thread_root_id)s AS uuid) IS NULL THEN 1
                                      ELSE 0 END""" if general else " + 1")
    conditions = """
           AND (SELECT count(*) FROM ready) = cardinality(CAST(%(attachment_ids)s AS uuid[]))""" \
        if general else ""
    reply_condition = """
           AND (CAST(%(thread_root_id)s AS uuid) IS NULL OR EXISTS (SELECT 1 FROM root))""" \
        if general else ""
    # End-to-end encryption: the general statement sends ciphertext into an encrypted
    # conversation only, from a device the sender registered, and content into a plain one
    # only; the plain statement carries no ciphertext, so it only refuses an encrypted
    # conversation (one column of the row it locks anyway).
    encryption = """
           AND c.encrypted = (CAST(%(ciphertext)s AS jsonb) IS NOT NULL)
           AND (CAST(%(ciphertext)s AS jsonb) IS NULL OR EXISTS (
                SELECT 1 FROM e2ee_devices d
                 WHERE d.tenant_id = c.tenant_id AND d.user_id = %(sender_id)s
                   AND d.device_id = CAST(%(ciphertext)s AS jsonb) ->> 'sender_device'))""" \
        if general else """
           AND NOT c.encrypted"""
    # ``thread`` is gated on the parameter itself (a one-time filter, in custom and generic
    # plans alike), not only on joining ``root``: a root-level send (attachments, ciphertext)
    # then never reads ``messages`` here, even where the planner, with statistics not yet
    # gathered (a new table), would scan the tenant's messages to join an empty ``root``.
    thread = """
    ), thread AS (
        UPDATE messages r
           SET reply_count = r.reply_count + 1, last_reply_at = conv.last_message_at
          FROM conv, root
         WHERE r.tenant_id = %(tenant)s AND r.id = root.id
           AND CAST(%(thread_root_id)s AS uuid) IS NOT NULL
        RETURNING r.id, r.reply_count""" if general else ""
    insert = (f"""
    ), msg AS (
        INSERT INTO messages (tenant_id, id, conversation_id, seq, sender_id, content,
                              idempotency_key, created_at, thread_root_id, root_seq, thread_seq,
                              ciphertext)
        SELECT %(tenant)s, gen_random_uuid(), conv.id, conv.last_seq, %(sender_id)s, %(content)s,
               %(idempotency_key)s, conv.last_message_at, thread.id, conv.last_root_seq,
               thread.reply_count, CAST(%(ciphertext)s AS jsonb)
        FROM conv LEFT JOIN thread ON true
        RETURNING {message_columns("messages")}""" if general else f"""
    ), msg AS (
        INSERT INTO messages (tenant_id, id, conversation_id, seq, sender_id, content,
                              idempotency_key, created_at, root_seq)
        SELECT %(tenant)s, gen_random_uuid(), conv.id, conv.last_seq, %(sender_id)s, %(content)s,
               %(idempotency_key)s, conv.last_message_at, conv.last_root_seq
        FROM conv
        RETURNING {message_columns("messages")}""")
    attach = """
    ), att AS (
        UPDATE attachments a
           SET status = 'attached', message_id = msg.id,
               position = array_position(CAST(%(attachment_ids)s AS uuid[]), a.id)
          FROM msg
         WHERE a.tenant_id = %(tenant)s AND a.id IN (SELECT id FROM ready)
        RETURNING a.id, a.filename, a.content_type, a.size_bytes, a.position""" \
        if general else ""
    payload = _MESSAGE_CREATED_PAYLOAD if general else _PLAIN_MESSAGE_CREATED_PAYLOAD
    attachments = """(SELECT coalesce(jsonb_agg(jsonb_build_object(
                'id', att.id, 'filename', att.filename, 'content_type', att.content_type,
                'size_bytes', att.size_bytes, 'width', 0, 'height', 0,
                'thumbnail_ready', false) ORDER BY att.position), '[]'::jsonb) FROM att)""" \
        if general else "'[]'::jsonb"
    return _unindented(f"""
    WITH prior AS (
        SELECT {message_columns("p")} FROM messages p
        WHERE p.tenant_id = %(tenant)s AND p.sender_id = %(sender_id)s
          AND p.idempotency_key = %(idempotency_key)s
    ){ready_root}, conv AS (
        UPDATE conversations c
           SET last_seq = c.last_seq + 1,
               last_pos = c.last_pos + 1,
               last_root_seq = c.last_root_seq{root_step},
               last_message_at = GREATEST(now.t, c.last_activity_at),
               last_activity_at = GREATEST(now.t, c.last_activity_at)
          FROM (SELECT clock_timestamp() AS t) now
         WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
           AND NOT EXISTS (SELECT 1 FROM prior)
           AND c.member_ids @> ARRAY[CAST(%(sender_id)s AS text)]{conditions}
           AND EXISTS (SELECT 1 FROM conversation_members m
                        WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id
                          AND m.user_id = %(sender_id)s){reply_condition}{encryption}
        RETURNING c.id, c.last_seq, c.last_pos, c.last_root_seq, c.last_message_at,
                  c.member_ids, cardinality(c.member_ids) AS members{thread}{insert}
    ), chg AS (
        INSERT INTO conversation_changes (tenant_id, conversation_id, pos, change_type,
                                          message_id, user_id, actor_id)
        SELECT %(tenant)s, conv.id, conv.last_pos, '{MESSAGE_CREATED}', msg.id, msg.sender_id,
               msg.sender_id
        FROM msg, conv{attach}
    ), evt AS (
        INSERT INTO outbox (tenant_id, event_id, event_type, conversation_id, seq, recipients,
                            payload, message_id)
        SELECT %(tenant)s, gen_random_uuid(), '{MESSAGE_CREATED}', msg.conversation_id,
               conv.last_pos, conv.member_ids, {payload}, msg.id
        FROM msg, conv
    ), members AS (
        -- Sending implies having read the conversation up to one's own message, so a user's
        -- own messages never count as unread for them.
        UPDATE conversation_members m
           SET last_activity_at = conv.last_message_at,
               last_read_seq = CASE WHEN m.user_id = %(sender_id)s
                                    THEN GREATEST(m.last_read_seq, conv.last_seq)
                                    ELSE m.last_read_seq END,
               deleted_unread = CASE WHEN m.user_id = %(sender_id)s THEN 0
                                     ELSE m.deleted_unread END
          FROM conv
         WHERE m.tenant_id = %(tenant)s AND m.conversation_id = conv.id
           AND (m.user_id = %(sender_id)s
                OR conv.members <= {EXACT_ORDER_MEMBERS}  -- not the array: once per row
                OR m.last_activity_at <= conv.last_message_at - interval '1 second')
    )
    SELECT false, *, {attachments}
    FROM msg
    UNION ALL
    SELECT true, *, """ + ATTACHMENTS_JSON.format(tenant="%(tenant)s", message="prior.id") + """
    FROM prior
    """)


_SEND = _send_sql(general=True)
"""Any send: with attachments, a reply, ciphertext, or several of them."""
_SEND_PLAIN = _send_sql(general=False)
"""A root-level message without attachments or ciphertext (most sends): the same effects as
``_SEND``'s for such a message, with a plan that has no attachment, thread or device steps."""


def send_statement(attachments: Sequence[object] | None, thread_root_id: str | None,
                   ciphertext: CiphertextRecord | None = None) -> str:
    """The send statement for these values: ``_SEND_PLAIN`` when it can do the send (no
    attachments, not a reply, not an end-to-end encrypted message: the plain statement takes
    no ciphertext)."""
    return (_SEND if attachments or thread_root_id is not None or ciphertext is not None
            else _SEND_PLAIN)


# Membership, the conversation's encryption, and whether the device is the user's.
_SEND_REFUSAL = """
    SELECT c.encrypted, EXISTS (SELECT 1 FROM e2ee_devices d
                                 WHERE d.tenant_id = c.tenant_id AND d.user_id = %(user_id)s
                                   AND d.device_id = %(device)s)
    FROM conversations c
    JOIN conversation_members m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id
     AND m.user_id = %(user_id)s
    WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
    """

_BY_KEY = f"""
    SELECT {message_columns("m")},
           """ + ATTACHMENTS_JSON.format(tenant="m.tenant_id", message="m.id") + """
    FROM messages m
    WHERE m.tenant_id = %(tenant)s AND m.sender_id = %(sender_id)s
      AND m.idempotency_key = %(idempotency_key)s
    """

# The reactions of a message in the page, aggregated in the page's own statement (one index
# range of message_reactions per message of the page, empty for most): the 20 most used, each
# as [emoji, count, whether the caller is among them]. As JSON text (json, not jsonb: cheaper
# to build, and the text is what the API wants): psycopg hands text over as it is, and
# ``rows.reactions_from`` parses each distinct text once (the same sets recur on many messages).
def reactions_sql(alias: str) -> str:
    """The aggregated reactions of the messages row ``alias`` (``rows.message_from`` reads them
    with ``reactions=True``)."""
    return f"""
        (SELECT CAST(json_agg(json_build_array(rx.emoji, rx.n, rx.mine)
                              ORDER BY rx.n DESC, rx.emoji) AS text)
           FROM (SELECT x.emoji, count(*) AS n, bool_or(x.user_id = %(user_id)s) AS mine
                   FROM message_reactions x
                  WHERE x.tenant_id = %(tenant)s AND x.message_id = {alias}.id
                  GROUP BY x.emoji ORDER BY count(*) DESC, x.emoji LIMIT {MAX_REACTIONS}) rx)
"""


REACTIONS_SQL = reactions_sql("m")


def page_columns(alias: str) -> str:
    """What a read that returns messages selects of the messages row ``alias``: its columns
    with the ids as text, its attachments (NULL for none) and its reactions (``message_from``
    with ``attachments=True, reactions=True`` reads them). Not for a CTE whose ids the
    statement compares with uuid columns (``rows.message_columns``)."""
    return (f"{message_columns(alias, text_ids=True)}, "
            f"{ATTACHMENTS_AGG.format(tenant=f'{alias}.tenant_id', message=f'{alias}.id')}, "
            f"{reactions_sql(alias)}")


PAGE_COLUMNS = page_columns("m")

# The conversation's row lock a reply takes before ``_SEND`` (see there); the send's own
# UPDATE takes the same lock.
_LOCK_FOR_REPLY = """
    SELECT 1 FROM conversations c
    WHERE c.tenant_id = %(tenant)s AND c.id = %(conversation_id)s
    FOR NO KEY UPDATE
    """

# Why a reply was not sent: membership (no row: not a member), then the root (NULLs: no such
# message in the conversation; column 0 false: the root is itself a reply; column 1 true: the
# root is deleted).
_THREAD_ROOT_STATE = """
    SELECT r.thread_root_id IS NULL, r.deleted_at IS NOT NULL
    FROM conversation_members cm
    LEFT JOIN messages r ON r.tenant_id = cm.tenant_id AND r.id = CAST(%(root_id)s AS uuid)
     AND r.conversation_id = cm.conversation_id AND r.seq > cm.visible_from_seq
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
    """

# The membership row drives a lateral page of messages: no row at all means "not a member or
# no such conversation"; one row of NULLs means "a member, and the page is empty".
#
# seq is gapless (1..last_seq, never deleted), so a page by seq is also a seq *range*, and
# the range is in the WHERE clause, not only in ORDER BY ... LIMIT. That keeps the statement's
# cost bounded by the page size whatever plan PostgreSQL picks: with statistics that think a
# conversation holds a few dozen rows (they always do for a new, busy one), the planner chose a
# bitmap scan of the *whole* conversation plus a sort, 1.07 ms for 3,000 messages instead of
# 0.045 ms, and the cost grew with the conversation. Measured on the bench data set.
# (The CASTs: psycopg sends a small Python int as smallint, and smallint + smallint overflows.)
#
# A member added to a conversation that hides its history sees the messages after
# ``visible_from_seq`` only (0 for everyone else).
_PAGE_HEAD = f"""
    SELECT p.* FROM conversation_members cm
    JOIN conversations c ON c.tenant_id = cm.tenant_id AND c.id = cm.conversation_id
    LEFT JOIN LATERAL (
        SELECT {PAGE_COLUMNS}
        FROM messages m
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = cm.conversation_id
          AND m.seq > cm.visible_from_seq
"""
_PAGE_TAIL = """
    ) p ON true
    WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
      AND cm.user_id = %(user_id)s
"""
# The seq of the newest message older than %(before)s: the newest time before it (one
# backward probe of ix_messages_conversation_created), then the highest seq at exactly that
# time (messages may share a timestamp). created_at never decreases with seq within a
# conversation (``_SEND``), so every message up to that seq is older too. Computed for the
# conversation named, member or not: the page below joins it only to a membership row.
_BEFORE_TIME_POSITION = """
    WITH pos AS (
        SELECT max(s.seq) AS k, max(s.seq) - CAST(%(limit)s AS bigint) AS lo FROM messages s
        WHERE s.tenant_id = %(tenant)s AND s.conversation_id = %(conversation_id)s
          AND s.created_at = (SELECT max(t.created_at) FROM messages t
                              WHERE t.tenant_id = %(tenant)s
                                AND t.conversation_id = %(conversation_id)s
                                AND t.created_at < %(before)s)
    )
"""
_PAGE = {
    "newest": _PAGE_HEAD + " AND m.seq > c.last_seq - CAST(%(limit)s AS bigint)"
              " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    "before_seq": _PAGE_HEAD + " AND m.seq < %(cursor)s"
                  " AND m.seq >= CAST(%(cursor)s AS bigint) - CAST(%(limit)s AS bigint)"
                  " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    # A time is a position too: the newest message before it is found through the
    # (conversation_id, created_at) index in one probe (``_BEFORE_TIME_POSITION``), and the page
    # is then the seq range below it, like any other page. (Walking the seq index backwards
    # with created_at as a filter read every newer message: 207 ms with 1,000,000 newer.)
    # The bounds are joined columns (``pos.k``, ``pos.lo``), not sub-selects or arithmetic on
    # a column: under row-level security only leakproof conditions may run before the tenant
    # policy, and neither a sub-select nor int8 subtraction (it can overflow) is leakproof, so
    # such a bound could not be an index condition and the page read every older message
    # (50,002 rows instead of 51: tests/integration/test_plan_stability.py).
    "before_time": _BEFORE_TIME_POSITION
                   + _PAGE_HEAD.replace("FROM messages m\n", "FROM pos, messages m\n")
                   + " AND m.seq <= pos.k"
                     " AND m.seq > pos.lo"
                     " AND m.created_at < %(before)s"
                     " ORDER BY m.seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC",
    "after_seq": _PAGE_HEAD + " AND m.seq > %(cursor)s"
                 " AND m.seq <= CAST(%(cursor)s AS bigint) + CAST(%(limit)s AS bigint)"
                 " ORDER BY m.seq ASC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq ASC",
}


# The main timeline (root-level messages only): a page is a range of root_seq, the gapless
# position among root-level messages (migration 0009), read from uq_messages_root_seq; so,
# as for the seq ranges above, the statement reads one page whatever plan PostgreSQL picks and
# however many replies sit between the roots. A seq cursor becomes a root_seq bound with one
# probe of uq_messages_conversation_seq (``at``): every message's root_seq counts the root-level
# messages up to it, so the roots before seq s are those up to root_seq(s), less s itself when
# s is a root, and the roots after s are those above root_seq(s). A cursor of 0 is the start; a
# cursor past the newest message (no row at it) is the end, last_root_seq.
#
# The bounds are the columns ``b.hi`` and ``b.lo`` of a subquery that PostgreSQL cannot merge
# into the page (OFFSET 0), for the reason ``_PAGE["before_time"]`` gives: under row-level
# security an index condition must be leakproof, and arithmetic or a cast on the bound (even on
# an outer query's column) is not, so such a bound would only filter: 5,000 roots read instead
# of 51 (tests/integration/test_plan_stability.py).
_ROOT_HEAD = """
    SELECT p.* FROM conversation_members cm
    JOIN conversations c ON c.tenant_id = cm.tenant_id AND c.id = cm.conversation_id
"""
_ROOT_AT = """
    LEFT JOIN LATERAL (
        SELECT a.root_seq, CAST(a.thread_root_id IS NULL AS int) AS is_root FROM messages a
        WHERE a.tenant_id = %(tenant)s AND a.conversation_id = cm.conversation_id
          AND a.seq = %(cursor)s
        LIMIT 1
    ) at ON true
"""
_ROOT_BOUNDS = """
    CROSS JOIN LATERAL (
        SELECT {hi} AS hi, {hi} - CAST(%(limit)s AS bigint) AS lo OFFSET 0
    ) b
"""
_ROOT_PAGE_HEAD = f"""
    LEFT JOIN LATERAL (
        SELECT {PAGE_COLUMNS}
        FROM messages m
        WHERE m.tenant_id = %(tenant)s AND m.conversation_id = cm.conversation_id
          AND m.thread_root_id IS NULL AND m.seq > cm.visible_from_seq
"""
_DESCENDING = (" AND m.root_seq <= b.hi AND m.root_seq > b.lo"
               " ORDER BY m.root_seq DESC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq DESC")
_ROOT_PAGE = {
    "newest": _ROOT_HEAD + _ROOT_BOUNDS.format(hi="c.last_root_seq") + _ROOT_PAGE_HEAD
              + _DESCENDING,
    "before_seq": _ROOT_HEAD + _ROOT_AT + _ROOT_BOUNDS.format(
                      hi="CASE WHEN CAST(%(cursor)s AS bigint) = 0 THEN 0"
                         " ELSE COALESCE(at.root_seq - at.is_root, c.last_root_seq) END")
                  + _ROOT_PAGE_HEAD + _DESCENDING,
    # The newest message before the time (``_BEFORE_TIME_POSITION``) and its root_seq: the
    # roots up to it are older too (created_at never decreases with seq).
    "before_time": _BEFORE_TIME_POSITION
                   + _ROOT_HEAD.replace("FROM conversation_members cm",
                                        "FROM pos CROSS JOIN conversation_members cm")
                   + _ROOT_AT.replace("%(cursor)s", "pos.k")
                   + _ROOT_BOUNDS.format(hi="at.root_seq") + _ROOT_PAGE_HEAD
                   + " AND m.created_at < %(before)s" + _DESCENDING,
    # Here ``b.hi`` is the position after which the page starts (so ``lo`` is unused).
    "after_seq": _ROOT_HEAD + _ROOT_AT + _ROOT_BOUNDS.format(
                     hi="CASE WHEN CAST(%(cursor)s AS bigint) = 0 THEN 0"
                        " ELSE COALESCE(at.root_seq, c.last_root_seq) END").replace(
                     " - CAST(%(limit)s AS bigint) AS lo", " + CAST(%(limit)s AS bigint) AS lo")
                 + _ROOT_PAGE_HEAD
                 + " AND m.root_seq > b.hi AND m.root_seq <= b.lo"
                   " ORDER BY m.root_seq ASC LIMIT %(limit)s" + _PAGE_TAIL + " ORDER BY p.seq ASC",
}

# One thread: the membership row, the root (one probe of the primary key, within the
# conversation), and the page, a range of thread_seq (the reply's gapless position in its
# thread) read from uq_messages_thread_seq, with bounds as columns for the same reason as
# above. Two parts, one row each, in one layout: column 0 says which part (0: the root, 1: a
# reply of the page), column 1 is the root's id (as uuid, NULL on the replies), column 2
# whether the root is root-level (NULL on the replies), then ``page_columns``. The root's row
# comes first, then the page in the mode's order. Every message, root included, carries its
# reactions, version, tombstone flag and attachments as GetMessages' pages do: a thread's
# messages are ordinary messages. No row: not a member, or no such message in the
# conversation; the root's row alone: an empty page, or a root that is itself a reply.
#
# The root and the page are parts of a UNION ALL (the root read once, ``r``), not the root's
# columns beside each reply: those were 17 more columns on each of up to 51 rows, all of them
# loaded by psycopg (uuids parsed, the root's reactions parsed again on each row) to be thrown
# away, and a window function (row_number) to blank the root's content after the first row.
#
# ``after_seq`` is a conversation seq: the replies after it are those above the highest
# thread_seq whose seq is at most it, found by a binary search over thread_seq (seq and
# thread_seq grow together within a thread): about log2(reply_count) probes of the thread's
# key, 17 for 90,000 replies, instead of reading every reply before the position.
_THREAD_HEAD = f"""
    WITH r AS (
        SELECT r.id AS rid, r.thread_root_id IS NULL AS is_root, {page_columns("r")}
        FROM conversation_members cm
        JOIN messages r ON r.tenant_id = cm.tenant_id AND r.id = CAST(%(root_id)s AS uuid)
         AND r.conversation_id = cm.conversation_id AND r.seq > cm.visible_from_seq
        WHERE cm.tenant_id = %(tenant)s AND cm.conversation_id = %(conversation_id)s
          AND cm.user_id = %(user_id)s
    )
    SELECT 0 AS part, r.* FROM r
    UNION ALL
    SELECT 1, NULL, NULL, p.*
    FROM r
"""
_THREAD_BOUNDS = """
    CROSS JOIN LATERAL (SELECT {lo} AS lo, {hi} AS hi OFFSET 0) b
"""
_THREAD_AFTER_SEQ = """
    CROSS JOIN LATERAL (
        WITH RECURSIVE s(lo, hi) AS (
            SELECT CAST(0 AS bigint), r.reply_count
            UNION ALL
            SELECT CASE WHEN x.seq <= %(after)s THEN x.thread_seq ELSE s.lo END,
                   CASE WHEN x.seq <= %(after)s THEN s.hi ELSE x.thread_seq - 1 END
            FROM s
            CROSS JOIN LATERAL (SELECT (s.lo + s.hi + 1) / 2 AS mid OFFSET 0) mm
            CROSS JOIN LATERAL (
                SELECT t.seq, t.thread_seq FROM messages t
                WHERE t.tenant_id = %(tenant)s AND t.thread_root_id = r.rid
                  AND t.thread_seq = mm.mid
                LIMIT 1
            ) x
            WHERE s.lo < s.hi
        )
        SELECT min(s.hi) AS lo, min(s.hi) + CAST(%(limit)s AS bigint) AS hi FROM s
    ) b
"""
_THREAD_PAGE_HEAD = f"""
    CROSS JOIN LATERAL (
        SELECT {PAGE_COLUMNS}
        FROM messages m
        WHERE m.tenant_id = %(tenant)s AND m.thread_root_id = r.rid
          AND m.thread_seq > b.lo AND m.thread_seq <= b.hi
"""
_THREAD_TAIL = """
    ) p
    WHERE r.is_root
"""
_THREAD_DESCENDING = (" ORDER BY m.thread_seq DESC LIMIT %(limit)s" + _THREAD_TAIL
                      + " ORDER BY part, seq DESC")
_THREAD_ASCENDING = (" ORDER BY m.thread_seq ASC LIMIT %(limit)s" + _THREAD_TAIL
                     + " ORDER BY part, seq ASC")
_THREAD_PAGE = {
    "newest": _THREAD_HEAD + _THREAD_BOUNDS.format(
                  lo="r.reply_count - CAST(%(limit)s AS bigint)", hi="r.reply_count")
              + _THREAD_PAGE_HEAD + _THREAD_DESCENDING,
    "before": _THREAD_HEAD + _THREAD_BOUNDS.format(
                  lo="CAST(%(cursor)s AS bigint) - 1 - CAST(%(limit)s AS bigint)",
                  hi="CAST(%(cursor)s AS bigint) - 1")
              + _THREAD_PAGE_HEAD + _THREAD_DESCENDING,
    "after": _THREAD_HEAD + _THREAD_BOUNDS.format(
                 lo="CAST(%(cursor)s AS bigint)",
                 hi="CAST(%(cursor)s AS bigint) + CAST(%(limit)s AS bigint)")
             + _THREAD_PAGE_HEAD + _THREAD_ASCENDING,
    "after_seq": _THREAD_HEAD + _THREAD_AFTER_SEQ + _THREAD_PAGE_HEAD + _THREAD_ASCENDING,
}
_THREAD_PAGE = {mode: _unindented(sql) for mode, sql in _THREAD_PAGE.items()}


# Batches: GraphQL's nested lists (``conversations { messages }``, ``messages { thread }``) ask
# for one page per item of a level; ``MessageRepository.pages`` and ``thread_pages`` fetch a
# whole level in one statement. The batch statement is the single page's statement, as it is,
# run once per item of the batch as a LATERAL subquery over the batch's arrays (one row per
# item: ``q``), its parameters that differ per item replaced by the item's columns. So each
# item's page is exactly what the single statement answers (the same membership check, the
# same bounds and index ranges, no row for a non-member, one row of NULLs for an empty page),
# and a level costs one round trip and one statement instead of one per item. Each row starts
# with the item's position in the batch (1, 2, ...); a page's order is restored by its seq.
# (Not for pages before a time: GraphQL has no such argument; the service runs those alone.)
def _for_each(statement: str, per_item: dict[str, str]) -> str:
    """``statement`` once per item of a batch: ``per_item`` maps each parameter that differs
    per item to its SQL type; the batch passes a list of values for each, in one order."""
    names = list(per_item)
    for name in names:
        statement = statement.replace(f"%({name})s", f"q.q_{name}")
    arrays = ", ".join(f"CAST(%({name}s)s AS {per_item[name]}[])" for name in names)
    columns = ", ".join(f"q_{name}" for name in names)
    return _unindented(f"SELECT q.n, item.* FROM unnest({arrays}) WITH ORDINALITY AS "
                       f"q({columns}, n)\nCROSS JOIN LATERAL ({statement}) item")


_PAGE_ITEM = {"conversation_id": "uuid", "cursor": "bigint"}
_BATCH_PAGE = {mode: _for_each(sql, _PAGE_ITEM) for mode, sql in _PAGE.items()
               if mode != "before_time"}
_BATCH_ROOT_PAGE = {mode: _for_each(sql, _PAGE_ITEM) for mode, sql in _ROOT_PAGE.items()
                    if mode != "before_time"}
# A thread's ``after_seq`` (a conversation seq) is the item's cursor too.
_BATCH_THREAD_PAGE = {
    mode: _for_each(sql.replace("%(after)s", "%(cursor)s"),
                    {"conversation_id": "uuid", "root_id": "uuid", "cursor": "bigint"})
    for mode, sql in _THREAD_PAGE.items()}


# Far beyond any real seq, far enough below bigint's end that cursor + limit cannot overflow:
# a larger cursor (an int64 after_seq, a crafted page token) pages exactly as this one.
MAX_CURSOR = 2**62


class PageMode(enum.Enum):
    NEWEST = "newest"
    BEFORE_SEQ = "before_seq"
    BEFORE_TIME = "before_time"
    AFTER_SEQ = "after_seq"


class ThreadMode(enum.Enum):
    NEWEST = "newest"
    BEFORE = "before"  # a thread_seq (page token)
    AFTER = "after"  # a thread_seq (page token)
    AFTER_SEQ = "after_seq"  # a conversation seq


class RootState(enum.Enum):
    """Why a reply could not be sent (``thread_root_state``)."""

    NOT_FOUND = "not_found"  # not a member, or no such message in the conversation
    NOT_ROOT = "not_root"  # the message is itself a reply
    DELETED = "deleted"  # a root-level message, deleted (a tombstone takes no replies)
    ROOT = "root"


@dataclass(frozen=True, slots=True)
class ThreadPage:
    root: MessageRecord
    replies: list[MessageRecord]


class DuplicateKey(Exception):
    """The (tenant, sender, idempotency_key) triple already names a committed message."""

    # A plain class, not a frozen dataclass: ``raise`` sets __traceback__/__cause__ on the
    # instance, which a frozen (slotted) dataclass refuses, so the raise itself would fail.
    def __init__(self, original: MessageRecord) -> None:
        super().__init__(original.id)
        self.original = original


def send_params(
    tenant: str, conversation_id: str, sender_id: str, content: str, idempotency_key: str,
    attachments: Sequence[StoredUpload] = (), thread_root_id: str | None = None,
    ciphertext: CiphertextRecord | None = None,
) -> dict[str, object]:
    """The values ``_SEND`` takes, as the API passes them. chat-bench's scaling phase builds
    its sends with this too, so a parameter added to the statement reaches it as well.

    ``attachments``: the uploads to attach, in order, each with the size and type the store
    holds it with (``_SEND`` attaches an upload only when its row declares those)."""
    return {"tenant": tenant, "conversation_id": conversation_id, "sender_id": sender_id,
            "content": content, "idempotency_key": idempotency_key,
            "attachment_ids": [a.id for a in attachments],
            "attachment_sizes": [a.size_bytes for a in attachments],
            "attachment_types": [a.content_type for a in attachments],
            "thread_root_id": thread_root_id,
            "ciphertext": None if ciphertext is None else Jsonb(ciphertext_json(ciphertext))}


class MessageRepository:
    def __init__(self, db: Database | ReplicaReads) -> None:
        self._db = db

    async def send(
        self, tenant: str, conversation_id: str, sender_id: str, content: str,
        idempotency_key: str, attachments: Sequence[StoredUpload] = (),
        thread_root_id: str | None = None, ciphertext: CiphertextRecord | None = None,
    ) -> MessageRecord | None:
        """Commits the message, its attachments and its outbox event; None when the sender is
        not a member, for a reply when the root is not a live root-level message of the
        conversation (missing, a reply, or deleted), when an upload listed is not free
        (attached already, not the sender's, not of this conversation) or its row does not
        declare the size and type the store holds it with, when ``ciphertext`` is given in a
        plain conversation or missing in an encrypted one, or names a device the sender has
        not registered (the caller asks why: ``send_refusal``, the uploads' rows).

        Raises DuplicateKey (with the original message) when the key was used before.
        """
        params = send_params(tenant, conversation_id, sender_id, content, idempotency_key,
                             attachments, thread_root_id, ciphertext)
        try:
            if thread_root_id is None:
                row = await self._db.fetchone(
                    "db.send_message", send_statement(attachments, None, ciphertext), params,
                    tenant=tenant)
            else:
                row = await self._send_reply(tenant, params)
        except psycopg.errors.UniqueViolation as exc:  # a concurrent send of the same key
            if exc.diag.constraint_name != IDEMPOTENCY_CONSTRAINT:
                raise
            original = await self.by_idempotency_key(tenant, sender_id, idempotency_key)
            if original is None:
                raise
            raise DuplicateKey(original) from exc
        if row is None:
            return None
        if row[0]:
            raise DuplicateKey(message_from(row, 1, attachments=True))
        return message_from(row, 1, attachments=True)

    async def _send_reply(self, tenant: str, params: Mapping[str, object]
                          ) -> TupleRow | None:
        """``_SEND`` for a reply: after the conversation's lock, in one round trip with BEGIN
        and COMMIT."""
        async with self._db.tenant_transaction("db.send_reply", tenant) as conn:
            await conn.execute(_LOCK_FOR_REPLY, params)
            cursor = await conn.execute(_SEND, params)
            await commit(conn)
            return await cursor.fetchone()

    async def by_idempotency_key(self, tenant: str, sender_id: str, key: str
                                 ) -> MessageRecord | None:
        """The committed message that (tenant, sender, key) names, if any."""
        row = await self._db.fetchone("db.message_by_key", _BY_KEY,
                                      {"tenant": tenant, "sender_id": sender_id,
                                       "idempotency_key": key}, tenant=tenant)
        return message_from(row, attachments=True) if row is not None else None

    async def send_refusal(self, tenant: str, conversation_id: str, user_id: str,
                           sender_device: str | None) -> tuple[bool, bool] | None:
        """Why an end-to-end send may have been refused: None when the user is not a member,
        else whether the conversation is encrypted and whether ``sender_device`` is one of
        the user's registered devices."""
        row = await self._db.fetchone("db.send_refusal", _SEND_REFUSAL, {
            "tenant": tenant, "conversation_id": conversation_id, "user_id": user_id,
            "device": sender_device}, tenant=tenant)
        return None if row is None else (bool(row[0]), bool(row[1]))

    async def thread_root_state(self, tenant: str, conversation_id: str, user_id: str,
                                root_id: str) -> RootState:
        row = await self._db.fetchone("db.thread_root_state", _THREAD_ROOT_STATE,
                                      {"tenant": tenant, "conversation_id": conversation_id,
                                       "user_id": user_id, "root_id": root_id}, tenant=tenant)
        if row is None or row[0] is None:
            return RootState.NOT_FOUND
        if not row[0]:
            return RootState.NOT_ROOT
        return RootState.DELETED if row[1] else RootState.ROOT

    async def thread_page(
        self, tenant: str, conversation_id: str, user_id: str, root_id: str, mode: ThreadMode,
        limit: int, cursor: int = 0,
    ) -> ThreadPage | RootState:
        """One page of a thread's replies in the mode's order, with the root; NOT_FOUND when
        the user is not a member or there is no such message, NOT_ROOT when it is a reply."""
        params: dict[str, object] = {"tenant": tenant, "conversation_id": conversation_id,
                                     "user_id": user_id, "root_id": root_id, "limit": limit}
        if mode is ThreadMode.AFTER_SEQ:
            params["after"] = min(cursor, MAX_CURSOR)
        elif mode is not ThreadMode.NEWEST:
            params["cursor"] = min(cursor, MAX_CURSOR)
        rows = await self._db.fetchall("db.get_thread", _THREAD_PAGE[mode.value], params,
                                       tenant=tenant)
        return _thread_of(rows)

    async def thread_pages(
        self, tenant: str, user_id: str, mode: ThreadMode, limit: int,
        batch: Sequence[tuple[str, str, int]],
    ) -> list[ThreadPage | RootState]:
        """``thread_page`` for each (conversation, root, cursor) of ``batch``, in one
        statement (``_BATCH_THREAD_PAGE``); the answers in the batch's order."""
        params: dict[str, object] = {
            "tenant": tenant, "user_id": user_id, "limit": limit,
            "conversation_ids": [c for c, _, _ in batch], "root_ids": [r for _, r, _ in batch],
            "cursors": [min(cursor, MAX_CURSOR) for _, _, cursor in batch]}
        rows = await self._db.fetchall("db.get_threads", _BATCH_THREAD_PAGE[mode.value],
                                       params, tenant=tenant)
        items: list[list[TupleRow]] = [[] for _ in batch]
        for row in rows:
            items[row[0] - 1].append(row[1:])
        descending = mode in (ThreadMode.NEWEST, ThreadMode.BEFORE)
        out: list[ThreadPage | RootState] = []
        for item in items:
            page = _thread_of(item)
            if isinstance(page, ThreadPage):
                page.replies.sort(key=_seq, reverse=descending)
            out.append(page)
        return out

    async def page(
        self, tenant: str, conversation_id: str, user_id: str, mode: PageMode, limit: int,
        cursor: int = 0, before: datetime | None = None, roots_only: bool = True,
    ) -> list[MessageRecord] | None:
        """One page of messages in the mode's order; None when the user is not a member.
        ``roots_only``: the main timeline (root-level messages), else every message."""
        params: dict[str, object] = {"tenant": tenant, "conversation_id": conversation_id,
                                     "user_id": user_id, "limit": limit}
        if mode in (PageMode.BEFORE_SEQ, PageMode.AFTER_SEQ):
            params["cursor"] = min(cursor, MAX_CURSOR)
        elif mode is PageMode.BEFORE_TIME:
            params["before"] = before
        statements = _ROOT_PAGE if roots_only else _PAGE
        rows = await self._db.fetchall("db.get_messages", statements[mode.value], params,
                                       tenant=tenant)
        if not rows:
            return None
        return [message_from(r, attachments=True, reactions=True)
                for r in rows if r[0] is not None]

    async def pages(
        self, tenant: str, user_id: str, mode: PageMode, limit: int,
        batch: Sequence[tuple[str, int]], roots_only: bool = True,
    ) -> list[list[MessageRecord] | None]:
        """``page`` for each (conversation, cursor) of ``batch``, in one statement
        (``_BATCH_PAGE``, ``_BATCH_ROOT_PAGE``); the answers in the batch's order. Not for
        ``PageMode.BEFORE_TIME``."""
        params: dict[str, object] = {
            "tenant": tenant, "user_id": user_id, "limit": limit,
            "conversation_ids": [c for c, _ in batch],
            "cursors": [min(cursor, MAX_CURSOR) for _, cursor in batch]}
        statements = _BATCH_ROOT_PAGE if roots_only else _BATCH_PAGE
        rows = await self._db.fetchall("db.get_messages_batch", statements[mode.value], params,
                                       tenant=tenant)
        out: list[list[MessageRecord] | None] = [None] * len(batch)
        for row in rows:
            page = out[row[0] - 1]
            if page is None:  # the item's first row: a member (a page, maybe empty)
                page = out[row[0] - 1] = []
            if row[1] is not None:
                page.append(message_from(row, 1, attachments=True, reactions=True))
        descending = mode is not PageMode.AFTER_SEQ
        for page in out:
            if page:
                page.sort(key=_seq, reverse=descending)
        return out


def _seq(message: MessageRecord) -> int:
    return message.seq


def _thread_of(rows: Sequence[Sequence[Any]]) -> ThreadPage | RootState:
    """The thread page of ``_THREAD_PAGE``'s rows (the root's row, then the replies')."""
    root = next((r for r in rows if r[0] == 0), None)
    if root is None:
        return RootState.NOT_FOUND
    if not root[2]:
        return RootState.NOT_ROOT
    return ThreadPage(
        message_from(root, 3, attachments=True, reactions=True),
        [message_from(r, 3, attachments=True, reactions=True) for r in rows if r[0] == 1])

