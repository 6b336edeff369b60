"""The call pipeline every transport shares: authenticate, decode, validate, run, record, recover.

This is the interceptor chain in one place, so gRPC and HTTP behave the same: the same auth
check, one log line per call (method, code, duration, user, request id, trace id), the same
metrics, and unknown exceptions turned into INTERNAL without internals reaching the caller.

Order matters: the caller is authenticated before anything it sent is read, so a caller
without a valid token gets UNAUTHENTICATED whatever the request holds; only then is the request
decoded and checked against chat.proto's rules (``request_rules``).

Rate limits (``chat_shared.ratelimit``, docs/rate-limits.md) come right after authentication,
before the request is even received: the transports hand over a ``receive`` step that the
pipeline runs only for an admitted call (gRPC: reading the request message off the stream;
HTTP: reading the body), so a refused call costs a token check (cached per token) and, at
most once per refusal period, one Redis round trip, never a read, a parse or a database
statement, and it writes no per-call log line (the limiter logs each limited client once a
minute). What the caller sent therefore never changes a refusal: a limited caller gets
RESOURCE_EXHAUSTED (HTTP 429) whatever its request holds, malformed or oversized included.
The class of each method is in ``rate_classes``. A caller whose credentials are missing or
refused is counted against its client address (class ``anon``); once that is exhausted, the
address is refused before its token is even looked at, so guessing tokens is slow.

Deadlines: the caller's (gRPC: the call's deadline; HTTP: a ``Grpc-Timeout`` header in gRPC's
format, "500m", "2S", as gRPC-Gateway reads it) is set for the call's I/O through
``chat_shared.deadlines``. The server answers DEADLINE_EXCEEDED a moment (``DEADLINE_LEAD``)
before the caller gives up, so that its own answer, not a cancellation, ends the work.

Read replicas (``chat_shared.replica_reads``, docs/read-replicas.md): with one configured, the
calls of ``REPLICA_READS`` may read there, after the position the caller sent
(``X-Chat-Read-After``); every other call that succeeds, except the pure reads of
``NO_POSITION``, answers with the position the caller must send to see its own change
(``ctx.position``, ``X-Chat-Position``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge, Histogram

from chat_api.models import TenantRecord
from chat_api.service.tenants import Tenant, TenantDirectory
from chat_api.transport import request_rules
from chat_api.transport.handlers import BatchHandler, Handler
from chat_api.transport.rate_classes import DEFAULT_RATE_CLASS, RATE_CLASSES
from chat_shared import deadlines
from chat_shared.auth import Principal, TokenVerifier
from chat_shared.errors import (
    ChatError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from chat_shared.observability.logging import get_logger
from chat_shared.ratelimit import ANONYMOUS, ClassLimits, Decision, RateLimiter, tenant_overrides
from chat_shared.ratelimit import headers as rate_limit_headers
from chat_shared.replica_reads import (
    READ_AFTER_HEADER,
    ReplicaReads,
    parse_position,
    replica_read,
)
from chat_shared.tenancy import TenantLabel

log = get_logger("chat_api.rpc")

T = TypeVar("T")

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


class _Children:
    """A metric's children by label values, looked up in a dict: prometheus_client's
    ``labels()`` validates and locks on every call (0.8 us; five per call here). The label
    values are bounded (methods, codes, transports, the allow-listed tenant labels)."""

    def __init__(self, metric: Any) -> None:
        self._labels = metric.labels
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._labels(*values)
        return child


_in_flight, _requests = _Children(RPC_IN_FLIGHT), _Children(RPC_REQUESTS)
_duration, _tenant_requests = _Children(RPC_DURATION), _Children(TENANT_RPC_REQUESTS)

GRPC_TIMEOUT_HEADER = "Grpc-Timeout"
"""The HTTP request header that carries the caller's deadline, as gRPC-Gateway reads it."""

DEADLINE_LEAD = 0.02
"""Seconds before the caller's deadline at which the call's I/O stops waiting. A gRPC server
whose deadline passes cancels the call's task, and a cancelled psycopg query first tries to
cancel it in the server, which a server that does not answer holds up for seconds."""


REPLICA_READS = frozenset({"GetMessages", "GetThread", "GetConversations", "GetConversation",
                           "SearchMessages"})
"""The calls whose single-statement reads may run on a read replica.

Not ListDevices or GetToDeviceMessages (end-to-end encryption, docs/e2ee.md): their readers
are not the writers, so carry no position of the write, and a lagging replica would hide a
device just registered (a sender would encrypt without it, and that device could never read
the message) or a room key just sent (the recipient could not decrypt); both run on the
primary."""
NO_POSITION = frozenset(m for m, cls in RATE_CLASSES.items() if cls == "read")
"""The calls that change nothing (their rate class says so), so have no position to hand out."""


