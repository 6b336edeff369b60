"""Tenants: a registry, ``tenant_id`` on every tenant-owned row, row-level security, roles.

Every tenant-owned table (conversations, conversation_members, messages, outbox,
outbox_dead_letter) gains ``tenant_id``; the rows that exist belong to the tenant ``default``,
which the registry (``tenants``) holds from here on. Keys lead with the tenant where the API's
access paths need it: the primary keys of conversations, members and messages, the direct
conversation key, the idempotency key (a send is identified by tenant, sender and key), the
(conversation, seq) key and the member's inbox index. The members' and messages' foreign keys
name (tenant_id, conversation_id), so a row can only belong to a conversation of its own tenant.
The outbox keeps its keys: the relay reads it across tenants by partition and id.

Row-level security is enabled and forced (so the tables' owner is held to it too) with the
policy ``tenant_isolation``: a row is visible and writable only while the session's
``app.tenant_id`` names its tenant. Without the setting nothing is visible.

Roles (cluster-wide, created when missing, never with LOGIN):

- ``chat_app``: what the API and the WebSocket gateway act as (``DATABASE_ROLE``). It does not
  own the tables and cannot bypass row-level security: it reads and writes conversations,
  members, messages and the outbox of the tenant its transaction names, reads the registry and
  may register a tenant id (TENANT_AUTO_CREATE).
- ``chat_relay``: what the relay, its commands and the operator act as. It publishes every
  tenant's events, so the outbox and its dead letters have a second policy, ``relay_all``, for it
  alone; it has no grant on any other tenant-owned table.

The user that runs the migrations is made a member of both (it needs CREATEROLE, or a database
administrator creates the roles beforehand), so a service that logs in as that user acts as the
role through DATABASE_ROLE; production may instead log in as a member of the role.

Downgrade refuses while rows of a tenant other than ``default`` exist (merging tenants would
break the unique keys and hand one tenant's rows to another); the roles are dropped only when no
other database still uses them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TENANT_TABLES = ("conversations", "conversation_members", "messages", "outbox",
                 "outbox_dead_letter")
RELAY_TABLES = ("outbox", "outbox_dead_letter")
APP_TABLES = ("conversations", "conversation_members", "messages", "outbox")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenants (
            id         text PRIMARY KEY,
            status     text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'disabled')),
            -- Per-tenant limits by name (max_members, max_message_length); a missing name
            -- takes the service's setting.
            limits     jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        INSERT INTO tenants (id) VALUES ('default');

        ALTER TABLE conversation_members DROP CONSTRAINT conversation_members_conversation_id_fkey;
        ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
        """
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute(
        """
        ALTER TABLE conversations DROP CONSTRAINT conversations_pkey;
        ALTER TABLE conversations ADD CONSTRAINT conversations_pkey PRIMARY KEY (tenant_id, id);
        ALTER TABLE conversations DROP CONSTRAINT conversations_direct_key_key;
        ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_direct_key_key
            UNIQUE (tenant_id, direct_key);
        ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_id_fkey
            FOREIGN KEY (tenant_id) REFERENCES tenants (id);

        ALTER TABLE conversation_members DROP CONSTRAINT conversation_members_pkey;
        ALTER TABLE conversation_members ADD CONSTRAINT conversation_members_pkey
            PRIMARY KEY (tenant_id, conversation_id, user_id);
        ALTER TABLE conversation_members ADD CONSTRAINT conversation_members_conversation_fkey
            FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
            ON DELETE CASCADE;
        DROP INDEX ix_conversation_members_inbox;
        CREATE INDEX ix_conversation_members_inbox
            ON conversation_members (tenant_id, user_id, last_activity_at, conversation_id);

        ALTER TABLE messages DROP CONSTRAINT messages_pkey;
        ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (tenant_id, id);
        ALTER TABLE messages DROP CONSTRAINT uq_messages_conversation_seq;
        ALTER TABLE messages ADD CONSTRAINT uq_messages_conversation_seq
            UNIQUE (tenant_id, conversation_id, seq);
        ALTER TABLE messages DROP CONSTRAINT uq_messages_sender_idempotency_key;
        ALTER TABLE messages ADD CONSTRAINT uq_messages_sender_idempotency_key
            UNIQUE (tenant_id, sender_id, idempotency_key);
        ALTER TABLE messages ADD CONSTRAINT messages_conversation_fkey
            FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
            ON DELETE CASCADE;
        DROP INDEX ix_messages_conversation_created;
        CREATE INDEX ix_messages_conversation_created
            ON messages (tenant_id, conversation_id, created_at);

        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chat_app') THEN
                CREATE ROLE chat_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chat_relay') THEN
                CREATE ROLE chat_relay NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
            END IF;
            IF NOT pg_has_role(current_user, 'chat_app', 'MEMBER') THEN
                EXECUTE format('GRANT chat_app TO %I', current_user);
            END IF;
            IF NOT pg_has_role(current_user, 'chat_relay', 'MEMBER') THEN
                EXECUTE format('GRANT chat_relay TO %I', current_user);
            END IF;
        END $$;

        GRANT USAGE ON SCHEMA public TO chat_app, chat_relay;
        GRANT SELECT, INSERT (id) ON tenants TO chat_app;
        GRANT SELECT, INSERT, UPDATE, DELETE
            ON conversations, conversation_members, messages, outbox TO chat_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON outbox, outbox_dead_letter TO chat_relay;
        GRANT USAGE ON SEQUENCE outbox_id_seq TO chat_app, chat_relay;
        GRANT USAGE ON SEQUENCE outbox_dead_letter_id_seq TO chat_relay;
        """
    )
    for table in TENANT_TABLES:
        op.execute(
            f"""
            ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
            ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('app.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
            """
        )
    for table in RELAY_TABLES:
        op.execute(f"CREATE POLICY relay_all ON {table} TO chat_relay"
                   " USING (true) WITH CHECK (true)")


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(
            f"""
            DROP POLICY IF EXISTS relay_all ON {table};
            DROP POLICY IF EXISTS tenant_isolation ON {table};
            ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;
            ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;
            """
        )
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM conversations WHERE tenant_id <> 'default')
               OR EXISTS (SELECT 1 FROM outbox WHERE tenant_id <> 'default')
               OR EXISTS (SELECT 1 FROM outbox_dead_letter WHERE tenant_id <> 'default') THEN
                RAISE EXCEPTION 'rows of tenants other than default exist; a database without '
                                'tenants cannot hold them apart: delete them first';
            END IF;
        END $$;

        REVOKE ALL ON conversations, conversation_members, messages, outbox, outbox_dead_letter,
                      tenants FROM chat_app, chat_relay;
        REVOKE ALL ON SEQUENCE outbox_id_seq, outbox_dead_letter_id_seq FROM chat_app, chat_relay;
        REVOKE USAGE ON SCHEMA public FROM chat_app, chat_relay;

        DROP INDEX ix_messages_conversation_created;
        CREATE INDEX ix_messages_conversation_created ON messages (conversation_id, created_at);
        ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey;
        ALTER TABLE messages DROP CONSTRAINT uq_messages_sender_idempotency_key;
        ALTER TABLE messages ADD CONSTRAINT uq_messages_sender_idempotency_key
            UNIQUE (sender_id, idempotency_key);
        ALTER TABLE messages DROP CONSTRAINT uq_messages_conversation_seq;
        ALTER TABLE messages ADD CONSTRAINT uq_messages_conversation_seq
            UNIQUE (conversation_id, seq);
        ALTER TABLE messages DROP CONSTRAINT messages_pkey;
        ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id);

        DROP INDEX ix_conversation_members_inbox;
        CREATE INDEX ix_conversation_members_inbox
            ON conversation_members (user_id, last_activity_at, conversation_id);
        ALTER TABLE conversation_members DROP CONSTRAINT conversation_members_conversation_fkey;
        ALTER TABLE conversation_members DROP CONSTRAINT conversation_members_pkey;
        ALTER TABLE conversation_members ADD CONSTRAINT conversation_members_pkey
            PRIMARY KEY (conversation_id, user_id);

        ALTER TABLE conversations DROP CONSTRAINT conversations_tenant_id_fkey;
        ALTER TABLE conversations DROP CONSTRAINT conversations_tenant_direct_key_key;
        ALTER TABLE conversations ADD CONSTRAINT conversations_direct_key_key UNIQUE (direct_key);
        ALTER TABLE conversations DROP CONSTRAINT conversations_pkey;
        ALTER TABLE conversations ADD CONSTRAINT conversations_pkey PRIMARY KEY (id);
        """
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN tenant_id")
    op.execute(
        """
        ALTER TABLE conversation_members ADD CONSTRAINT conversation_members_conversation_id_fkey
            FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE;
        ALTER TABLE messages ADD CONSTRAINT messages_conversation_id_fkey
            FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE;
        DROP TABLE tenants;

        -- Roles belong to the cluster: another database (a copy, a second deployment) may
        -- still use them, and then they stay.
        DO $$
        DECLARE
            role_name text;
        BEGIN
            FOREACH role_name IN ARRAY ARRAY['chat_app', 'chat_relay'] LOOP
                BEGIN
                    EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
                EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
                    RAISE NOTICE 'role % is still used elsewhere; kept', role_name;
                END;
            END LOOP;
        END $$;
        """
    )
