"""ChatError -> gRPC status with the rich error model (google.rpc.Status + ErrorInfo)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from chat_shared.errors import ERROR_DOMAIN, ChatError, InvalidArgument, RateLimited

GRPC_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def status_proto(exc: ChatError) -> status_pb2.Status:
    """The google.rpc.Status for an error: code, message and its details."""
    code = GRPC_CODES.get(exc.code, grpc.StatusCode.INTERNAL)
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    if exc.reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN,
                                                metadata=exc.metadata))
        status.details.append(detail)
    if isinstance(exc, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)
        ]))
        status.details.append(detail)
    if isinstance(exc, RateLimited):
        # RetryInfo rounded up to the millisecond: a retry after it is never too early.
        ms = max(math.ceil(exc.retry_after * 1000), 1)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)))
        status.details.append(detail)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=exc.subject,
                description=f"{exc.cls} requests: {exc.headers.get('RateLimit-Policy', '')}")
        ]))
        status.details.append(detail)
    return status


def to_grpc_status(exc: ChatError, rate_limit_headers: dict[str, str] | None = None
                   ) -> grpc.Status:
    """The status of ``exc``; with the call's RateLimit headers as trailing metadata, like
    HTTP sends them on every answer of a limited call (a refusal carries its own)."""
    status = rpc_status.to_status(status_proto(exc))
    headers = exc.headers if isinstance(exc, RateLimited) else rate_limit_headers
    if headers:
        # The same headers HTTP sends, as trailing metadata (lower-case keys, as gRPC wants).
        extra = tuple((k.lower(), v) for k, v in headers.items())
        status = _Status(status.code, status.details, (*status.trailing_metadata, *extra))
    return status


class _Status(grpc.Status):  # type: ignore[misc]  # grpc is untyped here
    """A grpc.Status with its own trailing metadata (grpc.Status is an interface)."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


