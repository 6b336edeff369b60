"""The limiter's Redis side: the GCRA script over ``RespConnection``, bounded, never retried.

Every check ends within ``timeout`` seconds or raises ``RedisUnavailable``, and the caller
falls back to its local limiter. While Redis is known to be down (a refused connection, a
lost one, a reply that did not come in time) no request waits on it: for ``down_for`` seconds
every check fails at once, then the next check tries again (one connect, bounded by the same
timeout). The script is run by its SHA (EVALSHA, 40 bytes instead of the whole script) and
loaded with EVAL when Redis answers NOSCRIPT (a restarted or flushed server).

On a Redis Cluster one ``RedisGcra`` talks to one master, and ``ClusterGcra`` (``_cluster.py``)
routes each check to the master of its keys' slot: a MOVED or ASK answer is raised here as
``Redirected`` for it to follow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from chat_shared.ratelimit._resp import Reply, ReplyError, RespConnection, encode
from chat_shared.ratelimit._script import GCRA_SCRIPT, GCRA_SHA

__all__ = ["RedisGcra", "RedisUnavailable", "Redirected"]

MAX_PENDING = 10_000
"""Commands waiting for replies on the socket; past this Redis is treated as stalled."""
_TIMER_SLACK = 0.001
"""A reply whose deadline is this close is failed now: the loop's timers fire to the
millisecond, possibly a little early."""
_MAX_COMMANDS = 10_000
"""Encoded scripts kept (``RedisGcra._send``): one per key and limits in use, then afresh."""


Pending = tuple[RespConnection, "asyncio.Future[Reply]"]
"""A script sent (``RedisGcra.submit``): its connection and the future of its reply."""


class RedisUnavailable(Exception):
    """Redis did not answer in time (or cannot be reached): decide locally."""


class Redirected(RedisUnavailable):
    """A Redis Cluster node answered MOVED or ASK: the slot is served elsewhere (for a single
    server, which never says so, it is just another reason to decide locally)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        kind, slot, address = message.split()[:3]
        self.ask = kind == "ASK"
        self.slot = int(slot)
        host, _, port = address.rpartition(":")
        self.address = (host, int(port))


def _redirection(exc: ReplyError) -> Redirected | None:
    text = str(exc)
    if text.startswith(("MOVED ", "ASK ")):
        try:
            return Redirected(text)
        except ValueError:
            return None
    return None


def _retrieve(fut: asyncio.Future[Reply]) -> None:
    if not fut.cancelled():
        fut.exception()


