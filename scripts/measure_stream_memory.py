"""Redis memory per stream event, for docs/capacity.md: XADDs events shaped as the relay writes
them (``chat_shared.events.ENTRY_FIELDS`` plus the epoch) into a throwaway Redis and divides
the growth of ``used_memory`` by their number.

    uv run python scripts/measure_stream_memory.py [--events 200000] [--members 2] [--content 76]
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime

import redis

from chat_devtools.local_redis import LocalRedis
from chat_shared.events import ENTRY_FIELDS, EPOCH_FIELD


def event(seq: int, conversation: str, members: list[str], content: str) -> dict[str, str]:
    now = datetime.now(UTC).isoformat()
    message = {"id": str(uuid.uuid4()), "conversation_id": conversation,
               "sender_id": members[0], "content": content, "seq": seq, "created_at": now,
               "edited_at": None, "deleted": False, "reactions": [], "attachments": [],
               "thread_root_id": None, "reply_count": 0}
    values = (str(uuid.uuid4()), "message.created", conversation, str(seq), now,
              json.dumps(members, separators=(",", ":")),
              json.dumps(message, separators=(",", ":")), "default")
    return {**dict(zip(ENTRY_FIELDS, values, strict=True)), EPOCH_FIELD: "1733050000000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--content", type=int, default=76, help="characters of message content")
    args = parser.parse_args()
    server = LocalRedis().start()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        before = int(client.info("memory")["used_memory"])
        members = [f"user-{i}" for i in range(args.members)]
        conversations = [str(uuid.uuid4()) for _ in range(100)]
        pipe = client.pipeline(transaction=False)
        for i in range(args.events):
            pipe.xadd("chat:events:0", event(i // 100 + 1, conversations[i % 100], members,  # type: ignore[arg-type]
                                             "x" * args.content))
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        after = int(client.info("memory")["used_memory"])
        size = len(json.dumps(event(1, conversations[0], members, "x" * args.content)))
        print(f"{args.events} events ({args.members} recipients, {args.content}-character "
              f"content, ~{size} bytes of fields): {(after - before) / args.events:.0f} bytes "
              f"of Redis memory per event")
        client.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
