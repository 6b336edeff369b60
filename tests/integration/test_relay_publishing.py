"""The relay in-process against real PostgreSQL and Redis: entry format, removal, retries,
dead letters, replay, and the stream layout helpers the ws-gateway will read with."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from chat_migrations.cli import downgrade, upgrade
from chat_outbox_relay.app import RelayApp, build_relay
from chat_outbox_relay.claiming import backoff
from chat_outbox_relay.publishing import is_transient
from chat_outbox_relay.settings import RelaySettings
from chat_shared.events import (
    ENTRY_FIELDS,
    Event,
    decode_entry,
    encode_entry,
    epoch_key,
    stream_key,
)
from tests.conftest import coverage_env
from tests.e2e.test_relay_helpers import (
    VENV_BIN,
    insert_events,
    outbox_count,
    read_streams,
    redis_client,
    sql,
)
from tests.helpers import create_conversation, send

pytestmark = pytest.mark.redis_cluster

RelayFactory = Callable[..., "asyncio.Future[RelayApp]"]


@pytest.fixture
async def start_relay(db_source: str, redis_addr: str) -> AsyncIterator[Callable[..., Any]]:
    apps: list[RelayApp] = []

    async def start(**overrides: Any) -> RelayApp:
        values: dict[str, Any] = {
            "environment": "test", "db_source": db_source, "redis_addr": redis_addr,
            "metrics_port": 0, "outbox_retry_base": 0.05, "outbox_rebalance_interval": 0.2,
            "outbox_metrics_interval": 0.2, "redis_timeout": 2.0,
        }
        values.update(overrides)
        app = build_relay(RelaySettings(_env_file=None, **values))  # type: ignore[call-arg]
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=5.0)


async def eventually(predicate: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_stream_layout_is_stable_and_round_trips() -> None:
    conv = "4e921278-2ab6-40b3-85c7-a8711678e514"
    assert stream_key(conv, 1) == "chat:events:0"
    assert stream_key(conv, 8) == f"chat:events:{zlib.crc32(conv.encode()) % 8}"
    assert stream_key(conv.upper(), 8) == stream_key(conv, 8)  # canonical UUID text
    event = Event(str(uuid.uuid4()), "message.created", conv, 7,
                  datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC), ["a", "b"],
                  {"message": {"content": "héllo", "seq": 7}})
    entry = encode_entry(event)
    assert tuple(entry) == ENTRY_FIELDS
    assert entry["occurred_at"] == "2026-11-27T10:00:00.123456Z"
    assert entry["payload"] == '{"message":{"content":"héllo","seq":7}}'
    assert decode_entry(entry) == event
    assert decode_entry({k.encode(): v.encode() for k, v in entry.items()}) == event


def test_settings_defaults_backoff_and_error_kinds() -> None:
    s = RelaySettings(_env_file=None)  # type: ignore[call-arg]
    assert (s.outbox_batch_size, s.outbox_workers, s.outbox_poll_interval_ms,
            s.outbox_max_retries, s.outbox_retry_base, s.stream_shards, s.stream_maxlen,
            s.stream_prefix, s.metrics_port) == (100, 10, 100, 3, 1.0, 1, 1_000_000,
                                                 "chat:events", 9101)
    assert [backoff(s.outbox_retry_base, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert RelaySettings(_env_file=None, outbox_retry_base="50ms").outbox_retry_base == 0.05  # type: ignore[call-arg]
    # Server-wide refusals pause publishing; event-specific ones count toward retries.
    for transient in ("OOM command not allowed", "LOADING Redis is loading", "READONLY x",
                      "BUSY script", "-MASTERDOWN link down"):
        assert is_transient(transient)
    assert not is_transient("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert not is_transient("ERR some event-specific refusal")


def test_partition_migration_downgrades_and_upgrades(postgres: Any) -> None:
    dsn = postgres.create_database(f"relay_mig_{uuid.uuid4().hex[:8]}")
    upgrade(dsn)
    assert sql(dsn, "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'outbox' AND column_name = 'partition'")[0][0] == 1
    downgrade(dsn, "0001")
    assert sql(dsn, "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'outbox' AND column_name = 'partition'")[0][0] == 0
    upgrade(dsn)
    conv = str(uuid.uuid4())
    insert_events(dsn, [(conv, 1)])
    part = sql(dsn, "SELECT partition FROM outbox")[0][0]
    assert part == uuid.UUID(conv).bytes[15] % 64


async def test_publishes_exact_entry_and_marks_row_published(
    db_source: str, redis_addr: str, start_relay: Callable[..., Any]
) -> None:
    conv = str(uuid.uuid4())
    [event_id] = insert_events(db_source, [(conv, 1)])
    row = sql(db_source, "SELECT created_at, payload FROM outbox WHERE event_id = %s",
              (event_id,))[0]
    processed_before = sample("outbox_processed_total")
    await start_relay()
    await eventually(lambda: outbox_count(db_source) == 0, 20, "the row to be marked published")
    client = redis_client(redis_addr)
    entries = client.xrange("chat:events:0")
    epoch = client.get(epoch_key("chat:events:0"))
    client.close()
    assert len(entries) == 1
    _, fields = entries[0]
    created_at: datetime = row[0]
    assert epoch
    assert fields == {
        "epoch": epoch,
        "event_id": event_id,
        "type": "message.created",
        "conversation_id": conv,
        "seq": "1",
        "occurred_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "recipients": '["alice","bob"]',
        "payload": encode_entry(decode_entry({**fields}))["payload"],
        "tenant": "default",
    }
    assert decode_entry(fields).payload == row[1]
    assert sample("outbox_processed_total") - processed_before == 1
    assert sample("outbox_publish_lag_seconds_count") >= 1


async def test_api_messages_reach_the_stream_in_seq_order(
    stub: Any, db_source: str, redis_addr: str, start_relay: Callable[..., Any]
) -> None:
    await start_relay()
    conv = await create_conversation(stub, "alice", ["bob"])
    sent = [await send(stub, "alice" if i % 2 else "bob", conv.id, f"m{i}") for i in range(5)]
    events = await eventually(lambda: (e := read_streams(redis_addr)) and len(e) >= 5 and e,
                              20, "five events")
    assert [e.seq for e in events] == [m.seq for m in sent] == [1, 2, 3, 4, 5]
    for event, message in zip(events, sent, strict=True):
        assert event.type == "message.created"
        assert event.conversation_id == conv.id
        assert event.recipients == ["alice", "bob"]
        assert event.payload["message"]["id"] == message.id
        assert event.payload["message"]["content"] == message.content
    await eventually(lambda: outbox_count(db_source) == 0, 20, "the rows to be marked published")


async def test_poison_event_dead_letters_without_blocking_others_then_replays(
    db_source: str, redis_addr: str, start_relay: Callable[..., Any], tmp_path: Any
) -> None:
    shards = 8
    poisoned = str(uuid.uuid4())
    healthy = next(c for c in (str(uuid.uuid4()) for _ in range(100))
                   if stream_key(c, shards) != stream_key(poisoned, shards))
    client = redis_client(redis_addr)
    client.set(stream_key(poisoned, shards), "not a stream")  # every XADD to it: WRONGTYPE
    dlq_before = sample("outbox_dlq_total")
    rejected_before = sample("outbox_publish_errors_total", reason="rejected")
    p1, p2 = insert_events(db_source, [(poisoned, 1), (poisoned, 2)])
    [h1] = insert_events(db_source, [(healthy, 1)])
    await start_relay(stream_shards=shards, outbox_max_retries=3)

    # The healthy conversation is published while the poisoned one is still retrying.
    await eventually(lambda: any(e.event_id == h1 for e in read_streams(redis_addr, shards)),
                     20, "the healthy event")
    dead = await eventually(
        lambda: (r := sql(db_source, "SELECT event_id::text, seq, attempts, last_error "
                                     "FROM outbox_dead_letter ORDER BY id")) and len(r) == 2 and r,
        30, "both poisoned events in the dead-letter table")
    assert [(d[0], d[1], d[2]) for d in dead] == [(p1, 1, 4), (p2, 2, 4)]
    assert all("WRONGTYPE" in d[3] for d in dead)
    assert outbox_count(db_source) == 0
    assert sample("outbox_dlq_total") - dlq_before == 2
    assert sample("outbox_publish_errors_total", reason="rejected") - rejected_before == 8

    # Fix the cause, replay: both arrive, in seq order, with their original event ids.
    client.delete(stream_key(poisoned, shards))
    client.close()
    result = await asyncio.to_thread(
        subprocess.run, [str(VENV_BIN / "chat-outbox"), "dlq", "replay", "--all"],
        env={"DB_SOURCE": db_source, "PATH": "/usr/bin:/bin", **coverage_env()}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2 dead letter(s) moved back to the outbox" in result.stdout
    replayed = await eventually(
        lambda: [e for e in read_streams(redis_addr, shards) if e.conversation_id == poisoned]
        or None, 20, "the replayed events")
    await eventually(lambda: len([e for e in read_streams(redis_addr, shards)
                                  if e.conversation_id == poisoned]) == 2, 20, "both replayed")
    replayed = [e for e in read_streams(redis_addr, shards) if e.conversation_id == poisoned]
    assert [(e.event_id, e.seq) for e in replayed] == [(p1, 1), (p2, 2)]
    assert sql(db_source, "SELECT count(*) FROM outbox_dead_letter")[0][0] == 0


async def test_retry_reschedules_with_backoff_and_keeps_order(
    db_source: str, redis_addr: str, start_relay: Callable[..., Any]
) -> None:
    conv = str(uuid.uuid4())
    client = redis_client(redis_addr)
    client.set(stream_key(conv, 1), "blocker")
    ids = insert_events(db_source, [(conv, 1), (conv, 2), (conv, 3)])
    await start_relay(outbox_retry_base=0.5, outbox_max_retries=5)
    row = await eventually(
        lambda: (r := sql(db_source, "SELECT seq, attempts, last_error, "
                                     "EXTRACT(EPOCH FROM next_attempt_at - now())::float8 "
                                     "FROM outbox WHERE attempts > 0")) and r[0],
        20, "a failed attempt to be recorded")
    seq, attempts, error, delay = row
    assert seq == 1 and attempts >= 1 and "WRONGTYPE" in error
    assert delay <= 0.5 * 2 ** (attempts - 1)
    # Only the first event was tried: the later ones wait behind it, untouched.
    assert sql(db_source, "SELECT seq, attempts FROM outbox WHERE seq > 1 ORDER BY seq") == \
        [(2, 0), (3, 0)]
    client.delete(stream_key(conv, 1))
    client.close()
    await eventually(lambda: outbox_count(db_source) == 0, 20, "the backlog to drain")
    assert [e.event_id for e in read_streams(redis_addr)] == ids
