"""Helpers for the relay tests: outbox rows written the way the API writes them, the relay as a
subprocess, reading the streams back, bounded waiting. (No tests here.)"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from chat_devtools.process import http_get
from chat_devtools.services import Relay
from chat_shared.events import (
    CONVERSATION_UPDATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_ROLE_CHANGED,
    MESSAGE_CREATED,
    MESSAGE_DELETED,
    MESSAGE_UPDATED,
    REACTION_ADDED,
    REACTION_REMOVED,
    Event,
    decode_entry,
    payload_sql,
    stream_keys,
)
from tests.helpers import redis_sync as redis_sync_for

VENV_BIN = pathlib.Path(sys.executable).parent

# The API's outbox row for a message (services/api/chat_api/storage/messages.py), by SQL.
_INSERT = f"""
    INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)
    SELECT e.event_id, 'message.created', e.conversation_id, e.seq, ARRAY['alice', 'bob'],
           {payload_sql(MESSAGE_CREATED, {"message": {
               "id": "gen_random_uuid()", "conversation_id": "e.conversation_id",
               "sender_id": "'alice'", "content": "'message ' || e.seq", "seq": "e.seq",
               "created_at": "clock_timestamp()", "version": "1",
               "edited_at": "NULL::timestamptz", "deleted": "false"}})}
    FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[]) WITH ORDINALITY
         AS e(event_id, conversation_id, seq, n)
    ORDER BY e.n
"""


MIXED_TYPES = (MESSAGE_CREATED, MESSAGE_UPDATED, REACTION_ADDED, REACTION_REMOVED,
               MEMBER_ADDED, MEMBER_ROLE_CHANGED, MEMBER_REMOVED, CONVERSATION_UPDATED,
               MESSAGE_DELETED)
"""Every ordered type, in the order ``mixed_type`` gives them to positions."""


def mixed_type(pos: int) -> str:
    return MIXED_TYPES[(pos - 1) % len(MIXED_TYPES)]


_MESSAGE = {"message": {
    "id": "gen_random_uuid()", "conversation_id": "e.conversation_id", "sender_id": "'alice'",
    "content": "'message ' || e.seq", "seq": "e.seq", "created_at": "clock_timestamp()",
    "version": "1", "edited_at": "NULL::timestamptz", "deleted": "false"}}
_REACTION = {"conversation_id": "e.conversation_id", "message_id": "gen_random_uuid()",
             "user_id": "'bob'", "emoji": "'👍'"}
_MEMBER = {"conversation_id": "e.conversation_id", "user_id": "'carol'", "role": "'member'",
           "actor_id": "'alice'"}
_PAYLOADS = {
    MESSAGE_CREATED: _MESSAGE, MESSAGE_UPDATED: _MESSAGE, MESSAGE_DELETED: _MESSAGE,
    REACTION_ADDED: _REACTION, REACTION_REMOVED: _REACTION, MEMBER_ADDED: _MEMBER,
    MEMBER_ROLE_CHANGED: _MEMBER,
    MEMBER_REMOVED: {"conversation_id": "e.conversation_id", "user_id": "'carol'",
                     "actor_id": "'alice'"},
    CONVERSATION_UPDATED: {"conversation_id": "e.conversation_id", "title": "'t'",
                           "history_visible_to_new_members": "true", "actor_id": "'alice'"}}

# Outbox rows of every ordered type as the API writes them (seq = the change's pos), the
# type chosen by position as ``mixed_type`` does.
_INSERT_MIXED = f"""
    INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)
    SELECT e.event_id, t.type, e.conversation_id, e.seq, ARRAY['alice', 'bob'],
           CASE t.type {" ".join(f"WHEN '{k}' THEN {payload_sql(k, v)}" for k, v in _PAYLOADS.items())} END
    FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[]) WITH ORDINALITY
         AS e(event_id, conversation_id, seq, n)
    CROSS JOIN LATERAL (SELECT (%s::text[])[((e.seq - 1) %% {len(MIXED_TYPES)}) + 1] AS type) t
    ORDER BY e.n
"""


def insert_events(dsn: str, items: Iterable[tuple[str, int]], mixed: bool = False
                  ) -> list[str]:
    """Commits one outbox row per (conversation_id, seq), in the given order; returns event ids.

    ``mixed``: the rows are of every ordered type (``mixed_type``), else ``message.created``.
    """
    items = list(items)
    ids = [str(uuid.uuid4()) for _ in items]
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mixed:
            conn.execute(_INSERT_MIXED, (ids, [c for c, _ in items], [s for _, s in items],
                                         list(MIXED_TYPES)))
        else:
            conn.execute(_INSERT, (ids, [c for c, _ in items], [s for _, s in items]))
    return ids


def interleaved(conversations: list[str], per_conversation: int) -> list[tuple[str, int]]:
    """Every conversation's seqs 1..n, conversations interleaved round-robin."""
    return [(c, s) for s in range(1, per_conversation + 1) for c in conversations]


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def outbox_count(dsn: str) -> int:
    """Rows still to publish (published ones stay for OUTBOX_RETENTION)."""
    return int(sql(dsn, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0])


def redis_client(addr: str) -> redis_sync.Redis:
    """A client for ``addr`` (a Redis Cluster's too: tests.helpers.redis_sync)."""
    return redis_sync_for(addr, decode_responses=True)  # type: ignore[no-any-return]


def read_streams(addr: str, shards: int = 1) -> list[Event]:
    """Every entry of every stream, each stream in order (streams one after another)."""
    client = redis_client(addr)
    try:
        out: list[Event] = []
        for key in stream_keys(shards):
            if client.exists(key) and client.type(key) == "stream":
                out.extend(decode_entry(fields) for _, fields in client.xrange(key))
        return out
    finally:
        client.close()


def stream_length(addr: str, shards: int = 1) -> int:
    client = redis_client(addr)
    try:
        return sum(int(client.xlen(k)) for k in stream_keys(shards)
                   if client.exists(k) and client.type(k) == "stream")
    finally:
        client.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Polls ``predicate`` until truthy (returns its value) or fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def relay_env(db_source: str, redis_addr: str, **overrides: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") or k.startswith("COVERAGE_")}
    env.update({
        "ENVIRONMENT": "test",
        "DB_SOURCE": db_source,
        "REDIS_ADDR": redis_addr,
        "REDIS_TIMEOUT": "2s",
        "METRICS_ADDRESS": "127.0.0.1",
        "OUTBOX_RETRY_BASE": "0.05",
        "OUTBOX_REBALANCE_INTERVAL": "0.2",
        "OUTBOX_METRICS_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
    })
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


class RelayProcess(Relay):
    """``chat-outbox-relay`` as a real subprocess (started at once), logging to a file; ``stop``
    is a clean-up that SIGKILLs it (the tests that want a drain send SIGTERM themselves)."""

    def __init__(self, env: dict[str, str], log_dir: pathlib.Path, name: str = "relay") -> None:
        super().__init__(env, log_dir, name=name, quick_intervals=False,
                         stop_signal=signal.SIGKILL)
        self.start()

    def get(self, path: str) -> tuple[int, str]:  # type: ignore[override]
        return http_get(self.metrics_port, path)

    def metric(self, name: str, **labels: str) -> float | None:  # type: ignore[override]
        status, body = self.get("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None

    def owned(self) -> float:
        return self.metric("outbox_owned_partitions") or 0.0
