"""The outbox backlog, read the same way by the relay (its ``outbox_pending_count`` and
``outbox_oldest_pending_age_seconds`` gauges, its readiness) and by the operator that scales
the relay from it, so the metric and the operator never disagree about what "pending" means.

Pending means every row of ``outbox`` not yet published (``published_at IS NULL``), including
rows waiting for a retry. Published rows stay in the table for ``OUTBOX_RETENTION`` and are not
backlog; the statement reads the unpublished rows through the partial index that covers only
them (``ix_outbox_partition``), so its cost follows the backlog, not the retention. Dead letters
(``outbox_dead_letter``) are not backlog either: no number of relays drains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from chat_shared.db import interaction

_PENDING = """
    SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
    FROM outbox
    WHERE published_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    """Unpublished rows in the outbox."""
    oldest_age_seconds: float
    """Age of the oldest unpublished row; 0 when there is none."""


async def read_backlog(conn: psycopg.AsyncConnection[Any]) -> Backlog:
    """The backlog now, read on ``conn``.

    Raises:
        Unavailable: the connection failed or the statement timed out.
    """
    with interaction("db.outbox_backlog"):
        row = await (await conn.execute(_PENDING)).fetchone()
    if row is None:  # an aggregate without GROUP BY always returns one row
        raise RuntimeError("backlog query returned no row")
    return Backlog(pending=int(row[0]), oldest_age_seconds=float(row[1]))
