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
