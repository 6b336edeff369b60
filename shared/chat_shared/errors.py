"""Domain errors shared by every service, with stable codes and no transport status.

    ChatError
     ├── InvalidArgument      bad input; names the field
     ├── Unauthenticated      missing, malformed, expired or wrongly signed credentials
     ├── PermissionDenied     valid credentials, but their tenant is unknown or disabled
     ├── NotFound             also what a non-member is told (they learn nothing)
     ├── AlreadyExists        duplicate send; carries reason and metadata (original message)
     ├── ResourceExhausted    a limit is reached
     │    └── RateLimited     too many requests: carries when to retry and which limit
     ├── FailedPrecondition   the request is valid but the state forbids it (an upload used
     │                        twice, an upload that is not in the store as declared)
     ├── DeadlineExceeded     the caller's deadline passed before the work was done
     ├── Unavailable          a dependency we cannot work without is down or did not answer
     └── Internal

Each transport maps these to its own status in one table (gRPC: chat_api.transport.grpc_errors).
"""

from __future__ import annotations


class ChatError(Exception):
    code = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str = "", metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ChatError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", reason="INVALID_FIELD", metadata={"field": field})
        self.field = field


class Unauthenticated(ChatError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ChatError):
    code = "PERMISSION_DENIED"


class NotFound(ChatError):
    code = "NOT_FOUND"


class AlreadyExists(ChatError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(ChatError):
    code = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    """The caller sent more than its rate limit allows; ``retry_after`` seconds from now a
    request of the same class passes. ``scope`` is what refused: ``user`` (the caller's own
    limit), ``tenant`` (its tenant's ceiling) or ``client`` (an address with refused
    credentials); ``subject`` names it for QuotaFailure; ``headers`` are the IETF RateLimit
    headers of the decision."""

    def __init__(self, cls: str, scope: str, subject: str, retry_after: float,
                 headers: dict[str, str]) -> None:
        super().__init__(f"rate limit of {cls!r} requests reached; retry in "
                         f"{retry_after:.3f} s", reason="RATE_LIMITED",
                         metadata={"class": cls, "scope": scope})
        self.cls = cls
        self.scope = scope
        self.subject = subject
        self.retry_after = retry_after
        self.headers = headers
class FailedPrecondition(ChatError):
    code = "FAILED_PRECONDITION"


class DeadlineExceeded(ChatError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(ChatError):
    code = "UNAVAILABLE"


class Internal(ChatError):
    code = "INTERNAL"


ERROR_DOMAIN = "chat.v1"
"""The google.rpc.ErrorInfo domain of every error this service reports."""
