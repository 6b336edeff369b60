"""Where the backlog is read: the outbox table itself, or the relay's metrics in Prometheus.

Both answer the same two numbers the relay exports (``outbox_pending_count`` and
``outbox_oldest_pending_age_seconds``): rows in ``outbox`` and the age of the oldest one.
Dead letters (``outbox_dead_letter``) are not backlog: no replica count drains them.
Every failure becomes ``SourceError`` so the caller has one thing to count toward fallback.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import aiohttp
import psycopg

from chat_relay_operator.scaling import Reading
from chat_shared.db import connect, redacted
from chat_shared.errors import Unavailable
from chat_shared.outbox import read_backlog


class SourceError(Exception):
    """The backlog could not be read; the message is safe to show in status (no secrets)."""


class BacklogSource(Protocol):
    async def read(self) -> Reading: ...

    async def close(self) -> None: ...


class PostgresSource:
    """Counts the outbox directly, as the relay's own probe does (``chat_shared.outbox``).
    One short connection per read: polls are seconds apart and the operator must not hold a
    connection slot of the database it is protecting."""

    def __init__(self, dsn: str, *, timeout_seconds: float = 5.0,
                 role: str = "chat_relay") -> None:
        """
        Args:
            role: the role the session acts as: the relay's (migrations create it), which may
                read every tenant's outbox; the login user must be a member of it.
        """
        self._dsn = dsn
        self._timeout = timeout_seconds
        self._role = role

    async def read(self) -> Reading:
        try:
            conn = await connect(self._dsn, application_name="chat-relay-operator",
                                 statement_timeout=self._timeout, connect_timeout=self._timeout,
                                 role=self._role)
            async with conn:
                backlog = await read_backlog(conn)
        except (psycopg.Error, Unavailable) as exc:
            # psycopg messages can echo the connection string; show the redacted one only
            cause = exc.__cause__ if isinstance(exc, Unavailable) else exc
            raise SourceError(f"postgres {redacted(self._dsn)}: {type(cause).__name__}") from exc
        return Reading(backlog=backlog.pending, oldest_age_seconds=backlog.oldest_age_seconds)

    async def close(self) -> None:
        return None


class PrometheusSource:
    """Reads the relay's gauges through Prometheus' instant-query API (/api/v1/query).

    A session per read: polls are seconds apart, and nothing is left open when the resource
    or the operator goes away mid-poll."""

    def __init__(self, url: str, backlog_query: str, oldest_age_query: str, *,
                 timeout_seconds: float = 5.0) -> None:
        self._url = url.rstrip("/") + "/api/v1/query"
        self._queries = (backlog_query, oldest_age_query)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def read(self) -> Reading:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            backlog = await self._scalar(session, self._queries[0])
            age = await self._scalar(session, self._queries[1])
        return Reading(backlog=max(0, math.ceil(backlog)), oldest_age_seconds=max(0.0, age))

    async def _scalar(self, session: aiohttp.ClientSession, query: str) -> float:
        try:
            async with session.get(self._url, params={"query": query}) as resp:
                body: Any = await resp.json(content_type=None)
                if resp.status != 200 or body.get("status") != "success":
                    raise SourceError(f"prometheus {query!r}: HTTP {resp.status} "
                                      f"{body.get('error', '')}".rstrip())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SourceError(f"prometheus {query!r}: {type(exc).__name__}: {exc}") from exc
        return _single_value(query, body.get("data", {}))

    async def close(self) -> None:
        return None


def _single_value(query: str, data: dict[str, Any]) -> float:
    """The one number a query gave. No sample is an error, not zero: a relay that stopped
    exporting must not look like an empty outbox (that would scale it down)."""
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            value = float(result[1])  # type: ignore[index]
        elif kind == "vector" and result:
            value = max(float(sample["value"][1]) for sample in result)
        else:
            raise SourceError(f"prometheus {query!r}: no samples")
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise SourceError(f"prometheus {query!r}: unexpected answer {kind!r}") from exc
    if math.isnan(value) or math.isinf(value):
        raise SourceError(f"prometheus {query!r}: not a number ({value})")
    return value
