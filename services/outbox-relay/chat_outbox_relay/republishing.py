"""Refilling streams from PostgreSQL: ``chat-outbox republish``.

Published outbox rows stay for OUTBOX_RETENTION. When a stream lost entries (Redis restarted
without persistence, was flushed, or the key was deleted), this appends the rows published
since a time (``--since``) or from an outbox id on (``--from-id``) to their streams again, with
the relay's own publisher: the same ``event_id`` and entry fields, each conversation's events
in outbox id order, the stream's epoch as the relay sets it (a stream that was missing gets a
new epoch on the first entry). Consumers drop what they had already by ``event_id``.

Rows are read in id order by keyset pages over the primary key, up to the largest id at the
start, so the run ends however fast new events come (those are the relay's). Rows not yet
published are skipped: the relay publishes them. A run that stops on a Redis failure says the
id to go on from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from chat_outbox_relay.claiming import ClaimedRow
from chat_outbox_relay.publishing import StreamPublisher
from chat_shared.db import interaction
from chat_shared.events import Event

_FIRST_SINCE = """
    SELECT min(id) FROM outbox WHERE published_at IS NOT NULL AND published_at >= %(since)s
"""
_LAST = "SELECT max(id) FROM outbox"
_PAGE = """
    SELECT id, event_id::text, event_type, conversation_id::text, seq, recipients, payload,
           created_at, attempts, tenant_id
    FROM outbox
    WHERE id >= %(start)s AND id <= %(end)s AND published_at IS NOT NULL
    ORDER BY id
    LIMIT %(limit)s
"""


class RepublishFailed(Exception):
    """Redis refused or could not take an entry; ``resume_from`` is the id to go on from."""

    def __init__(self, message: str, resume_from: int, published: int) -> None:
        super().__init__(message)
        self.resume_from = resume_from
        self.published = published


@dataclass(frozen=True, slots=True)
class Progress:
    published: int
    """Entries appended so far."""
    last_id: int
    """The outbox id of the last row appended."""
    end_id: int
    """The largest outbox id at the start: where the run ends."""


async def start_id(conn: AsyncConnection[Any], since: datetime) -> int | None:
    """The first outbox id published at or after ``since``; None when there is none."""
    with interaction("db.outbox_republish_start"):
        row = await (await conn.execute(_FIRST_SINCE, {"since": since})).fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def republish(conn: AsyncConnection[Any], publisher: StreamPublisher, *, from_id: int,
                    batch_size: int,
                    progress: Callable[[Progress], None] = lambda _: None) -> int:
    """Appends every published row with id >= ``from_id`` (up to the largest id now) to its
    stream; returns how many entries it appended. ``progress`` is called after every page.

    Raises:
        RepublishFailed: Redis refused an entry or was unavailable.
        Unavailable: PostgreSQL failed or a statement timed out.
    """
    with interaction("db.outbox_republish_end"):
        row = await (await conn.execute(_LAST)).fetchone()
    end = int(row[0]) if row is not None and row[0] is not None else 0
    start, published = from_id, 0
    while start <= end:
        with interaction("db.outbox_republish_page"):
            cur = await conn.execute(_PAGE, {"start": start, "end": end, "limit": batch_size})
            rows = await cur.fetchall()
        if not rows:
            break
        claimed = [ClaimedRow(id=r[0], attempts=r[8], event=Event(
            event_id=r[1], type=r[2], conversation_id=r[3], seq=r[4], occurred_at=r[7],
            recipients=list(r[5]), payload=r[6], tenant=r[9])) for r in rows]
        outcome = await publisher.publish(claimed)
        published += len(outcome.published)
        failed = [f.row for f in outcome.rejected] + outcome.unavailable
        if failed:
            first = min(r.id for r in failed)
            error = outcome.unavailable_error or outcome.rejected[0].error
            raise RepublishFailed(error, resume_from=first, published=published)
        start = claimed[-1].id + 1
        progress(Progress(published=published, last_id=claimed[-1].id, end_id=end))
    return published
