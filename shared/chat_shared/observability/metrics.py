"""Prometheus metrics: one registry per process, served on METRICS_PORT at /metrics.

prometheus_client's ``start_http_server`` answers with ``Server: WSGIServer/0.2
CPython/3.x.y``; this serves the same WSGI application (``make_wsgi_app``) from the same kind
of threaded wsgiref server, with ``Server: chat-service`` instead of the version banner.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from chat_shared.http_serving import SERVER_HEADER

StartResponse = Callable[..., Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def version_string(self) -> str:  # the Server header of wsgiref's own error answers
        return SERVER_HEADER

    def log_message(self, format: str, *args: Any) -> None:
        """Writes nothing: wsgiref logs every request to stderr, and a scrape is not worth a
        log line."""


def _without_banner(app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
                    ) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # With a Server header from the application, wsgiref writes no banner of its own.
            return start_response(status, [*headers, ("Server", SERVER_HEADER)], exc_info)

        return app(environ, start)

    return wrapped


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "0.0.0.0") -> int:
    """Starts the /metrics endpoint in a background thread; returns the bound port (0 = off)."""
    if port <= 0:
        return 0
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
    app = _without_banner(make_wsgi_app(registry))
    httpd: WSGIServer = make_server(addr, port, app, server_class, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return int(httpd.server_port)
