"""The services as real subprocesses for the WebSocket gateway's end-to-end tests.

The process classes (``Api``, ``Relay``, ``Gateway``) live in ``chat_devtools.services`` so that
the benchmark starts the services exactly as these tests do; this module adds the test secret
and the WebSocket client helpers. ``ws_connect`` opens a real
aiohttp WebSocket client and sends the resume frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from chat_shared.protos.chat.v1 import chat_pb2_grpc

from chat_devtools import services
from chat_devtools.services import Api, Gateway, Relay
from tests.conftest import TEST_SECRET, make_token

__all__ = ["ORDERED", "Api", "Gateway", "Relay", "Stack", "base_env", "close_code", "messages",
           "next_frame", "ordered_frames", "running_stack", "ws_connect"]

ORDERED = frozenset({"message.created", "message.updated", "message.deleted", "reaction.added",
                     "reaction.removed", "member.added", "member.removed",
                     "member.role_changed", "conversation.updated"})
"""The frame types of ordered changes (each with a ``pos``)."""


def base_env(db_source: str, redis_addr: str, **overrides: object) -> dict[str, str]:
    return services.base_env(db_source, redis_addr, TEST_SECRET, **overrides)


@dataclass(frozen=True)
class Stack:
    gateway: Gateway
    stub: chat_pb2_grpc.ChatServiceStub


@contextlib.asynccontextmanager
async def running_stack(env: dict[str, str], log_dir: pathlib.Path) -> AsyncIterator[Stack]:
    """The API, one relay and one gateway as processes, ready; a gRPC stub to the API."""
    api = Api(env, log_dir).start()
    relay = Relay(env, log_dir).start()
    gateway = Gateway(env, log_dir, "ws1").start()
    try:
        await asyncio.gather(api.ready(), relay.ready(), gateway.ready())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
            yield Stack(gateway, chat_pb2_grpc.ChatServiceStub(channel))
    finally:
        for service in (api, relay, gateway):
            service.stop()


async def ws_connect(session: aiohttp.ClientSession, gateway: Gateway, user: str, *,
                     positions: dict[str, int] | None = None, ttl: float = 3600.0,
                     resume: bool = True) -> aiohttp.ClientWebSocketResponse:
    """A client socket authenticated as ``user`` that has sent its resume frame."""
    ws = await session.ws_connect(f"{gateway.url}/v1/ws", heartbeat=None, autoping=True,
                                  headers={"Authorization": f"Bearer {make_token(user, ttl)}"})
    if resume:
        await ws.send_json({"type": "resume", "positions": positions or {}})
    return ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, within: float = 20.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    data: dict[str, Any] = msg.json()
    return data


async def messages(ws: aiohttp.ClientWebSocketResponse, count: int,
                   within: float = 30.0) -> list[dict[str, Any]]:
    """The next ``count`` message.created frames (other frames are skipped)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {count} messages: {[m['seq'] for m in out]}"
        frame = await next_frame(ws, left)
        if frame["type"] == "message.created":
            out.append(frame)
    return out


async def ordered_frames(ws: aiohttp.ClientWebSocketResponse, count: int,
                         within: float = 20.0) -> list[dict[str, Any]]:
    """The next ``count`` frames of ordered changes (other frames are skipped; bounded)."""
    out: list[dict[str, Any]] = []
    for _ in range(count * 3 + 10):
        if len(out) == count:
            return out
        frame = await next_frame(ws, within)
        if frame["type"] in ORDERED:
            out.append(frame)
    raise AssertionError(f"got {len(out)} of {count} ordered frames")


async def close_code(ws: aiohttp.ClientWebSocketResponse, within: float = 30.0,
                     limit: int = 100_000) -> tuple[int | None, int]:
    """Reads until the server closes; returns the close code and how many frames came first."""
    frames = 0
    deadline = time.monotonic() + within
    for _ in range(limit):
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING):
            return ws.close_code, frames
        if msg.type == aiohttp.WSMsgType.ERROR:
            return None, frames
        frames += 1
    raise AssertionError("the server did not close the socket")
