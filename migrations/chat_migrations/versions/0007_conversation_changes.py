"""Conversations people live in: change positions, the change log, roles, edits, tombstones,
reactions.

- ``conversations.last_pos``: the conversation's change position, gapless like ``last_seq``
  and assigned under the same row lock. Every ordered change (a message sent, edited or
  deleted, a reaction added or removed, a member added, removed or given a role, the
  conversation updated) takes the next one. Until now only messages changed a conversation,
  so every existing conversation starts at ``last_pos = last_seq``.
- ``conversation_changes``: the permanent log of those changes, one row per position, with the
  references the change is about (message id, user id, emoji, role, actor) and never any
  content: erasing a deleted message's content from ``messages`` erases it from every later
  read, resume included. Existing messages are written into it as their ``message.created``.
- ``conversations.history_visible_to_new_members`` (default true);
  ``conversation_members.role`` (``owner`` for the creator, else ``member``) and
  ``visible_from_seq`` (a member added to a conversation that hides its history sees the
  messages after it); ``deleted_unread`` (how many deleted messages lie after the member's
  read position, so unread counts stay one subtraction).
- ``messages.version``, ``edited_at``, ``deleted_at`` (a tombstone keeps its row, its seq and
  its place; content is erased) and a partial index of the tombstones.
- ``message_reactions``: one row per (message, emoji, user).

The new tables are tenant-owned: ``tenant_id``, forced row-level security with the
``tenant_isolation`` policy, grants to ``chat_app`` only (the relay never reads them).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NEW_TABLES = ("conversation_changes", "message_reactions")


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE conversations
            ADD COLUMN last_pos bigint NOT NULL DEFAULT 0 CHECK (last_pos >= 0),
            ADD COLUMN history_visible_to_new_members boolean NOT NULL DEFAULT true;
        UPDATE conversations SET last_pos = last_seq WHERE last_seq > 0;

        ALTER TABLE conversation_members
            ADD COLUMN role text NOT NULL DEFAULT 'member'
                CHECK (role IN ('owner', 'admin', 'member')),
            ADD COLUMN visible_from_seq bigint NOT NULL DEFAULT 0
                CHECK (visible_from_seq >= 0),
            ADD COLUMN deleted_unread bigint NOT NULL DEFAULT 0 CHECK (deleted_unread >= 0);
        UPDATE conversation_members m SET role = 'owner'
          FROM conversations c
         WHERE c.tenant_id = m.tenant_id AND c.id = m.conversation_id
           AND c.created_by = m.user_id;

        ALTER TABLE messages
            ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version > 0),
            ADD COLUMN edited_at timestamptz,
            ADD COLUMN deleted_at timestamptz;
        CREATE INDEX ix_messages_deleted ON messages (tenant_id, conversation_id, seq)
            WHERE deleted_at IS NOT NULL;

        CREATE TABLE conversation_changes (
            tenant_id       text NOT NULL DEFAULT 'default',
            conversation_id uuid NOT NULL,
            pos             bigint NOT NULL CHECK (pos > 0),
            change_type     text NOT NULL,
            message_id      uuid,
            user_id         text,
            emoji           text,
            role            text,
            actor_id        text,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT conversation_changes_pkey PRIMARY KEY (tenant_id, conversation_id, pos),
            CONSTRAINT conversation_changes_conversation_fkey
                FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
                ON DELETE CASCADE
        );
        INSERT INTO conversation_changes (tenant_id, conversation_id, pos, change_type,
                                          message_id, user_id, actor_id, created_at)
        SELECT tenant_id, conversation_id, seq, 'message.created', id, sender_id, sender_id,
               created_at
        FROM messages;

        CREATE TABLE message_reactions (
            tenant_id       text NOT NULL DEFAULT 'default',
            message_id      uuid NOT NULL,
            emoji           text NOT NULL,
            user_id         text NOT NULL,
            conversation_id uuid NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT message_reactions_pkey PRIMARY KEY (tenant_id, message_id, emoji, user_id),
            CONSTRAINT message_reactions_message_fkey
                FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id)
                ON DELETE CASCADE
        );

        GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_changes, message_reactions
            TO chat_app;
        """
    )
    for table in NEW_TABLES:
        op.execute(
            f"""
            ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
            ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('app.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
            """
        )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE message_reactions;
        DROP TABLE conversation_changes;
        DROP INDEX ix_messages_deleted;
        ALTER TABLE messages DROP COLUMN deleted_at, DROP COLUMN edited_at, DROP COLUMN version;
        ALTER TABLE conversation_members DROP COLUMN deleted_unread,
            DROP COLUMN visible_from_seq, DROP COLUMN role;
        ALTER TABLE conversations DROP COLUMN history_visible_to_new_members,
            DROP COLUMN last_pos;
        """
    )
