"""The call pipeline every transport shares: authenticate, decode, validate, run, record, recover.

This is the interceptor chain in one place, so gRPC and HTTP behave the same: the same auth
check, one log line per call (method, code, duration, user, request id, trace id), the same
metrics, and unknown exceptions turned into INTERNAL without internals reaching the caller.

Order matters: the caller is authenticated before anything it sent is read, so a caller
without a valid token gets UNAUTHENTICATED whatever the request holds; only then is the request
decoded and checked against chat.proto's rules (``request_rules``).

Deadlines: the caller's (gRPC: the call's deadline; HTTP: a ``Grpc-Timeout`` header in gRPC's
format, "500m", "2S", as gRPC-Gateway reads it) is set for the call's I/O through
``chat_shared.deadlines``. The server answers DEADLINE_EXCEEDED a moment (``DEADLINE_LEAD``)
before the caller gives up, so that its own answer, not a cancellation, ends the work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge, Histogram

from chat_api.service.tenants import TenantDirectory
from chat_api.transport import request_rules
from chat_api.transport.handlers import Handler
from chat_shared import deadlines
from chat_shared.auth import TokenVerifier
from chat_shared.errors import ChatError, DeadlineExceeded, Internal, InvalidArgument, NotFound
from chat_shared.observability.logging import get_logger
from chat_shared.tenancy import TenantLabel

log = get_logger("chat_api.rpc")

RPC_REQUESTS = Counter(
    "chat_rpc_requests_total", "ChatService calls by method, status code and transport",
    ["method", "code", "transport"],
)
RPC_DURATION = Histogram(
    "chat_rpc_duration_seconds", "ChatService call duration", ["method", "transport"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TENANT_RPC_REQUESTS = Counter(
    "chat_tenant_rpc_requests_total",
    "ChatService calls by tenant (the tenants of METRICS_TENANT_LABELS; every other tenant is "
    "'other') and status code", ["tenant", "code"],
)
RPC_IN_FLIGHT = Gauge("chat_rpc_in_flight", "ChatService calls in progress", ["transport"],
                      multiprocess_mode="livesum")

GRPC_TIMEOUT_HEADER = "Grpc-Timeout"
"""The HTTP request header that carries the caller's deadline, as gRPC-Gateway reads it."""

DEADLINE_LEAD = 0.02
"""Seconds before the caller's deadline at which the call's I/O stops waiting. A gRPC server
whose deadline passes cancels the call's task, and a cancelled psycopg query first tries to
cancel it in the server, which a server that does not answer holds up for seconds."""


def http_timeout(header: str | None) -> float | None:
    """The caller's timeout from a ``Grpc-Timeout`` header; None when there is none.

    Raises:
        InvalidArgument: the header is not in gRPC's timeout format.
    """
    if header is None:
        return None
    try:
        return deadlines.parse_grpc_timeout(header)
    except ValueError:
        raise InvalidArgument(GRPC_TIMEOUT_HEADER, "must be digits and a unit (H M S m u n), "
                                                   "e.g. 500m or 2S") from None


@dataclass
class CallContext:
    """What a transport knows about a call before the pipeline runs it."""

    method: str
    transport: str
    authorization: str | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    user_id: str = ""
    tenant_id: str = ""
    trace_id: str = ""
    """For the log line when no span carries one (spans not recorded); "" when a span does."""
    timeout: float | None = None
    """Seconds the caller waits for the answer; None when it set no deadline."""


class Dispatcher:
    def __init__(self, verifier: TokenVerifier, handlers: dict[str, Handler],
                 tenants: TenantDirectory | None = None,
                 tenant_label: TenantLabel | None = None) -> None:
        """
        Args:
            tenants: admits each caller's tenant (registered and active) before the request
                is read; None admits every tenant (tests of the pipeline alone).
            tenant_label: the ``tenant`` label of a call's tenant (bounded: an allow-list).
        """
        self._verifier = verifier
        self._handlers = handlers
        self._tenants = tenants
        self._tenant_label = tenant_label or TenantLabel()

    @property
    def methods(self) -> list[str]:
        return list(self._handlers)

    async def call(self, ctx: CallContext, request: Any,
                   decode: Callable[[Any], Message] | None = None) -> Message:
        """Runs one call; raises ChatError (never anything else) on failure.

        ``decode`` turns what the transport received into the request message, after the
        caller is authenticated and inside the call's timing (gRPC hands over raw bytes, HTTP
        its path, query and body, so a request that does not decode is an answer and a log line
        like any other call). It may also set ``ctx.timeout`` (HTTP reads it from a header).
        """
        handler = self._handlers.get(ctx.method)
        start = time.perf_counter()
        code = "OK"
        RPC_IN_FLIGHT.labels(ctx.transport).inc()
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        if ctx.trace_id:
            structlog.contextvars.bind_contextvars(trace_id=ctx.trace_id)
        try:
            if handler is None:
                raise NotFound(f"unknown method {ctx.method}")
            principal = self._verifier.verify_authorization(ctx.authorization)
            ctx.user_id = principal.user_id
            ctx.tenant_id = principal.tenant_id
            if self._tenants is not None:
                await self._tenants.admit(principal.tenant_id)
            if decode is not None:
                request = decode(request)
            request_rules.check(request)
            if ctx.timeout is None:
                return await handler(principal, request)
            if ctx.timeout <= DEADLINE_LEAD:
                raise DeadlineExceeded("deadline exceeded before the call started")
            with deadlines.deadline_after(ctx.timeout - DEADLINE_LEAD):
                return await handler(principal, request)
        except ChatError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away (or its deadline passed)
            raise
        except Exception as exc:
            code = "INTERNAL"
            log.exception("rpc_failed", method=ctx.method, user=ctx.user_id,
                          tenant=ctx.tenant_id)
            raise Internal("internal error") from exc
        finally:
            elapsed = time.perf_counter() - start
            RPC_IN_FLIGHT.labels(ctx.transport).dec()
            RPC_REQUESTS.labels(ctx.method, code, ctx.transport).inc()
            RPC_DURATION.labels(ctx.method, ctx.transport).observe(elapsed)
            if ctx.tenant_id:  # an unauthenticated call has no tenant to count it under
                TENANT_RPC_REQUESTS.labels(self._tenant_label(ctx.tenant_id), code).inc()
            log.info("rpc", method=ctx.method, code=code, transport=ctx.transport,
                     duration_ms=round(elapsed * 1000, 3), user=ctx.user_id or None,
                     tenant=ctx.tenant_id or None)
            structlog.contextvars.unbind_contextvars(
                *(("request_id", "trace_id") if ctx.trace_id else ("request_id",)))
