"""Page tokens: opaque to clients, but every token we did not issue for this listing is refused.

A refused token is INVALID_ARGUMENT naming ``page_token`` (never a server error), so a client
that mangles, reuses or forges a token learns that it did, and nothing else.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from chat_api.service import page_tokens
from chat_shared.errors import InvalidArgument

CONV = str(uuid.uuid4())
OTHER_CONV = str(uuid.uuid4())


def forge(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_messages_token_round_trips() -> None:
    token = page_tokens.messages_token(CONV, 42, ascending=False)
    assert page_tokens.parse_messages_token(token, CONV) == (42, False)


def test_messages_token_keeps_the_direction() -> None:
    token = page_tokens.messages_token(CONV, 7, ascending=True)
    assert page_tokens.parse_messages_token(token, CONV) == (7, True)


def test_tokens_are_url_safe_without_padding() -> None:
    token = page_tokens.messages_token(CONV, 123456789, ascending=False)
    assert "=" not in token and "+" not in token and "/" not in token


def test_messages_token_from_another_conversation_is_refused() -> None:
    token = page_tokens.messages_token(OTHER_CONV, 5, ascending=False)
    with pytest.raises(InvalidArgument) as exc:
        page_tokens.parse_messages_token(token, CONV)
    assert exc.value.field == "page_token"


def test_conversations_token_is_refused_for_messages() -> None:
    token = page_tokens.conversations_token(datetime.now(UTC), CONV)
    with pytest.raises(InvalidArgument):
        page_tokens.parse_messages_token(token, CONV)


@pytest.mark.parametrize(
    "data",
    [
        {"k": "m", "c": CONV, "s": "5", "a": False},   # seq as a string
        {"k": "m", "c": CONV, "s": -1, "a": False},    # negative seq
        {"k": "m", "c": CONV, "s": True, "a": False},  # bool is not an int here
        {"k": "m", "c": CONV, "s": 5, "a": "yes"},     # direction not a bool
        {"k": "m", "c": CONV, "s": 5},                 # direction missing
        {"k": "x", "c": CONV, "s": 5, "a": False},     # wrong kind
        [1, 2, 3],                                     # not an object
        "just a string",
    ],
)
def test_tampered_messages_token_is_refused(data: object) -> None:
    with pytest.raises(InvalidArgument) as exc:
        page_tokens.parse_messages_token(forge(data), CONV)
    assert exc.value.field == "page_token"


@pytest.mark.parametrize(
    "token", ["not-base64!!", "%%%", "aGVsbG8", "////", "\u00e9\u00e9", "A" * 600, "e30x"]
)
def test_garbage_is_refused_as_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        page_tokens.parse_messages_token(token, CONV)
    assert exc.value.field == "page_token"
    with pytest.raises(InvalidArgument):
        page_tokens.parse_conversations_token(token)


def test_conversations_token_round_trips() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    token = page_tokens.conversations_token(when, CONV)
    assert page_tokens.parse_conversations_token(token) == (when, CONV)


def test_conversations_token_keeps_a_non_utc_offset_as_the_same_instant() -> None:
    when = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    parsed, _ = page_tokens.parse_conversations_token(page_tokens.conversations_token(when, CONV))
    assert parsed == when


def test_messages_token_is_refused_for_conversations() -> None:
    with pytest.raises(InvalidArgument):
        page_tokens.parse_conversations_token(page_tokens.messages_token(CONV, 1, False))


@pytest.mark.parametrize(
    "data",
    [
        {"k": "c", "t": "2024-05-01T12:00:00", "i": CONV},         # naive timestamp
        {"k": "c", "t": "yesterday", "i": CONV},                   # not a timestamp
        {"k": "c", "t": 12345, "i": CONV},                         # not a string
        {"k": "c", "t": "2024-05-01T12:00:00+00:00", "i": "x"},    # id not a UUID
        {"k": "c", "t": "2024-05-01T12:00:00+00:00"},              # id missing
        {"k": "c", "i": CONV},                                     # time missing
    ],
)
def test_tampered_conversations_token_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as exc:
        page_tokens.parse_conversations_token(forge(data))
    assert exc.value.field == "page_token"
