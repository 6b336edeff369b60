"""Helpers shared by the repositories: SQL text with named parameters, row -> record."""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql as pgsql

from chat_api.models import MessageRecord

MESSAGE_COLUMNS = "id, conversation_id, seq, sender_id, content, created_at"


def query(text: str) -> pgsql.SQL:
    """SQL with ``:name`` parameters, as psycopg's ``%(name)s`` (``::`` casts are left alone).

    The statements read better with ``:name``; converting once at import costs nothing per call.
    """
    converted = re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", text)
    return pgsql.SQL(converted)


def message_from(row: tuple[Any, ...], offset: int = 0) -> MessageRecord:
    """A message from MESSAGE_COLUMNS starting at ``offset`` in ``row``."""
    return MessageRecord(
        id=str(row[offset]),
        conversation_id=str(row[offset + 1]),
        seq=int(row[offset + 2]),
        sender_id=row[offset + 3],
        content=row[offset + 4],
        created_at=row[offset + 5],
    )
