"""The fast timestamp conversion gives exactly what protobuf's own FromDatetime gives."""

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from chat_api.transport.convert import timestamp

aware = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                               timezone(timedelta(hours=-8))]),
)


@given(aware)
def test_timestamp_matches_protobuf(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_timestamp_keeps_microseconds() -> None:
    ts = timestamp(datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC))
    assert (ts.seconds, ts.nanos) == (1795773600, 123456000)


# Reactions: the JSON text the page statements aggregate (``reactions_sql``), parsed once per
# distinct text and merged into the message from a cached encoding, give exactly the message
# that parsing the JSON and adding each reaction field by field gives.
reaction_sets = st.lists(
    st.tuples(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
              st.integers(min_value=1, max_value=2**31 - 1),
              st.booleans()),
    max_size=20, unique_by=lambda r: r[0])


@given(reaction_sets)
def test_cached_reactions_give_the_message_field_by_field_building_gives(
        reactions: list[tuple[str, int, bool]]) -> None:
    import json

    from chat_api.models import MessageRecord
    from chat_api.storage.rows import reactions_from
    from chat_api.transport.convert import message
    from chat_shared.protos.chat.v1 import chat_pb2

    text = json.dumps([list(r) for r in reactions], ensure_ascii=False)
    parsed = reactions_from(text)
    assert parsed == reactions_from(json.loads(text))
    assert reactions_from(text) is parsed  # the same records for the same text
    record = MessageRecord(id="m", conversation_id="c", sender_id="u", content="x", seq=3,
                           created_at=datetime(2026, 1, 1, tzinfo=UTC), reactions=parsed)
    expected = chat_pb2.Message()
    for emoji, count, mine in reactions:
        r = expected.reactions.add()
        r.emoji, r.count, r.reacted_by_me = emoji, count, mine
    got = message(record)
    assert list(got.reactions) == list(expected.reactions)
    got.ClearField("reactions")
    assert got.reactions == chat_pb2.Message().reactions and got.seq == 3
