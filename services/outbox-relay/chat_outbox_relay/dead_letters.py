"""The dead-letter table: events that failed every publish attempt, kept until replayed or purged.

Replaying moves a row back into the outbox with its original event_id, created_at and payload,
attempts reset; the outbox trigger's NOTIFY wakes the relays. A replayed event lands in the
stream after the events of its conversation that were published meanwhile: consumers that
dedupe by event_id see it once, consumers that track seq see an old seq arrive late.

Every operation is one statement (a replay is one data-modifying CTE), atomic on its own in
the session's autocommit, so none needs a transaction around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

_COLUMNS = ("id, event_id::text, event_type, conversation_id::text, seq, recipients, payload, "
            "created_at, attempts, last_error, failed_at")

_REPLAY = """
    WITH gone AS (
        DELETE FROM outbox_dead_letter WHERE {where}
        RETURNING id, event_id, event_type, conversation_id, seq, recipients, payload, created_at,
                  tenant_id, message_id
    ), back AS (
        INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload,
                            created_at, tenant_id, message_id)
        SELECT event_id, event_type, conversation_id, seq, recipients, payload, created_at,
               tenant_id, message_id
        FROM gone ORDER BY id
        RETURNING event_id
    )
    SELECT g.id, g.event_id::text FROM gone g ORDER BY g.id
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    event_id: str
    event_type: str
    conversation_id: str
    seq: int
    recipients: list[str]
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    last_error: str
    failed_at: datetime


def _row(r: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(r[0], r[1], r[2], r[3], r[4], list(r[5]), r[6], r[7], r[8], r[9], r[10])


class DeadLetters:
    """Operations on outbox_dead_letter over one synchronous connection (the CLI's)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def oldest(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM outbox_dead_letter ORDER BY id LIMIT %(limit)s",
            {"limit": limit},
        ).fetchall()
        return [_row(r) for r in rows]

    def count(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM outbox_dead_letter").fetchone()
        return int(row[0]) if row else 0

    def get(self, dead_letter_id: int) -> DeadLetter | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM outbox_dead_letter WHERE id = %(id)s",
            {"id": dead_letter_id},
        ).fetchone()
        return _row(row) if row else None

    def replay(self, dead_letter_id: int) -> str | None:
        """Moves one row back to the outbox; returns its event_id, None when there is no row."""
        rows = self._conn.execute(_REPLAY.format(where="id = %(id)s"),
                                  {"id": dead_letter_id}).fetchall()
        return rows[0][1] if rows else None

    def replay_all(self) -> list[tuple[int, str]]:
        """Moves every row back to the outbox (in dead-letter order); returns (id, event_id)s."""
        rows = self._conn.execute(_REPLAY.format(where="true")).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def purge(self, older_than_seconds: float) -> int:
        """Deletes rows that failed more than ``older_than_seconds`` ago; returns the count."""
        cur = self._conn.execute(
            "DELETE FROM outbox_dead_letter "
            "WHERE failed_at < now() - make_interval(secs => %(seconds)s)",
            {"seconds": older_than_seconds},
        )
        return cur.rowcount
