"""The gateway's composition root: ``build_app(settings)`` wires every dependency.

Nothing connects at import time. ``GatewayApp.start()`` positions the stream reader at the
streams' tails, binds the WebSocket listener and the metrics/health port; ``stop()`` refuses new
sockets, closes the open ones with 1001 (clients reconnect to another replica and resume),
stops the reader and closes the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from chat_shared.auth import TokenVerifier
from chat_shared.config import parse_host_port
from chat_shared.db import PING_TIMEOUT, Database
from chat_shared.events import stream_keys
from chat_shared.http_serving import HttpListener
from chat_shared.observability.dependencies import DependencyProbe
from chat_shared.observability.health_server import HealthServer
from chat_shared.observability.logging import get_lifecycle_logger, get_logger
from chat_shared.observability.loop_lag import EventLoopLagMonitor
from chat_shared.ratelimit import RateLimiter, build_limiter
from chat_shared.redis_client import MAX_CONNECTIONS, RedisClient, create_redis
from chat_shared.redis_client import ping as redis_ping
from chat_ws_gateway import protocol
from chat_ws_gateway.history import History
from chat_ws_gateway.hub import Hub
from chat_ws_gateway.metrics import DEPENDENCY_UP, EVENT_LOOP_LAG
from chat_ws_gateway.server import GatewayServer
from chat_ws_gateway.settings import GatewaySettings
from chat_ws_gateway.stream_reading import StreamReader
from chat_ws_gateway.tenants import TenantWatch
from chat_ws_gateway.typing_indicators import TypingRelay

log = get_logger(__name__)
lifecycle = get_lifecycle_logger()

PROBE_INTERVAL = 2.0
"""Seconds between dependency probes (the API's HEALTH_CHECK_INTERVAL default)."""
PROBE_TIMEOUT = 2 * PING_TIMEOUT + 1.0
"""Longer than the database ping's own bounds, so its answer is the one used."""


@dataclass
class GatewayApp:
    settings: GatewaySettings
    db: Database
    redis: RedisClient
    stream_redis: RedisClient
    typing_redis: RedisClient
    hub: Hub
    reader: StreamReader
    server: GatewayServer
    health: HealthServer | None
    port: int = 0
    metrics_port: int = 0
    loop_lag: EventLoopLagMonitor = field(
        default_factory=lambda: EventLoopLagMonitor(EVENT_LOOP_LAG), repr=False)
    _listener: HttpListener | None = field(default=None, repr=False)
    _reader_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _probe_task: asyncio.Task[None] | None = field(default=None, repr=False)
    tenant_watch: TenantWatch | None = field(default=None, repr=False)
    limiter: RateLimiter | None = field(default=None, repr=False)
    _tenant_task: asyncio.Task[None] | None = field(default=None, repr=False)
    typing: TypingRelay | None = field(default=None, repr=False)
    _typing_task: asyncio.Task[None] | None = field(default=None, repr=False)
    dependencies: DependencyProbe = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dependencies = DependencyProbe(
            DEPENDENCY_UP, {"redis": self._redis_up, "postgresql": self.db.ping},
            timeout=PROBE_TIMEOUT)

    async def _redis_up(self) -> bool:
        """Redis answers (every master of a cluster)."""
        return await redis_ping(self.redis)

    async def ready(self) -> bool:
        """Readiness: Redis answers, the reader is positioned on the streams and typing
        signals are subscribed to."""
        try:
            # Bounded: the client's retries must not outlast the probe's own timeout.
            pong = await asyncio.wait_for(self._redis_up(), timeout=1.0)
            typing = self.typing is None or self.typing.subscribed.is_set()
            return bool(pong) and self.reader.positioned.is_set() and typing
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def start(self) -> None:
        self.loop_lag.start()
        # Connections are made in the background: PostgreSQL down only fails catch-up reads.
        await self.db.open(wait=False)
        self._reader_task = asyncio.get_running_loop().create_task(self.reader.run(),
                                                                   name="stream-reader")
        # Bounded wait: with Redis down the gateway still starts (not ready) and keeps retrying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader.positioned.wait(), timeout=5.0)
        # Not awaited: with PostgreSQL down its check would hold the start for PING_TIMEOUT;
        # /readyz says "not ready" until the first probe has answered.
        self._probe_task = asyncio.get_running_loop().create_task(
            self.dependencies.run(PROBE_INTERVAL), name="dependency-probe")
        if self.tenant_watch is not None:
            self._tenant_task = asyncio.get_running_loop().create_task(
                self.tenant_watch.run(), name="tenant-watch")
        if self.typing is not None:
            self._typing_task = asyncio.get_running_loop().create_task(
                self.typing.run(), name="typing-subscriber")
        host, port = parse_host_port(self.settings.ws_server_address)
        s = self.settings
        self._listener = HttpListener(self.server.app, shutdown_timeout=1.0,
                                      header_timeout=s.http_header_timeout,
                                      keepalive_timeout=s.http_keepalive_timeout)
        self.port = await self._listener.start(host, port, backlog=4096)
        if self.health is not None:
            self.metrics_port = await self.health.start()
        lifecycle.info("ws_gateway_started", ws_port=self.port, metrics_port=self.metrics_port,
                       streams=self.reader_keys)

    @property
    def reader_keys(self) -> list[str]:
        return list(stream_keys(self.settings.stream_shards, self.settings.stream_prefix))

    async def stop(self) -> None:
        self.server.accepting = False
        open_sockets = self.hub.count
        await self.hub.close_all(protocol.CLOSE_GOING_AWAY, "server shutting down", "shutdown",
                                 grace=self.settings.shutdown_grace)
        log.info("ws_gateway_stopping", closed_sockets=open_sockets)
        for task in (self._reader_task, self._probe_task, self._tenant_task, self._typing_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._listener is not None:
            await self._listener.stop()
        if self.health is not None:
            await self.health.stop()
        if self.typing_redis is not self.stream_redis:
            await self.typing_redis.aclose()
        await self.stream_redis.aclose()
        await self.redis.aclose()
        await self.db.close()
        if self.limiter is not None:
            await self.limiter.close()
        await self.loop_lag.stop()


def build_app(settings: GatewaySettings) -> GatewayApp:
    db = Database(settings, application_name="chat-ws-gateway")
    redis = create_redis(settings)
    # XREAD BLOCK outlives the short socket timeout of ordinary calls: its own client.
    # On a cluster the reader blocks on one connection per hash slot of the streams (and the
    # typing subscriber holds its own): room for them all beside the ordinary calls.
    blocking = settings.model_copy(
        update={"redis_timeout": settings.stream_block + max(5.0, settings.redis_timeout)})
    stream_redis = create_redis(blocking, max_connections=MAX_CONNECTIONS + settings.stream_shards)
    hub = Hub()
    keys = stream_keys(settings.stream_shards, settings.stream_prefix)
    reader = StreamReader(stream_redis, keys, hub, block_ms=int(settings.stream_block * 1000),
                          count=settings.stream_read_count)
    history = History(db, settings.resume_page_size)
    tenant_watch = TenantWatch(db, hub, settings.ws_tenant_check_interval)
    limiter = build_limiter(settings, settings)
    # Subscribed through the stream client: its socket timeout outlasts the wait for messages.
    # On a cluster the subscriber only maps channels to masters (it subscribes on connections
    # of its own) and rereads its map after a failover by closing itself: a client of its own.
    typing_redis = create_redis(blocking) if settings.cluster_mode else stream_redis
    typing = TypingRelay(redis, typing_redis, history, hub.deliver_typing,
                         interval=settings.rate_limit_typing_interval,
                         cache_ttl=settings.ws_typing_cache_ttl)
    server = GatewayServer(settings, TokenVerifier(settings), hub, history, tenant_watch,
                           limiter, typing)
    app = GatewayApp(settings=settings, db=db, redis=redis, stream_redis=stream_redis,
                     typing_redis=typing_redis, hub=hub, reader=reader, server=server, health=None,
                     tenant_watch=tenant_watch, limiter=limiter, typing=typing)
    if settings.metrics_port:
        app.health = HealthServer(settings.metrics_port, app.ready, host=settings.metrics_host)
    return app
