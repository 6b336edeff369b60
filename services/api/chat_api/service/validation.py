"""Input checks that name the offending field (the request's proto field name)."""

from __future__ import annotations

import re
import uuid

from chat_shared.errors import InvalidArgument

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
_USER_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")


def conversation_id(value: str, field: str = "conversation_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, "must be a UUID") from None
    return str(parsed)


def user_id(value: str, field: str) -> str:
    if not _USER_ID.fullmatch(value):
        raise InvalidArgument(
            field, "must be 1..128 characters without spaces or control characters")
    return value


def limit(value: int, field: str = "limit") -> int:
    if value == 0:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument(field, f"must be between 1 and {MAX_LIMIT} (0 means {DEFAULT_LIMIT})")
    return value


def no_control_chars(value: str, field: str) -> None:
    # Newlines and tabs are content; other control characters and NUL (which PostgreSQL
    # rejects in text) are not.
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value):
        raise InvalidArgument(field, "must not contain control characters")
