"""What every service's ``main`` does the same way: settings, logging, tracing, signals.

Each service keeps its own ``main`` (its composition root is different), but loading its
settings with a clear exit, configuring the process, and running until SIGTERM/SIGINT is one
piece of code, so every service exits 2 on bad configuration and drains the same way.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from chat_shared.config import ConfigError, ServiceSettings, load_settings
from chat_shared.observability.logging import configure_logging
from chat_shared.observability.tracing import configure_tracing

S = TypeVar("S", bound=ServiceSettings)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> object: ...


def settings_or_none(prog: str, cls: type[S], *, needs_redis: bool = True) -> S | None:
    """The process's settings, or None after printing why they are unusable (exit 2 then).

    Args:
        needs_redis: whether the process cannot start without REDIS_ADDR (the API does not
            use Redis; the relay and the gateway do).
    """
    try:
        settings = load_settings(cls)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    required = [("DB_SOURCE", settings.db_source)]
    if needs_redis:
        required.append(("REDIS_ADDR", settings.redis_addr))
    missing = [name for name, value in required if not value]
    if missing:
        print(f"{prog}: {', '.join(missing)} not set (use `chat-dev` for a local stack)",
              file=sys.stderr)
        return None
    return settings


def configure_process(prog: str, settings: ServiceSettings) -> None:
    """JSON logs and tracing named after the service."""
    configure_logging(prog, settings.log_level)
    configure_tracing(settings.otel_service_name or prog, settings.otel_exporter_otlp_endpoint)


def settle_heap() -> None:
    """Moves what start-up allocated out of the garbage collector's sight.

    Modules, settings, descriptors, pools: about 130,000 objects that live as long as the
    process. Every full collection walked all of them (60 ms each in chat-api, measured with
    gc.callbacks), a pause that lands on whichever call is running. Frozen, a collection scans
    only what was allocated since.
    """
    gc.collect()
    gc.freeze()


async def run_until_signalled(build: Callable[[], Service]) -> None:
    """Builds and starts the service, waits for SIGTERM or SIGINT, then stops (drains) it.

    The service is built here, inside the running loop: gRPC servers, pools and clients bind
    to the loop that exists when they are created.
    """
    service = build()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    settle_heap()
    await stop.wait()
    await service.stop()
