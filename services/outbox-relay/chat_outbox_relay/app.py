"""The relay's composition root: ``build_relay(settings)`` wires every dependency.

Nothing connects at import time or in ``build_relay``; ``RelayApp.start()`` starts the health
server and the relay loop, ``RelayApp.stop()`` finishes the batch in hand, releases the
partitions and closes everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chat_outbox_relay.metrics import EVENT_LOOP_LAG
from chat_outbox_relay.publishing import StreamPublisher
from chat_outbox_relay.relay import OutboxRelay
from chat_outbox_relay.settings import RelaySettings
from chat_shared.observability.health_server import HealthServer
from chat_shared.observability.logging import get_lifecycle_logger, get_logger
from chat_shared.observability.loop_lag import EventLoopLagMonitor
from chat_shared.redis_client import RedisClient, create_redis

log = get_logger(__name__)
lifecycle = get_lifecycle_logger()


@dataclass
class RelayApp:
    settings: RelaySettings
    relay: OutboxRelay
    redis: RedisClient
    health: HealthServer | None
    metrics_port: int = 0
    loop_lag: EventLoopLagMonitor = field(
        default_factory=lambda: EventLoopLagMonitor(EVENT_LOOP_LAG), repr=False)

    async def start(self) -> None:
        self.loop_lag.start()
        if self.health is not None:
            self.metrics_port = await self.health.start()
        self.relay.start()
        lifecycle.info("relay_started", metrics_port=self.metrics_port,
                       batch_size=self.settings.outbox_batch_size,
                       workers=self.settings.outbox_workers, shards=self.settings.stream_shards)

    async def stop(self, grace: float | None = None) -> bool:
        """Drains; returns False when the grace period forced a rollback of the last batch."""
        grace = self.settings.shutdown_grace if grace is None else grace
        log.info("relay_draining", grace_seconds=grace)
        clean = await self.relay.stop(grace)
        await self.redis.aclose()
        if self.health is not None:
            await self.health.stop()
        await self.loop_lag.stop()
        log.info("relay_stopped", clean=clean)
        return clean


def build_relay(settings: RelaySettings) -> RelayApp:
    if not settings.db_source:
        raise ValueError("DB_SOURCE is not set")
    if not settings.redis_addr:
        raise ValueError("REDIS_ADDR is not set")
    # One connection per publishing worker, plus the probe's and a spare.
    redis = create_redis(settings, max_connections=max(4, settings.outbox_workers + 2))
    publisher = StreamPublisher(redis, shards=settings.stream_shards,
                                maxlen=settings.stream_maxlen, prefix=settings.stream_prefix,
                                workers=settings.outbox_workers)
    relay = OutboxRelay(settings, publisher)
    health = (HealthServer(settings.metrics_port, relay.ready, host=settings.metrics_host)
              if settings.metrics_port > 0 else None)
    return RelayApp(settings=settings, relay=relay, redis=redis, health=health)
