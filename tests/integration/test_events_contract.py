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

from chat_devtools.e2ee_client import E2EEDevice
from chat_shared import events
from chat_shared.events import (
    CONVERSATION_READ,
    MESSAGE_CREATED,
    PAYLOADS,
    TO_DEVICE_CREATED,
    payload_sql,
)
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, db_rows, mark_as_read, send


async def test_every_event_type_the_api_writes_is_what_the_contract_describes(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"], title="all kinds")
    sent = await send(stub, "alice", conv.id, "héllo")
    await mark_as_read(stub, "bob", conv.id)
    cid, a = conv.id, auth("alice")
    await stub.AddMembers(chat_pb2.AddMembersRequest(conversation_id=cid, member_ids=["carol"]),
                          metadata=a)
    await stub.SetMemberRole(chat_pb2.SetMemberRoleRequest(conversation_id=cid, user_id="carol",
                                                           role="admin"), metadata=a)
    await stub.RemoveMember(chat_pb2.RemoveMemberRequest(conversation_id=cid, user_id="carol"),
                            metadata=a)
    await stub.UpdateConversation(chat_pb2.UpdateConversationRequest(
        conversation_id=cid, title="renamed"), metadata=a)
    other = await send(stub, "alice", cid, "second")
    await stub.AddReaction(chat_pb2.AddReactionRequest(conversation_id=cid, message_id=other.id,
                                                       emoji="👍"), metadata=a)
    await stub.RemoveReaction(chat_pb2.RemoveReactionRequest(
        conversation_id=cid, message_id=other.id, emoji="👍"), metadata=a)
    await stub.EditMessage(chat_pb2.EditMessageRequest(conversation_id=cid, message_id=other.id,
                                                       content="edited"), metadata=a)
    await stub.DeleteMessage(chat_pb2.DeleteMessageRequest(conversation_id=cid,
                                                           message_id=other.id), metadata=a)
    alice_device, bob_device = (E2EEDevice(stub, u, make_token(u)) for u in ("alice", "bob"))
    for device in (alice_device, bob_device):
        await device.register(one_time_keys=1)
    await stub.SendToDevice(chat_pb2.SendToDeviceRequest(
        conversation_id=cid, sender_device=alice_device.device_id,
        messages=[chat_pb2.ToDeviceMessage(recipient_id="bob",
                                           recipient_device=bob_device.device_id,
                                           message_type="m.test", body="opaque")]),
        metadata=a)
    rows = await db_rows(db_source, "SELECT event_type, payload, created_at FROM outbox "
                                    "WHERE event_type IN ('message.created', "
                                    "'conversation.read') ORDER BY id LIMIT 2")
    every = await db_rows(db_source, "SELECT event_type, payload FROM outbox ORDER BY id")
    assert {r[0] for r in every} == set(PAYLOADS), "a type the API writes is not tested here"
    for event_type, payload in every:
        events.decode_payload(event_type, payload)
    positions = await db_rows(db_source, "SELECT seq FROM outbox WHERE event_type NOT IN "
                                         "('conversation.read', 'to_device.created') "
                                         "ORDER BY id")
    assert [p for (p,) in positions] == list(range(1, len(positions) + 1))
    changes = await db_rows(db_source, "SELECT pos FROM conversation_changes ORDER BY pos")
    assert [p for (p,) in changes] == [p for (p,) in positions]
    by_type = {r[0]: events.decode_payload(r[0], r[1]) for r in rows}

    # The SQL writes what the Python builder makes from the stored message.
    [(created_at,)] = await db_rows(db_source, "SELECT created_at FROM messages WHERE id = %s",
                                    sent.id)
    assert by_type[MESSAGE_CREATED] == events.message_created(events.message(
        sent.id, conv.id, "alice", "héllo", 1, created_at))
    read = by_type[CONVERSATION_READ]
    assert (read["conversation_id"], read["user_id"], read["last_read_seq"]) == (conv.id, "bob", 1)
    assert abs(events.parse_time(read["read_at"]) - rows[-1][2]) < timedelta(seconds=5)
    # A to-device message's event refers to it (its mailbox id, also the entry's seq) and
    # never carries its body.
    [(mailbox_id,)] = await db_rows(db_source, "SELECT id FROM e2ee_to_device")
    [(seq, recipients, payload)] = await db_rows(
        db_source, "SELECT seq, recipients, payload FROM outbox WHERE event_type = %s",
        TO_DEVICE_CREATED)
    assert (seq, recipients) == (mailbox_id, ["bob"])
    assert payload == {"id": mailbox_id, "recipient_id": "bob",
                       "recipient_device": bob_device.device_id}


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
