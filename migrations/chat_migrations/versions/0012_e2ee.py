"""End-to-end encryption: device keys, one-time keys, to-device messages, encrypted conversations.

The server routes and stores what clients encrypt; it holds public keys and ciphertext only
(docs/e2ee.md). Three tables, each tenant-owned like every other (``tenant_id`` leads the keys,
row-level security forced with the ``tenant_isolation`` policy, ``chat_app`` the role with
grants; the relay never reads them):

- ``e2ee_devices``: one row per (user, device): the device's Curve25519 identity key, its
  Ed25519 signing key and the signature of both by the latter, and the device's fallback key
  (handed out when its one-time keys are exhausted, and never removed by a claim).
- ``e2ee_one_time_keys``: the device's unclaimed one-time keys, each signed by the device's
  Ed25519 key. A claim deletes the key it hands out in the claiming statement itself
  (``DELETE ... RETURNING`` over ``FOR UPDATE SKIP LOCKED``), so a key is handed out once.
- ``e2ee_to_device``: messages for one device (room-key sharing), kept until that device
  acknowledges them.

``conversations.encrypted`` (set at creation, never cleared) and ``messages.ciphertext``
(``{algorithm, sender_device, body}``, NULL on a plain message; ``content`` is then ""). The
search trigger leaves an encrypted message's vector empty, explicitly, not only because its
content is empty.

Revision ID: 0011e
Revises: 0011p
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011e"
down_revision = "0011p"
branch_labels = None
depends_on = None

_TENANCY = """
        GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO chat_app;
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON {table}
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE conversations ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
        ALTER TABLE messages ADD COLUMN ciphertext jsonb;

        CREATE OR REPLACE FUNCTION messages_search_vector() RETURNS trigger
            LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            IF NEW.ciphertext IS NOT NULL THEN
                NEW.search_vector := NULL;  -- never indexed: the server cannot read it
            ELSE
                NEW.search_vector := to_tsvector('chat_search', NEW.content);
            END IF;
            RETURN NEW;
        END $$;

        CREATE TABLE e2ee_devices (
            tenant_id           text NOT NULL DEFAULT 'default',
            user_id             text NOT NULL,
            device_id           text NOT NULL,
            curve25519_key      text NOT NULL,
            ed25519_key         text NOT NULL,
            signature           text NOT NULL,
            fallback_key_id     text,
            fallback_key        text,
            fallback_signature  text,
            created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT e2ee_devices_pkey PRIMARY KEY (tenant_id, user_id, device_id),
            CONSTRAINT e2ee_devices_fallback_check
                CHECK ((fallback_key IS NULL) = (fallback_signature IS NULL)
                       AND (fallback_key IS NULL) = (fallback_key_id IS NULL))
        );

        CREATE TABLE e2ee_one_time_keys (
            tenant_id   text NOT NULL DEFAULT 'default',
            user_id     text NOT NULL,
            device_id   text NOT NULL,
            key_id      text NOT NULL,
            public_key  text NOT NULL,
            signature   text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT e2ee_one_time_keys_pkey PRIMARY KEY (tenant_id, user_id, device_id, key_id),
            CONSTRAINT e2ee_one_time_keys_device_fkey FOREIGN KEY (tenant_id, user_id, device_id)
                REFERENCES e2ee_devices (tenant_id, user_id, device_id) ON DELETE CASCADE
        );

        CREATE TABLE e2ee_to_device (
            tenant_id           text NOT NULL DEFAULT 'default',
            id                  bigint GENERATED ALWAYS AS IDENTITY,
            recipient_id        text NOT NULL,
            recipient_device    text NOT NULL,
            sender_id           text NOT NULL,
            sender_device       text NOT NULL,
            message_type        text NOT NULL,
            body                text NOT NULL,
            created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT e2ee_to_device_pkey PRIMARY KEY (tenant_id, id),
            CONSTRAINT e2ee_to_device_device_fkey
                FOREIGN KEY (tenant_id, recipient_id, recipient_device)
                REFERENCES e2ee_devices (tenant_id, user_id, device_id) ON DELETE CASCADE
        );
        CREATE INDEX ix_e2ee_to_device_inbox
            ON e2ee_to_device (tenant_id, recipient_id, recipient_device, id);
        """
        + "".join(_TENANCY.format(table=t)
                  for t in ("e2ee_devices", "e2ee_one_time_keys", "e2ee_to_device"))
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE e2ee_to_device;
        DROP TABLE e2ee_one_time_keys;
        DROP TABLE e2ee_devices;
        CREATE OR REPLACE FUNCTION messages_search_vector() RETURNS trigger
            LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            NEW.search_vector := to_tsvector('chat_search', NEW.content);
            RETURN NEW;
        END $$;
        ALTER TABLE messages DROP COLUMN ciphertext;
        ALTER TABLE conversations DROP COLUMN encrypted;
        """
    )
