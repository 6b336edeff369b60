"""aiohttp applications served the same way by every service: no version banner, and requests
aiohttp cannot parse answered in the service's own error shape, logged quietly.

aiohttp answers a request it cannot parse (a header line over 8,190 bytes, ``Content-Length:
-1``, both ``Transfer-Encoding`` and ``Content-Length``, ...) inside its protocol, before the
application or any middleware sees it: a text/plain body, its ``Server: Python/3.x
aiohttp/3.y`` banner, and an ERROR log record with a traceback whose message can quote the
start of the offending line (an ``Authorization`` value, say). Any anonymous client could write
a traceback per request, header contents included. aiohttp has no setting for that answer, so
``HttpListener`` builds each connection's protocol from a ``web.RequestHandler`` subclass whose
``handle_error`` answers through the service's ``error_response`` and logs one line that names
the kind of error and never the request's bytes, at most ``PARSE_ERROR_LOG_BURST`` lines per
``PARSE_ERROR_LOG_INTERVAL`` seconds; the next line after a quiet spell counts what was left
out (``suppressed``).

Slow and silent clients. aiohttp's public knob is ``keepalive_timeout``: a connection waiting
for its next request (or for its first: aiohttp arms the timer at connect) is closed when it
runs out, however many bytes of a request have trickled in meanwhile. The protocol built here
would default it to aiohttp's 3,630 s, so ``HttpListener`` always passes one (75 s by default,
as ``web.AppRunner`` would). aiohttp has no header-read timeout (its ``slow_request_timeout``
went away in 3.x), so a client that starts a request and goes silent would hold the socket for
the whole keep-alive period. The guard here is the smallest that closes it: when bytes arrive
while the protocol waits for a request and do not complete its head, a timer of
``header_timeout`` seconds starts; a completed head cancels it, and if it fires while the
protocol still waits, the connection is closed. Bytes that arrive while a handler runs (a body,
WebSocket frames) never start it; bodies are bounded by their handlers (``read_body``).

The application still runs under ``web.AppRunner`` (start-up, drain on stop); only the listening
socket is opened here, with ``loop.create_server``, because the runner's sites would build
aiohttp's own protocol. Every response of the application gets ``Server: chat-service``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.http import HttpProcessingError
from aiohttp.http_exceptions import LineTooLong

from chat_shared.observability.logging import get_logger

log = get_logger("chat_shared.http")

SERVER_HEADER = "chat-service"
"""The ``Server`` header of every response: no software name, no version."""

MAX_LINE_BYTES = 8190
"""Request line and each header line, in bytes (aiohttp's default, stated here on purpose:
bearer tokens are far shorter, and a larger request line is refused before any routing)."""

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0

PARSE_ERROR_LOG_BURST = 10
PARSE_ERROR_LOG_INTERVAL = 60.0

ErrorResponse = Callable[[int, str], web.Response]
"""(HTTP status, message) -> the response, in the service's error shape."""


def plain_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


