"""The backlog sources against the real thing: PostgreSQL with outbox rows, a Prometheus API."""

from __future__ import annotations

import base64
import uuid

import psycopg
import pytest

from chat_relay_operator.sources import PostgresSource, PrometheusSource, SourceError
from tests.operator.conftest import (
    DEPLOY,
    NS,
    RA,
    FakePrometheus,
    autoscaler,
    deployment,
    eventually,
    replicas,
    status,
)


def add_outbox_rows(dsn: str, count: int, age_seconds: float) -> None:
    """``count`` pending events, the oldest ``age_seconds`` old; plus dead letters that must
    not count as backlog."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conv = uuid.uuid4()
        for i in range(count):
            created = age_seconds if i == 0 else 1.0
            conn.execute(
                "INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients,"
                " payload, created_at) VALUES (%s, 'message.created', %s, %s, ARRAY['u1'],"
                " '{}'::jsonb, now() - make_interval(secs => %s))",
                (uuid.uuid4(), conv, i + 1, created))
        conn.execute(
            "INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq,"
            " recipients, payload, created_at, attempts, last_error) VALUES (%s, 'x', %s, 1,"
            " ARRAY['u1'], '{}'::jsonb, now() - interval '1 hour', 4, 'boom')",
            (uuid.uuid4(), conv))


async def test_postgres_source_counts_pending_rows_and_oldest_age(db_source: str) -> None:
    source = PostgresSource(db_source)
    empty = await source.read()
    assert (empty.backlog, empty.oldest_age_seconds) == (0, 0.0)
    add_outbox_rows(db_source, 37, age_seconds=120)
    reading = await source.read()
    assert reading.backlog == 37  # the dead letter is not backlog
    assert 120 <= reading.oldest_age_seconds < 180


async def test_postgres_source_failure_is_a_source_error_without_the_password(
        postgres: object) -> None:
    source = PostgresSource("postgresql://chat:s3cret-pw@127.0.0.1:1/chat", timeout_seconds=1)
    with pytest.raises(SourceError) as err:
        await source.read()
    assert "s3cret-pw" not in str(err.value) and "127.0.0.1:1" in str(err.value)


async def test_prometheus_source_reads_both_queries(prometheus: FakePrometheus) -> None:
    prometheus.backlog, prometheus.oldest_age = 1234.0, 56.5
    reading = await PrometheusSource(prometheus.url, "max(outbox_pending_count)",
                                     "max(outbox_oldest_pending_age_seconds)").read()
    assert (reading.backlog, reading.oldest_age_seconds) == (1234, 56.5)


async def test_prometheus_source_errors(prometheus: FakePrometheus) -> None:
    prometheus.fail = True
    with pytest.raises(SourceError, match="503"):
        await PrometheusSource(prometheus.url, "max(outbox_pending_count)", "q2").read()
    with pytest.raises(SourceError, match="ClientConnectorError|ClientConnection"):
        await PrometheusSource("http://127.0.0.1:1", "q", "q2").read()


async def test_operator_scales_from_postgres_dsn_in_a_secret(kmock, run_operator,
                                                             db_source: str) -> None:
    add_outbox_rows(db_source, 250, age_seconds=5)
    kmock.objects["v1/secrets", NS, "chat-db"] = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "chat-db", "namespace": NS, "resourceVersion": "1"},
        "data": {"DB_SOURCE": base64.b64encode(db_source.encode()).decode()}}
    kmock.objects["apps/v1/deployments", NS, DEPLOY] = deployment(1)
    kmock.objects[RA, NS, "relay"] = autoscaler(
        {"postgres": {"secretRef": {"name": "chat-db", "key": "DB_SOURCE"}}})
    async with run_operator():
        await eventually(lambda: replicas(kmock) == 3)
        await eventually(lambda: status(kmock).get("backlog") == 250)
    assert status(kmock)["oldestAgeSeconds"] >= 5
