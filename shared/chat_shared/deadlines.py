"""The current call's deadline, where every I/O of the call can read it.

A transport knows how long its caller is willing to wait (gRPC: the call's deadline; HTTP: a
``Grpc-Timeout`` header) and sets it around the call with ``deadline_after``; the I/O the call
makes (``chat_shared.db``) reads ``remaining()`` and waits no longer, so a caller who gave up
does not keep a connection busy for nothing, and the answer (DEADLINE_EXCEEDED) comes when the
caller can still use it. A context variable, not an argument through every layer: the service
layer stays free of transport details, and each asyncio task (each call) has its own value.

Without a caller's deadline each I/O applies its own server default (DB_STATEMENT_TIMEOUT and
DB_POOL_TIMEOUT for the database), so nothing waits unbounded either way.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["deadline_after", "parse_grpc_timeout", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("chat_deadline", default=None)
"""time.monotonic() at which the current call's caller stops waiting; None: no deadline."""

# gRPC's wire format of a timeout (PROTOCOL-HTTP2.md): at most 8 digits and a unit.
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@contextlib.contextmanager
def deadline_after(seconds: float | None) -> Iterator[None]:
    """Within the block, the caller waits ``seconds`` from now (None: no caller deadline)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds until the current caller's deadline (negative once passed); None without one."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def parse_grpc_timeout(value: str) -> float:
    """A ``grpc-timeout`` value ("500m", "2S", "1M") in seconds, as gRPC-Gateway reads the
    ``Grpc-Timeout`` header of an HTTP request.

    Raises:
        ValueError: not in gRPC's timeout format.
    """
    match = _GRPC_TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a grpc-timeout (digits and one of H M S m u n): {value!r}")
    return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
