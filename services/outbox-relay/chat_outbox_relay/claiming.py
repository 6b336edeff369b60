"""Claiming outbox rows and settling them: one statement each, no transaction around them.

The claim reads the oldest ready rows of the owned partitions in id order. It takes no row
locks: a partition's rows are read only by the relay holding its advisory lock, which lets it
go only between batches. A row whose conversation has an earlier row waiting for its retry is
not ready: a failing event holds back only its own conversation, and that conversation stays
in order. Settling (delete the published, reschedule the failed, dead-letter the exhausted)
happens only after Redis answered, so a crash before it leaves every claimed row in place, to
be published again with the same event_id. A published row is marked (``published_at``), not
deleted: it stays for OUTBOX_RETENTION (``retention.py`` prunes it) so that a lost stream can
be refilled (``chat-outbox republish``). Each settling statement is atomic (the dead-letter
move is one statement); a crash between two of them only means that a failed event is tried
once more without that attempt counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection

from chat_shared.db import interaction
from chat_shared.events import Event

_CLAIM = """
    SELECT o.id, o.event_id::text, o.event_type, o.conversation_id::text, o.seq, o.recipients,
           o.payload, o.created_at, o.attempts, o.tenant_id
    FROM outbox o
    WHERE o.partition = ANY(%(partitions)s::smallint[])
      AND o.published_at IS NULL
      AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
      AND NOT EXISTS (SELECT 1 FROM outbox w
                      WHERE w.conversation_id = o.conversation_id AND w.id < o.id
                        AND w.next_attempt_at IS NOT NULL AND w.next_attempt_at > now())
    ORDER BY o.id
    LIMIT %(limit)s
"""

# next_attempt_at is cleared so the row leaves the retrying index (it only holds back
# conversations while it waits).
_MARK_PUBLISHED = """
    UPDATE outbox SET published_at = clock_timestamp(), next_attempt_at = NULL
    WHERE id = ANY(%(ids)s::bigint[])
"""

_RESCHEDULE = """
    UPDATE outbox o
       SET attempts = o.attempts + 1,
           next_attempt_at = now() + make_interval(secs => f.delay),
           last_error = f.error
      FROM unnest(%(ids)s::bigint[], %(delays)s::float8[], %(errors)s::text[])
           AS f(id, delay, error)
     WHERE o.id = f.id
"""

_DEAD_LETTER = """
    WITH gone AS (
        DELETE FROM outbox o
         USING unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f(id, error)
         WHERE o.id = f.id
        RETURNING o.event_id, o.event_type, o.conversation_id, o.seq, o.recipients, o.payload,
                  o.created_at, o.attempts + 1 AS attempts, f.error, o.tenant_id, o.message_id
    )
    INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq, recipients,
                                    payload, created_at, attempts, last_error, tenant_id,
                                    message_id)
    SELECT event_id, event_type, conversation_id, seq, recipients, payload, created_at,
           attempts, error, tenant_id, message_id
    FROM gone
    ON CONFLICT (event_id) DO UPDATE
       SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
           failed_at = clock_timestamp()
"""


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    attempts: int
    event: Event

    @property
    def created_at(self) -> datetime:
        return self.event.occurred_at


@dataclass(frozen=True, slots=True)
class Failure:
    row: ClaimedRow
    error: str


async def claim(conn: AsyncConnection, partitions: str, limit: int) -> list[ClaimedRow]:
    """Up to ``limit`` ready rows of ``partitions``, an array literal such as ``{0,5,9}``."""
    if partitions == "{}":
        return []
    with interaction("db.outbox_claim"):
        async with conn.cursor() as cur:
            await cur.execute(_CLAIM, {"partitions": partitions, "limit": limit})
            rows = await cur.fetchall()
    return [
        ClaimedRow(id=r[0], attempts=r[8], event=Event(
            event_id=r[1], type=r[2], conversation_id=r[3], seq=r[4], occurred_at=r[7],
            recipients=list(r[5]), payload=r[6], tenant=r[9]))
        for r in rows
    ]


def backoff(base: float, attempt: int) -> float:
    """Delay before retry number ``attempt`` (1, 2, 3 ...): base, 2*base, 4*base ..."""
    return float(base * 2 ** (attempt - 1))


async def settle(
    conn: AsyncConnection,
    published: Sequence[ClaimedRow],
    failed: Sequence[Failure],
    *,
    max_retries: int,
    retry_base: float,
) -> list[Failure]:
    """Marks published rows, reschedules failures, dead-letters exhausted ones.

    Returns the failures that went to the dead-letter table.
    """
    retry = [f for f in failed if f.row.attempts + 1 <= max_retries]
    dead = [f for f in failed if f.row.attempts + 1 > max_retries]
    with interaction("db.outbox_settle"):
        async with conn.cursor() as cur:
            if published:
                await cur.execute(_MARK_PUBLISHED, {"ids": [r.id for r in published]})
            if retry:
                await cur.execute(_RESCHEDULE, {
                    "ids": [f.row.id for f in retry],
                    "delays": [backoff(retry_base, f.row.attempts + 1) for f in retry],
                    "errors": [f.error for f in retry],
                })
            if dead:
                await cur.execute(_DEAD_LETTER, {"ids": [f.row.id for f in dead],
                                                 "errors": [f.error for f in dead]})
    return dead
