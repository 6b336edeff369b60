"""The e2ee phase: SendMessage in an end-to-end encrypted conversation against a plain one.

Two users with two devices each (the reference client, ``chat_devtools.e2ee_client``,
vodozemac), one encrypted and one plain conversation between them. It times, one call at a
time over gRPC, alternating call by call so drift hits all alike:

- "SendMessage plain": a message of ``TEXT_CHARS`` characters;
- "SendMessage encrypted": the same text as Megolm ciphertext (encrypted before the clock
  starts): what the server pays for a ciphertext instead of content;
- "client send encrypted": the reference client's whole send: its device check (ListDevices
  and the signature checks), the encryption, and the SendMessage.
"""

from __future__ import annotations

import argparse
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chat_bench.clients import User, grpc_channel, token
from chat_bench.phase import Check, Context, Phase, at_most, check
from chat_bench.stats import summarize
from chat_bench.tables import fmt, table
from chat_devtools.e2ee_client import E2EEDevice
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc

CALLS = ("SendMessage plain", "SendMessage encrypted", "client send encrypted")
WARMUP = 20
TEXT_CHARS = 200
ENCRYPTED_FACTOR = 1.5
"""The server's SendMessage with a ciphertext costs at most this much more than with content
(the ciphertext is about twice the text's size and one more probe checks the sending device)."""
USERS = ("bench-e2ee-a", "bench-e2ee-b")


async def measure(target_grpc: str, secret: str, calls: int,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    a, b = (User(u, secret) for u in USERS)
    text = ("e2ee bench " * TEXT_CHARS)[:TEXT_CHARS]
    async with grpc_channel(target_grpc) as channel:
        stub_class: Any = chat_pb2_grpc.ChatServiceStub  # generated, untyped
        stub = stub_class(channel)
        devices = [E2EEDevice(stub, u.id, token(u.id, secret)) for u in (a, a, b, b)]
        for device in devices:
            await device.register()
        sender = devices[0]
        tag = uuid.uuid4().hex[:8]
        encrypted = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
            member_ids=[b.id], title=f"e2ee {tag}", encrypted=True), metadata=a.meta,
            timeout=30)).conversation.id
        plain = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
            member_ids=[b.id], title=f"plain {tag}"), metadata=a.meta,
            timeout=30)).conversation.id
        await sender.ensure_group_session(encrypted)

        async def send_plain() -> None:
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=plain, content=text, idempotency_key=uuid.uuid4().hex),
                metadata=a.meta, timeout=30)

        async def send_encrypted(request: chat_pb2.SendMessageRequest) -> None:
            await stub.SendMessage(request, metadata=a.meta, timeout=30)

        async def client_send() -> None:
            await sender.send(encrypted, text)

        samples: dict[str, list[float]] = {name: [] for name in CALLS}
        progress(f"e2ee: {calls} sequential calls of each of {len(CALLS)}, alternating ...")
        for i in range(WARMUP + calls):
            request = chat_pb2.SendMessageRequest(
                conversation_id=encrypted, idempotency_key=uuid.uuid4().hex,
                ciphertext=sender.encrypt(encrypted, text))
            steps: dict[str, Callable[[], Awaitable[None]]] = {
                CALLS[0]: send_plain, CALLS[1]: functools.partial(send_encrypted, request),
                CALLS[2]: client_send}
            for name, step in steps.items():
                start = time.perf_counter()
                await step()
                if i >= WARMUP:
                    samples[name].append(time.perf_counter() - start)
        # Every device decrypts what was sent (the phase measures a working exchange).
        page = await stub.GetMessages(chat_pb2.GetMessagesRequest(
            conversation_id=encrypted, limit=1), metadata=b.meta, timeout=30)
        for device in devices[1:]:
            await device.receive_keys()
            if device.decrypt(page.messages[0]) != text:
                raise RuntimeError("a device decrypted another text")
        size = len(request.ciphertext.body)
    return {"calls": calls, "text_chars": TEXT_CHARS, "ciphertext_bytes": size,
            **{name: summarize(s) for name, s in samples.items()}}


async def run(ctx: Context) -> dict[str, Any]:
    return await measure(ctx.target.grpc, ctx.target.jwt_secret, ctx.settings["e2ee_calls"],
                         ctx.progress)


def _mean(figures: Mapping[str, Any], name: str) -> Any:
    return (figures.get(name) or {}).get("mean_ms")


def _ratio(figures: Mapping[str, Any]) -> float | None:
    value, reference = _mean(figures, CALLS[1]), _mean(figures, CALLS[0])
    return value / reference if value is not None and reference else None


def targets(figures: Mapping[str, Any]) -> list[Check]:
    return [check("e2ee: SendMessage mean, encrypted / plain", _ratio(figures),
                  f"<= {ENCRYPTED_FACTOR:g}x", at_most(ENCRYPTED_FACTOR), "x")]


def details(figures: Mapping[str, Any]) -> list[str]:
    rows = [[name, *(fmt((figures.get(name) or {}).get(k))
                     for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))] for name in CALLS]
    return [f"End-to-end encryption: SendMessage of {figures['text_chars']} characters in a "
            f"plain conversation and as ciphertext ({figures['ciphertext_bytes']} bytes) in an "
            f"encrypted one (two users, two devices each); {figures['calls']} sequential gRPC "
            f"calls of each, alternating, ms:", "",
            *table(["call", "p50", "p95", "p99", "mean"], rows)]


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--e2ee-calls", type=int, help="sequential calls of each (500)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    calls = args.e2ee_calls if args.e2ee_calls is not None else (40 if args.quick else 500)
    return {"e2ee_calls": calls}


PHASE = Phase(
    name="e2ee", about="SendMessage in an end-to-end encrypted conversation against a plain one",
    run=run, targets=targets, details=details, options=_options, settings=_settings)
