"""Published outbox rows: kept for OUTBOX_RETENTION and pruned in bounded batches; a lost stream
refilled by ``chat-outbox republish`` (the real command) with the same event ids in each
conversation's order; the stream epoch that tells a consumer the stream was recreated.
Real PostgreSQL and Redis, the relay in process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chat_outbox_relay.app import RelayApp, build_relay
from chat_outbox_relay.relay import connect
from chat_outbox_relay.retention import prune_batch
from chat_outbox_relay.settings import RelaySettings
from chat_shared.events import EPOCH_FIELD, decode_entry, epoch_key
from chat_shared.outbox import read_backlog
from tests.conftest import coverage_env
from tests.e2e.test_relay_helpers import (
    VENV_BIN,
    insert_events,
    interleaved,
    outbox_count,
    redis_client,
    sql,
)
from tests.integration.test_relay_publishing import eventually

STREAM = "chat:events:0"
DAY = 86400.0


@pytest.fixture
async def start_relay(db_source: str, redis_addr: str) -> AsyncIterator[Callable[..., Any]]:
    apps: list[RelayApp] = []

    async def start(**overrides: Any) -> RelayApp:
        values: dict[str, Any] = {
            "environment": "test", "db_source": db_source, "redis_addr": redis_addr,
            "metrics_port": 0, "outbox_rebalance_interval": 0.2, "outbox_metrics_interval": 0.2,
            "redis_timeout": 2.0, **overrides}
        app = build_relay(RelaySettings(_env_file=None, **values))  # type: ignore[call-arg]
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=5.0)


def _chat_outbox(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "chat-outbox"), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def _entries(redis_addr: str) -> list[tuple[str, dict[str, str]]]:
    client = redis_client(redis_addr)
    try:
        return [(entry_id, fields) for entry_id, fields in client.xrange(STREAM)]
    finally:
        client.close()


async def test_prune_deletes_old_published_rows_in_batches_and_keeps_the_rest(
        db_source: str) -> None:
    conv = str(uuid.uuid4())
    old = insert_events(db_source, [(conv, s) for s in range(1, 26)])
    recent = insert_events(db_source, [(conv, s) for s in range(26, 31)])
    waiting = insert_events(db_source, [(conv, s) for s in range(31, 34)])
    sql(db_source, "UPDATE outbox SET published_at = now() - interval '8 days', "
                   "created_at = now() - interval '8 days' WHERE event_id = ANY(%s::uuid[])",
        (old,))
    sql(db_source, "UPDATE outbox SET published_at = now() - interval '1 day' "
                   "WHERE event_id = ANY(%s::uuid[])", (recent,))
    # Unpublished, however old, is never pruned (it is backlog).
    sql(db_source, "UPDATE outbox SET created_at = now() - interval '30 days' "
                   "WHERE event_id = ANY(%s::uuid[])", (waiting,))
    settings = RelaySettings(_env_file=None, db_source=db_source)  # type: ignore[call-arg]
    conn = await connect(settings, "test-prune")
    try:
        batches = [await prune_batch(conn, retention=7 * DAY, limit=10) for _ in range(4)]
        backlog = await read_backlog(conn)
    finally:
        await conn.close()
    assert batches == [10, 10, 5, 0]
    left = {r[0] for r in sql(db_source, "SELECT event_id::text FROM outbox")}
    assert left == set(recent) | set(waiting)
    assert backlog.pending == 3 and backlog.oldest_age_seconds > 29 * DAY


async def test_the_relay_marks_rows_published_and_its_prune_round_honours_the_retention(
        db_source: str, redis_addr: str, start_relay: Any) -> None:
    conv = str(uuid.uuid4())
    ids = insert_events(db_source, [(conv, s) for s in range(1, 8)])
    app = await start_relay(outbox_retention=3600.0, outbox_prune_batch_size=2)
    await eventually(lambda: outbox_count(db_source) == 0, 30, "the relay to publish")
    assert sql(db_source, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL "
                          "AND next_attempt_at IS NULL") == [(7,)]
    assert await app.relay.prune_round() == 0  # within the retention: kept
    sql(db_source, "UPDATE outbox SET published_at = published_at - interval '2 hours' "
                   "WHERE event_id = ANY(%s::uuid[])", (ids[:5],))
    assert await app.relay.prune_round() == 5  # three statements of at most 2
    assert sql(db_source, "SELECT seq FROM outbox ORDER BY seq") == [(6,), (7,)]


async def test_republish_refills_a_deleted_stream_and_the_epoch_changes(
        db_source: str, redis_addr: str, start_relay: Any) -> None:
    convs = [str(uuid.uuid4()) for _ in range(5)]
    ids = insert_events(db_source, interleaved(convs, 40))
    await start_relay(outbox_batch_size=37)
    await eventually(lambda: outbox_count(db_source) == 0, 30, "the relay to publish")
    before = _entries(redis_addr)
    assert sorted(f["event_id"] for _, f in before) == sorted(ids)
    epochs = {f[EPOCH_FIELD] for _, f in before}
    client = redis_client(redis_addr)
    try:
        assert epochs == {client.get(epoch_key(STREAM))}, epochs
        first_epoch = epochs.pop()

        # The stream goes (as with a Redis restart without persistence); new events recreate it.
        client.delete(STREAM)
        later = insert_events(db_source, [(convs[0], 41)])
        await eventually(lambda: len(_entries(redis_addr)) == 1, 30, "the next event")
        [(_, entry)] = _entries(redis_addr)
        assert entry["event_id"] == later[0]
        second_epoch = entry[EPOCH_FIELD]
        assert second_epoch != first_epoch
        assert client.get(epoch_key(STREAM)) == second_epoch

        env = {**coverage_env(), "PATH": os.environ.get("PATH", ""), "DB_SOURCE": db_source,
               "REDIS_ADDR": redis_addr, "ENVIRONMENT": "test"}
        done = await asyncio.to_thread(_chat_outbox, "republish", "--since", "1h",
                                       "--batch-size", "50", env=env)
        assert done.returncode == 0, done.stderr
        assert "201 event(s) republished" in done.stdout, done.stdout
    finally:
        client.close()
    after = _entries(redis_addr)
    assert {f[EPOCH_FIELD] for _, f in after} == {second_epoch}  # the stream was not recreated
    refilled = [decode_entry(f) for _, f in after[1:]]
    assert sorted(e.event_id for e in refilled) == sorted(ids + later)
    for conv in convs:  # each conversation's events in seq order
        seqs = [e.seq for e in refilled if e.conversation_id == conv]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), (conv, seqs)


def test_republish_refuses_bad_usage(db_source: str, redis_addr: str) -> None:
    env = {**coverage_env(), "PATH": os.environ.get("PATH", ""), "DB_SOURCE": db_source,
           "REDIS_ADDR": redis_addr}
    for args in (["republish"], ["republish", "--since", "yesterday"],
                 ["republish", "--since", "1h", "--from-id", "3"]):
        done = _chat_outbox(*args, env=env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
    done = _chat_outbox("republish", "--from-id", "1", env={**env, "REDIS_ADDR": ""})
    assert done.returncode == 2 and "REDIS_ADDR" in done.stderr, done.stderr
