"""Message search: a full-text vector per message, kept by the database, and its GIN index.

- ``chat_search``: a text search configuration, ``simple`` (no language: no stemming, no
  stop words, every word is a word) with the ``unaccent`` dictionary before it, so "cafe"
  finds "Café". ``unaccent`` is a contrib extension (trusted: the database owner may create
  it). A per-tenant configuration would be another configuration of the same shape, named
  where the vector is computed and where the query is parsed.
- ``messages.search_vector``: ``to_tsvector('chat_search', content)``, set by a BEFORE
  INSERT OR UPDATE OF content trigger, so every writer (the send, the edit, the deletion that
  erases the content, a bulk COPY) keeps it in the same transaction as the content and none
  can forget it. Not a generated column: adding a stored generated column rewrites the
  whole table under an ACCESS EXCLUSIVE lock, which stops every send for as long as the
  rewrite takes; a nullable column without default is a catalog change only.
- Existing rows get their vector in batches of ``BACKFILL_BATCH``, each its own transaction
  (a send never waits for more than one batch's row locks, and only an edit of a message of
  that batch waits at all), tenant by tenant since row-level security is forced.
- ``ix_messages_search``: GIN over the vector, built with CREATE INDEX CONCURRENTLY outside
  any transaction, so sends keep committing while it builds.

Revision ID: 0008s
Revises: 0007
Create Date: 2026-12-01
"""

from alembic import op
from sqlalchemy import text

revision = "0008s"
down_revision = "0007"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 5000


def upgrade() -> None:
    op.execute(
        """
        CREATE EXTENSION IF NOT EXISTS unaccent;
        CREATE TEXT SEARCH CONFIGURATION chat_search (COPY = pg_catalog.simple);
        ALTER TEXT SEARCH CONFIGURATION chat_search
            ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
            WITH unaccent, simple;

        ALTER TABLE messages ADD COLUMN search_vector tsvector;

        CREATE FUNCTION messages_search_vector() RETURNS trigger
            LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            NEW.search_vector := to_tsvector('chat_search', NEW.content);
            RETURN NEW;
        END $$;
        CREATE TRIGGER messages_search_vector
            BEFORE INSERT OR UPDATE OF content ON messages
            FOR EACH ROW EXECUTE FUNCTION messages_search_vector();
        """
    )
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        tenants = conn.execute(text("SELECT id FROM tenants ORDER BY id")).scalars().all()
        for tenant in tenants:
            conn.execute(text("SELECT set_config('app.tenant_id', :t, false)"), {"t": tenant})
            last = "00000000-0000-0000-0000-000000000000"
            while True:
                done = conn.execute(text(
                    """
                    WITH batch AS (
                        SELECT id FROM messages
                        WHERE tenant_id = :t AND id > CAST(:last AS uuid)
                        ORDER BY id LIMIT :n
                    )
                    UPDATE messages m SET search_vector = to_tsvector('chat_search', m.content)
                      FROM batch WHERE m.tenant_id = :t AND m.id = batch.id
                    RETURNING m.id
                    """), {"t": tenant, "last": last, "n": BACKFILL_BATCH}).scalars().all()
                if not done:
                    break
                last = str(max(done))
        conn.execute(text("SELECT set_config('app.tenant_id', '', false)"))
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_search"
                   " ON messages USING gin (search_vector)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_search")
    op.execute(
        """
        DROP TRIGGER messages_search_vector ON messages;
        DROP FUNCTION messages_search_vector();
        ALTER TABLE messages DROP COLUMN search_vector;
        DROP TEXT SEARCH CONFIGURATION chat_search;
        DROP EXTENSION IF EXISTS unaccent;
        """
    )
