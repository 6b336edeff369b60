"""Outbox partitions: a stored partition number per row, for ordered relaying by many relays.

Each conversation hashes into one of 64 partitions (the last byte of its UUID, modulo 64: stable,
needs no function that could change between PostgreSQL versions). A relay owns a partition
through a session advisory lock and claims only its partitions' rows, in id order, so one
conversation's events are published by one relay at a time, in order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE outbox ADD COLUMN partition smallint NOT NULL
            GENERATED ALWAYS AS (get_byte(uuid_send(conversation_id), 15) % 64) STORED;
        CREATE INDEX ix_outbox_partition ON outbox (partition, id);
        -- Rows waiting for a retry block their conversation's later rows; this small index
        -- answers "does this conversation have an earlier row waiting?" without a scan.
        CREATE INDEX ix_outbox_retrying ON outbox (conversation_id, id)
            WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX ix_outbox_dead_letter_failed_at ON outbox_dead_letter (failed_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS ix_outbox_dead_letter_failed_at;
        DROP INDEX IF EXISTS ix_outbox_retrying;
        DROP INDEX IF EXISTS ix_outbox_partition;
        ALTER TABLE outbox DROP COLUMN IF EXISTS partition;
        """
    )
