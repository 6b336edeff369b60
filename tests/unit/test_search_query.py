"""The search query syntax, highlight ranges and page tokens, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chat_api.models import SearchCursor, SearchFilters
from chat_api.service.search import (
    MAX_TERMS,
    parse_query,
    parse_search_token,
    search_token,
)
from chat_api.storage.search import highlights_from_marked
from chat_shared.errors import InvalidArgument


@pytest.mark.parametrize(("query", "tsquery"), [
    ("hello", "'hello':*"),
    ("hello ", "'hello'"),
    ("hello wor", "'hello' & 'wor':*"),
    ('"quick brown" fox', "'quick brown' & 'fox':*"),
    ('fox "quick brown"', "'fox' & 'quick brown'"),
    ('"unclosed phrase', "'unclosed phrase'"),
    ("a OR b c", "('a' | 'b') & 'c':*"),
    ("x a OR b OR c ", "'x' & ('a' | 'b' | 'c')"),
    ("OR a OR", "'a'"),
    ("a -b", "'a' & !'b'"),
    ('a -"b c" ', "'a' & !'b c'"),
    ("-b a", "'a':* & !'b'"),
    ("it's", "'it''s':*"),
    ("back\\slash", "'back\\\\slash':*"),
    ("a & b | !c", "'a' & 'b' & '!c':*"),
    ("a , -- b", "'a' & 'b':*"),
    ("or", "'or':*"),
])
def test_queries_become_quoted_operands(query: str, tsquery: str) -> None:
    assert parse_query(query).tsquery == tsquery


@pytest.mark.parametrize("query", ["", "   ", ",,,", "-a", '-"a b"', "OR", "OR OR", "_ -x"])
def test_a_query_without_a_word_to_find_is_refused(query: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_query(query)
    assert err.value.field == "query"


def test_term_count_is_bounded_with_phrase_words_counted() -> None:
    parse_query(" ".join(["w"] * MAX_TERMS))
    with pytest.raises(InvalidArgument):
        parse_query(" ".join(["w"] * MAX_TERMS) + " x")
    with pytest.raises(InvalidArgument):
        parse_query('"' + " ".join(["w"] * (MAX_TERMS + 1)) + '"')


def test_highlights_are_code_point_ranges() -> None:
    assert highlights_from_marked("😀 café x", "😀 \x01café\x02 x", "\x01", "\x02") == ((2, 6),)
    assert highlights_from_marked("ab", "\x01a\x02\x01b\x02", "\x01", "\x02") == ((0, 1), (1, 2))
    # Anything but the content with markers gives no highlights rather than wrong ones.
    assert highlights_from_marked("abc", "\x01ab\x02", "\x01", "\x02") == ()
    assert highlights_from_marked("ab", "\x01ab", "\x01", "\x02") == ()


def test_page_tokens_belong_to_their_search() -> None:
    filters = SearchFilters(conversation_id=None, sender_id="bob",
                            after=datetime(2026, 1, 1, tzinfo=UTC))
    cursor = SearchCursor(12345.678901234567, "0b7c1a52-51f4-4b8e-a8d6-1e1a3a0f6f10")
    token = search_token("q", filters, cursor)
    assert parse_search_token(token, "q", filters) == cursor
    for query, other in (("q2", filters), ("q", SearchFilters(sender_id="bob"))):
        with pytest.raises(InvalidArgument) as err:
            parse_search_token(token, query, other)
        assert err.value.field == "page_token"
