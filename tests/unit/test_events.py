"""The event contract (chat_shared.events) on its own: payload descriptions, the SQL derived from
them, the checker, the stream entry codec, and the relay's Lua script built from ENTRY_FIELDS.

What PostgreSQL writes from that SQL is checked against the same descriptions in
tests/integration/test_events_contract.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat_outbox_relay.publishing import _xadd_in_order
from chat_shared import events
from chat_shared.events import (
    CONVERSATION_READ,
    ENTRY_FIELDS,
    MESSAGE_CREATED,
    PAYLOADS,
    Event,
    decode_entry,
    decode_payload,
    encode_entry,
    entry_values,
    format_time,
    parse_time,
    payload_sql,
)

CID = "4e921278-2ab6-40b3-85c7-a8711678e514"
WHEN = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)
MESSAGE_SQL = {"message": {"id": "m.id", "conversation_id": "m.cid", "sender_id": "m.s",
                           "content": "m.c", "seq": "m.seq", "created_at": "m.at",
                           "version": "m.v", "edited_at": "m.e", "deleted": "m.d",
                           "thread_root_id": "m.root"}}

aware_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                      timezone(timedelta(hours=-8))]))


def squeeze(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("event_type", sorted(PAYLOADS))
def test_the_module_docstring_shows_every_payload_as_described(event_type: str) -> None:
    assert squeeze(events.describe_payload(event_type)) in squeeze(events.__doc__ or "")
    assert f"``{event_type}``" in (events.__doc__ or "")


def test_payload_sql_follows_the_description_and_formats_times_in_the_statement() -> None:
    sql = payload_sql(MESSAGE_CREATED, MESSAGE_SQL)
    assert sql.startswith("jsonb_build_object('message', (jsonb_build_object('id', m.id, ")
    assert """'created_at', to_char((m.at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""" \
        in sql
    # An optional field is left out where it is NULL; the required ones are kept as written.
    assert "|| jsonb_strip_nulls(jsonb_build_object('thread_root_id', m.root))" in sql
    # A writer that never sets it may leave it out.
    without = {"message": {k: v for k, v in MESSAGE_SQL["message"].items()
                           if k != "thread_root_id"}}
    assert "thread_root_id" not in payload_sql(MESSAGE_CREATED, without)
    read = payload_sql(CONVERSATION_READ, {"conversation_id": "t.c", "user_id": "t.u",
                                           "last_read_seq": "t.n", "read_at": "now()"})
    assert read.startswith("jsonb_build_object('conversation_id', t.c, 'user_id', t.u, "
                           "'last_read_seq', t.n, 'read_at', to_char((now()) AT TIME ZONE")


@pytest.mark.parametrize("expressions, complaint", [
    ({"message": {**MESSAGE_SQL["message"], "extra": "x"}}, "message.created.message"),
    ({"message": {k: v for k, v in MESSAGE_SQL["message"].items() if k != "seq"}},
     "message.created.message"),
    ({"message": "m.json"}, "message.created.message: expected {"),
    ({**MESSAGE_SQL, "more": "x"}, "message.created: the payload's fields"),
    ({"message": {**MESSAGE_SQL["message"], "seq": {"nested": "x"}}},
     "message.created.message.seq: expected integer"),
])
def test_payload_sql_refuses_fields_the_description_does_not_have(expressions, complaint) -> None:
    with pytest.raises(ValueError, match="^" + complaint.replace("{", r"\{")):
        payload_sql(MESSAGE_CREATED, expressions)


def test_the_python_builders_write_what_the_checker_accepts() -> None:
    msg = events.message(CID, CID, "alice", "héllo", 7, WHEN)
    assert decode_payload(MESSAGE_CREATED, events.message_created(msg)) == {"message": {
        "id": CID, "conversation_id": CID, "sender_id": "alice", "content": "héllo", "seq": 7,
        "created_at": "2026-11-27T10:00:00.123456Z", "version": 1, "edited_at": None,
        "deleted": False}}
    edited = events.message(CID, CID, "alice", "", 7, WHEN, 2, WHEN, True)
    assert decode_payload("message.deleted", events.message_created(edited))["message"][
        "edited_at"] == "2026-11-27T10:00:00.123456Z"
    read = events.conversation_read(CID, "bob", 3, WHEN)
    assert decode_payload(CONVERSATION_READ, read)["read_at"] == "2026-11-27T10:00:00.123456Z"
    answer = events.message(CID, CID, "bob", "re", 8, WHEN, thread_root_id=CID)
    assert decode_payload(MESSAGE_CREATED, events.message_created(answer))["message"][
        "thread_root_id"] == CID


def test_an_optional_field_may_be_absent_but_not_wrong() -> None:
    msg = dict(events.message(CID, CID, "alice", "x", 1, WHEN))
    with pytest.raises(ValueError, match=r"^message.created.message.thread_root_id: expected uuid"):
        decode_payload(MESSAGE_CREATED, {"message": {**msg, "thread_root_id": "nope"}})
    without_seq = {k: v for k, v in msg.items() if k != "seq"}
    with pytest.raises(ValueError, match=r"^message.created.message: expected the fields"):
        decode_payload(MESSAGE_CREATED, {"message": {**without_seq, "thread_root_id": CID}})


@pytest.mark.parametrize("change, complaint", [
    ({"read_at": "2026-11-27T10:00:00.123456+00:00"}, "conversation.read.read_at: expected timestamp"),
    ({"read_at": "2026-11-27T10:00:00Z"}, "conversation.read.read_at: expected timestamp"),
    ({"last_read_seq": "3"}, "conversation.read.last_read_seq: expected integer"),
    ({"last_read_seq": True}, "conversation.read.last_read_seq: expected integer"),
    ({"conversation_id": CID.upper()}, "conversation.read.conversation_id: expected uuid"),
    ({"conversation_id": "nope"}, "conversation.read.conversation_id: expected uuid"),
    ({"user_id": None}, "conversation.read.user_id: expected string"),
    ({"extra": 1}, "conversation.read: expected the fields"),
])
def test_the_checker_names_what_differs(change, complaint) -> None:
    payload = {**events.conversation_read(CID, "bob", 3, WHEN), **change}
    with pytest.raises(ValueError, match="^" + complaint):
        decode_payload(CONVERSATION_READ, payload)


def test_the_checker_refuses_unknown_types_and_non_objects() -> None:
    with pytest.raises(ValueError, match="unknown event type 'message.edited'"):
        decode_payload("message.edited", {})
    with pytest.raises(ValueError, match="expected the fields"):
        decode_payload(MESSAGE_CREATED, [])
    with pytest.raises(ValueError, match=r"message.created.message: expected the fields"):
        decode_payload(MESSAGE_CREATED, {"message": "text"})


@given(aware_times)
def test_times_are_rfc3339_utc_with_microseconds_and_z_and_parse_back(when: datetime) -> None:
    text = format_time(when)
    assert len(text) == 27 and text.endswith("Z") and text[10] == "T"
    assert parse_time(text) == when
    assert parse_time(text).utcoffset() == timedelta(0)


def test_a_naive_time_is_taken_as_utc() -> None:
    assert format_time(WHEN.replace(tzinfo=None)) == "2026-11-27T10:00:00.123456Z"


texts = st.text(max_size=20)
events_ = st.builds(
    Event,
    event_id=st.uuids().map(str),
    type=st.sampled_from([MESSAGE_CREATED, CONVERSATION_READ, "something.new"]),
    conversation_id=st.uuids().map(str),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    occurred_at=aware_times.map(lambda t: t.astimezone(UTC)),
    recipients=st.lists(texts, max_size=4),
    payload=st.dictionaries(texts, st.recursive(
        st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | texts,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=8), max_size=4),
)


@given(events_)
def test_an_entry_decodes_to_the_event_it_encodes(event: Event) -> None:
    entry = encode_entry(event)
    assert tuple(entry) == ENTRY_FIELDS
    assert tuple(entry.values()) == entry_values(event)
    assert all(isinstance(v, str) for v in entry.values())
    assert decode_entry(entry) == event
    assert decode_entry({k.encode(): v.encode() for k, v in entry.items()}) == event


def test_an_entry_is_compact_json_and_a_missing_field_is_named() -> None:
    event = Event(str(uuid.UUID(int=1)), MESSAGE_CREATED, CID, 7, WHEN, ["a", "b"],
                  {"message": {"content": "héllo", "seq": 7}})
    entry = encode_entry(event)
    assert entry["payload"] == '{"message":{"content":"héllo","seq":7}}'
    assert entry["recipients"] == '["a","b"]'
    assert entry["occurred_at"] == "2026-11-27T10:00:00.123456Z"
    del entry["recipients"]
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['recipients'\]"):
        decode_entry(entry)


def test_the_relays_script_xadds_the_entry_fields_in_their_order() -> None:
    script = _xadd_in_order(ENTRY_FIELDS)
    pairs = ", ".join(f"'{name}', ARGV[i+{k}]" for k, name in enumerate(ENTRY_FIELDS))
    assert script.count(f"'epoch', epoch, {pairs}") == 2  # with and without MAXLEN
    assert f"for i = 3, #ARGV, {len(ENTRY_FIELDS)} do" in script
    assert _xadd_in_order(("a", "b")).count("'a', ARGV[i+0], 'b', ARGV[i+1])") == 2
    with pytest.raises(ValueError, match="quoted in Lua"):
        _xadd_in_order(("event_id", "it's"))
