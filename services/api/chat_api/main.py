"""``chat-api``: serves chat.v1.ChatService until SIGTERM/SIGINT, then drains and exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from chat_api.app import build_app
from chat_api.settings import ApiSettings
from chat_api.workers import check_ports, is_worker, supervise
from chat_shared.config import ConfigError, load_settings
from chat_shared.observability.logging import configure_logging, get_logger
from chat_shared.observability.metrics import serve_metrics
from chat_shared.observability.tracing import configure_tracing

log = get_logger("chat_api")


async def serve(settings: ApiSettings) -> None:
    app = build_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()


def main() -> int:
    try:
        settings = load_settings(ApiSettings)
    except ConfigError as exc:
        print(f"chat-api: {exc}", file=sys.stderr)
        return 2
    if not settings.db_source or not settings.redis_addr:
        missing = [n for n, v in (("DB_SOURCE", settings.db_source),
                                  ("REDIS_ADDR", settings.redis_addr)) if not v]
        print(f"chat-api: {', '.join(missing)} not set (use `chat-dev` for a local stack)",
              file=sys.stderr)
        return 2
    configure_logging("chat-api", settings.log_level)
    if settings.api_workers > 1 and not is_worker():
        problem = check_ports(settings)
        if problem:
            print(f"chat-api: {problem}", file=sys.stderr)
            return 2
        return supervise(settings)
    configure_tracing(settings.otel_service_name or "chat-api",
                      settings.otel_exporter_otlp_endpoint)
    # A worker's metrics are served by its supervisor (multiprocess mode).
    port = 0 if is_worker() else serve_metrics(settings.metrics_port,
                                                 addr=settings.metrics_address)
    log.info("starting", grpc=settings.grpc_server_address, metrics_port=port,
             environment=settings.environment)
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
