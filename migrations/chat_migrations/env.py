"""alembic environment: runs migrations online over a synchronous psycopg connection.

``target_metadata`` is the schema at head (``chat_migrations.schema``), so autogenerate
compares a database with what the migrations are meant to build.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from chat_migrations.schema import metadata

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          transaction_per_migration=True, compare_server_default=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run chat-migrate against a database")
run_migrations_online()
