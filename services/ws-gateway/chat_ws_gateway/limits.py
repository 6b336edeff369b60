"""What one client may take from a gateway: the arithmetic of its limits, without I/O.

A user may hold at most ``WS_MAX_CONNECTIONS_PER_USER`` sockets on one gateway process (the
hub counts them; see ``Hub.connections_of``) and each socket may send at most
``WS_MAX_INBOUND_FRAMES_PER_SECOND`` frames per second, measured by a token bucket that holds
one second's worth: a client may send that many frames at once, then that many per second.
A real client sends a resume frame and a ping every few seconds, far below any sane limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FrameBudget:
    """A token bucket: ``rate`` tokens per second, at most ``rate`` held (burst of one second).

    ``take()`` spends one token and says whether there was one. ``rate`` 0 means no limit.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = float(rate)
        self._clock = clock
        self._tokens = self._rate
        self._at = clock()

    def take(self) -> bool:
        if self._rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class TypingThrottle:
    """At most one typing signal per key (user and conversation) every ``interval`` seconds.

    ``allow(key)`` says whether a signal for ``key`` may go out now, and if so starts its
    window. Extra signals inside a window are dropped by the caller, silently: a client that
    sends a typing frame on every keystroke is behaving normally. The table forgets keys whose
    window has passed once it holds ``max_keys``, so its size stays bounded.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        self._interval = float(interval)
        self._clock = clock
        self._max_keys = max_keys
        self._until: dict[object, float] = {}

    def allow(self, key: object) -> bool:
        now = self._clock()
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        if len(self._until) >= self._max_keys:
            self._until = {k: u for k, u in self._until.items() if u > now}
        self._until[key] = now + self._interval
        return True