class RateLimit:
    """At most ``burst`` events per ``interval`` seconds (fixed windows), counting the rest.

    ``allow()`` says whether this event may be logged and how many were refused since the last
    one that was, so the line that gets through can carry the count.
    """

    def __init__(self, burst: int, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._window_start = -interval
        self._in_window = 0
        self._refused = 0

    def allow(self) -> tuple[bool, int]:
        now = self._clock()
        if now - self._window_start >= self._interval:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self._burst:
            self._refused += 1
            return False, 0
        self._in_window += 1
        refused, self._refused = self._refused, 0
        return True, refused


def _parse_error_message(exc: HttpProcessingError) -> str:
    # Fixed texts: aiohttp's own messages quote the request's bytes.
    if isinstance(exc, LineTooLong):
        return f"request line or header longer than {MAX_LINE_BYTES} bytes"
    return "malformed HTTP request"


class _QuietRequestHandler(web.RequestHandler):
    """aiohttp's protocol with ``handle_error`` answering in the service's shape."""

    def __init__(self, manager: web.Server, *, error_response: ErrorResponse,
                 limit: RateLimit, header_timeout: float, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._error_response = error_response
        self._limit = limit
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    # The header-read guard (see the module docstring). ``_waiter`` is aiohttp's future that
    # ``start()`` awaits while no request is queued: pending means "waiting for a request".
    # The first bytes can arrive before ``start()`` first ran; then no request was parsed yet
    # (``_request_count``). Tests send half a request over a real socket, so a change in
    # aiohttp's internals shows there.

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        if waiter is not None:
            return not waiter.done()
        return self._request_count == 0 and not self._messages

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting_for_request()
        super().data_received(data)
        if self._waiting_for_request():
            if waiting and data and self._head_timer is None:
                self._head_timer = self._loop.call_later(self._header_timeout,
                                                         self._head_timed_out)
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_request():
            log.info("http_header_timeout", peer=_peer(self.transport),
                     timeout_seconds=self._header_timeout)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            allowed, suppressed = self._limit.allow()
            if allowed:
                log.warning("http_bad_request", status=status, error=type(exc).__name__,
                            peer=request.remote, **({"suppressed": suppressed} if suppressed
                                                    else {}))
            text = _parse_error_message(exc)
        else:
            # A handler failed past the application's own error handling (or timed out): a
            # defect, logged as aiohttp logs it, with the traceback.
            self.log_exception("Error handling request", exc_info=exc)
            text = _phrase(status)
        if request.writer.output_size > 0:
            # Some of a response went out already: the connection cannot carry another.
            raise ConnectionError("response already started, cannot send the error")
        response = self._error_response(status, text)
        response.headers[hdrs.SERVER] = SERVER_HEADER
        response.force_close()
        return response


def _peer(transport: asyncio.BaseTransport | None) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class BodyTimeout(Exception):
    """The request's body did not arrive within its time (answered 408)."""


async def read_body(request: web.BaseRequest, within: float) -> bytes:
    """The request's body, which must arrive within ``within`` seconds.

    Raises:
        BodyTimeout: it did not; the connection cannot carry another request then.
    """
    try:
        return await asyncio.wait_for(request.read(), within)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {within:g} s") from None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


async def _set_server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_HEADER


class HttpListener:
    """Serves one aiohttp application on host:port until stopped."""

    def __init__(self, app: web.Application, *, error_response: ErrorResponse = plain_error,
                 shutdown_timeout: float = 10.0,
                 parse_error_log: RateLimit | None = None,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT) -> None:
        app.on_response_prepare.append(_set_server_header)
        self._app = app
        self._error_response = error_response
        self._shutdown_timeout = shutdown_timeout
        self._limit = parse_error_log or RateLimit(PARSE_ERROR_LOG_BURST,
                                                   PARSE_ERROR_LOG_INTERVAL)
        self._header_timeout = header_timeout
        self._keepalive_timeout = keepalive_timeout
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port = 0
        """The bound port once started (useful with port 0)."""

    async def start(self, host: str, port: int, *, reuse_port: bool = False,
                    backlog: int = 128) -> int:
        """Binds and serves; returns the bound port."""
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        server = runner.server
        assert server is not None  # set by setup()
        loop = asyncio.get_running_loop()

        def protocol() -> web.RequestHandler:
            return _QuietRequestHandler(server, error_response=self._error_response,
                                        limit=self._limit, loop=loop, access_log=None,
                                        header_timeout=self._header_timeout,
                                        keepalive_timeout=self._keepalive_timeout,
                                        max_line_size=MAX_LINE_BYTES,
                                        max_field_size=MAX_LINE_BYTES)

        self._runner = runner
        self._listener = await loop.create_server(protocol, host, port, backlog=backlog,
                                                  reuse_address=True,
                                                  reuse_port=reuse_port or None)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting; requests in flight get ``grace`` seconds (default: the
        ``shutdown_timeout`` given at construction) to finish."""
        listener, self._listener = self._listener, None
        runner, self._runner = self._runner, None
        if listener is not None:
            listener.close()
        if runner is not None:
            server = runner.server
            if grace is not None and server is not None:
                server.pre_shutdown()
                await server.shutdown(grace)
            await runner.cleanup()
        if listener is not None:
            await listener.wait_closed()
