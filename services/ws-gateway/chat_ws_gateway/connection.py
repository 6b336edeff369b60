"""One client connection: its bounded send queue, its writer, and the I/O of ordering and resume.

Fan-out calls ``deliver`` synchronously for every event and it never awaits: a frame is queued
with ``put_nowait`` and the connection's own writer task drains the queue to the socket. A full
queue means the client cannot keep up, and it is closed with 4008 (it reconnects and resumes),
so a slow socket never delays anyone else.

What goes out when, per conversation (duplicates, gaps filled from PostgreSQL, the seam with
history on resume, the events held until the client's first frame), is decided by
``ordering.Ordering``, a state machine without I/O. This module feeds it and carries out its
answers: it queues frames, reads history pages (their rows wait for room in the queue: only this
connection waits), and closes the socket.

A socket opened for a device (``device_id``) also receives that device's to-device messages:
everything waiting in its mailbox at connect, then each one announced by a ``to_device.created``
event, read from PostgreSQL after the socket's cursor (``to_device.Mailbox`` decides when),
and once every WS_DEVICE_CHECK_INTERVAL: removing a device announces nothing, so that read is
what closes a removed device's sockets (4404).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple

from aiohttp import web

from chat_shared.events import MEMBER_REMOVED, TO_DEVICE_CREATED, Event
from chat_shared.observability.logging import get_logger
from chat_shared.tenancy import DEFAULT_TENANT
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
from chat_ws_gateway.ordering import (
    SEND_NOW,
    Action,
    CatchUpFailed,
    Fetch,
    Ordering,
    Resumed,
    Send,
    SlowConsumer,
)
from chat_ws_gateway.to_device import Mailbox
from chat_ws_gateway.typing_indicators import TypingRelay

log = get_logger(__name__)

CLOSE_INTERNAL_ERROR = 1011
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


class Connection:
    def __init__(self, ws: web.WebSocketResponse, user_id: str, *, history: History,
                 queue_size: int, close_timeout: float, max_positions: int,
                 transport: asyncio.Transport | None = None,
                 tenant_id: str = DEFAULT_TENANT, typing: TypingRelay | None = None,
                 device_id: str | None = None, device_check_interval: float = 30.0) -> None:
        """
        Args:
            device_id: the user's device this socket receives to-device messages for (checked
                by the first mailbox read: the socket is closed with 4404 when it is not the
                user's); None = none.
            device_check_interval: seconds between the mailbox reads that check the device is
                still the user's (a removed device's socket closes with 4404 within it).
        """
        self.ws = ws
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.device_id = device_id
        self._mailbox = Mailbox() if device_id is not None else None
        self._device_check_interval = device_check_interval
        self._history = history
        self._typing = typing
        self._transport = transport
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(queue_size)
        self._close_timeout = close_timeout
        self._max_positions = max_positions
        self._order = Ordering(hold_limit=queue_size)
        self._timers: list[asyncio.TimerHandle] = []
        self._pending_timer: asyncio.TimerHandle | None = None
        self._device_timer: asyncio.TimerHandle | None = None
        """The next check of the device (``_check_device``), for a device's socket."""
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
        if self._mailbox is not None:
            # After the hub registered the socket: what commits from now on is announced to
            # it, and this read finds everything that committed before.
            self._spawn(self._read_mailbox(), "ws-to-device")
            self._device_timer = loop.call_later(self._device_check_interval,
                                                 self._check_device)

    def close(self, code: int, message: str, reason: str) -> None:
        """Starts closing with ``code`` (idempotent); the socket is aborted if it hangs."""
        if self.closing:
            return
        self.closing = True
        WS_CLOSES.labels(reason).inc()
        self._cancel_timers()
        # The writer is not cancelled: it stops at its next frame. Blocked on a full socket, it
        # waits on the drain future aiohttp shares with the close frame's write, and cancelling
        # it would cancel that future and so the close, which would then never time out into
        # the abort below (the socket would linger for as long as the peer does not read).
        self._spawn(self._close_socket(code, message), "ws-close")

    async def _close_socket(self, code: int, message: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()),
                                   self._close_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            # A hung close ends in transport.close(), which still waits to flush what is
            # buffered, and a peer that stopped reading never takes it: abort drops it.
            # WebSocketResponse has no public abort; the request's public ``transport`` is the
            # one it writes to.
            if self._transport is not None:
                self._transport.abort()
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
        if self._device_timer is not None:
            self._device_timer.cancel()

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

    def send_ephemeral(self, frame: str, kind: str) -> None:
        """Queues a frame outside any conversation's order (a typing signal)."""
        self._enqueue(Outgoing(frame, kind, None))

    def send_error(self, code: str, message: str, **extra: Any) -> None:
        WS_BAD_FRAMES.labels(code).inc()
        self._enqueue(Outgoing(protocol.error_frame(code, message, **extra), "error", None))

    def render(self, item: Outgoing) -> str | None:
        """The text that goes out for a queued frame; None to send nothing. Rendered by the
        writer, not the fan-out, so a protocol that wraps frames (GraphQL's) costs the fan-out
        nothing."""
        return item.text

    async def _write_loop(self) -> None:
        queue, ws = self._queue, self.ws
        try:
            while True:
                item = await queue.get()
                if self.closing:
                    return
                text = self.render(item)
                if text is None:
                    continue
                await ws.send_str(text)
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
        step = self._order.live(event, frame)
        if step is SEND_NOW:
            self._enqueue(Outgoing(frame, event.type, event.occurred_at.timestamp()))
            if event.type == MEMBER_REMOVED and event.payload.get("user_id") == self.user_id:
                self._order.forget(event.conversation_id)
        elif step is not None:
            self._act(step)

    def _act(self, action: Action) -> None:
        """Carries out one answer of the ordering state machine."""
        match action:
            case Send(event, frame):
                self._enqueue(Outgoing(frame, event.type, event.occurred_at.timestamp()))
            case Fetch():
                if not self.closing:
                    self._spawn(self._fill(action))
            case Resumed(cid, seq):
                self._enqueue(Outgoing(protocol.resumed_frame(cid, seq), "resumed", None))
            case CatchUpFailed(cid, missing_up_to):
                log.error("ws_catch_up_failed", user_id=self.user_id, conversation_id=cid,
                          error=f"seqs up to {missing_up_to} not found")
                self._catch_up_failed(cid)
            case SlowConsumer():
                WS_SLOW_CLIENT_DISCONNECTS.inc()
                self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer", "slow_consumer")

    def _act_all(self, actions: list[Action]) -> None:
        for action in actions:
            self._act(action)

    def _end_pending(self) -> None:
        self._stop_pending_timer()
        self._act_all(self._order.end_pending())

    def _stop_pending_timer(self) -> None:
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None

    # --- catch-up from PostgreSQL -------------------------------------------------------------

    async def _fill(self, fetch: Fetch) -> None:
        """Reads the pages the state machine asks for, queues their rows, acts on its answers."""
        cid = fetch.conversation_id
        step: Fetch | None = fetch
        try:
            while step is not None:
                if step.delay:
                    await asyncio.sleep(step.delay)  # the gap's rows are committing
                rows = await self._history.changes_after(self.tenant_id, self.user_id, cid,
                                                          step.after)
                if rows is None:
                    # Removed while catching up: its removal may be among what the read no
                    # longer shows, so say it as a refused resume does, and stop there.
                    self._order.abandon(cid)
                    self.send_error(protocol.NOT_FOUND, "no such conversation",
                                    conversation_id=cid)
                    return
                more = len(rows) >= self._history.page_size
                for row in self._order.history_page(cid, rows, more):
                    frame = protocol.stored_change_frame(row)
                    if frame is None:
                        continue  # a change this member does not see; its pos is passed
                    await self._put(Outgoing(frame, row.type, None))
                    WS_CATCH_UP_MESSAGES.inc()
                # From here to the next read nothing awaits: no live event can slip between
                # the page's last row and the release of the held ones.
                step = None
                for action in self._order.history_sent(cid):
                    if isinstance(action, Fetch):
                        step = action
                    else:
                        self._act(action)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ws_catch_up_failed", user_id=self.user_id, conversation_id=cid)
            self._catch_up_failed(cid)

    def _catch_up_failed(self, cid: str) -> None:
        self.send_error(protocol.CATCH_UP_FAILED, "catch-up failed; reconnect and resume",
                        conversation_id=cid)
        self.close(CLOSE_INTERNAL_ERROR, "catch-up failed", "catch_up_failed")

    # --- to-device messages ------------------------------------------------------------------

    def announce_to_device(self, message_id: int) -> None:
        """A ``to_device.created`` event for this socket's device (fan-out; never awaits)."""
        if self.closing or self._mailbox is None:
            return
        if self._mailbox.announce(message_id):
            self._spawn(self._read_mailbox(), "ws-to-device")

    def _check_device(self) -> None:
        """A mailbox read every ``device_check_interval``: removing a device (RemoveDevice)
        announces nothing to its sockets, so this read is what closes them (4404); it also
        sends whatever an announcement lost on the way would have."""
        if self.closing or self._mailbox is None:
            return
        if self._mailbox.recheck():
            self._spawn(self._read_mailbox(periodic=True), "ws-to-device")
        self._device_timer = asyncio.get_running_loop().call_later(
            self._device_check_interval, self._check_device)

    async def _read_mailbox(self, *, periodic: bool = False) -> None:
        """Sends the device's messages after the cursor, page by page, until the mailbox
        state says the device is up to date; one such task per socket at a time.

        A read that fails closes the socket (the client reconnects and reads everything
        waiting), except a periodic check's: with PostgreSQL away every device socket would
        close and reconnect into the same outage, so it is tried again at the next check.
        """
        assert self._mailbox is not None and self.device_id is not None
        mailbox, page_size = self._mailbox, self._history.page_size
        try:
            again = True
            while again:
                rows = await self._history.to_device_after(
                    self.tenant_id, self.user_id, self.device_id, mailbox.next_read())
                if rows is None:
                    self._unknown_device()
                    return
                for row in rows:
                    await self._put(Outgoing(protocol.to_device_frame(row), TO_DEVICE_CREATED,
                                             None))
                again = mailbox.page_read(rows[-1].id if rows else None,
                                          len(rows) >= page_size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if periodic:
                log.warning("ws_device_check_failed", user_id=self.user_id,
                            device_id=self.device_id, error=str(exc))
                mailbox.failed()
                return
            log.exception("ws_to_device_read_failed", user_id=self.user_id,
                          device_id=self.device_id)
            self.send_error(protocol.CATCH_UP_FAILED,
                            "reading the device's to-device messages failed; reconnect")
            self.close(CLOSE_INTERNAL_ERROR, "to-device read failed", "catch_up_failed")

    def _unknown_device(self) -> None:
        log.info("ws_refused", user_id=self.user_id, reason="unknown_device")
        self.send_error(protocol.NOT_FOUND, "no such device", device_id=self.device_id)
        self.close(protocol.CLOSE_UNKNOWN_DEVICE, "unknown device", "unknown_device")

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
        if isinstance(frame, protocol.Typing):
            await self._typing_signal(frame.conversation_id)
            return
        await self._resume(frame.positions)

    async def _typing_signal(self, cid: str) -> None:
        if self._typing is None:
            return
        if await self._typing.signal(self.tenant_id, self.user_id, cid) == "not_member":
            # As for a resume: the same answer for "not a member" and "no such conversation".
            self.send_error(protocol.NOT_FOUND, "no such conversation", conversation_id=cid)

    async def _resume(self, positions: dict[str, int]) -> None:
        # Stop the first-frame timer now, so live events stay held while membership is read.
        if self._pending_timer is not None:
            self._pending_timer.cancel()
        try:
            members = await self._history.member_of(self.tenant_id, self.user_id,
                                                      list(positions))
        except Exception:
            log.exception("ws_resume_failed", user_id=self.user_id)
            self.send_error(protocol.CATCH_UP_FAILED, "resume failed; reconnect and resume")
            self.close(CLOSE_INTERNAL_ERROR, "resume failed", "catch_up_failed")
            return
        for cid in positions:
            if cid not in members:
                # Same answer for "not a member" and "no such conversation": nothing leaks.
                self.send_error(protocol.NOT_FOUND, "no such conversation", conversation_id=cid)
        self._stop_pending_timer()
        self._act_all(self._order.resume(
            {cid: position for cid, position in positions.items() if cid in members}))
