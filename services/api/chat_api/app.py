"""The API's composition root: ``build_app(settings)`` wires every dependency, nothing else does.

Nothing connects at import time. ``ApiApp.start()`` binds the servers and starts the dependency
probe; ``ApiApp.stop()`` drains (health NOT_SERVING, in-flight calls finish within the grace
period) and closes the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from prometheus_client import Gauge

from chat_api.service import attachment_sweeper
from chat_api.service.attachment_sweeper import OrphanSweeper
from chat_api.service.attachments import AttachmentService
from chat_api.service.conversations import ConversationService
from chat_api.service.devices import DeviceService
from chat_api.service.members import MemberService
from chat_api.service.message_changes import MessageChangeService
from chat_api.service.messages import MessageService
from chat_api.service.reads import ReadService
from chat_api.service.search import SearchService
from chat_api.service.tenants import TenantDefaults, TenantDirectory
from chat_api.service.to_device import ToDeviceService
from chat_api.settings import ApiSettings
from chat_api.storage.attachments import AttachmentRepository
from chat_api.storage.conversations import ConversationRepository
from chat_api.storage.devices import DeviceRepository
from chat_api.storage.members import MemberRepository
from chat_api.storage.message_changes import MessageChangeRepository
from chat_api.storage.messages import MessageRepository
from chat_api.storage.objects import ObjectStore
from chat_api.storage.reads import ReadRepository
from chat_api.storage.search import PostgresSearchIndex
from chat_api.storage.tenants import TenantRepository
from chat_api.storage.to_device import ToDeviceRepository
from chat_api.storage.warmup import warm_connection
from chat_api.thumbnail_worker import ThumbnailWorker
from chat_api.transport import graphql_endpoint, http_gateway
from chat_api.transport.client_address import ClientAddress
from chat_api.transport.dispatch import Dispatcher
from chat_api.transport.grpc_server import SERVICE_NAME, chat_service_handler
from chat_api.transport.handlers import ChatHandlers
from chat_api.transport.http_gateway import HttpGateway
from chat_shared.auth import TokenVerifier
from chat_shared.config import parse_host_port
from chat_shared.db import API_RANDOM_PAGE_COST, PING_TIMEOUT, Database
from chat_shared.events import stream_keys
from chat_shared.observability.dependencies import DependencyProbe, dependency_gauge
from chat_shared.observability.logging import get_lifecycle_logger, get_logger
from chat_shared.observability.loop_lag import EventLoopLagMonitor, event_loop_lag_histogram
from chat_shared.observability.tracing import recording
from chat_shared.ratelimit import RateLimiter, build_limiter
from chat_shared.redis_client import create_redis
from chat_shared.replica_reads import ReplicaReads
from chat_shared.tenancy import TenantLabel

log = get_logger(__name__)
lifecycle = get_lifecycle_logger()

# multiprocess_mode: how API_WORKERS processes combine (ignored with one process).
DEPENDENCY_UP = dependency_gauge("chat", multiprocess_mode="livemin")
DB_POOL = Gauge("chat_db_pool_connections", "Database pool connections by state", ["state"],
                multiprocess_mode="livesum")
EVENT_LOOP_LAG = event_loop_lag_histogram("chat")
PROBE_TIMEOUT = 2 * PING_TIMEOUT + 1.0
"""Longer than the ping's own bounds (pool wait + answer), so the ping's answer is the one used."""


@dataclass
class ApiApp:
    settings: ApiSettings
    db: Database
    dispatcher: Dispatcher
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_port: int = 0
    # HTTP/JSON gateway (issue 3): binds in start(), so http_port is known after it.
    http: HttpGateway | None = None
    http_port: int = 0
    limiter: RateLimiter | None = None
    store: ObjectStore | None = None
    replica: Database | None = None
    sweeper: OrphanSweeper | None = None
    thumbnails: ThumbnailWorker | None = None
    _thumbnails: asyncio.Task[None] | None = field(default=None, repr=False)
    redis: Any = None
    _sweep: asyncio.Task[None] | None = field(default=None, repr=False)
    loop_lag: EventLoopLagMonitor = field(
        default_factory=lambda: EventLoopLagMonitor(EVENT_LOOP_LAG), repr=False)
    dependencies: DependencyProbe = field(init=False, repr=False)
    _probe: asyncio.Task[None] | None = field(default=None, repr=False)
    _draining: bool = False

    def __post_init__(self) -> None:
        self.dependencies = DependencyProbe(DEPENDENCY_UP, {"postgresql": self.db.ping},
                                            timeout=PROBE_TIMEOUT,
                                            on_change=self._dependency_changed)

    async def start(self) -> None:
        self.loop_lag.start()
        # NOT_SERVING until the first probe has seen PostgreSQL answer.
        await self._set_health(False)
        # Connections are made in the background: the API starts (NOT_SERVING) with
        # PostgreSQL down and turns SERVING when the probe reaches it.
        await self.db.open(wait=False)
        if self.replica is not None:  # not a readiness dependency: reads fall back to the primary
            await self.replica.open(wait=False)
        if self.store is not None:
            await self.store.open()  # no connection: aiobotocore connects on the first call
        await self.server.start()
        if self.http is not None:
            host, port = parse_host_port(self.settings.http_server_address)
            self.http_port = await self.http.start(host, port, self.settings.shutdown_grace,
                                                   reuse_port=self.settings.api_workers > 1)
        self._probe = asyncio.create_task(self._probe_dependencies(), name="dependency-probe")
        if self.thumbnails is not None:
            self._thumbnails = asyncio.create_task(self.thumbnails.run(),
                                                   name="thumbnail-worker")
        if self.sweeper is not None and self.settings.attachment_sweep_interval > 0:
            self._sweep = asyncio.create_task(
                self.sweeper.run(self.settings.attachment_sweep_interval), name="orphan-sweeper")
        lifecycle.info("api_started", grpc_port=self.grpc_port, http_port=self.http_port)

    async def _set_health(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _dependency_changed(self, _: str, up: bool) -> None:
        if not self._draining:
            await self._set_health(up)

    async def probe_once(self) -> None:
        await self.dependencies.probe_once()
        stats = self.db.stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        DB_POOL.labels("checked_out").set(size - idle)
        DB_POOL.labels("idle").set(idle)
        DB_POOL.labels("waiting").set(stats.get("requests_waiting", 0))

    async def _probe_dependencies(self) -> None:
        while not self._draining:
            try:
                await self.probe_once()
            except Exception:  # noqa: BLE001 - the probe must outlive any single failure
                log.exception("probe_failed")
            await asyncio.sleep(self.settings.health_check_interval)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        log.info("api_draining", grace_seconds=grace)
        self._draining = True
        await self.health.enter_graceful_shutdown()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await attachment_sweeper.stop(self._sweep)
        await attachment_sweeper.stop(self._thumbnails)
        if self.http is not None:
            await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
        else:
            await self.server.stop(grace)
        await self.db.close()
        if self.replica is not None:
            await self.replica.close()
        if self.limiter is not None:
            await self.limiter.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.store is not None:
            await self.store.close()
        await self.loop_lag.stop()
        log.info("api_stopped")


def build_app(settings: ApiSettings) -> ApiApp:
    # Every API unit of work is a single statement, atomic by itself: the shared sessions'
    # autocommit saves the BEGIN/COMMIT round trips.
    # Generic plans, prepared on each new connection before it serves: a connection's first
    # call costs what its later ones do (chat_api.storage.warmup).
    # Index-friendly costs (chat_shared.db.API_RANDOM_PAGE_COST).
    db = Database(settings, application_name="chat-api", generic_plans=True,
                  random_page_cost=API_RANDOM_PAGE_COST,
                  configure=None if settings.db_transaction_pooler else warm_connection)
    # The read-only calls' single statements may go to a streaming replica (no warm-up there:
    # it prepares writes too, which a hot standby refuses).
    replica = Database(settings.model_copy(update={
        "db_source": settings.db_read_source, "db_pool_timeout": settings.db_read_pool_timeout,
        "db_transaction_pooler": settings.db_read_transaction_pooler}),
        application_name="chat-api-reads", generic_plans=True,
        random_page_cost=API_RANDOM_PAGE_COST) if settings.db_read_source else None
    reads = ReplicaReads(db, replica, retry_after=settings.db_read_retry_after)
    tenants = TenantDirectory(
        TenantRepository(db),
        TenantDefaults(max_members=settings.tenant_max_members,
                       max_message_length=settings.tenant_max_message_length),
        ttl=settings.tenant_cache_ttl, auto_create=settings.tenant_auto_create)
    store = ObjectStore(settings) if settings.s3_endpoint else None
    attachments = None if store is None else AttachmentService(
        AttachmentRepository(db), store, tenants, content_types=settings.content_types,
        max_bytes=settings.attachment_max_bytes,
        max_per_message=settings.max_attachments_per_message)
    devices = DeviceService(DeviceRepository(db))
    handlers = ChatHandlers(
        conversations=ConversationService(ConversationRepository(reads), tenants),
        messages=MessageService(MessageRepository(reads), tenants, attachments),
        reads=ReadService(ReadRepository(db)),
        members=MemberService(MemberRepository(db), tenants),
        message_changes=MessageChangeService(MessageChangeRepository(db), tenants),
        search=SearchService(PostgresSearchIndex(reads)),
        devices=devices,
        to_device=ToDeviceService(ToDeviceRepository(db), DeviceRepository(db), devices),
        attachments=attachments,
    )
    # Rate limits: shared through REDIS_ADDR (connected on the first check); None when off.
    limiter = build_limiter(settings, settings)
    dispatcher = Dispatcher(TokenVerifier(settings), handlers.registry(), tenants, limiter,
                            tenant_label=TenantLabel(settings.tenant_labels),
                            reads=reads if replica is not None else None,
                            batch_handlers=handlers.batch_registry())
    server = grpc.aio.server(
        # The interceptor makes a server span per call: only worth its cost when recorded.
        interceptors=[aio_server_interceptor()] if recording() else [],  # type: ignore[no-untyped-call]
        options=[("grpc.max_receive_message_length", 1 << 20),
                 # Several API_WORKERS processes share the port (the kernel spreads
                 # connections); a lone process must not share it by accident.
                 ("grpc.so_reuseport", 1 if settings.api_workers > 1 else 0)],
    )
    addresses = ClientAddress(settings.trusted_proxy_networks)
    server.add_generic_rpc_handlers((chat_service_handler(dispatcher, addresses),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host, port = parse_host_port(settings.grpc_server_address)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind GRPC_SERVER_ADDRESS {settings.grpc_server_address}")
    app = ApiApp(settings=settings, db=db, replica=replica, dispatcher=dispatcher,
                 server=server, health=health_servicer, grpc_port=bound, limiter=limiter,
                 store=store)
    if store is not None:
        app.sweeper = OrphanSweeper(AttachmentRepository(db), store,
                                    orphan_after=settings.attachment_orphan_after)
        if settings.thumbnails and settings.redis_addr:
            # XREADGROUP blocks for a second: the socket waits that long plus REDIS_TIMEOUT.
            app.redis = create_redis(settings.model_copy(
                update={"redis_timeout": settings.redis_timeout + 1.0}),
                max_connections=4 + (settings.stream_shards if settings.cluster_mode else 0))
            app.thumbnails = ThumbnailWorker(
                app.redis, AttachmentRepository(db), store,
                streams=stream_keys(settings.stream_shards, settings.stream_prefix),
                max_pixels=settings.thumbnail_max_pixels, size=settings.thumbnail_size)
    app.http = HttpGateway(dispatcher, max_body_bytes=settings.http_max_body_bytes,
                           cors_origins=settings.cors_origins,
                           header_timeout=settings.http_header_timeout,
                           body_timeout=settings.http_body_timeout,
                           keepalive_timeout=settings.http_keepalive_timeout,
                           addresses=addresses)
    if settings.graphql_enabled:
        graphql_endpoint.mount(
            app.http.app, graphql_endpoint.build_schema(settings, settings.development),
            dispatcher, ide=settings.graphql_switch(settings.graphql_ide, settings.development),
            request_id=http_gateway.request_id, client_address=app.http.client_address)
    return app
