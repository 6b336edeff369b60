"""Loopback ports for development processes: taken by binding, never by picking a number and hoping.

In order of preference:

- The process binds port 0 and says which port it got; ``ServiceProcess`` reads it from the
  process's start line. Every gRPC, HTTP and WebSocket listener of the services works this way.
- A port kept bound here (``reserve_port``) until the process has bound it too: the process
  shares it through SO_REUSEPORT (the API with API_WORKERS > 1 needs fixed ports), and nobody
  else can take it in between. ``closed_port`` keeps a port bound and never listens on it: a
  port where connections are refused, for "the dependency is down" tests.
- A server that cannot bind port 0 (PostgreSQL and Redis, whose port 0 means "no TCP"; a
  service's METRICS_PORT, where 0 turns metrics off) is given a ``candidate_port`` and its own
  bind is the reservation: when it fails with "address already in use", ``retry_on_port_in_use``
  starts it again on another candidate.

``port_free`` is chat-dev's check of its fixed, documented ports before it starts anything.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

from chat_devtools.errors import PortInUse

T = TypeVar("T")

LOOPBACK = "127.0.0.1"

# How each server says that its port is taken: PostgreSQL, Redis and Python's socket errors
# ("Address already in use", asyncio lower-cases it), gRPC core ("Failed to bind").
_PORT_IN_USE = ("address already in use", "failed to bind to address")


def mentions_port_in_use(output: str) -> bool:
    """Whether a process's output says it could not bind a port that something else holds."""
    lowered = output.lower()
    return any(marker in lowered for marker in _PORT_IN_USE)


def candidate_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago: only to be bound by a server under
    ``retry_on_port_in_use``, whose own bind is the reservation."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reserve_port(host: str = LOOPBACK, *, reuse_port: bool = True) -> socket.socket:
    """A socket bound to a free port and never listened on; close it once the process holds the
    port. With ``reuse_port`` a process of the same user binding with SO_REUSEPORT (gRPC does by
    default; the API's HTTP listener with API_WORKERS > 1) shares the port, nobody else gets it,
    and connections go only to the listening sockets, never to this one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def closed_port(host: str = LOOPBACK) -> Iterator[int]:
    """A port that refuses connections for as long as the block runs (bound, never listening)."""
    with reserve_port(host, reuse_port=False) as sock:
        yield int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now.

    SO_REUSEADDR, as the services set it: connections of a process stopped a moment ago linger
    in TIME_WAIT for a minute, and they do not stop a server from listening again; only a
    listening (or exclusively bound) socket does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def retry_on_port_in_use(start: Callable[[], T], attempts: int = 5,
                         on_retry: Callable[[PortInUse], None] | None = None) -> T:
    """``start()``, again (it picks new candidate ports each time) while it raises PortInUse.

    Raises:
        PortInUse: the last attempt's, after ``attempts`` of them.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for _ in range(attempts - 1):
        try:
            return start()
        except PortInUse as exc:
            if on_retry is not None:
                on_retry(exc)
    return start()
