"""The schema at head, as SQLAlchemy Core ``MetaData``: what the migrations build, described.

The migrations in ``versions/`` are the history and stay as they were written (plain SQL);
this module describes where they lead, so alembic's autogenerate can compare the two:
``env.py`` gives it to alembic as ``target_metadata``, and a test migrates a fresh database to
head and asserts that autogenerate finds no difference. A new migration changes this module in
the same commit.

Runtime code does not use it: services write SQL through ``chat_shared.db``.

Constraint and index names are PostgreSQL's own defaults where the migrations let PostgreSQL
name them (``conversations_direct_key_key``), so the comparison matches by name.

What autogenerate does not compare, and so lives only in the migrations: CHECK constraints,
the generated expression of ``outbox.partition`` (only that it is a generated column), the
``outbox_notify`` function and trigger, the ``messages_search_vector`` trigger and the
``chat_search`` text search configuration (migration 0008s), and the tenancy of migration
0006 beyond its columns and keys: row-level security, its policies, the roles and their
grants (a test checks those).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, TSVECTOR, UUID

metadata = MetaData()

_NOW = text("clock_timestamp()")
_TIMESTAMPTZ = TIMESTAMP(timezone=True)


def _tenant_id() -> Column[str]:
    """The owning tenant of a row (migration 0006): rows written without one, and every row
    that predates tenants, belong to ``default``. Row-level security keeps tenants apart."""
    return Column("tenant_id", Text, nullable=False, server_default=text("'default'::text"))


TENANT_TABLES = ("conversations", "conversation_members", "messages", "outbox",
                  "outbox_dead_letter", "conversation_changes", "message_reactions",
                  "attachments", "e2ee_devices", "e2ee_one_time_keys", "e2ee_to_device")
"""The tables whose rows belong to a tenant, each with row-level security forced on."""

tenants = Table(
    "tenants", metadata,
    Column("id", Text, primary_key=True),
    Column("status", Text, nullable=False, server_default=text("'active'::text")),
    Column("limits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    CheckConstraint("status = ANY (ARRAY['active'::text, 'disabled'::text])",
                    name="tenants_status_check"),
)

conversations = Table(
    "conversations", metadata,
    _tenant_id(),
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("title", Text, nullable=False, server_default=text("''::text")),
    # The two members of a direct conversation, sorted; unique, so it exists once.
    Column("direct_key", Text),
    Column("created_by", Text, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    Column("last_message_at", _TIMESTAMPTZ),
    Column("last_activity_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    # Incremented under the sending transaction's row lock: seq is gapless.
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("member_ids", ARRAY(Text), nullable=False),
    # The change position (migration 0007): every ordered change takes the next one, under
    # the same row lock as last_seq, so it is gapless too (``conversation_changes``).
    Column("last_pos", BigInteger, nullable=False, server_default=text("0")),
    Column("history_visible_to_new_members", Boolean, nullable=False,
           server_default=text("true")),
    # The newest root-level message's root_seq (migration 0009), under the same row lock.
    Column("last_root_seq", BigInteger, nullable=False, server_default=text("0")),
    # End-to-end encrypted (migration 0011e): set at creation, never cleared.
    Column("encrypted", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint("tenant_id", "id", name="conversations_pkey"),
    UniqueConstraint("tenant_id", "direct_key", name="conversations_tenant_direct_key_key"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="conversations_tenant_id_fkey"),
    CheckConstraint("last_seq >= 0", name="conversations_last_seq_check"),
    CheckConstraint("last_pos >= 0", name="conversations_last_pos_check"),
    CheckConstraint("last_root_seq >= 0", name="conversations_last_root_seq_check"),
)

conversation_members = Table(
    "conversation_members", metadata,
    _tenant_id(),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("joined_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    Column("last_read_seq", BigInteger, nullable=False, server_default=text("0")),
    # The conversation's last_activity_at, written with it (migration 0005): the member's
    # conversation list is a range of ix_conversation_members_inbox.
    Column("last_activity_at", _TIMESTAMPTZ, nullable=False),
    # owner (the creator), admin or member (migration 0007).
    Column("role", Text, nullable=False, server_default=text("'member'::text")),
    # Messages up to this seq are hidden from the member (added to a conversation that hides
    # its history from new members); 0 shows all.
    Column("visible_from_seq", BigInteger, nullable=False, server_default=text("0")),
    # Deleted messages after last_read_seq: unread = last_seq - last_read_seq - this.
    Column("deleted_unread", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "user_id",
                         name="conversation_members_pkey"),
    ForeignKeyConstraint(["tenant_id", "conversation_id"],
                         ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE",
                         name="conversation_members_conversation_fkey"),
    CheckConstraint("last_read_seq >= 0", name="conversation_members_last_read_seq_check"),
    CheckConstraint("role = ANY (ARRAY['owner'::text, 'admin'::text, 'member'::text])",
                    name="conversation_members_role_check"),
    CheckConstraint("visible_from_seq >= 0", name="conversation_members_visible_from_seq_check"),
    CheckConstraint("deleted_unread >= 0", name="conversation_members_deleted_unread_check"),
    Index("ix_conversation_members_inbox", "tenant_id", "user_id", "last_activity_at",
          "conversation_id"),
)

messages = Table(
    "messages", metadata,
    _tenant_id(),
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("edited_at", _TIMESTAMPTZ),
    # A tombstone: the row keeps its seq, its content is erased (migration 0007).
    Column("deleted_at", _TIMESTAMPTZ),
    # Threads (migration 0009): the root a reply answers (NULL on a root-level message), the
    # message's position among root-level messages (on a reply: the newest root's before it)
    # and in its thread, and on a root its thread's counter and newest reply's time.
    Column("thread_root_id", UUID(as_uuid=False)),
    Column("root_seq", BigInteger, nullable=False),
    Column("thread_seq", BigInteger),
    Column("reply_count", BigInteger, nullable=False, server_default=text("0")),
    Column("last_reply_at", _TIMESTAMPTZ),
    # to_tsvector('chat_search', content), set by the messages_search_vector trigger in the
    # content's own transaction (migration 0008s); NULL never stays after that migration.
    Column("search_vector", TSVECTOR),
    # An encrypted message (migration 0011e): {algorithm, sender_device, body}, opaque to the
    # server; NULL on a plain message. content is "" when it is set.
    Column("ciphertext", JSONB),
    PrimaryKeyConstraint("tenant_id", "id", name="messages_pkey"),
    ForeignKeyConstraint(["tenant_id", "conversation_id"],
                         ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE",
                         name="messages_conversation_fkey"),
    UniqueConstraint("tenant_id", "conversation_id", "seq", name="uq_messages_conversation_seq"),
    # Idempotency itself: a send answers a used key from this constraint alone (no Redis).
    UniqueConstraint("tenant_id", "sender_id", "idempotency_key",
                     name="uq_messages_sender_idempotency_key"),
    CheckConstraint("seq > 0", name="messages_seq_check"),
    CheckConstraint("version > 0", name="messages_version_check"),
    Index("ix_messages_conversation_created", "tenant_id", "conversation_id", "created_at"),
    Index("ix_messages_deleted", "tenant_id", "conversation_id", "seq",
          postgresql_where=text("deleted_at IS NOT NULL")),
    CheckConstraint("reply_count >= 0", name="messages_reply_count_check"),
    CheckConstraint("(thread_root_id IS NULL) = (thread_seq IS NULL)",
                    name="messages_thread_seq_check"),
    ForeignKeyConstraint(["tenant_id", "thread_root_id"], ["messages.tenant_id", "messages.id"],
                         ondelete="CASCADE", name="messages_thread_root_fkey"),
    # The main timeline (root-level messages) and each thread, as gapless ranges.
    Index("uq_messages_root_seq", "tenant_id", "conversation_id", "root_seq", unique=True,
          postgresql_where=text("thread_root_id IS NULL")),
    Index("uq_messages_thread_seq", "tenant_id", "thread_root_id", "thread_seq", unique=True,
          postgresql_where=text("thread_root_id IS NOT NULL")),
    Index("ix_messages_search", "search_vector", postgresql_using="gin"),
)

# The permanent log of a conversation's ordered changes, one row per position (migration
# 0007): references only, never content, so a deletion erases content everywhere by erasing
# it from ``messages``. The gateway's resume reads it after the client's position.
conversation_changes = Table(
    "conversation_changes", metadata,
    _tenant_id(),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("pos", BigInteger, nullable=False),
    Column("change_type", Text, nullable=False),
    Column("message_id", UUID(as_uuid=False)),
    Column("user_id", Text),
    Column("emoji", Text),
    Column("role", Text),
    Column("actor_id", Text),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "pos",
                         name="conversation_changes_pkey"),
    ForeignKeyConstraint(["tenant_id", "conversation_id"],
                         ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE",
                         name="conversation_changes_conversation_fkey"),
    CheckConstraint("pos > 0", name="conversation_changes_pos_check"),
)

message_reactions = Table(
    "message_reactions", metadata,
    _tenant_id(),
    Column("message_id", UUID(as_uuid=False), nullable=False),
    Column("emoji", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "message_id", "emoji", "user_id",
                         name="message_reactions_pkey"),
    ForeignKeyConstraint(["tenant_id", "message_id"], ["messages.tenant_id", "messages.id"],
                         ondelete="CASCADE", name="message_reactions_message_fkey"),
)

attachments = Table(
    "attachments", metadata,
    _tenant_id(),
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("uploader", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    # <tenant>/<conversation>/<upload id>: tenant-scoped, never derived from the filename.
    Column("object_key", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'uploaded'::text")),
    # Set by the send statement that attaches it, with the message (migration 0010a).
    Column("message_id", UUID(as_uuid=False)),
    Column("position", SmallInteger),
    Column("width", Integer),
    Column("height", Integer),
    Column("thumbnail_key", Text),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "id", name="attachments_pkey"),
    ForeignKeyConstraint(["tenant_id", "conversation_id"],
                         ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE",
                         name="attachments_conversation_fkey"),
    ForeignKeyConstraint(["tenant_id", "message_id"], ["messages.tenant_id", "messages.id"],
                         ondelete="CASCADE", name="attachments_message_fkey"),
    CheckConstraint("size_bytes > 0", name="attachments_size_bytes_check"),
    CheckConstraint("status = ANY (ARRAY['uploaded'::text, 'attached'::text, 'erased'::text])",
                    name="attachments_status_check"),
    CheckConstraint("(status = 'attached'::text) = (message_id IS NOT NULL)",
                    name="attachments_attached_check"),
    Index("ix_attachments_message", "tenant_id", "message_id", "position",
          postgresql_where=text("message_id IS NOT NULL")),
    Index("ix_attachments_unattached", "tenant_id", "created_at",
          postgresql_where=text("status = 'uploaded'::text")),
    Index("ix_attachments_erased", "tenant_id", "created_at",
          postgresql_where=text("status = 'erased'::text")),
)

# End-to-end encryption (migration 0011e): public keys and ciphertext only (docs/e2ee.md).
e2ee_devices = Table(
    "e2ee_devices", metadata,
    _tenant_id(),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("curve25519_key", Text, nullable=False),
    Column("ed25519_key", Text, nullable=False),
    Column("signature", Text, nullable=False),
    # Handed out when the device's one-time keys are exhausted; a claim never removes it.
    Column("fallback_key_id", Text),
    Column("fallback_key", Text),
    Column("fallback_signature", Text),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "user_id", "device_id", name="e2ee_devices_pkey"),
    CheckConstraint("((fallback_key IS NULL) = (fallback_signature IS NULL)) AND "
                    "((fallback_key IS NULL) = (fallback_key_id IS NULL))",
                    name="e2ee_devices_fallback_check"),
)

e2ee_one_time_keys = Table(
    "e2ee_one_time_keys", metadata,
    _tenant_id(),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("signature", Text, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "user_id", "device_id", "key_id",
                         name="e2ee_one_time_keys_pkey"),
    ForeignKeyConstraint(["tenant_id", "user_id", "device_id"],
                         ["e2ee_devices.tenant_id", "e2ee_devices.user_id",
                          "e2ee_devices.device_id"], ondelete="CASCADE",
                         name="e2ee_one_time_keys_device_fkey"),
)

e2ee_to_device = Table(
    "e2ee_to_device", metadata,
    _tenant_id(),
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("recipient_id", Text, nullable=False),
    Column("recipient_device", Text, nullable=False),
    Column("sender_id", Text, nullable=False),
    Column("sender_device", Text, nullable=False),
    Column("message_type", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("tenant_id", "id", name="e2ee_to_device_pkey"),
    ForeignKeyConstraint(["tenant_id", "recipient_id", "recipient_device"],
                         ["e2ee_devices.tenant_id", "e2ee_devices.user_id",
                          "e2ee_devices.device_id"], ondelete="CASCADE",
                         name="e2ee_to_device_device_fkey"),
    Index("ix_e2ee_to_device_inbox", "tenant_id", "recipient_id", "recipient_device", "id"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),  # bigserial
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("recipients", ARRAY(Text), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    _tenant_id(),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", _TIMESTAMPTZ),
    Column("last_error", Text),
    # When Redis acknowledged the event; NULL while it waits. Published rows are kept for
    # OUTBOX_RETENTION (migration 0004) so that a lost stream can be refilled.
    Column("published_at", _TIMESTAMPTZ),
    # Which relay partition the row belongs to (the relay's advisory locks, migration 0002).
    Column("partition", SmallInteger,
           Computed("get_byte(uuid_send(conversation_id), 15) % 64", persisted=True),
           nullable=False),
    # The message an event is about (message and reaction events; NULL for the others), set
    # by the statement that writes the event: DeleteMessage finds the message's earlier events
    # by it (migration 0011p).
    Column("message_id", UUID(as_uuid=False)),
    UniqueConstraint("event_id", name="outbox_event_id_key"),
    Index("ix_outbox_conversation", "conversation_id", "id"),
    Index("ix_outbox_partition", "partition", "id",
          postgresql_where=text("published_at IS NULL")),
    Index("ix_outbox_published_at", "published_at",
          postgresql_where=text("published_at IS NOT NULL")),
    # Rows waiting for a retry hold back their conversation's later rows.
    Index("ix_outbox_retrying", "conversation_id", "id",
          postgresql_where=text("next_attempt_at IS NOT NULL")),
    # A message's events, which DeleteMessage scrubs (migration 0011p).
    Index("ix_outbox_message", "message_id", postgresql_where=text("message_id IS NOT NULL")),
)

outbox_dead_letter = Table(
    "outbox_dead_letter", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),  # bigserial
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("conversation_id", UUID(as_uuid=False), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("recipients", ARRAY(Text), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("failed_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    _tenant_id(),
    Column("message_id", UUID(as_uuid=False)),  # as in outbox (migration 0011p)
    UniqueConstraint("event_id", name="outbox_dead_letter_event_id_key"),
    Index("ix_outbox_dead_letter_failed_at", "failed_at"),
    Index("ix_outbox_dead_letter_message", "message_id",
          postgresql_where=text("message_id IS NOT NULL")),
)
