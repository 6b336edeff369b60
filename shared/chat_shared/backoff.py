"""The one retry policy of every loop that must outlive a failed dependency.

Exponential backoff with full jitter (each delay is uniform in ``[0, min(maximum, initial *
2**n)]``, AWS's "full jitter"), capped, and started over by ``reset()`` once the dependency has
answered again. The relay's work, LISTEN and Redis-pause loops, the gateway's stream reader and
the operator's Kubernetes calls all take their delays from here.

Why not stamina or tenacity: both wrap *one call* and own the sleep. The loops here run for
the life of the process and keep their state across attempts (a connection, a stream
position), start their delay over after a healthy period rather than after one successful
call, and sleep in their own way: the relay's sleep wakes at once on shutdown and on a NOTIFY,
where a library's ``asyncio.sleep`` would hold a SIGTERM during a Redis outage for up to the
cap (5 s). So this hands out delays only, and each loop keeps its own shape; what a library
adds beyond the delays (decorators, instrumentation hooks) none of these loops would use.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]

_RNG = random.Random()
"""Our own generator, so the delays never perturb the process's shared random state."""


class Backoff:
    """Delays for consecutive failures: ``next_delay()`` after each one, ``reset()`` on success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, *,
                 jitter: bool = True) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.failures = 0
        """Consecutive failures since the last reset."""

    def ceiling(self) -> float:
        """The largest delay the next failure can get."""
        # min() before the power grows past float range on a very long outage.
        return min(self.maximum, self.initial * 2.0 ** min(self.failures, 60))

    def next_delay(self) -> float:
        """Counts one more failure and returns how long to wait before the next attempt."""
        ceiling = self.ceiling()
        self.failures += 1
        # Full jitter spreads the reconnects of many replicas after a shared outage; the
        # floor keeps a tight loop from spinning when the draw is close to zero.
        return max(self.initial / 2, _RNG.uniform(0, ceiling)) if self.jitter else ceiling

    def reset(self) -> None:
        """The dependency answered: the next failure starts from ``initial`` again."""
        self.failures = 0
