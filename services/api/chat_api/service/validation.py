"""What the service still does with already-validated input.

Every rule on a request field is declared in chat.proto and enforced before a request reaches
the service (chat_api.transport.request_rules); what is left here are meanings, not rules.
"""

from __future__ import annotations

import uuid

DEFAULT_LIMIT = 50
"""The page size when a request leaves ``limit`` at 0 (chat.proto allows 0..100)."""


def conversation_id(value: str) -> str:
    """The canonical (lower-case) form of a UUID that chat.proto's rule already accepted."""
    return str(uuid.UUID(value))


message_id = conversation_id
"""A message id (a thread's root) is canonicalised the same way."""


def limit(value: int) -> int:
    """The page size: ``limit``, or the default when it is 0."""
    return value or DEFAULT_LIMIT
