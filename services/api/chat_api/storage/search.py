"""The PostgreSQL SearchIndex: full-text search over ``messages.search_vector``.

``search_vector`` is ``to_tsvector('chat_search', content)``, kept by a trigger in the
content's own transaction (migration 0008s): a send is searchable from its commit on, an edit
is found by its new words only from the edit's commit on, and a deletion (content erased)
leaves an empty vector. ``chat_search`` is ``simple`` (no language, no stop words) with
``unaccent``; ``CONFIGURATION`` is the one place a per-tenant configuration would be chosen.

The statement starts from the caller's membership rows and reads each conversation's
messages through its (tenant, conversation, seq) index, testing the vector of each: the
search never looks outside the caller's conversations, and a member who joined a
conversation that hides its history searches only what they can read (``visible_from_seq``).
Why not the GIN index on the vector (``ix_messages_search``): row-level security is forced on
``messages``, and under it PostgreSQL runs only leakproof conditions before the tenant
policy; ``@@`` (``ts_match_vq``) is not marked leakproof, so for the API's role it can be a
filter but never an index condition, and the GIN index is not used (it is for roles that
bypass row-level security, e.g. maintenance and an external indexer). The membership path
costs one index range per conversation plus one vector test per visible message.

Each conversation contributes at most ``limit`` hits in score order (a lateral top-N), and
the caller's page is the best ``limit`` of those: the global top-N is within the union of the
per-conversation ones. Only the final page is highlighted and gets its reactions.

Thread replies are messages like any other and are found; a hit is read with
``message_columns``/``message_from`` like every message the API returns, so it carries its
``thread_root_id`` (a root its ``reply_count``), and hits of replies say so (the statement
keeps every column of ``messages`` up to the final select).

Highlights come from ``ts_headline`` with the same query and configuration (so they agree
with what matched, accents and prefixes included), with every word highlighted and the
matches between U+0001 and U+0002, characters chat.proto forbids in content; they are turned
into code point ranges here (``highlights_from_marked``).
"""

from __future__ import annotations

import functools

from chat_api.models import ParsedQuery, SearchCursor, SearchFilters, SearchHit
from chat_api.storage.messages import REACTIONS_SQL
from chat_api.storage.rows import (
    ATTACHMENTS_JSON,
    MESSAGE_COLUMNS,
    message_columns,
    message_from,
)
from chat_shared.db import Database
from chat_shared.replica_reads import ReplicaReads

CONFIGURATION = "chat_search"
"""The text search configuration of the vectors (migration 0008s) and of queries."""

START_MARK, STOP_MARK = "\x01", "\x02"
_HEADLINE_OPTIONS = "StartSel=\x01, StopSel=\x02, HighlightAll=true"

RECENCY_SCALE = 7 * 86400.0
"""Seconds of age that weigh as much as a factor e of relevance in the score."""

# Only when ts_rank_cd is 0 (a match the ranking cannot weigh, e.g. by exclusion only,
# which the parser refuses): keeps ln() finite.
_MIN_RANK = 1e-6


@functools.cache
def _statement(one_conversation: bool, sender: bool, after: bool, before: bool,
               cursor: bool) -> str:
    """The search statement for the filters present (each variant is prepared once)."""
    conds = ["m.deleted_at IS NULL", "m.search_vector @@ q.q"]
    if sender:
        conds.append("m.sender_id = %(sender_id)s")
    if after:
        conds.append("m.created_at >= %(after)s")
    if before:
        conds.append("m.created_at < %(before)s")
    member = " AND cm.conversation_id = %(conversation_id)s" if one_conversation else ""
    below = ("WHERE (s.score, s.id) < (CAST(%(score)s AS float8), CAST(%(cursor_id)s AS uuid))"
             if cursor else "")
    return f"""
    WITH q AS (SELECT to_tsquery('{CONFIGURATION}', %(query)s) AS q),
    top AS (
        SELECT p.* FROM conversation_members cm
        CROSS JOIN q
        LEFT JOIN LATERAL (
            SELECT s.* FROM (
                SELECT m.*, ln(greatest(ts_rank_cd(m.search_vector, q.q), {_MIN_RANK}))
                            + extract(epoch FROM m.created_at) / {RECENCY_SCALE} AS score
                FROM messages m
                WHERE m.tenant_id = cm.tenant_id AND m.conversation_id = cm.conversation_id
                  AND m.seq > cm.visible_from_seq
                  AND {" AND ".join(conds)}
            ) s {below}
            ORDER BY s.score DESC, s.id DESC LIMIT %(limit)s
        ) p ON true
        WHERE cm.tenant_id = %(tenant)s AND cm.user_id = %(user_id)s{member}
        ORDER BY p.score DESC NULLS LAST, p.id DESC LIMIT %(limit)s
    )
    SELECT {message_columns("m")},
           {ATTACHMENTS_JSON.format(tenant="m.tenant_id", message="m.id")}, {REACTIONS_SQL},
           m.score, ts_headline('{CONFIGURATION}', m.content, q.q, '{_HEADLINE_OPTIONS}')
    FROM top m CROSS JOIN q
    ORDER BY m.score DESC NULLS LAST, m.id DESC
    """


def highlights_from_marked(content: str, marked: str, start: str, stop: str
                           ) -> tuple[tuple[int, int], ...]:
    """[start, end) code point ranges of ``content`` from ``marked``: the content with
    ``start``/``stop`` around each match. The markers are characters content cannot hold
    (chat.proto forbids control characters in it); if ``marked`` is not exactly the content
    with markers around parts of it, there are no highlights rather than wrong ones."""
    out: list[tuple[int, int]] = []
    plain: list[str] = []
    pos = 0
    opened = -1
    for ch in marked:
        if ch == start and opened < 0:
            opened = pos
        elif ch == stop and opened >= 0:
            if pos > opened:
                out.append((opened, pos))
            opened = -1
        else:
            plain.append(ch)
            pos += 1
    if "".join(plain) != content or opened >= 0:
        return ()
    return tuple(out)


class PostgresSearchIndex:
    """SearchIndex over PostgreSQL full-text search."""

    def __init__(self, db: Database | ReplicaReads) -> None:
        self._db = db

    async def search(self, tenant: str, user_id: str, query: ParsedQuery,
                     filters: SearchFilters, cursor: SearchCursor | None, limit: int
                     ) -> list[SearchHit] | None:
        statement = _statement(filters.conversation_id is not None,
                               filters.sender_id is not None, filters.after is not None,
                               filters.before is not None, cursor is not None)
        params: dict[str, object] = {
            "tenant": tenant, "user_id": user_id, "query": query.tsquery, "limit": limit,
            "conversation_id": filters.conversation_id, "sender_id": filters.sender_id,
            "after": filters.after, "before": filters.before,
            "score": cursor.score if cursor else None,
            "cursor_id": cursor.message_id if cursor else None}
        rows = await self._db.fetchall("db.search_messages", statement, params, tenant=tenant)
        if not rows and filters.conversation_id is not None:
            return None
        hits = []
        for row in rows:
            if row[0] is None:  # a conversation of the caller's without a hit
                continue
            message = message_from(row, attachments=True, reactions=True)
            hits.append(SearchHit(message, float(row[MESSAGE_COLUMNS + 2]),
                                  highlights_from_marked(message.content,
                                                         row[MESSAGE_COLUMNS + 3],
                                                         START_MARK, STOP_MARK)))
        return hits
