"""A minimal Redis connection for the limiter: RESP2 over one pipelined socket, nothing else.

Why not redis-py: the limiter runs on every call, and redis.asyncio costs about 0.3 ms of CPU
per command (connection checkout, command packing, response callbacks, its own timeout
machinery), three times the limiter's whole budget. This connection writes a command and
resolves a future when the reply arrives; calls from many requests share one socket and are
answered in order (Redis answers a connection's commands in the order they came), so there is
no pool and no checkout. It speaks only what the limiter needs: AUTH, SELECT, EVAL/EVALSHA and
their replies (simple strings, errors, integers, bulk strings, arrays).

Commands are not written at once: ``send`` queues them and the connection writes what it has
queued in one write at the next turn of the event loop (``_flush``), in the order they were sent.
Why: on loopback a write costs about 22 us (the kernel delivers the bytes and wakes Redis at
once, in the writer's time), as much as the rest of a check. Written at once, that sits on the
call's path; queued, it is written when the call first waits (for its request message, for
PostgreSQL), in time the call would have waited anyway, and the checks of calls that run in
one turn share one write. A check that waits for its answer is not delayed by it: the loop runs
the flush before it next polls for replies.

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
            if pos < len(buf) and buf[pos] == 58:  # b":", an integer: the script's replies
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                items.append(int(buf[pos + 1:end]))
                pos = end + 2
                continue
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
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes] = []
        """Commands sent and not yet written (``_flush``)."""
        self.closed = self._loop.create_future()

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
        """Queues an encoded command, written at the loop's next turn (module docstring); the
        future gets its reply (an error reply raises)."""
        fut: asyncio.Future[Reply] = self._loop.create_future()
        if self._transport is None or self.closed.done():
            fut.set_exception(ConnectionError("redis connection is closed"))
            return fut
        if not self._queued:
            self._loop.call_soon(self._flush)
        self._queued.append(command)
        self._waiting.append(fut)
        return fut

    def _flush(self) -> None:
        """Writes the queued commands, in one write. On a connection lost meanwhile their
        futures have failed already (``connection_lost``), so nothing is written."""
        queued, self._queued = self._queued, []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(queued[0] if len(queued) == 1 else b"".join(queued))

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
