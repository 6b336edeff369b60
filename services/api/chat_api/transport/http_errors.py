"""ChatError -> HTTP status and JSON error body: the HTTP transport's one mapping table.

The table is gRPC-Gateway's (runtime.HTTPStatusFromCode), so a client that knows the seed's
gateway sees the same statuses. The body is the google.rpc.Status the gRPC transport sends,
rendered as canonical JSON: ``{"code": <gRPC code number>, "message": ..., "details": [...]}``
with each detail carrying its ``@type`` (ErrorInfo, BadRequest), so a 409 for a duplicate send
names the original message in ``details[].metadata.message_id``.

Errors the gateway raises before a call reaches the dispatcher (unknown path, wrong method,
oversized body) use the same body shape with the gRPC code gRPC-Gateway would use for them.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from chat_api.transport.grpc_errors import status_proto
from chat_shared.errors import ChatError

HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 400,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}

# gRPC code for errors that only exist at the HTTP layer (what gRPC-Gateway answers with).
_GATEWAY_CODES: dict[int, int] = {
    400: code_pb2.INVALID_ARGUMENT,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
}


def http_status(exc: ChatError) -> int:
    """The HTTP status for a domain error; anything unmapped is a 500."""
    return HTTP_STATUS.get(exc.code, 500)


def error_body(status: status_pb2.Status) -> dict[str, Any]:
    """The JSON form of a google.rpc.Status (details keep their ``@type``)."""
    body: dict[str, Any] = json_format.MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return body


def error_response(exc: ChatError, headers: dict[str, str] | None = None) -> web.Response:
    """The HTTP response for a ChatError raised by the dispatcher or the request parser."""
    return _json_error(http_status(exc), error_body(status_proto(exc)), headers)


WWW_AUTHENTICATE_REALM = "chat-service"


def www_authenticate(exc: ChatError, authorization: str | None) -> dict[str, str] | None:
    """The ``WWW-Authenticate`` challenge of a 401 (RFC 6750 section 3); None for other errors.

    No error code when the request carried no credentials (the RFC asks for none then);
    ``invalid_request`` when the Authorization header is not a bearer token;
    ``invalid_token`` when a bearer token was sent and refused (expired, malformed, bad
    signature). The description is the same safe text as the error body's message.
    """
    if exc.code != "UNAUTHENTICATED":
        return None
    challenge = f'Bearer realm="{WWW_AUTHENTICATE_REALM}"'
    given = (authorization or "").strip()
    if given:
        scheme = given.split(None, 1)[0].lower()
        error = "invalid_token" if scheme == "bearer" else "invalid_request"
        # A quoted-string of printable ASCII (RFC 6750's error_description grammar).
        description = "".join(c for c in exc.message if " " <= c <= "~" and c not in '"\\')
        challenge += f', error="{error}", error_description="{description}"'
    return {"WWW-Authenticate": challenge}


def gateway_error(http: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An HTTP-layer error (404 path, 405 method, 413 body) in the same body shape."""
    code = _GATEWAY_CODES.get(http, code_pb2.UNKNOWN if http < 500 else code_pb2.INTERNAL)
    return _json_error(http, error_body(status_pb2.Status(code=code, message=message)), headers)


def _json_error(http: int, body: dict[str, Any], headers: dict[str, str] | None) -> web.Response:
    return web.Response(status=http, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)
