"""One client connection: its bounded send queue, its writer, and per-conversation ordering.

Fan-out calls ``deliver`` synchronously for every event and it never awaits: a frame is queued
with ``put_nowait`` and the connection's own writer task drains the queue to the socket. A full
queue means the client cannot keep up, and it is closed with 4008 (it reconnects and resumes),
so a slow socket never delays anyone else.

Ordering and resume, per conversation (``Cursor``):
- ``delivered`` is the last seq this connection has sent (or the client's resume position);
  a ``message.created`` at or below it is a duplicate and dropped, exactly the next one is sent.
- A seq beyond the next one is a gap: the conversation switches to *filling*, live events are
  held, the missing messages are read from PostgreSQL page by page, then the held events above
  ``delivered`` are released. Resume is the same mechanism started from the client's position.
- Until the client's first frame (or WS_RESUME_WAIT), every live event is held, so a resume
  sent right after connecting is applied before anything is delivered: no gap at the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from aiohttp import web

from chat_shared.events import MESSAGE_CREATED, Event
from chat_shared.observability.logging import get_logger
from chat_ws_gateway import protocol
from chat_ws_gateway.history import History
from chat_ws_gateway.metrics import (
    WS_BAD_FRAMES,
    WS_CATCH_UP_MESSAGES,
    WS_CLOSES,
    WS_DELIVERY_LAG,
    WS_FRAMES_SENT,
    WS_SLOW_CLIENT_DISCONNECTS,
)

log = get_logger(__name__)

CLOSE_INTERNAL_ERROR = 1011
_MAX_FILL_ROUNDS = 5
_FRAME_COUNTERS: dict[str, Any] = {}


def _frames_sent(kind: str) -> Any:
    counter = _FRAME_COUNTERS.get(kind)
    if counter is None:
        counter = _FRAME_COUNTERS[kind] = WS_FRAMES_SENT.labels(kind)
    return counter


class Outgoing(NamedTuple):
    text: str
    kind: str
    occurred_at: float | None
    """Epoch seconds of the event, for the delivery-lag histogram; None for other frames."""


class Cursor:
    """Delivery state of one conversation on one connection."""

    __slots__ = ("delivered", "filling", "held", "high_water")

    def __init__(self, delivered: int, filling: bool = False) -> None:
        self.delivered = delivered
        self.filling = filling
        self.held: list[tuple[Event, str]] = []
        self.high_water = delivered
        """The highest seq seen while filling (held or dropped because ``held`` was full)."""


class Connection:
    def __init__(self, ws: web.WebSocketResponse, user_id: str, *, history: History,
                 queue_size: int, close_timeout: float, max_positions: int) -> None:
        self.ws = ws
        self.user_id = user_id
        self._history = history
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(queue_size)
        self._hold_limit = queue_size
        self._close_timeout = close_timeout
        self._max_positions = max_positions
        self._cursors: dict[str, Cursor] = {}
        self._pending: list[tuple[Event, str]] | None = []
        self._timers: list[asyncio.TimerHandle] = []
        self._pending_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.Task[None] | None = None
        self.closing = False
        self.closed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, expires_at: float | None, resume_wait: float) -> None:
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(), name=f"ws-writer-{self.user_id}")
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            self._timers.append(loop.call_later(
                delay, self.close, protocol.CLOSE_TOKEN_EXPIRED, "token expired", "token_expired"))
        self._pending_timer = loop.call_later(resume_wait, self._end_pending)
        self._timers.append(self._pending_timer)

    def close(self, code: int, message: str, reason: str) -> None:
        """Starts closing with ``code`` (idempotent); the socket is aborted if it hangs."""
        if self.closing:
            return
        self.closing = True
        WS_CLOSES.labels(reason).inc()
        self._cancel_timers()
        if self._writer is not None:
            self._writer.cancel()
        self._spawn(self._close_socket(code, message), "ws-close")

    async def _close_socket(self, code: int, message: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()),
                                   self._close_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = self.ws._req.transport if self.ws._req is not None else None
            if transport is not None:
                transport.abort()
        finally:
            self.closed.set()

    async def finish(self) -> None:
        """Called when the handler's read loop ends: stops the writer and the catch-up tasks."""
        self.closing = True
        self._cancel_timers()
        tasks = [t for t in self._tasks if not t.done()]
        closing_tasks = [t for t in tasks if t.get_name().startswith("ws-close")]
        for t in tasks:
            if t not in closing_tasks:
                t.cancel()
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, *(w for w in (self._writer,) if w), return_exceptions=True)

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str = "ws-task") -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- outgoing ---------------------------------------------------------------------------

    def _enqueue(self, item: Outgoing) -> None:
        if self.closing:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            WS_SLOW_CLIENT_DISCONNECTS.inc()
            log.info("ws_slow_consumer", user_id=self.user_id, queued=self._queue.qsize())
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer", "slow_consumer")

    async def _put(self, item: Outgoing) -> None:
        """Queues a catch-up frame, waiting for room (only this connection waits)."""
        try:
            await asyncio.wait_for(self._queue.put(item), self._close_timeout)
        except TimeoutError:
            WS_SLOW_CLIENT_DISCONNECTS.inc()
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer", "slow_consumer")
            raise asyncio.CancelledError from None

    def send_error(self, code: str, message: str, **extra: Any) -> None:
        WS_BAD_FRAMES.labels(code).inc()
        self._enqueue(Outgoing(protocol.error_frame(code, message, **extra), "error", None))

    async def _write_loop(self) -> None:
        queue, ws = self._queue, self.ws
        try:
            while True:
                item = await queue.get()
                await ws.send_str(item.text)
                _frames_sent(item.kind).inc()
                if item.occurred_at is not None:
                    WS_DELIVERY_LAG.observe(max(0.0, time.time() - item.occurred_at))
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-write; the read loop sees the close and cleans up.
            log.debug("ws_write_failed", user_id=self.user_id, error=str(exc))

    # --- incoming events (fan-out; never awaits) ---------------------------------------------

    def deliver(self, event: Event, frame: str) -> None:
        if self.closing:
            return
        if self._pending is not None:
            if len(self._pending) >= self._hold_limit:
                WS_SLOW_CLIENT_DISCONNECTS.inc()
                self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer", "slow_consumer")
                return
            self._pending.append((event, frame))
            return
        self._route(event, frame)

    def _route(self, event: Event, frame: str) -> None:
        occurred = event.occurred_at.timestamp()
        if event.type != MESSAGE_CREATED:
            self._enqueue(Outgoing(frame, event.type, occurred))
            return
        cid = event.conversation_id
        cursor = self._cursors.get(cid)
        if cursor is None:
            # First event of a conversation the client gave no position for: start here.
            self._cursors[cid] = Cursor(event.seq)
            self._enqueue(Outgoing(frame, MESSAGE_CREATED, occurred))
            return
        if cursor.filling:
            self._hold(cursor, event, frame)
            return
        if event.seq <= cursor.delivered:
            return  # duplicate (at-least-once publishing, or already sent from PostgreSQL)
        if event.seq == cursor.delivered + 1:
            cursor.delivered = event.seq
            self._enqueue(Outgoing(frame, MESSAGE_CREATED, occurred))
            return
        cursor.filling = True
        self._hold(cursor, event, frame)
        self._spawn(self._fill(cid, cursor, announce=False))

    def _hold(self, cursor: Cursor, event: Event, frame: str) -> None:
        cursor.high_water = max(cursor.high_water, event.seq)
        if len(cursor.held) < self._hold_limit:
            cursor.held.append((event, frame))
        # else: dropped here, and read from PostgreSQL instead (high_water says how far).

    def _end_pending(self) -> None:
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        pending, self._pending = self._pending, None
        for event, frame in pending or ():
            self._route(event, frame)

    # --- catch-up from PostgreSQL -------------------------------------------------------------

    async def _fill(self, cid: str, cursor: Cursor, *, announce: bool) -> None:
        """Sends what PostgreSQL has after ``cursor.delivered``, then the held live events."""
        try:
            for _round in range(_MAX_FILL_ROUNDS):
                while True:
                    rows = await self._history.messages_after(self.user_id, cid,
                                                              cursor.delivered)
                    for row in rows:
                        await self._put(Outgoing(protocol.history_frame(row), MESSAGE_CREATED,
                                                 None))
                        cursor.delivered = row.seq
                        WS_CATCH_UP_MESSAGES.inc()
                    if len(rows) < self._history.page_size:
                        break
                # From here to the end of the round nothing awaits: no live event can slip
                # between the last row read and the release of the held ones.
                held = sorted(cursor.held, key=lambda h: h[0].seq)
                cursor.held = []
                for i, (event, frame) in enumerate(held):
                    if event.seq <= cursor.delivered:
                        continue
                    if event.seq != cursor.delivered + 1:
                        cursor.held = held[i:]
                        break
                    cursor.delivered = event.seq
                    self._enqueue(Outgoing(frame, MESSAGE_CREATED, event.occurred_at.timestamp()))
                if not cursor.held and cursor.delivered >= cursor.high_water:
                    cursor.filling = False
                    if announce:
                        self._enqueue(Outgoing(protocol.resumed_frame(cid, cursor.delivered),
                                               "resumed", None))
                    return
                await asyncio.sleep(0.05 * (_round + 1))  # the gap's rows are committing
            raise RuntimeError(f"conversation {cid}: seqs up to {cursor.high_water} not found")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ws_catch_up_failed", user_id=self.user_id, conversation_id=cid)
            self.send_error(protocol.CATCH_UP_FAILED, "catch-up failed; reconnect and resume",
                            conversation_id=cid)
            self.close(CLOSE_INTERNAL_ERROR, "catch-up failed", "catch_up_failed")

    # --- client frames --------------------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        """Handles one client frame; a bad frame is answered with an error frame, never raises."""
        try:
            frame = protocol.parse_client_frame(text, max_positions=self._max_positions)
        except protocol.FrameError as exc:
            self.send_error(exc.code, exc.message)
            self._end_pending()
            return
        if isinstance(frame, protocol.Ping):
            self._enqueue(Outgoing(protocol.pong_frame(), "pong", None))
            self._end_pending()
            return
        await self._resume(frame.positions)

    async def _resume(self, positions: dict[str, int]) -> None:
        # Stop the first-frame timer now, so live events stay held while membership is read.
        if self._pending_timer is not None:
            self._pending_timer.cancel()
        try:
            members = await self._history.member_of(self.user_id, list(positions))
        except Exception:
            log.exception("ws_resume_failed", user_id=self.user_id)
            self.send_error(protocol.CATCH_UP_FAILED, "resume failed; reconnect and resume")
            self.close(CLOSE_INTERNAL_ERROR, "resume failed", "catch_up_failed")
            return
        for cid, position in positions.items():
            if cid not in members:
                # Same answer for "not a member" and "no such conversation": nothing leaks.
                self.send_error(protocol.NOT_FOUND, "no such conversation", conversation_id=cid)
                continue
            cursor = self._cursors.get(cid)
            if cursor is None:
                cursor = self._cursors[cid] = Cursor(position, filling=True)
                self._spawn(self._fill(cid, cursor, announce=True))
            elif not cursor.filling and position > cursor.delivered:
                cursor.delivered = cursor.high_water = position
            # A position behind what this connection already sent changes nothing: the
            # conversation's order on this connection is kept.
        self._end_pending()


Factory = Callable[[web.WebSocketResponse, str], Connection]
