"""The rate-limit arithmetic, without I/O: GCRA (the generic cell rate algorithm).

A limit is a rate (requests per second) and a burst (requests that may come at once). GCRA
keeps one number per key, the theoretical arrival time (TAT): when the key's budget is whole
again. A request at ``now`` is allowed when ``max(TAT, now) + T - tau <= now`` (``T`` = 1/rate,
``tau`` = burst * T), and then moves TAT on by ``T``; a refused request changes nothing. So a
client may send ``burst`` requests at once and then ``rate`` per second, and a refusal says
exactly when the next request will pass (``retry_after``).

The same step runs in Redis (``_script.py``, in microseconds, for every replica at once) and in
this process (``LocalLimiter``, when Redis does not answer in time); tests check they agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "Limit", "LocalLimiter", "gcra_step"]


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` requests per second with a burst of ``burst``; rate 0 = no limit."""

    rate: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0 or self.burst <= 0

    @property
    def interval(self) -> float:
        """Seconds one request costs (T)."""
        return 1.0 / self.rate

    @property
    def window(self) -> float:
        """Seconds an empty budget takes to fill again: the ``w`` of ``RateLimit-Policy``."""
        return self.burst / self.rate


@dataclass(frozen=True, slots=True)
class Decision:
    """One answer of the limiter for one request.

    ``retry_after``: seconds until a request would pass (0 when allowed). ``remaining``: the
    requests that could follow at once. ``reset``: seconds until the whole burst is back.
    ``scope``: what refused ("user", "tenant" for the tenant's ceiling) or "" when allowed.
    ``fail_open``: decided in the process (Redis did not answer in time); ``ahead``: allowed
    on Redis's previous answer while this request's own check runs beside it.
    """

    allowed: bool
    limit: Limit
    remaining: int
    reset: float
    retry_after: float = 0.0
    scope: str = ""
    fail_open: bool = False
    ahead: bool = False


def gcra_step(tat: float, now: float, limit: Limit) -> tuple[bool, float, float, int]:
    """One request against a key whose TAT is ``tat`` (0 = never seen).

    Returns:
        (allowed, the key's new TAT, retry_after seconds, remaining requests). A refused
        request returns the TAT unchanged.
    """
    t = limit.interval
    tau = limit.burst * t
    base = tat if tat > now else now
    new_tat = base + t
    allow_at = new_tat - tau
    if allow_at > now + 1e-9:  # float sums of T drift by ulps; Redis counts whole µs
        return False, tat, allow_at - now, 0
    return True, new_tat, 0.0, int((now + tau - new_tat) / t + 1e-9)


class LocalLimiter:
    """The same GCRA in this process's memory: the fallback when Redis does not answer.

    Replicas do not share it, so with Redis down each process allows the full rate (N
    processes: up to N times the limit); that is the price of never refusing because Redis is
    down. At most ``max_keys`` keys are kept: past that the idle ones are dropped, and if none
    is idle the table starts afresh (a moment of generosity, never an unbounded table).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._tats: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._tats)

    def seed(self, key: str, tat: float) -> None:
        """Starts ``key`` from what the shared limiter last knew (its TAT, on this process's
        clock), so falling back to this limiter does not hand out a fresh burst."""
        if tat > self._tats.get(key, 0.0):
            self._tats[key] = tat

    def check(self, key: str, limit: Limit, ceiling_key: str = "",
              ceiling: Limit | None = None) -> Decision:
        """The decision for one request under ``limit`` (and the tenant's ``ceiling``)."""
        now = self._clock()
        old = self._tats.get(key, 0.0)
        ok, tat, retry, remaining = gcra_step(old, now, limit)
        if not ok:
            return Decision(False, limit, 0, max(tat - now, 0.0), retry, "user")
        if ceiling is not None and ceiling_key and not ceiling.unlimited:
            c_ok, c_tat, c_retry, _ = gcra_step(self._tats.get(ceiling_key, 0.0), now, ceiling)
            if not c_ok:
                return Decision(False, limit, 0, max(old - now, 0.0), c_retry, "tenant")
            self._tats[ceiling_key] = c_tat
        if len(self._tats) >= self._max_keys and key not in self._tats:
            self._prune(now)
        self._tats[key] = tat
        return Decision(True, limit, remaining, tat - now)

    def _prune(self, now: float) -> None:
        self._tats = {k: v for k, v in self._tats.items() if v > now}
        if len(self._tats) >= self._max_keys:
            self._tats.clear()


def ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up (a Retry-After that is never too early)."""
    return max(int(math.ceil(seconds - 1e-9)), 0)
