"""The chat-service database schema as alembic migrations, and ``chat-migrate`` to apply them."""
