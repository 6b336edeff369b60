"""The outbox rows the API writes, read back with the event contract's own checker.

Why: the payloads are built in SQL (``payload_sql``) and every consumer passes their fields on
unchanged, so what PostgreSQL writes must be exactly what ``chat_shared.events`` describes:
every event type, every field, timestamps in the one format ``format_time`` writes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_shared import events
from chat_shared.events import CONVERSATION_READ, MESSAGE_CREATED, PAYLOADS, payload_sql
from tests.helpers import create_conversation, db_rows, mark_as_read, send


async def test_every_event_type_the_api_writes_is_what_the_contract_describes(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    sent = await send(stub, "alice", conv.id, "héllo")
    await mark_as_read(stub, "bob", conv.id)
    rows = await db_rows(db_source, "SELECT event_type, payload, created_at FROM outbox "
                                    "ORDER BY id")
    # message.updated is written by the thumbnail worker: tests/integration/test_thumbnails.py
    assert {r[0] for r in rows} == set(PAYLOADS) - {events.MESSAGE_UPDATED}, \
        "a type the API writes is not tested here"
    by_type = {r[0]: events.decode_payload(r[0], r[1]) for r in rows}

    # The SQL writes what the Python builder makes from the stored message.
    [(created_at,)] = await db_rows(db_source, "SELECT created_at FROM messages WHERE id = %s",
                                    sent.id)
    assert by_type[MESSAGE_CREATED] == events.message_created(events.message(
        sent.id, conv.id, "alice", "héllo", 1, created_at))
    read = by_type[CONVERSATION_READ]
    assert (read["conversation_id"], read["user_id"], read["last_read_seq"]) == (conv.id, "bob", 1)
    assert abs(events.parse_time(read["read_at"]) - rows[-1][2]) < timedelta(seconds=5)


_TIME_ONLY = "SELECT " + payload_sql(CONVERSATION_READ, {
    "conversation_id": "gen_random_uuid()", "user_id": "'u'", "last_read_seq": "1",
    "read_at": "CAST(%(t)s AS timestamptz)"}) + " ->> 'read_at'"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)),
                                               timezone(timedelta(hours=9, minutes=30))])))
def test_sql_formats_a_time_exactly_as_format_time_whatever_the_session_zone(
        db_source, when: datetime):
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        [(text,)] = conn.execute(_TIME_ONLY, {"t": when}).fetchall()
    assert text == events.format_time(when)
