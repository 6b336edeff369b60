"""Initial schema: conversations, members, messages, outbox, outbox dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE conversations (
            id               uuid PRIMARY KEY,
            title            text NOT NULL DEFAULT '',
            -- Set only for direct conversations: the two members, sorted. Unique, so a direct
            -- conversation between the same two users exists once.
            direct_key       text UNIQUE,
            created_by       text NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_message_at  timestamptz,
            -- Ordering key of GetConversations: created_at, then each message's time.
            last_activity_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- The seq of the newest message. Incremented under the row lock of the sending
            -- transaction, which makes seq gapless and serializes sends per conversation.
            last_seq         bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
        );

        CREATE TABLE conversation_members (
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            user_id         text NOT NULL,
            joined_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_read_seq   bigint NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0),
            PRIMARY KEY (conversation_id, user_id)
        );
        CREATE INDEX ix_conversation_members_user
            ON conversation_members (user_id, conversation_id);

        CREATE TABLE messages (
            id              uuid PRIMARY KEY,
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq             bigint NOT NULL CHECK (seq > 0),
            sender_id       text NOT NULL,
            content         text NOT NULL,
            idempotency_key text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT uq_messages_conversation_seq UNIQUE (conversation_id, seq),
            -- The durable truth of idempotency: Redis is only the fast path in front of it.
            CONSTRAINT uq_messages_sender_idempotency_key UNIQUE (sender_id, idempotency_key)
        );
        CREATE INDEX ix_messages_conversation_created ON messages (conversation_id, created_at);

        CREATE TABLE outbox (
            id              bigserial PRIMARY KEY,
            event_id        uuid NOT NULL UNIQUE,
            event_type      text NOT NULL,
            conversation_id uuid NOT NULL,
            seq             bigint NOT NULL,
            recipients      text[] NOT NULL,
            payload         jsonb NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            last_error      text
        );
        CREATE INDEX ix_outbox_conversation ON outbox (conversation_id, id);

        CREATE TABLE outbox_dead_letter (
            id              bigserial PRIMARY KEY,
            event_id        uuid NOT NULL UNIQUE,
            event_type      text NOT NULL,
            conversation_id uuid NOT NULL,
            seq             bigint NOT NULL,
            recipients      text[] NOT NULL,
            payload         jsonb NOT NULL,
            created_at      timestamptz NOT NULL,
            attempts        integer NOT NULL,
            last_error      text NOT NULL,
            failed_at       timestamptz NOT NULL DEFAULT clock_timestamp()
        );

        -- Wakes the relay at commit of any transaction that wrote to the outbox.
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox', '');
            RETURN NULL;
        END $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
            FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER IF EXISTS outbox_notify ON outbox;
        DROP FUNCTION IF EXISTS outbox_notify();
        DROP TABLE IF EXISTS outbox_dead_letter;
        DROP TABLE IF EXISTS outbox;
        DROP TABLE IF EXISTS messages;
        DROP TABLE IF EXISTS conversation_members;
        DROP TABLE IF EXISTS conversations;
        """
    )
