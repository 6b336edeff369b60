"""outbox.published_at: published rows stay for a retention window instead of being deleted.

A stream can lose entries with Redis (a restart without persistence, a flush, an operator's
DEL); PostgreSQL keeps what was published for ``OUTBOX_RETENTION`` so that
``chat-outbox republish`` can refill the stream from it. The relay marks a row published
(``published_at``) where it used to delete it, and prunes rows older than the retention in
small batches.

Every index the relay's hot path reads stays as small as the backlog: the claim's partition
index covers unpublished rows only, and the retrying index loses a row when it is published
(``next_attempt_at`` is cleared then). Published rows are found by their own partial index,
for the prune and for ``republish --since``. Rows present at upgrade are all unpublished (the
old relay deleted published ones), so the new column needs no backfill.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE outbox ADD COLUMN published_at timestamptz;
        DROP INDEX ix_outbox_partition;
        CREATE INDEX ix_outbox_partition ON outbox (partition, id) WHERE published_at IS NULL;
        CREATE INDEX ix_outbox_published_at ON outbox (published_at)
            WHERE published_at IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DELETE FROM outbox WHERE published_at IS NOT NULL;
        DROP INDEX IF EXISTS ix_outbox_published_at;
        DROP INDEX IF EXISTS ix_outbox_partition;
        CREATE INDEX ix_outbox_partition ON outbox (partition, id);
        ALTER TABLE outbox DROP COLUMN IF EXISTS published_at;
        """
    )
