"""Several ``chat-outbox-relay`` processes at once: per-conversation order, nothing lost, and
partition ownership moving as relays join and leave."""

from __future__ import annotations

import pathlib
import signal
import uuid
from collections import defaultdict

import pytest

from tests.e2e.test_relay_helpers import (
    RelayProcess,
    insert_events,
    interleaved,
    mixed_type,
    outbox_count,
    read_streams,
    relay_env,
    sql,
    wait_until,
)

pytestmark = pytest.mark.redis_cluster

_LOCKS_BY_BACKEND = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    GROUP BY pid ORDER BY count(*)
"""


def lock_counts(dsn: str) -> list[int]:
    return [int(r[0]) for r in sql(dsn, _LOCKS_BY_BACKEND)]


@pytest.mark.slow
def test_three_relays_keep_every_conversation_in_pos_order_across_every_event_type(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    convs = [str(uuid.uuid4()) for _ in range(200)]
    plan = interleaved(convs, 50)  # 10,000 events
    relays = [RelayProcess(relay_env(db_source, redis_addr, STREAM_SHARDS=4), tmp_path,
                           f"relay{i}") for i in range(3)]
    try:
        for relay in relays:
            relay.wait_ready()
        # Each aims at ceil(64 / 3) = 22: all 64 owned, split three ways (22/22/20 or 22/21/21).
        wait_until(lambda: len(c := lock_counts(db_source)) == 3 and sum(c) == 64
                   and max(c) <= 22, 30, "the three relays to share the partitions")
        ids: list[str] = []
        for start in range(0, len(plan), 250):  # 40 committing transactions while relaying
            ids += insert_events(db_source, plan[start:start + 250], mixed=True)
        wait_until(lambda: outbox_count(db_source) == 0, 90, "all 10,000 events to be relayed")
        processed = [r.metric("outbox_processed_total") or 0 for r in relays]
    finally:
        for relay in relays:
            relay.stop()
    assert all(p > 0 for p in processed), f"not every relay published: {processed}"
    assert sum(processed) >= 10_000

    events = read_streams(redis_addr, shards=4)
    assert {e.event_id for e in events} == set(ids)
    order: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for e in events:  # streams are read one by one; a conversation lives in exactly one
        if e.event_id not in seen:
            seen.add(e.event_id)
            order[e.conversation_id].append(e.seq)
            assert e.type == mixed_type(e.seq), e
    assert len(order) == 200
    bad = {c: s for c, s in order.items() if s != list(range(1, 51))}
    assert not bad, f"{len(bad)} conversations out of seq order, e.g. {next(iter(bad.items()))}"


@pytest.mark.slow
def test_partitions_rebalance_when_relays_join_and_leave(
    db_source: str, redis_addr: str, tmp_path: pathlib.Path
) -> None:
    env = lambda: relay_env(db_source, redis_addr)  # noqa: E731 - a fresh metrics port each
    a = RelayProcess(env(), tmp_path, "a")
    b = c = None
    try:
        a.wait_ready()
        wait_until(lambda: a.owned() == 64 and lock_counts(db_source) == [64], 20, "a owns all")

        b = RelayProcess(env(), tmp_path, "b")
        wait_until(lambda: lock_counts(db_source) == [32, 32], 20, "a and b to split 32/32")
        assert (a.owned(), b.owned()) == (32, 32)

        b.signal(signal.SIGKILL)  # its session locks vanish with its connection
        b.wait(20)
        wait_until(lambda: lock_counts(db_source) == [64], 20, "a to take b's partitions")
        assert a.owned() == 64

        c = RelayProcess(env(), tmp_path, "c")
        wait_until(lambda: lock_counts(db_source) == [32, 32], 20, "a and c to split 32/32")
        c.signal(signal.SIGTERM)
        assert c.wait(20) == 0
        wait_until(lambda: lock_counts(db_source) == [64], 20, "a to take c's partitions")

        # Every conversation still gets relayed by the survivor.
        convs = [str(uuid.uuid4()) for _ in range(64)]
        ids = insert_events(db_source, interleaved(convs, 3))
        wait_until(lambda: outbox_count(db_source) == 0, 30, "the survivor to relay")
        assert {e.event_id for e in read_streams(redis_addr)} == set(ids)
    finally:
        for relay in (a, b, c):
            if relay is not None:
                relay.stop()