def read_after(value: str | None) -> int | None:
    """The position of an ``X-Chat-Read-After`` header; None when there is none.

    Raises:
        InvalidArgument: the header is not a position.
    """
    if not value:
        return None
    try:
        return parse_position(value)
    except ValueError:
        raise InvalidArgument(READ_AFTER_HEADER, "must be a position as X-Chat-Position "
                                                 "gives it, e.g. 16/B374D848") from None


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


class ReceiveFailed(Exception):
    """The transport could not receive an admitted call's request (HTTP: the body was too
    large, too slow, or the client left). Raised from the ``receive`` step with the
    transport's own exception as its cause, passed through unchanged for the transport to
    answer in its own terms (408, 413, 499), neither counted nor logged as a call, as before
    the body was read inside the pipeline."""


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
    client_address: Callable[[], str] | None = None
    """The caller's address (for the ``anon`` limit); asked only when credentials fail."""
    rate_limit: tuple[str, Decision] | None = None
    """Set by the pipeline: the call's class and the limiter's decision (for the headers)."""
    read_after: str | None = None
    """The caller's ``X-Chat-Read-After`` (read replicas); read only by a replica-eligible call."""
    position: str | None = None
    """Set by the pipeline after a change, with a read replica: ``X-Chat-Position``."""

    def rate_limit_headers(self) -> dict[str, str]:
        """The IETF RateLimit headers of the call's decision; {} without one."""
        if self.rate_limit is None:
            return {}
        return rate_limit_headers(*self.rate_limit)


