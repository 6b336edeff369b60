"""The HTTP/JSON face of ChatService: an aiohttp server routed from the proto's annotations.

It is a transport like grpc_server: it parses (http_json), hands the request to the shared
Dispatcher (the same auth, service layer, validation, logging and metrics as gRPC) and maps
errors through its one table (http_errors). What only HTTP needs lives in the middleware:

- a server span per request when spans are recorded (W3C ``traceparent`` honoured either way),
  since aiohttp is not instrumented;
- ``X-Request-Id``: taken from the request (or generated), echoed, and the calls' log request_id;
- CORS for the origins in CORS_ALLOWED_ORIGINS, including preflight;
- gzip for JSON bodies over 1 KiB when the client accepts it;
- every error, including the router's 404/405 and the 413 past HTTP_MAX_BODY_BYTES, as JSON;
  requests aiohttp cannot parse too (chat_shared.http_serving answers those for us);
- a client that goes away before its body has arrived is logged as 499, not as a failure;
  one whose body does not arrive within HTTP_BODY_TIMEOUT gets 408 and the connection closes;
- a 401 carries ``WWW-Authenticate: Bearer`` (RFC 6750), with ``error="invalid_token"`` when
  a bearer token was sent and refused;
- rate limits: every answer of a limited call carries the IETF ``RateLimit`` and
  ``RateLimit-Policy`` headers, errors included (a 401 those of the client address's ``anon``
  budget, which refused credentials spend), a refusal is 429 with ``Retry-After`` too
  (docs/rate-limits.md), and refusals write no access-log line.

The request's body is read, and the request parsed, only once the Dispatcher has admitted
the caller (authenticated, within its rate limit): a refused call is answered without reading
its body, so a limited client gets 429 whatever it sent (a malformed or oversized body
included), and a 401 likewise comes before any 400 or 413.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import hdrs, web
from aiohttp.web_response import ContentCoding
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat_api.transport.client_address import ClientAddress
from chat_api.transport.dispatch import (
    GRPC_TIMEOUT_HEADER,
    CallContext,
    Dispatcher,
    ReceiveFailed,
    http_timeout,
)
from chat_api.transport.http_docs import docs_html
from chat_api.transport.http_errors import error_response, gateway_error, www_authenticate
from chat_api.transport.http_json import parse_request, render
from chat_api.transport.http_routes import HttpBinding, http_bindings
from chat_api.transport.openapi import openapi_document, render_openapi
from chat_shared.errors import ChatError, Internal, RateLimited
from chat_shared.http_serving import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    BodyTimeout,
    HttpListener,
    read_body,
)
from chat_shared.observability.logging import get_logger
from chat_shared.observability.tracing import recording, trace_id_from
from chat_shared.replica_reads import POSITION_HEADER, READ_AFTER_HEADER

log = get_logger("chat_api.http")
tracer = trace.get_tracer("chat_api.http")

GZIP_MIN_BYTES = 1024
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_CORS_ALLOW_HEADERS = ("Authorization, Content-Type, Grpc-Timeout, Idempotency-Key, X-Request-Id, "
                       f"{READ_AFTER_HEADER}")
_CORS_MAX_AGE = "600"
_CORS_EXPOSE_HEADERS = (f"{REQUEST_ID_HEADER}, RateLimit, RateLimit-Policy, Retry-After, "
                        f"{POSITION_HEADER}")
_REQUEST_ID_KEY = web.RequestKey("request_id", str)
_RATE_LIMIT_KEY = web.RequestKey("rate_limit_headers", dict[str, str])
"""The RateLimit headers of a call that failed after its limit was checked."""
CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client left before the answer (never sent, only logged)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The request id the middleware gave ``request`` (for routes mounted beside ours)."""
    return request[_REQUEST_ID_KEY]


