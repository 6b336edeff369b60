"""ChatError -> GraphQL error: the GraphQL transport's one mapping table.

A GraphQL answer is HTTP 200 with an ``errors`` list; each error says what failed in its
``extensions``, in the same words the other transports use (docs/graphql.md):

- ``code``: the gRPC status name (``NOT_FOUND``, ``ALREADY_EXISTS``, ...), as gRPC's status
  and HTTP's ``google.rpc.Status`` carry it;
- ``reason`` and ``metadata``: the google.rpc.ErrorInfo of the error (a duplicate send names
  the original message: ``metadata.message_id``, ``seq``, ``conversation_id``), under
  ``domain`` ``chat.v1``;
- ``field``: the request field an INVALID_ARGUMENT is about (chat.proto's name);
- ``retryAfterMs``: for RESOURCE_EXHAUSTED from a rate limit, when a retry passes.

graphql-core puts ``path`` and ``locations`` on the error itself.
"""

from __future__ import annotations

import math
from typing import Any

from graphql import GraphQLError

from chat_shared.errors import ERROR_DOMAIN, ChatError, InvalidArgument, RateLimited

# Errors the GraphQL layer itself raises (the query, not a call, is at fault).
GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
"""The code of an operation refused before it ran (syntax, unknown field, limits)."""


def extensions(exc: ChatError) -> dict[str, Any]:
    """The ``extensions`` of the GraphQL error for ``exc``."""
    out: dict[str, Any] = {"code": exc.code}
    if exc.reason:
        out["reason"] = exc.reason
        out["domain"] = ERROR_DOMAIN
        out["metadata"] = dict(exc.metadata)
    if isinstance(exc, InvalidArgument):
        out["field"] = exc.field
    if isinstance(exc, RateLimited):
        # Rounded up to the millisecond, as gRPC's RetryInfo: a retry after it is never early.
        out["retryAfterMs"] = max(math.ceil(exc.retry_after * 1000), 1)
    return out


def graphql_error(exc: ChatError) -> GraphQLError:
    """The error a resolver raises for ``exc`` (graphql-core adds the field's path)."""
    return GraphQLError(exc.message, original_error=exc, extensions=extensions(exc))


def refused(message: str) -> GraphQLError:
    """An operation refused before it ran (too deep, too costly, too large)."""
    return GraphQLError(message, extensions={"code": GRAPHQL_VALIDATION_FAILED})
