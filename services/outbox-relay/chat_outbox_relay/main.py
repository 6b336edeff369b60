"""``chat-outbox-relay``: relays the outbox to Redis Streams until SIGTERM/SIGINT, then drains.

On SIGTERM the batch in hand finishes and commits, the partitions are released, and the process
exits 0.
"""

from __future__ import annotations

import uvloop

from chat_outbox_relay.app import build_relay
from chat_outbox_relay.settings import RelaySettings
from chat_shared.db import redacted
from chat_shared.observability.logging import get_logger
from chat_shared.runtime import configure_process, run_until_signalled, settings_or_none

PROG = "chat-outbox-relay"
log = get_logger("chat_outbox_relay")


def main() -> int:
    settings = settings_or_none(PROG, RelaySettings)
    if settings is None:
        return 2
    configure_process(PROG, settings)
    log.info("starting", database=redacted(settings.db_source), redis=settings.redis_addr,
             environment=settings.environment)
    uvloop.run(run_until_signalled(lambda: build_relay(settings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
