"""The outbox rows of one message, found by the message's id: what DeleteMessage scrubs.

A deleted message's content must be gone from storage, not only from reads. Its earlier events
(``message.created``, ``message.updated``) are outbox rows that stay for OUTBOX_RETENTION after
they are published (so that a lost stream can be refilled), and a failed one may sit in the
dead-letter table; each holds the message as it was. DeleteMessage rewrites those payloads to
the tombstone in its own transaction, and finds them through these indexes on the payload's
``message.id`` (an expression index: no new column, so the relay and the send statement are
unchanged; events about no message index NULL). Without them the deletion would read every
row of the conversation in the retention window.

Both are built with CREATE INDEX CONCURRENTLY outside any transaction, so sends and the relay
keep writing while they build. The API's role (``chat_app``) may now read dead letters and
rewrite their payloads (nothing else of them), under the table's ``tenant_isolation`` policy
like every tenant-owned row.

Revision ID: 0011p
Revises: 0010a
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011p"
down_revision = "0010a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("GRANT SELECT, UPDATE (payload) ON outbox_dead_letter TO chat_app")
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_outbox_message"
                   " ON outbox (((payload -> 'message') ->> 'id'))")
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_outbox_dead_letter_message"
                   " ON outbox_dead_letter (((payload -> 'message') ->> 'id'))")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_outbox_dead_letter_message")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_outbox_message")
    op.execute("REVOKE SELECT, UPDATE (payload) ON outbox_dead_letter FROM chat_app")
