"""``chat-api``: serves chat.v1.ChatService until SIGTERM/SIGINT, then drains and exits 0.

With API_WORKERS > 1 this process supervises that many API processes (chat_api.workers).
"""

from __future__ import annotations

import sys

import uvloop

from chat_api.app import build_app
from chat_api.settings import ApiSettings
from chat_api.workers import check_ports, is_worker, supervise
from chat_shared.observability.logging import configure_logging, get_lifecycle_logger
from chat_shared.observability.metrics import serve_metrics
from chat_shared.runtime import configure_process, run_until_signalled, settings_or_none

PROG = "chat-api"
lifecycle = get_lifecycle_logger()


def main() -> int:
    settings = settings_or_none(PROG, ApiSettings, needs_redis=False)
    if settings is None:
        return 2
    if settings.api_workers > 1 and not is_worker():
        configure_logging(PROG, settings.log_level)
        problem = check_ports(settings)
        if problem:
            print(f"{PROG}: {problem}", file=sys.stderr)
            return 2
        return supervise(settings)
    configure_process(PROG, settings)
    # A worker's metrics are served by its supervisor (multiprocess mode).
    port = 0 if is_worker() else serve_metrics(settings.metrics_port,
                                                 addr=settings.metrics_host)
    lifecycle.info("starting", grpc=settings.grpc_server_address, metrics_port=port,
                   environment=settings.environment)
    uvloop.run(run_until_signalled(lambda: build_app(settings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
