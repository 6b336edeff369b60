"""A minimal Redis connection for the limiter: RESP2 over one pipelined socket, nothing else.

Why not redis-py: the limiter runs on every call, and redis.asyncio costs about 0.3 ms of CPU
per command (connection checkout, command packing, response callbacks, its own timeout
machinery), three times the limiter's whole budget. This connection writes a command and
resolves a future when the reply arrives; calls from many requests share one socket and are
answered in order (Redis answers a connection's commands in the order they came), so there is
no pool and no checkout. It speaks only what the limiter needs: AUTH, SELECT, EVAL/EVALSHA and
their replies (simple strings, errors, integers, bulk strings, arrays).

It has no timeouts and no retries of its own: the caller bounds each reply (``RedisGcra``).
A reply that comes after its caller gave up is read and dropped, so the order stays right.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

__all__ = ["ReplyError", "RespConnection"]

Reply = int | bytes | str | list[Any] | None


class ReplyError(Exception):
    """Redis answered with an error reply (``-NOSCRIPT ...``, ``-WRONGPASS ...``)."""


class _Incomplete(Exception):
    pass


def encode(*args: bytes | str | int | float) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply | ReplyError, int]:
    """One reply starting at ``pos``; raises _Incomplete when the buffer ends before it does."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP reply: {bytes(buf[pos - 1:pos + 16])!r}")


class RespConnection(asyncio.Protocol):
    """One socket to Redis; ``send`` returns a future of the reply (see the module docstring)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._buf = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int) -> RespConnection:
        """Connects (the caller bounds how long)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    @property
    def pending(self) -> int:
        return len(self._waiting)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        """Writes an encoded command; the future gets its reply (an error reply raises)."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._transport is None or self.closed.done():
            fut.set_exception(ConnectionError("redis connection is closed"))
            return fut
        self._transport.write(command)
        self._waiting.append(fut)
        return fut

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                fut = self._waiting.popleft() if self._waiting else None
                if fut is None or fut.done():
                    continue  # its caller gave up (timeout): read and dropped
                if isinstance(reply, ReplyError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except _Incomplete:
            pass
        except ValueError:
            self.close()  # a stream we cannot read: start afresh on a new connection
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = ConnectionError(f"redis connection lost: {exc or 'closed'}")
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
