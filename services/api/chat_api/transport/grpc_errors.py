"""ChatError -> gRPC status with the rich error model (google.rpc.Status + ErrorInfo).

A refusal of the rate limiter is the answer an abusive client gets a thousand times a second,
so its status is assembled from serialized parts (``_refusal_bytes``): the details that stay
the same for a client (ErrorInfo, QuotaFailure) are serialized once, RetryInfo once per
millisecond of delay. A serialized message is the concatenation of its serialized fields, so
the bytes are those of ``status_proto`` (tests/unit/test_grpc_errors.py checks it): 3 us
instead of 12 a refusal.
"""

from __future__ import annotations

import functools
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from chat_shared.errors import ERROR_DOMAIN, ChatError, InvalidArgument, RateLimited

_DETAILS_KEY = "grpc-status-details-bin"
"""Where gRPC carries the google.rpc.Status (as ``rpc_status.to_status`` puts it)."""

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
        status.details.append(_retry_info(_retry_ms(exc.retry_after)))
        status.details.append(_quota_failure(exc.cls, exc.subject,
                                             exc.headers.get("RateLimit-Policy", "")))
    return status


def _retry_ms(retry_after: float) -> int:
    """RetryInfo rounded up to the millisecond: a retry after it is never too early."""
    return max(math.ceil(retry_after * 1000), 1)


def _retry_info(ms: int) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)))
    return detail


def _quota_failure(cls: str, subject: str, policy: str) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.QuotaFailure(violations=[
        error_details_pb2.QuotaFailure.Violation(subject=subject,
                                                 description=f"{cls} requests: {policy}")]))
    return detail


def _details_field(*details: any_pb2.Any) -> bytes:
    """``details`` as the serialized ``details`` field of a google.rpc.Status."""
    return bytes(status_pb2.Status(details=details).SerializeToString())


@functools.lru_cache(maxsize=4096)
def _refusal_parts(cls: str, scope: str, subject: str, policy: str) -> tuple[bytes, bytes]:
    """The serialized details before and after RetryInfo: the same for every refusal of a
    client (ErrorInfo; QuotaFailure), taken from ``status_proto``'s own."""
    error_info, _retry, quota_failure = status_proto(
        RateLimited(cls, scope, subject, 0.0, {"RateLimit-Policy": policy})).details
    return _details_field(error_info), _details_field(quota_failure)


@functools.lru_cache(maxsize=4096)
def _retry_part(ms: int) -> bytes:
    return _details_field(_retry_info(ms))


_EXHAUSTED = GRPC_CODES["RESOURCE_EXHAUSTED"]


def _refusal_bytes(exc: RateLimited) -> bytes:
    """``status_proto(exc)`` serialized, from parts (module docstring)."""
    before, after = _refusal_parts(exc.cls, exc.scope, exc.subject,
                                   exc.headers.get("RateLimit-Policy", ""))
    head = status_pb2.Status(code=_EXHAUSTED.value[0], message=exc.message).SerializeToString()
    return b"".join((head, before, _retry_part(_retry_ms(exc.retry_after)), after))


def to_grpc_status(exc: ChatError, rate_limit_headers: dict[str, str] | None = None
                   ) -> grpc.Status:
    """The status of ``exc``; with the call's RateLimit headers as trailing metadata, like
    HTTP sends them on every answer of a limited call (a refusal carries its own)."""
    if isinstance(exc, RateLimited):
        return _Status(_EXHAUSTED, exc.message,
                       ((_DETAILS_KEY, _refusal_bytes(exc)),
                        *((k.lower(), v) for k, v in exc.headers.items())))
    status = rpc_status.to_status(status_proto(exc))
    if rate_limit_headers:
        # The same headers HTTP sends, as trailing metadata (lower-case keys, as gRPC wants).
        extra = tuple((k.lower(), v) for k, v in rate_limit_headers.items())
        status = _Status(status.code, status.details, (*status.trailing_metadata, *extra))
    return status


class _Status(grpc.Status):  # type: ignore[misc]  # grpc is untyped here
    """A grpc.Status with its own trailing metadata (grpc.Status is an interface)."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


