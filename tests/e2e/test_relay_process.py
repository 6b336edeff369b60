"""``chat-outbox-relay`` as a real process: LISTEN wake-up, SIGTERM drain, SIGKILL recovery,
a Redis outage, and its HTTP endpoints."""

from __future__ import annotations

import pathlib
import signal
import time
import uuid
from collections import defaultdict

import pytest

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_migrations.cli import upgrade
from chat_shared.events import Event
from tests.e2e.test_relay_helpers import (
    RelayProcess,
    insert_events,
    interleaved,
    outbox_count,
    read_streams,
    relay_env,
    sql,
    stream_length,
    wait_until,
)

pytestmark = pytest.mark.redis_cluster


def test_listen_notify_wakes_the_relay_long_before_the_poll(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    relay = RelayProcess(relay_env(db_source, redis_addr, OUTBOX_POLL_INTERVAL_MS=60_000),
                         tmp_path)
    try:
        relay.wait_ready()
        wait_until(lambda: relay.owned() == 64, 20, "the relay to own every partition")
        assert relay.get("/healthz")[0] == 200
        conv = str(uuid.uuid4())
        [first] = insert_events(db_source, [(conv, 1)])
        wait_until(lambda: stream_length(redis_addr) == 1, 20, "the first event")
        # The relay is now idle until a notification (or the 60 s poll): the next event can
        # only arrive within the 20 s bound through LISTEN/NOTIFY.
        [second] = insert_events(db_source, [(conv, 2)])
        wait_until(lambda: stream_length(redis_addr) == 2, 20, "the notified event")
        assert [e.event_id for e in read_streams(redis_addr)] == [first, second]
    finally:
        relay.stop()


def test_sigterm_finishes_the_batch_in_hand_and_exits_zero(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    convs = [str(uuid.uuid4()) for _ in range(100)]
    ids = insert_events(db_source, interleaved(convs, 200))
    relay = RelayProcess(relay_env(db_source, redis_addr, OUTBOX_BATCH_SIZE=500), tmp_path)
    try:
        wait_until(lambda: stream_length(redis_addr) > 0, 30, "publishing to start")
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0, relay.log()
    finally:
        relay.stop()
    published = [e.event_id for e in read_streams(redis_addr)]
    remaining = {r[0] for r in sql(db_source, "SELECT event_id::text FROM outbox "
                                              "WHERE published_at IS NULL")}
    assert remaining, "the relay finished everything before SIGTERM; nothing was drained"
    # Nothing half-done: each event is either published (and its row marked) or still pending,
    # untouched; none is both, none is lost, none was published twice.
    assert len(published) == len(set(published))
    assert set(published).isdisjoint(remaining)
    assert set(published) | remaining == set(ids)
    assert sql(db_source, "SELECT count(*) FROM outbox WHERE attempts > 0") == [(0,)]
    assert '"relay_stopped"' in relay.log() and '"clean": true' in relay.log()


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_loses_nothing(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    convs = [str(uuid.uuid4()) for _ in range(100)]
    ids = insert_events(db_source, interleaved(convs, 100))
    env = relay_env(db_source, redis_addr, OUTBOX_BATCH_SIZE=1000)
    first = RelayProcess(env, tmp_path, "first")
    try:
        wait_until(lambda: stream_length(redis_addr) > 0, 30, "publishing to start")
        first.signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.stop()
    assert outbox_count(db_source) > 0, "everything was done before the kill"
    second = RelayProcess(env, tmp_path, "second")
    try:
        wait_until(lambda: outbox_count(db_source) == 0, 60, "the restarted relay to drain")
    finally:
        second.stop()
    _assert_every_event_in_order(read_streams(redis_addr), ids, per_conversation=100)


def test_a_postgresql_crash_loses_no_event_to_the_asynchronous_settles(
    redis_addr: str, tmp_path: pathlib.Path
) -> None:
    """The relay settles with ``synchronous_commit=off`` (``BOOKKEEPING_SESSION``): a crash of
    PostgreSQL right after settles may take them, never an event. With ``wal_writer_delay`` at
    its 10 s maximum, the settles' WAL is still in memory when the server is killed (SIGQUIT:
    an immediate shutdown, recovered at the restart), so their rows come back unpublished and go
    out again, with their event_ids, after what the stream already has."""
    pg = LocalPostgres(durable=True, settings={"wal_writer_delay": "10s"}).start()
    try:
        dsn = pg.create_database("chat")
        upgrade(dsn)
        convs = [str(uuid.uuid4()) for _ in range(20)]
        ids = insert_events(dsn, interleaved(convs, 20))  # committed synchronously
        relay = RelayProcess(relay_env(dsn, redis_addr), tmp_path)
        try:
            wait_until(lambda: outbox_count(dsn) == 0, 60, "the relay to publish everything")
            pg.stop(signal.SIGQUIT)
            pg.start()
            # At most what the crash unsettled: the relay may have reconnected already.
            unsettled = outbox_count(dsn)
            wait_until(lambda: outbox_count(dsn) == 0, 60, "the relay to publish them again")
        finally:
            relay.stop()
    finally:
        pg.cleanup()
    events = read_streams(redis_addr)
    print(f"\nsettles lost to the crash: {unsettled} of {len(ids)}; "
          f"stream entries {len(events)}")
    _assert_every_event_in_order(events, ids, per_conversation=20)
    assert len(events) >= len(ids) + unsettled


def _assert_every_event_in_order(events: list[Event], ids: list[str],
                                 per_conversation: int) -> None:
    """Every event is in the stream, each conversation's first copies in seq order; a
    duplicate (a republished row) is its original, field for field."""
    assert {e.event_id for e in events} == set(ids)
    copies: dict[str, set[tuple[object, ...]]] = defaultdict(set)
    for e in events:
        copies[e.event_id].add((e.type, e.conversation_id, e.seq, e.occurred_at,
                                tuple(e.recipients), repr(e.payload)))
    assert all(len(c) == 1 for c in copies.values()), "a duplicate differs from its original"
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            first_seen[e.conversation_id].append(e.seq)
    assert all(seqs == list(range(1, per_conversation + 1)) for seqs in first_seen.values())


def test_redis_outage_pauses_without_spending_retries_then_drains(
    db_source: str, redis_addr: str, redis_server: LocalRedis, tmp_path: pathlib.Path
) -> None:
    relay = RelayProcess(relay_env(db_source, redis_addr, OUTBOX_MAX_RETRIES=1), tmp_path)
    try:
        relay.wait_ready()
        redis_server.stop()
        wait_until(lambda: relay.get("/readyz")[0] == 503, 20, "readiness to drop")
        convs = [str(uuid.uuid4()) for _ in range(50)]
        ids = insert_events(db_source, interleaved(convs, 10))
        wait_until(lambda: (relay.metric("outbox_publish_errors_total", reason="unavailable")
                            or 0) > 0, 20, "publish errors to be counted")
        # A long outage must not dead-letter the backlog: with a 0.05 s retry base and one
        # retry, counted failures would have dead-lettered everything well within this time.
        time.sleep(2.0)
        assert outbox_count(db_source) == 500
        assert sql(db_source, "SELECT count(*) FROM outbox WHERE attempts > 0") == [(0,)]
        assert sql(db_source, "SELECT count(*) FROM outbox_dead_letter") == [(0,)]
        pending = wait_until(lambda: relay.metric("outbox_pending_count") == 500, 20,
                             "the pending gauge to see the backlog")
        assert pending
        redis_server.start()
        wait_until(lambda: outbox_count(db_source) == 0, 60, "the backlog to drain")
        wait_until(lambda: relay.get("/readyz")[0] == 200, 20, "readiness to return")
        assert (relay.metric("outbox_processed_total") or 0) >= 500
        assert (relay.metric("outbox_dlq_total") or 0) == 0
    finally:
        relay.stop()
        if not redis_server.running:
            redis_server.start()
    events = read_streams(redis_addr)
    assert {e.event_id for e in events} == set(ids)
    by_conv: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_conv[e.conversation_id].append(e.seq)
    assert all(seqs == list(range(1, 11)) for seqs in by_conv.values())
    assert sql(db_source, "SELECT count(*) FROM outbox_dead_letter") == [(0,)]


def test_bad_configuration_stops_at_start_naming_the_variable(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    relay = RelayProcess(relay_env(db_source, redis_addr, OUTBOX_BATCH_SIZE="0"), tmp_path)
    try:
        assert relay.wait(30) == 2
    finally:
        relay.stop()
    assert "OUTBOX_BATCH_SIZE" in relay.log()
