"""``chat-ws-gateway``: serves /v1/ws until SIGTERM/SIGINT, closes sockets with 1001, exits 0."""

from __future__ import annotations

import uvloop

from chat_shared.db import redacted
from chat_shared.observability.logging import get_logger
from chat_shared.runtime import configure_process, run_until_signalled, settings_or_none
from chat_ws_gateway.app import build_app
from chat_ws_gateway.settings import GatewaySettings

PROG = "chat-ws-gateway"
log = get_logger("chat_ws_gateway")


def main() -> int:
    settings = settings_or_none(PROG, GatewaySettings)
    if settings is None:
        return 2
    configure_process(PROG, settings)
    log.info("starting", address=settings.ws_server_address, database=redacted(
        settings.db_source), redis=settings.redis_addr, environment=settings.environment)
    uvloop.run(run_until_signalled(lambda: build_app(settings)))
    log.info("ws_gateway_stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
