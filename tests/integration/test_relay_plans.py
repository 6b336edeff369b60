"""The relay's work session: its settings, and the plans its statements get there.

``chat_outbox_relay.relay.BOOKKEEPING_SESSION`` runs the work connection with
``plan_cache_mode=force_generic_plan`` (the claim was planned again on every execution before)
and ``synchronous_commit=off`` (a settle no longer waits for an fsync). So the claim's generic
plan must be what its custom plans are: the partial index of unpublished rows, reading about
the backlog, never the outbox's retained published rows, however many there are; and the
settle finds its rows by primary key. Measured here on an outbox of 60,000 published rows
(OUTBOX_RETENTION keeps them) and 100 unpublished ones, with a cached generic plan.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from chat_outbox_relay.app import build_relay
from chat_outbox_relay.claiming import _CLAIM, _MARK_PUBLISHED
from chat_outbox_relay.partitions import PARTITIONS
from chat_outbox_relay.relay import BOOKKEEPING_SESSION
from chat_outbox_relay.settings import RelaySettings
from tests.integration.test_plan_stability import _explain, _nodes

pytestmark = pytest.mark.timeout(120)

_FILL = """
    INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload,
                        published_at)
    SELECT gen_random_uuid(), 'message.created', c.id, s, ARRAY['alice', 'bob'], '{}'::jsonb,
           CASE WHEN s > 600 THEN NULL ELSE now() END
    FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 100)) c,
         generate_series(1, 601) s;
    ANALYZE outbox;
"""


def _outbox_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in _nodes(plan) if n.get("Relation Name") == "outbox"]


def _read(nodes: list[dict[str, Any]]) -> int:
    return sum((n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0))
               * n.get("Actual Loops", 1) for n in nodes)


async def test_the_claims_generic_plan_reads_the_backlog_not_the_retained_rows(
        db_source: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        await conn.execute(_FILL)
        every = "{" + ",".join(map(str, range(PARTITIONS))) + "}"
        half = "{" + ",".join(map(str, range(0, PARTITIONS, 2))) + "}"
        for partitions in (every, half):
            for generic in (False, True):
                plan = await _explain(conn, _CLAIM, {"partitions": partitions, "limit": 1000},
                                      generic)
                nodes = _outbox_nodes(plan)
                claimed = next(n for n in nodes if n.get("Alias") == "o")
                assert claimed["Node Type"] in ("Index Scan", "Bitmap Heap Scan"), claimed
                used = {n.get("Index Name") for n in _nodes(plan) if n.get("Index Name")}
                assert "ix_outbox_partition" in used, used
                assert all(n["Node Type"] != "Seq Scan" for n in nodes), nodes
                # The 100 unpublished rows (about half of them for half the partitions), not
                # the 60,000 published ones.
                assert 0 < claimed["Actual Rows"] <= 100
                assert _read(nodes) <= 200, (partitions == every, generic, _read(nodes))
        cur = await conn.execute("SELECT array_agg(id) FROM outbox WHERE published_at IS NULL")
        row = await cur.fetchone()
        assert row is not None
        ids = row[0]
        plan = await _explain(conn, _MARK_PUBLISHED, {"ids": ids}, generic=True)
        scans = [n for n in _outbox_nodes(plan) if n["Node Type"] != "ModifyTable"]
        assert {n.get("Index Name") for n in scans} == {"outbox_pkey"}, scans
        assert _read(scans) == 100


async def test_the_relays_work_session_settles_asynchronously_and_plans_once(
        db_source: str, redis_addr: str) -> None:
    app = build_relay(RelaySettings(_env_file=None, environment="test", db_source=db_source,
                                    redis_addr=redis_addr, metrics_port=0))
    conn = await app.relay._work_connection()  # the session that claims and settles
    try:
        shown = {}
        for name in BOOKKEEPING_SESSION:
            cur = await conn.execute(f"SHOW {name}")
            row = await cur.fetchone()
            assert row is not None
            shown[name] = row[0]
        assert shown == {"synchronous_commit": "off", "plan_cache_mode": "force_generic_plan"}
    finally:
        await conn.close()
        await app.redis.aclose()