def _wire(args: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The script's arguments as sent: without a ceiling, the ceiling's key (which the script
    then never reads) is the user's key again, so a Redis Cluster sees the keys of one slot
    (an empty key would hash to slot 0)."""
    if len(args) > 1 and args[1] == "":
        return (args[0], args[0], *args[2:])
    return args


class RedisGcra:
    def __init__(self, host: str, port: int, *, timeout: float, password: str = "",
                 db: int = 0, down_for: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._host, self._port = host, port
        self._timeout = timeout
        self._password = password
        self._db = db
        self._down_for = down_for
        self._clock = clock
        self._conn: RespConnection | None = None
        self._commands: dict[tuple[str | int, ...], bytes] = {}
        self._connecting: asyncio.Task[RespConnection] | None = None
        self._down_until = 0.0
        self._deadlines: deque[tuple[float, asyncio.Future[Reply]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_loop: asyncio.AbstractEventLoop | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    async def check(self, *args: str | int, asking: bool = False) -> list[int]:
        """The script's answer (see ``_script``) for one request: ``args`` are the user's
        key, the ceiling's key, then the two limits' T and tau in microseconds.

        Args:
            asking: a cluster node sent the request here with ASK: send ASKING before it.

        Raises:
            RedisUnavailable: no answer within the timeout, or Redis is known to be down.
            Redirected: (a RedisUnavailable) a cluster node answered MOVED or ASK.
        """
        if self._clock() < self._down_until:
            raise RedisUnavailable("redis is down or too slow (left alone for a moment)")
        pending = None if asking else self.submit(*args)
        if pending is None:
            conn = await self._connect()
            pending = self._send(conn, args, asking=asking)
        return await self.answer(pending, args)

    async def call(self, *command: str | int) -> Reply:
        """Any other command (the cluster's CLUSTER SLOTS), bounded by the timeout.

        Raises:
            RedisUnavailable: no answer within the timeout, an error reply, or Redis is known
                to be down.
        """
        if self._clock() < self._down_until:
            raise RedisUnavailable("redis is down or too slow (left alone for a moment)")
        conn = self._conn if self._conn is not None and self._conn.is_open else None
        if conn is None:
            conn = await self._connect()
        fut = conn.send(encode(*command))
        self._bound(fut)
        try:
            return await self._reply(fut)
        except ReplyError as exc:
            raise RedisUnavailable(str(exc)) from exc

    def submit(self, *args: str | int) -> Pending | None:
        """Sends the script now (so Redis runs it in the order of the decisions) when the
        connection is open; None when it is not, or while Redis is left alone after a failure
        (then ``check`` connects, or raises at once).
        The reply is bounded by the timeout from this moment; ``answer`` reads it."""
        conn = self._conn
        if conn is None or not conn.is_open or self._clock() < self._down_until:
            return None
        return self._send(conn, args)

    def _send(self, conn: RespConnection, args: tuple[str | int, ...], *, asking: bool = False
              ) -> Pending:
        if conn.pending >= MAX_PENDING:
            self._mark_down()
            fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            fut.set_exception(ConnectionError("redis is not keeping up"))
        else:
            if asking:  # answered before the script, on the same connection: nobody waits
                conn.send(encode("ASKING")).add_done_callback(_retrieve)
            # A user's checks repeat the same command: encoded once (0.1 us to look up where
            # encoding took 21 us, fastest of 15 timings at load 10).
            command = self._commands.get(args)
            if command is None:
                if len(self._commands) >= _MAX_COMMANDS:
                    self._commands.clear()
                command = self._commands[args] = encode("EVALSHA", GCRA_SHA, 2, *_wire(args))
            fut = conn.send(command)
        self._bound(fut)
        return conn, fut

    def _bound(self, fut: asyncio.Future[Reply]) -> None:
        """Fails ``fut`` with TimeoutError unless its reply comes within the timeout.

        One timer for all the replies awaited (``_sweep``), not one each: a timer costs 1.8 us
        to start and cancel, on every check's path, and replies come in the order sent, so
        their deadlines are in order too."""
        loop = fut.get_loop()
        deadline = loop.time() + self._timeout
        if self._watch_loop is not loop:  # (a new event loop: the old one's timer is gone)
            self._deadlines.clear()
            self._watch_loop, self._watchdog = loop, None
        self._deadlines.append((deadline, fut))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        """Fails the replies whose deadline has passed, forgets those that came, and sets the
        timer again for the next deadline (if a reply is still awaited)."""
        loop, deadlines = self._watch_loop, self._deadlines
        assert loop is not None
        now = loop.time() + _TIMER_SLACK
        while deadlines:
            deadline, fut = deadlines[0]
            if not fut.done():
                if deadline > now:
                    break
                fut.set_exception(TimeoutError())
            deadlines.popleft()
        self._watchdog = loop.call_at(deadlines[0][0], self._sweep) if deadlines else None

    @staticmethod
    def reply_future(pending: Pending) -> asyncio.Future[Reply]:
        """The future of a ``submit``ted script's reply (done when it came, failed or timed
        out)."""
        return pending[1]

    @staticmethod
    def settled(pending: Pending) -> list[int] | None:
        """What ``answer`` returns for a ``submit``ted script whose reply has come as a plain
        answer, without awaiting it; None for anything else (no reply yet, an error reply, a
        failure, a timeout), which ``answer`` then deals with."""
        fut = pending[1]
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        reply = fut.result()
        if not isinstance(reply, list) or len(reply) != 6:
            return None
        return [int(v) for v in reply]

    async def answer(self, pending: Pending, args: tuple[str | int, ...]) -> list[int]:
        """The reply of a ``submit``ted script (loaded with EVAL on NOSCRIPT).

        Raises:
            RedisUnavailable: no answer within the timeout.
        """
        conn, fut = pending
        try:
            reply = await self._reply(fut)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise _redirection(exc) or RedisUnavailable(str(exc)) from exc
            fut = conn.send(encode("EVAL", GCRA_SCRIPT, 2, *_wire(args)))
            self._bound(fut)
            try:
                reply = await self._reply(fut)
            except ReplyError as exc2:
                raise _redirection(exc2) or RedisUnavailable(str(exc2)) from exc2
        if not isinstance(reply, list) or len(reply) != 6:
            raise RedisUnavailable(f"unexpected script reply {reply!r}")
        return [int(v) for v in reply]

    async def _reply(self, fut: asyncio.Future[Reply]) -> Reply:
        try:
            return await fut
        except (TimeoutError, ConnectionError) as exc:
            self._mark_down()
            raise RedisUnavailable(f"redis did not answer: {type(exc).__name__}") from exc

    def _mark_down(self) -> None:
        self._down_until = self._clock() + self._down_for

    async def _connect(self) -> RespConnection:
        """The open connection, opened now if needed; concurrent callers share one attempt."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._open(), name="ratelimit-redis-connect")
            # Retrieved here when no caller waited for the end (they gave up at the timeout).
            self._connecting.add_done_callback(
                lambda t: None if t.cancelled() else t.exception())
        try:
            conn = await asyncio.wait_for(asyncio.shield(self._connecting), self._timeout)
        except (TimeoutError, OSError, ReplyError) as exc:
            self._mark_down()
            raise RedisUnavailable(f"cannot reach redis: {exc or type(exc).__name__}") from exc
        return conn

    async def _open(self) -> RespConnection:
        try:
            conn = await asyncio.wait_for(RespConnection.open(self._host, self._port),
                                          self._timeout * 4)
            setup = []
            if self._password:
                setup.append(conn.send(encode("AUTH", self._password)))
            if self._db:
                setup.append(conn.send(encode("SELECT", self._db)))
            if setup:
                await asyncio.wait_for(asyncio.gather(*setup), self._timeout * 4)
        except BaseException:
            self._mark_down()
            raise
        old, self._conn = self._conn, conn
        if old is not None:
            old.close()
        return conn

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            try:
                await self._connecting
            except BaseException:  # noqa: BLE001,S110 - closing: whatever it ended with
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None
