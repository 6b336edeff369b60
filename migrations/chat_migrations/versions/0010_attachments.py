"""Attachments: the files of messages, kept in an S3-compatible store (docs/attachments.md).

One row per upload (CreateUpload): who uploaded what to which conversation, the object's key in
the store (``<tenant>/<conversation>/<upload id>``: tenant-scoped, never derived from the
filename), and its status: ``uploaded`` until a send attaches it, then ``attached`` with the
message's id and its position in the message, written by the send statement itself, so a
message and its attachments commit together or not at all. Image dimensions and the
thumbnail's key are filled in by the thumbnail worker. Deleting the message turns its
attachments ``erased`` in the deletion's own statement (detached from the message, filename
cleared): such a row is only a queued deletion of its objects, which the sweeper carries out,
then removes the row.

Like every tenant-owned table: ``tenant_id`` leads the keys, row-level security is forced with
the ``tenant_isolation`` policy, and ``chat_app`` (the API) is the role with grants. The relay
never reads it. The partial indexes on uploads not yet attached and on erased ones are the
sweeper's paths.

Revision ID: 0010a
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010a"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE attachments (
            tenant_id       text NOT NULL DEFAULT 'default',
            id              uuid NOT NULL,
            conversation_id uuid NOT NULL,
            uploader        text NOT NULL,
            filename        text NOT NULL,
            content_type    text NOT NULL,
            size_bytes      bigint NOT NULL CHECK (size_bytes > 0),
            object_key      text NOT NULL,
            status          text NOT NULL DEFAULT 'uploaded'
                            CHECK (status IN ('uploaded', 'attached', 'erased')),
            message_id      uuid,
            position        smallint,
            width           integer,
            height          integer,
            thumbnail_key   text,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT attachments_pkey PRIMARY KEY (tenant_id, id),
            CONSTRAINT attachments_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
                REFERENCES conversations (tenant_id, id) ON DELETE CASCADE,
            CONSTRAINT attachments_message_fkey FOREIGN KEY (tenant_id, message_id)
                REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
            CONSTRAINT attachments_attached_check
                CHECK ((status = 'attached') = (message_id IS NOT NULL))
        );
        CREATE INDEX ix_attachments_message ON attachments (tenant_id, message_id, position)
            WHERE message_id IS NOT NULL;
        CREATE INDEX ix_attachments_unattached ON attachments (tenant_id, created_at)
            WHERE status = 'uploaded';
        CREATE INDEX ix_attachments_erased ON attachments (tenant_id, created_at)
            WHERE status = 'erased';

        GRANT SELECT, INSERT, UPDATE, DELETE ON attachments TO chat_app;
        ALTER TABLE attachments ENABLE ROW LEVEL SECURITY;
        ALTER TABLE attachments FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON attachments
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE attachments")
