"""A small HTTP server for the non-gRPC services: /metrics, /healthz and /readyz on one port.

Kubernetes probes /healthz (the process's event loop answers) and /readyz (the dependencies
the service cannot work without are reachable); Prometheus scrapes /metrics. Readiness is a
callable the service supplies, so the server knows nothing about any service.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from chat_shared.http_serving import HttpListener

Readiness = Callable[[], bool | Awaitable[bool]]


class HealthServer:
    def __init__(self, port: int, ready: Readiness, *, host: str = "0.0.0.0",
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._port = port
        self._host = host
        self._ready = ready
        self._registry = registry
        self._listener: HttpListener | None = None
        self.port = 0
        """The bound port once started (useful with port 0)."""

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        try:
            result = self._ready()
            ready = await result if inspect.isawaitable(result) else result
        except Exception:  # noqa: BLE001 - a failing check means "not ready", not a 500
            ready = False
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def start(self) -> int:
        """Binds and serves; returns the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._listener = HttpListener(app, shutdown_timeout=1.0)
        self.port = await self._listener.start(self._host, self._port)
        return self.port

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