class HttpGateway:
    """The aiohttp application and its listener; started and stopped by ApiApp."""

    def __init__(self, dispatcher: Dispatcher, *, max_body_bytes: int,
                 cors_origins: frozenset[str] = frozenset(),
                 service: ServiceDescriptor | None = None,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = 30.0,
                 keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
                 addresses: ClientAddress | None = None) -> None:
        """
        Args:
            addresses: tells a call's client address for the per-address limit
                (TRUSTED_PROXIES); None = the peer's.
        """
        self._dispatcher = dispatcher
        self._addresses = addresses or ClientAddress()
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._keepalive_timeout = keepalive_timeout
        self._cors = cors_origins
        self._max_body = max_body_bytes
        self._templates: dict[str, str] = {}
        self.app = web.Application(client_max_size=max_body_bytes,
                                   middlewares=[self._middleware])
        self.bindings = http_bindings(service)
        for binding in self.bindings:
            route = self.app.router.add_route(binding.http_method, binding.route_path,
                                              self._handler(binding))
            if route.resource is not None:
                self._templates[route.resource.canonical] = binding.openapi_path
        openapi = render_openapi(service)
        docs = docs_html(openapi_document(service))

        async def serve_openapi(_: web.Request) -> web.Response:
            return web.Response(body=openapi, content_type="application/json")

        async def serve_docs(_: web.Request) -> web.Response:
            return web.Response(text=docs, content_type="text/html")

        self.app.router.add_get("/openapi.json", serve_openapi)
        self.app.router.add_get("/docs", serve_docs)
        self._listener: HttpListener | None = None
        self.port = 0

    async def start(
        self, host: str, port: int, shutdown_timeout: float, reuse_port: bool = False
    ) -> int:
        """Binds and serves; returns the bound port (useful when ``port`` is 0)."""
        self._listener = HttpListener(self.app, error_response=gateway_error,
                                      shutdown_timeout=shutdown_timeout,
                                      header_timeout=self._header_timeout,
                                      keepalive_timeout=self._keepalive_timeout)
        self.port = await self._listener.start(host, port, reuse_port=reuse_port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting, lets in-flight requests finish within ``grace`` seconds."""
        if self._listener is not None:
            await self._listener.stop(grace)
            self._listener = None

    def _handler(self, binding: HttpBinding) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            ctx = CallContext(method=binding.method.name, transport="http",
                              authorization=request.headers.get(hdrs.AUTHORIZATION),
                              request_id=request[_REQUEST_ID_KEY],
                              client_address=lambda: self.client_address(request),
                              read_after=request.headers.get(READ_AFTER_HEADER))

            async def receive() -> bytes:
                return await read_body(request, self._body_timeout) if binding.body else b""

            def decode(body: bytes) -> Message:
                # Called by the Dispatcher once the caller is admitted: nothing the caller
                # sent (query, body, headers) is read before that.
                ctx.timeout = http_timeout(request.headers.get(GRPC_TIMEOUT_HEADER))
                return parse_request(binding, request.match_info, request.query, body,
                                     request.headers.get("Idempotency-Key"))

            try:
                response = await self._dispatcher.call(ctx, None, decode, receive)
            except ChatError:
                request[_RATE_LIMIT_KEY] = ctx.rate_limit_headers()
                raise
            except ReceiveFailed as failed:
                # Answered by _respond as before the body was read inside the pipeline
                # (408, 413, 499), with the class's RateLimit headers.
                request[_RATE_LIMIT_KEY] = ctx.rate_limit_headers()
                raise failed.__cause__ or failed from None
            headers = ctx.rate_limit_headers()
            if ctx.position is not None:
                headers[POSITION_HEADER] = ctx.position
            return web.Response(body=render(response, binding.response_body),
                                content_type="application/json", headers=headers or None)

        return handle

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request[_REQUEST_ID_KEY] = request_id
        route = self._route_template(request)
        # Without recorded spans, the logs' trace id is the caller's (or a new one).
        trace_ids = {} if recording() else {
            "trace_id": trace_id_from(request.headers.get("traceparent"))}
        with structlog.contextvars.bound_contextvars(request_id=request_id, **trace_ids), \
                self._server_span(request, route, request_id) as span:
            response = await self._respond(request, handler)
            response.headers[REQUEST_ID_HEADER] = request_id
            self._add_cors(request, response)
            _maybe_gzip(request, response)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if response.status != 429:  # refusals: the limiter logs each client once a minute
                log.info("http_request", method=request.method, path=request.path,
                         status=response.status, request_id=request_id,
                         duration_ms=round((time.perf_counter() - start) * 1000, 3))
            return response

    @staticmethod
    def _server_span(request: web.Request, route: str,
                     request_id: str) -> contextlib.AbstractContextManager[trace.Span]:
        if not recording():  # skip building the attributes too
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return tracer.start_as_current_span(
            f"{request.method} {route}", kind=SpanKind.SERVER,
            context=propagate.extract(request.headers),
            attributes={"http.request.method": request.method, "http.route": route,
                        "url.path": request.path, "request_id": request_id})

    async def _respond(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        preflight = self._preflight(request)
        if preflight is not None:
            return preflight
        try:
            return await handler(request)
        except BodyTimeout as exc:
            response = gateway_error(408, str(exc), request.get(_RATE_LIMIT_KEY))
            response.force_close()  # the rest of the body may still come: no next request
            return response
        except ConnectionResetError:
            # The client left while its body was being read: nothing failed here, and the
            # answer has nobody to go to; the log line says 499.
            return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
        except RateLimited as exc:
            return error_response(exc, exc.headers)
        except ChatError as exc:
            challenge = www_authenticate(exc, request.headers.get(hdrs.AUTHORIZATION)) or {}
            return error_response(exc, {**challenge, **request.get(_RATE_LIMIT_KEY, {})})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers: dict[str, str] = dict(request.get(_RATE_LIMIT_KEY, {}))  # 413
            if isinstance(exc, web.HTTPMethodNotAllowed):
                headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            message = {404: "no such route", 405: f"method {request.method} not allowed",
                       413: f"request body larger than {self._max_body} bytes"
                       }.get(exc.status, exc.reason)
            return gateway_error(exc.status, message, headers)
        except Exception:  # noqa: BLE001 - nothing internal reaches the client
            log.exception("http_failed", path=request.path)
            return error_response(Internal("internal error"))

    def client_address(self, request: web.Request) -> str:
        """The caller's address for the per-address limit (X-Forwarded-For from trusted
        proxies only); GraphQL's endpoint asks it too."""
        peer = request.remote or ""
        if not self._addresses.trusts_proxies:
            return peer
        forwarded = request.headers.getall(hdrs.X_FORWARDED_FOR, [])
        return self._addresses.resolve(peer, ",".join(forwarded) or None)

    def _route_template(self, request: web.Request) -> str:
        """The route's template for span names (bounded cardinality), not the concrete path."""
        resource = request.match_info.route.resource
        if resource is None:
            return "unmatched"
        return self._templates.get(resource.canonical, resource.canonical)

    def _origin_allowed(self, origin: str) -> bool:
        return bool(origin) and ("*" in self._cors or origin in self._cors)

    def _preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight for an existing route from an allowed origin."""
        if request.method != hdrs.METH_OPTIONS or not self._cors:
            return None
        origin = request.headers.get(hdrs.ORIGIN, "")
        wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD, "")
        if not wanted or not self._origin_allowed(origin):
            return None
        allowed = _route_methods(request)
        if not allowed:
            return None  # unknown path: the router's 404
        return web.Response(status=204, headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(sorted(allowed)),
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _CORS_ALLOW_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: _CORS_MAX_AGE,
        })

    def _add_cors(self, request: web.Request, response: web.StreamResponse) -> None:
        if not self._cors:
            return
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        origin = request.headers.get(hdrs.ORIGIN, "")
        if self._origin_allowed(origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _CORS_EXPOSE_HEADERS




def _route_methods(request: web.Request) -> set[str]:
    match = request.match_info
    exc = match.http_exception
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return set(exc.allowed_methods)
    if exc is None and match.route.resource is not None:
        return {r.method for r in match.route.resource}
    return set()


def _maybe_gzip(request: web.Request, response: web.StreamResponse) -> None:
    if (not isinstance(response, web.Response) or response.body is None
            or hdrs.CONTENT_ENCODING in response.headers):  # stored compressed already
        return
    body = response.body
    size = len(body) if isinstance(body, bytes | bytearray) else 0
    accepts = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    if size > GZIP_MIN_BYTES and "gzip" in accepts:
        response.enable_compression(ContentCoding.gzip)