class Dispatcher:
    def __init__(self, verifier: TokenVerifier, handlers: dict[str, Handler],
                 tenants: TenantDirectory | None = None,
                 limiter: RateLimiter | None = None,
                 rate_classes: dict[str, str] = RATE_CLASSES,
                 tenant_label: TenantLabel | None = None,
                 reads: ReplicaReads | None = None,
                 batch_handlers: Mapping[str, BatchHandler] | None = None) -> None:
        """
        Args:
            tenants: admits each caller's tenant (registered and active) before the request
                is read; None admits every tenant (tests of the pipeline alone).
            limiter: the rate limiter; None = no limits (RATE_LIMIT_ENABLED=false).
            rate_classes: each method's rate-limit class; a method missing there counts as
                ``write-other`` (the strictest of the call classes), so a new RPC is never
                unlimited (tests/integration/test_rate_limits.py checks the table is whole).
            tenant_label: the ``tenant`` label of a call's tenant (bounded: an allow-list).
            reads: the read replica's router; None = no replica (no positions either).
            batch_handlers: the methods ``call_many`` can run together, and how.
        """
        self._reads = reads
        self._batch_handlers = dict(batch_handlers or {})
        self._verifier = verifier
        self._handlers = handlers
        self._tenants = tenants
        self._tenant_label = tenant_label or TenantLabel()
        self._limiter = limiter
        self._classes = {m: rate_classes.get(m, DEFAULT_RATE_CLASS) for m in handlers}
        self._tenant_limits: dict[str, tuple[TenantRecord, dict[str, ClassLimits]]] = {}

    @property
    def methods(self) -> list[str]:
        return list(self._handlers)

    async def call(self, ctx: CallContext, request: Any,
                   decode: Callable[[Any], Message] | None = None,
                   receive: Callable[[], Awaitable[Any]] | None = None) -> Message:
        """Runs one call; raises ChatError (never anything else but ``ReceiveFailed``) on
        failure.

        ``receive`` reads what the transport has not read yet (gRPC: the request message's
        bytes; HTTP: the body), once the caller is authenticated and within its rate limit;
        its result replaces ``request``. ``decode`` then turns it into the request message,
        inside the call's timing (gRPC hands over raw bytes, HTTP its path, query and body, so
        a request that does not decode is an answer and a log line like any other call). It
        may also set ``ctx.timeout`` (HTTP reads it from a header).
        """
        handler = self._handlers.get(ctx.method)
        start = time.perf_counter()
        code = "OK"
        limited = False
        received = True
        _in_flight(ctx.transport).inc()
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        if ctx.trace_id:
            structlog.contextvars.bind_contextvars(trace_id=ctx.trace_id)
        try:
            if handler is None:
                raise NotFound(f"unknown method {ctx.method}")
            principal, tenant = await self._admit(ctx)
            if self._limiter is not None:
                await self._limit(ctx, self._limiter, principal, tenant)
            if receive is not None:
                try:
                    request = await receive()
                except (ChatError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    received = False
                    raise ReceiveFailed(str(exc)) from exc
            if decode is not None:
                request = decode(request)
            request_rules.check(request)
            if self._reads is None and ctx.timeout is None:
                return await handler(principal, request)
            return await self._run(ctx, lambda: handler(principal, request))
        except RateLimited as exc:
            code = exc.code
            limited = True
            raise
        except ChatError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away (or its deadline passed)
            raise
        except ReceiveFailed:
            raise
        except Exception as exc:
            code = "INTERNAL"
            log.exception("rpc_failed", method=ctx.method, user=ctx.user_id,
                          tenant=ctx.tenant_id)
            raise Internal("internal error") from exc
        finally:
            elapsed = time.perf_counter() - start
            _in_flight(ctx.transport).dec()
            if received:  # else the transport answers (and logs) what it could not read
                _requests(ctx.method, code, ctx.transport).inc()
                _duration(ctx.method, ctx.transport).observe(elapsed)
                if ctx.tenant_id:  # an unauthenticated call has no tenant to count it under
                    _tenant_requests(self._tenant_label(ctx.tenant_id), code).inc()
                if not limited:  # refusals: counted above, logged by the limiter once a minute
                    log.info("rpc", method=ctx.method, code=code, transport=ctx.transport,
                             duration_ms=round(elapsed * 1000, 3), user=ctx.user_id or None,
                             tenant=ctx.tenant_id or None)
            structlog.contextvars.unbind_contextvars(
                *(("request_id", "trace_id") if ctx.trace_id else ("request_id",)))

    async def _call_with_replica(self, ctx: CallContext, run: Callable[[], Awaitable[T]],
                                 reads: ReplicaReads) -> T:
        """The handler's call when a read replica is configured (module docstring)."""
        with contextlib.ExitStack() as scope:
            if ctx.timeout is not None:
                if ctx.timeout <= DEADLINE_LEAD:
                    raise DeadlineExceeded("deadline exceeded before the call started")
                scope.enter_context(deadlines.deadline_after(ctx.timeout - DEADLINE_LEAD))
            if ctx.method in REPLICA_READS:
                scope.enter_context(replica_read(read_after(ctx.read_after)))
            response = await run()
            if ctx.method not in NO_POSITION:
                ctx.position = await reads.write_position()
            return response

    async def _run(self, ctx: CallContext, run: Callable[[], Awaitable[T]]) -> T:
        """``run()`` within the call's deadline (and replica scope)."""
        if self._reads is not None:
            return await self._call_with_replica(ctx, run, self._reads)
        if ctx.timeout is None:
            return await run()
        if ctx.timeout <= DEADLINE_LEAD:
            raise DeadlineExceeded("deadline exceeded before the call started")
        with deadlines.deadline_after(ctx.timeout - DEADLINE_LEAD):
            return await run()

    def batches(self, method: str) -> bool:
        """Whether ``call_many`` runs calls of ``method`` together (it has a batch handler)."""
        return method in self._batch_handlers

    async def call_many(self, ctx: CallContext, requests: Sequence[Message]
                        ) -> list[Message | ChatError]:
        """Runs one call of ``ctx.method`` per request, as one: each answer or error in the
        requests' order (GraphQL's nested lists: a level of an operation asks one method for
        many conversations or threads).

        Each request is the call ``call`` would make, with the same outcome: the caller is
        authenticated and its tenant admitted once for all (a refusal there is every
        request's error), then each request counts against the method's rate class and is
        checked against chat.proto's rules on its own (a refused one is that request's error
        only), and the method's batch handler answers the rest together, each as its handler
        would, in one read (``handlers.BatchHandler``). Metrics count each request as a call
        of the method, with its code; one log line covers the batch (``batch``: how many
        requests, ``codes``: how many of each code, when not all are OK).
        """
        batch = self._batch_handlers.get(ctx.method)
        if batch is None:
            raise ValueError(f"{ctx.method} has no batch handler")
        start = time.perf_counter()
        results: list[Message | ChatError | None] = [None] * len(requests)
        n = len(requests)
        _in_flight(ctx.transport).inc()
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        if ctx.trace_id:
            structlog.contextvars.bind_contextvars(trace_id=ctx.trace_id)
        cancelled = False
        try:
            principal, tenant = await self._admit(ctx)
            if self._limiter is not None:
                limiter = self._limiter
                refusals = await asyncio.gather(
                    *(self._limit(ctx, limiter, principal, tenant) for _ in requests),
                    return_exceptions=True)
                for i, refusal in enumerate(refusals):
                    if isinstance(refusal, ChatError):
                        results[i] = refusal
                    elif isinstance(refusal, BaseException):
                        raise refusal
            admitted: list[int] = []
            for i, request in enumerate(requests):
                if results[i] is not None:
                    continue
                try:
                    request_rules.check(request)
                except ChatError as exc:
                    results[i] = exc
                    continue
                admitted.append(i)
            if admitted:
                answers = await self._run(
                    ctx, lambda: batch(principal, [requests[i] for i in admitted]))
                if len(answers) != len(admitted):
                    raise RuntimeError(f"{ctx.method}'s batch answered {len(answers)} of "
                                       f"{len(admitted)} requests")
                for i, answer in zip(admitted, answers, strict=True):
                    results[i] = answer
        except ChatError as exc:
            results = [exc] * n
        except asyncio.CancelledError:
            cancelled = True  # the caller went away (or its deadline passed)
            raise
        except Exception as exc:
            log.exception("rpc_failed", method=ctx.method, user=ctx.user_id,
                          tenant=ctx.tenant_id, batch=n)
            failure = Internal("internal error")
            failure.__cause__ = exc
            results = [failure] * n
        finally:
            elapsed = time.perf_counter() - start
            codes: dict[str, int] = {}
            limited = 0
            for r in results:
                code = ("CANCELLED" if cancelled or r is None
                        else r.code if isinstance(r, ChatError) else "OK")
                codes[code] = codes.get(code, 0) + 1
                limited += isinstance(r, RateLimited)
            _in_flight(ctx.transport).dec()
            for code, count in codes.items():
                _requests(ctx.method, code, ctx.transport).inc(count)
                if ctx.tenant_id:
                    _tenant_requests(self._tenant_label(ctx.tenant_id), code).inc(count)
            duration = _duration(ctx.method, ctx.transport)
            for _ in range(n):
                duration.observe(elapsed)
            if limited < n:  # refusals: counted above, logged by the limiter once a minute
                log.info("rpc", method=ctx.method, code=max(codes, key=codes.__getitem__),
                         transport=ctx.transport, duration_ms=round(elapsed * 1000, 3),
                         user=ctx.user_id or None, tenant=ctx.tenant_id or None, batch=n,
                         codes=codes if len(codes) > 1 else None)
            structlog.contextvars.unbind_contextvars(
                *(("request_id", "trace_id") if ctx.trace_id else ("request_id",)))
        return [r for r in results if r is not None]

    async def _admit(self, ctx: CallContext) -> tuple[Principal, Tenant | None]:
        """The caller (recorded on ``ctx``) and, with a tenant registry, its admitted tenant."""
        principal = await self._authenticate(ctx)
        ctx.user_id = principal.user_id
        ctx.tenant_id = principal.tenant_id
        tenant = None
        if self._tenants is not None:
            tenant = await self._tenants.admit(principal.tenant_id)
        return principal, tenant

    async def _authenticate(self, ctx: CallContext) -> Principal:
        """The caller; with limits on, refused credentials count against the client address.

        Raises:
            Unauthenticated: the credentials are missing or refused.
            RateLimited: the address has had too many refused credentials (then the
                credentials are not even looked at).
        """
        limiter = self._limiter
        if limiter is None or ctx.client_address is None:
            return self._verifier.verify_authorization(ctx.authorization)
        if limiter.refusing(ANONYMOUS):
            address = ctx.client_address()
            remembered = limiter.remembered_refusal(ANONYMOUS, "", address)
            if remembered is not None:
                ctx.rate_limit = (ANONYMOUS, remembered)
                raise _limited(ANONYMOUS, remembered, f"client:{address}")
        try:
            return self._verifier.verify_authorization(ctx.authorization)
        except Unauthenticated:
            address = ctx.client_address()
            decision = await limiter.check(ANONYMOUS, "", address)
            ctx.rate_limit = (ANONYMOUS, decision)
            if not decision.allowed:
                raise _limited(ANONYMOUS, decision, f"client:{address}") from None
            raise

    async def _limit(self, ctx: CallContext, limiter: RateLimiter, principal: Principal,
                     tenant: Tenant | None) -> None:
        cls = self._classes[ctx.method]
        limits = None
        if tenant is not None and tenant.record.limits:
            limits = self._limits_of(tenant, limiter)[cls]
        decision = await limiter.check(cls, principal.tenant_id, principal.user_id, limits)
        ctx.rate_limit = (cls, decision)
        if not decision.allowed:
            subject = (f"tenant:{principal.tenant_id}" if decision.scope == "tenant"
                       else f"user:{principal.user_id}")
            raise _limited(cls, decision, subject)

    def _limits_of(self, tenant: Tenant, limiter: RateLimiter) -> dict[str, ClassLimits]:
        """The tenant's limits, worked out again only when its registry entry was re-read."""
        cached = self._tenant_limits.get(tenant.id)
        if cached is not None and cached[0] is tenant.record:
            return cached[1]
        limits = tenant_overrides(limiter.policy, tenant.limit)
        if len(self._tenant_limits) >= 10_000:
            self._tenant_limits.clear()
        self._tenant_limits[tenant.id] = (tenant.record, limits)
        return limits


def _limited(cls: str, decision: Decision, subject: str) -> RateLimited:
    scope = "client" if cls == ANONYMOUS else decision.scope or "user"
    return RateLimited(cls, scope, subject, decision.retry_after,
                       rate_limit_headers(cls, decision))
