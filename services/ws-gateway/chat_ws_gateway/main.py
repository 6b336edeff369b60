"""``chat-ws-gateway``: serves /v1/ws until SIGTERM/SIGINT, closes sockets with 1001, exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from chat_shared.config import ConfigError, load_settings
from chat_shared.db import redacted
from chat_shared.observability.logging import configure_logging, get_logger
from chat_shared.observability.tracing import configure_tracing
from chat_ws_gateway.app import build_app
from chat_ws_gateway.settings import GatewaySettings

log = get_logger("chat_ws_gateway")


async def serve(settings: GatewaySettings) -> None:
    app = build_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()
    log.info("ws_gateway_stopped")


def main() -> int:
    try:
        settings = load_settings(GatewaySettings)
    except ConfigError as exc:
        print(f"chat-ws-gateway: {exc}", file=sys.stderr)
        return 2
    missing = [n for n, v in (("DB_SOURCE", settings.db_source),
                              ("REDIS_ADDR", settings.redis_addr)) if not v]
    if missing:
        print(f"chat-ws-gateway: {', '.join(missing)} not set (use `chat-dev` for a local "
              "stack)", file=sys.stderr)
        return 2
    configure_logging("chat-ws-gateway", settings.log_level)
    configure_tracing(settings.otel_service_name or "chat-ws-gateway",
                      settings.otel_exporter_otlp_endpoint)
    log.info("starting", address=settings.ws_server_address, database=redacted(
        settings.db_source), redis=settings.redis_addr, environment=settings.environment)
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
