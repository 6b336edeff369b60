"""conversation_members.last_activity_at: the conversation list as an index range per member.

GetConversations used to join every membership of the caller to its conversation, sort them
all by the conversation's last activity and keep 51: its cost grew with the caller's
memberships (p50 19 ms at 5,000, 75-96 ms at 20,000), and with its statistics the planner
switched to a sequential scan of ``messages`` for members of many conversations. Each member
row now carries its conversation's last activity, written by the statement that changes it
(CreateConversation, SendMessage), and the index ``(user_id, last_activity_at,
conversation_id)`` hands out a page of the list in order: reading it backwards from a page
token costs the page, however many conversations the member is in.

That index replaces ``(user_id, conversation_id)``: every lookup by member that used it
(the gateway's "which of these am I a member of") has the primary key
``(conversation_id, user_id)`` for it, and one index fewer is one index entry fewer per member
row that a send rewrites.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE conversation_members ADD COLUMN last_activity_at timestamptz;
        UPDATE conversation_members m SET last_activity_at = c.last_activity_at
          FROM conversations c WHERE c.id = m.conversation_id;
        ALTER TABLE conversation_members ALTER COLUMN last_activity_at SET NOT NULL;
        DROP INDEX ix_conversation_members_user;
        CREATE INDEX ix_conversation_members_inbox
            ON conversation_members (user_id, last_activity_at, conversation_id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS ix_conversation_members_inbox;
        CREATE INDEX IF NOT EXISTS ix_conversation_members_user
            ON conversation_members (user_id, conversation_id);
        ALTER TABLE conversation_members DROP COLUMN IF EXISTS last_activity_at;
        """
    )
