"""Measures what checking chat.proto's rules costs per call (protovalidate, in-process).

Usage: uv run python scripts/measure_request_rules.py

Prints microseconds per check for a typical request of each RPC and for the largest valid and
an oversized member list; the median of 7 rounds. Not a benchmark of the server: the check is
one step of a call whose whole cost is in the hundreds of microseconds.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

from google.protobuf.message import Message

from chat_api.transport import request_rules
from chat_shared.errors import InvalidArgument
from chat_shared.protos.chat.v1 import chat_pb2

CID = str(uuid.uuid4())
CASES: dict[str, Message] = {
    "CreateConversation (1 member, title)": chat_pb2.CreateConversationRequest(
        member_ids=["bob"], title="lunch"),
    "CreateConversation (999 members)": chat_pb2.CreateConversationRequest(
        member_ids=[f"user-{i}" for i in range(999)]),
    "CreateConversation (100,000 members, refused)": chat_pb2.CreateConversationRequest(
        member_ids=[f"user-{i}" for i in range(100_000)]),
    "SendMessage (600 characters)": chat_pb2.SendMessageRequest(
        conversation_id=CID, content="hello " * 100, idempotency_key=uuid.uuid4().hex),
    "SendMessage (4,096 characters)": chat_pb2.SendMessageRequest(
        conversation_id=CID, content="x" * 4096, idempotency_key=uuid.uuid4().hex),
    "GetMessages": chat_pb2.GetMessagesRequest(conversation_id=CID, limit=50, after_seq=10),
    "GetConversations": chat_pb2.GetConversationsRequest(limit=50),
    "MarkAsRead": chat_pb2.MarkAsReadRequest(conversation_id=CID, up_to_seq=7),
}


def _check(request: Message) -> Callable[[], None]:
    def run() -> None:
        try:
            request_rules.check(request)
        except InvalidArgument:
            pass
    return run


def per_call_us(fn: Callable[[], None], budget_s: float = 0.2) -> float:
    fn()  # compiles the rules of the message type once
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    for name, request in CASES.items():
        rounds = [per_call_us(_check(request)) for _ in range(7)]
        print(f"{name:48s} {statistics.median(rounds):9.1f} us")


if __name__ == "__main__":
    main()
