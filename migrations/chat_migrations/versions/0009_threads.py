"""Threads: a message may answer a root-level message, and both timelines page in O(page).

``messages.thread_root_id`` names the root-level message a reply belongs to (NULL for a
root-level message). A root carries its thread's ``reply_count`` and ``last_reply_at``,
updated by the sending statement under the conversation's row lock (which already serialises
the conversation's sends, so the counter is exact).

``seq`` stays the conversation's gapless position of every message, replies included. But a
page of *root-level* messages, or of one thread, is no longer a seq range, and a range in the
WHERE clause is what keeps a page's cost at one page whatever plan PostgreSQL picks
(``chat_api.storage.messages``). So two more gapless positions, assigned in the same statement:

- ``root_seq``: on a root-level message its position among the conversation's root-level
  messages (1, 2, 3, ...; ``conversations.last_root_seq`` is the newest); on a reply the
  ``root_seq`` of the newest root-level message before it. Any message's ``root_seq`` thus
  says how many root-level messages precede or are it, so a seq cursor (a page token, an
  ``after_seq``, the newest message before a time) becomes a ``root_seq`` bound with one probe
  of the (conversation, seq) key, and the page is a range of ``uq_messages_root_seq``.
- ``thread_seq``: a reply's position in its thread (1, 2, 3, ...; the root's ``reply_count``
  is the newest); NULL on a root-level message. A thread's page is a range of
  ``uq_messages_thread_seq``.

Existing messages are all root-level: ``root_seq = seq``. The sending statement finds the
root within the reply's conversation; the foreign key (tenant, thread_root_id) keeps a root
from vanishing under its replies and is served by ``uq_messages_thread_seq`` (which leads with
the root, not the conversation, for that reason: deleting a conversation checks every message
it removes for replies). Row-level security needs nothing new: these are columns.

DeleteMessage never deletes a row (it leaves a tombstone, migration 0007), so a deleted root
keeps its replies; the cascade only matters when a whole conversation is deleted.

Revision ID: 0009
Revises: 0008s
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE conversations ADD COLUMN last_root_seq bigint NOT NULL DEFAULT 0
            CONSTRAINT conversations_last_root_seq_check CHECK (last_root_seq >= 0);
        UPDATE conversations SET last_root_seq = last_seq;

        ALTER TABLE messages
            ADD COLUMN thread_root_id uuid,
            ADD COLUMN root_seq bigint,
            ADD COLUMN thread_seq bigint,
            ADD COLUMN reply_count bigint NOT NULL DEFAULT 0
                CONSTRAINT messages_reply_count_check CHECK (reply_count >= 0),
            ADD COLUMN last_reply_at timestamptz;
        UPDATE messages SET root_seq = seq;
        ALTER TABLE messages ALTER COLUMN root_seq SET NOT NULL;
        ALTER TABLE messages ADD CONSTRAINT messages_thread_seq_check
            CHECK ((thread_root_id IS NULL) = (thread_seq IS NULL));
        ALTER TABLE messages ADD CONSTRAINT messages_thread_root_fkey
            FOREIGN KEY (tenant_id, thread_root_id) REFERENCES messages (tenant_id, id)
            ON DELETE CASCADE;
        CREATE UNIQUE INDEX uq_messages_root_seq ON messages (tenant_id, conversation_id, root_seq)
            WHERE thread_root_id IS NULL;
        CREATE UNIQUE INDEX uq_messages_thread_seq
            ON messages (tenant_id, thread_root_id, thread_seq)
            WHERE thread_root_id IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM messages WHERE thread_root_id IS NOT NULL) THEN
                RAISE EXCEPTION 'thread replies exist; a database without threads would show '
                                'them as root-level messages: delete them first';
            END IF;
        END $$;
        DROP INDEX uq_messages_thread_seq;
        DROP INDEX uq_messages_root_seq;
        ALTER TABLE messages DROP CONSTRAINT messages_thread_root_fkey;
        ALTER TABLE messages DROP CONSTRAINT messages_thread_seq_check;
        ALTER TABLE messages DROP COLUMN last_reply_at, DROP COLUMN reply_count,
            DROP COLUMN thread_seq, DROP COLUMN root_seq, DROP COLUMN thread_root_id;
        ALTER TABLE conversations DROP COLUMN last_root_seq;
        """
    )
