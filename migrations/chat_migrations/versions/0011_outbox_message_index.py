"""The outbox rows of one message, found by the message's id: what DeleteMessage scrubs.

A deleted message's content must be gone from storage, not only from reads. Its earlier events
(``message.created``, ``message.updated``) are outbox rows that stay for OUTBOX_RETENTION after
they are published (so that a lost stream can be refilled), and a failed one may sit in the
dead-letter table; each holds the message as it was. DeleteMessage rewrites those payloads to
the tombstone in its own transaction and finds them by ``message_id``, a column the statement
that writes an event now fills (the message a message or reaction event is about; NULL for
the others), with a partial index on it in each table.

Why a column and not an index on the payload's ``message.id``: row-level security is forced
on both tables, and under it PostgreSQL lets only leakproof conditions drive an index scan;
uuid equality is leakproof, the jsonb operators that read the id from the payload are not, so
for the API's role such an index would never be used and each deletion would read the whole
retention window (measured: a sequential scan of the outbox).

- The columns are nullable without a default: a catalog change, no table rewrite.
- Existing rows of message events get their ``message_id`` from the payload in batches of
  ``BACKFILL_BATCH`` (each its own transaction, tenant by tenant since row-level security is
  forced), so a deletion after the upgrade finds the events written before it too.
- The indexes are built with CREATE INDEX CONCURRENTLY outside any transaction, so sends and
  the relay keep writing while they build.
- The API's role (``chat_app``) may now read dead letters and rewrite their payloads (nothing
  else of them), under the table's ``tenant_isolation`` policy like every tenant-owned row.

Revision ID: 0011p
Revises: 0010a
Create Date: 2026-12-01
"""

from alembic import op
from sqlalchemy import text

revision = "0011p"
down_revision = "0010a"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 5000


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE outbox ADD COLUMN message_id uuid;
        ALTER TABLE outbox_dead_letter ADD COLUMN message_id uuid;
        GRANT SELECT, UPDATE (payload) ON outbox_dead_letter TO chat_app;
        """
    )
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        tenants = conn.execute(text("SELECT id FROM tenants ORDER BY id")).scalars().all()
        for tenant in tenants:
            conn.execute(text("SELECT set_config('app.tenant_id', :t, false)"), {"t": tenant})
            for table in ("outbox", "outbox_dead_letter"):
                last = 0
                while True:
                    ids = conn.execute(text(
                        f"SELECT id FROM {table} WHERE tenant_id = :t AND id > :last"
                        f" ORDER BY id LIMIT :n"),
                        {"t": tenant, "last": last, "n": BACKFILL_BATCH}).scalars().all()
                    if not ids:
                        break
                    conn.execute(text(
                        f"""
                        UPDATE {table}
                           SET message_id = CAST(payload -> 'message' ->> 'id' AS uuid)
                         WHERE tenant_id = :t AND id >= :lo AND id <= :hi
                           AND message_id IS NULL
                           AND event_type IN ('message.created', 'message.updated',
                                              'message.deleted')
                        """), {"t": tenant, "lo": ids[0], "hi": ids[-1]})
                    last = int(ids[-1])
        conn.execute(text("SELECT set_config('app.tenant_id', '', false)"))
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_outbox_message"
                   " ON outbox (message_id) WHERE message_id IS NOT NULL")
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_outbox_dead_letter_message"
                   " ON outbox_dead_letter (message_id) WHERE message_id IS NOT NULL")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_outbox_dead_letter_message")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_outbox_message")
    op.execute(
        """
        REVOKE SELECT, UPDATE (payload) ON outbox_dead_letter FROM chat_app;
        ALTER TABLE outbox_dead_letter DROP COLUMN message_id;
        ALTER TABLE outbox DROP COLUMN message_id;
        """
    )
