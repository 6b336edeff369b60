"""PostgreSQL repositories, one module per noun, over the shared ``chat_shared.db.Database``.

Every statement that reads or writes a conversation joins the caller's membership in the same
statement, so "not a member" and "does not exist" are one answer and one round trip.

Sessions are in autocommit mode: each unit of work is one statement (data-modifying CTEs
included), which PostgreSQL runs atomically, so no explicit transaction is needed.
"""
