"""``chat-outbox-relay``: relays the outbox to Redis Streams until SIGTERM/SIGINT, then drains.

On SIGTERM the batch in hand finishes and commits, the partitions are released, and the process
exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from chat_outbox_relay.app import build_relay
from chat_outbox_relay.settings import RelaySettings
from chat_shared.config import ConfigError, load_settings
from chat_shared.db import redacted
from chat_shared.observability.logging import configure_logging, get_logger
from chat_shared.observability.tracing import configure_tracing

log = get_logger("chat_outbox_relay")


async def serve(settings: RelaySettings) -> None:
    app = build_relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()


def main() -> int:
    try:
        settings = load_settings(RelaySettings)
    except ConfigError as exc:
        print(f"chat-outbox-relay: {exc}", file=sys.stderr)
        return 2
    missing = [n for n, v in (("DB_SOURCE", settings.db_source),
                              ("REDIS_ADDR", settings.redis_addr)) if not v]
    if missing:
        print(f"chat-outbox-relay: {', '.join(missing)} not set (use `chat-dev` for a local "
              "stack)", file=sys.stderr)
        return 2
    configure_logging("chat-outbox-relay", settings.log_level)
    configure_tracing(settings.otel_service_name or "chat-outbox-relay",
                      settings.otel_exporter_otlp_endpoint)
    log.info("starting", database=redacted(settings.db_source), redis=settings.redis_addr,
             environment=settings.environment)
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
