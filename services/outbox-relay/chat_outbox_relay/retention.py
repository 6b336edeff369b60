"""Pruning published outbox rows older than OUTBOX_RETENTION, a small batch at a time.

Published rows stay in ``outbox`` so that ``chat-outbox republish`` can refill a stream that
lost entries; past the retention they go. Each statement deletes at most
OUTBOX_PRUNE_BATCH_SIZE rows, found through the partial index on ``published_at``, and skips
rows another relay replica is deleting at that moment (``SKIP LOCKED``): every replica may
prune, none waits on another, and no statement holds many row locks or runs long. Pruning
never touches an unpublished row, whatever its age.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from chat_shared.db import interaction

_PRUNE = """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox
        WHERE published_at IS NOT NULL
          AND published_at < now() - make_interval(secs => %(retention)s)
        ORDER BY published_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
"""


async def prune_batch(conn: AsyncConnection[Any], *, retention: float, limit: int) -> int:
    """Deletes up to ``limit`` rows published more than ``retention`` seconds ago; returns
    how many it deleted (fewer than ``limit``: nothing more is due, or another replica holds it).

    Raises:
        Unavailable: the connection failed or the statement timed out.
    """
    with interaction("db.outbox_prune"):
        async with conn.cursor() as cur:
            await cur.execute(_PRUNE, {"retention": retention, "limit": limit})
            return max(0, cur.rowcount)
