"""Input checks: each accepts what the API promises and names the field it refuses."""

from __future__ import annotations

import uuid

import pytest
from chat_api.service import validation
from chat_shared.errors import InvalidArgument


def test_conversation_id_is_normalised_to_canonical_form() -> None:
    value = uuid.uuid4()
    assert validation.conversation_id(str(value).upper()) == str(value)


@pytest.mark.parametrize("value", ["", "42", "not-a-uuid", "1234567812345678123456781234567"])
def test_bad_conversation_id_names_the_field(value: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.conversation_id(value)
    assert exc.value.field == "conversation_id"


def test_missing_conversation_id_says_it_is_required() -> None:
    with pytest.raises(InvalidArgument, match="conversation_id: is required"):
        validation.conversation_id("")


@pytest.mark.parametrize("value", ["alice", "a", "user@example.com", "ünïcode", "x" * 128])
def test_user_id_accepts_1_to_128_visible_characters(value: str) -> None:
    assert validation.user_id(value, "member_ids[0]") == value


@pytest.mark.parametrize("value", ["", " ", "al ice", "alice\n", "a\x00b", "a\tb", "x" * 129])
def test_bad_user_id_names_the_given_field(value: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.user_id(value, "member_ids[3]")
    assert exc.value.field == "member_ids[3]"
    assert exc.value.message.startswith("member_ids[3]:")


def test_limit_zero_means_the_default() -> None:
    assert validation.limit(0) == validation.DEFAULT_LIMIT


@pytest.mark.parametrize("value", [1, 50, validation.MAX_LIMIT])
def test_limit_in_range_is_kept(value: int) -> None:
    assert validation.limit(value) == value


@pytest.mark.parametrize("value", [-1, validation.MAX_LIMIT + 1, 10_000])
def test_limit_out_of_range_names_the_field(value: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.limit(value)
    assert exc.value.field == "limit"


@pytest.mark.parametrize("value", ["hello", "line one\nline two", "tab\tseparated", "crlf\r\n", ""])
def test_text_with_newlines_and_tabs_is_accepted(value: str) -> None:
    # The check's only outcome is raising: returning at all means accepted.
    assert validation.no_control_chars(value, "content") is None


@pytest.mark.parametrize("value", ["nul\x00byte", "bell\x07", "esc\x1b[31m", "del\x7f"])
def test_control_characters_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.no_control_chars(value, "content")
    assert exc.value.field == "content"


def test_invalid_argument_carries_the_field_in_error_metadata() -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.limit(-5)
    assert (exc.value.code, exc.value.reason, exc.value.metadata) == (
        "INVALID_ARGUMENT", "INVALID_FIELD", {"field": "limit"})
