"""SearchMessages: the query syntax, the page token, and the one interface an engine serves.

The query is typed as in a search box and parsed here, not by ``websearch_to_tsquery``:
that built-in reads words, "quoted phrases", ``OR`` and ``-excluded`` the same way, but has no
prefix match, and the last word has to be one (search as you type: "hel" finds "hello").
Bolting a prefix term onto its output changes what ``OR`` binds to ("cat OR dog" would become
cat AND dog:*), so the whole query is parsed into a tree here, and each word or phrase is
handed to ``to_tsquery`` as one quoted operand (quotes and backslashes escaped), so nothing a
user types is ever read as tsquery syntax. The engine still normalises each operand with the
search configuration (lower case, accents removed), exactly as it does the messages.

Grammar (as websearch_to_tsquery reads it):

- items are separated by spaces and must all match (AND);
- ``"a quoted phrase"`` matches those words next to each other, in that order (an unclosed
  quote runs to the end of the query);
- ``a OR b`` matches either (OR binds tighter than the spaces: ``x a OR b`` is x AND (a OR b));
  an ``OR`` that is not between two items is ignored;
- ``-word`` or ``-"a phrase"`` excludes messages with it;
- the last item, when it is a plain word and the query does not end with a space, also
  matches every word it starts ("hel" finds "hello").

Bounds, besides chat.proto's 256 characters: at most ``MAX_TERMS`` words (a phrase counts its
words), and at least one word that is not excluded; an item without a letter or a digit (",",
"--") is not a word and is dropped. Both are INVALID_ARGUMENT naming ``query``. The statement
timeout bounds the rest.

Ranking and pages: hits are ordered by a score mixing relevance and recency,
``ln(ts_rank_cd) + created_at / RECENCY_SCALE``
(``chat_api.storage.search``): one ``RECENCY_SCALE`` (a week) newer weighs as
much as e (2.7) times the relevance. The score depends on the message alone, not on the time
of the request, so a page token holds the last hit's (score, id) and the next page continues
strictly below it: new messages, which score above older ones of equal relevance, land on
pages already seen instead of shifting the next one, and no hit is skipped or repeated. The
trade-off: a message sent while paging is not on the later pages (search again to see it),
and an edit changes a message's score (it may then appear twice or not at all across pages).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from typing import Protocol

from chat_api.models import Page, ParsedQuery, SearchCursor, SearchFilters, SearchHit
from chat_api.service import page_tokens, validation
from chat_api.service.reads import NOT_FOUND
from chat_shared.auth import Principal
from chat_shared.errors import InvalidArgument, NotFound

MAX_TERMS = 32
"""Words in one query, a phrase counting each of its words."""

DEFAULT_LIMIT = 20
"""Hits per page when a request leaves ``limit`` at 0 (chat.proto allows 0..50)."""

# A phrase (its closing quote optional), or a run of anything but spaces and quotes; either
# may follow a "-".
_TOKEN = re.compile(r'(-?)(?:"([^"]*)"?|([^\s"]+))')
_WORDLIKE = re.compile(r"[^\W_]")


class SearchIndex(Protocol):
    """What answers a search: PostgreSQL full-text search (``chat_api.storage.search``) today,
    an external engine (OpenSearch) could tomorrow."""

    async def search(self, tenant: str, user_id: str, query: ParsedQuery,
                     filters: SearchFilters, cursor: SearchCursor | None, limit: int
                     ) -> list[SearchHit] | None:
        """The best ``limit`` hits below ``cursor``, best first, from the conversations
        ``user_id`` is a member of (and sees the history of), not deleted. None when
        ``filters.conversation_id`` names a conversation the user is not a member of."""
        ...


def _operand(text: str, prefix: bool = False) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'" + (":*" if prefix else "")


def parse_query(text: str) -> ParsedQuery:
    """The query as a ``to_tsquery`` text; InvalidArgument naming ``query`` when it has more
    than MAX_TERMS words or no word that is not excluded."""
    tokens = list(_TOKEN.finditer(text))
    words = sum(len(m.group(2).split()) if m.group(2) is not None else 1 for m in tokens)
    if words > MAX_TERMS:
        raise InvalidArgument("query", f"must have at most {MAX_TERMS} words")
    # Items: (operand, excluded), or None for an OR between the items on either side.
    items: list[tuple[str, bool] | None] = []  # None: an OR
    for i, m in enumerate(tokens):
        excluded, phrase, word = m.group(1) == "-", m.group(2), m.group(3)
        if phrase is None and not excluded and word == "OR":
            items.append(None)
            continue
        body = phrase if phrase is not None else word
        if not _WORDLIKE.search(body):
            continue
        last = (i == len(tokens) - 1 and phrase is None and not excluded
                and not text[-1:].isspace())
        items.append((_operand(body, prefix=last), excluded))
    groups: list[list[str]] = []   # AND of ORs
    excluded_items: list[str] = []
    pending_or = False
    for item in items:
        if item is None:
            pending_or = bool(groups)
            continue
        operand, excluded = item
        if excluded:
            excluded_items.append("!" + operand)
            pending_or = False
        elif pending_or:
            groups[-1].append(operand)
            pending_or = False
        else:
            groups.append([operand])
    if not groups:
        raise InvalidArgument("query", "must contain a word to find (letters or digits, "
                                       "not only excluded words)")
    parts = ["(" + " | ".join(g) + ")" if len(g) > 1 else g[0] for g in groups]
    return ParsedQuery(text, " & ".join(parts + excluded_items))


def _request_hash(query: str, filters: SearchFilters) -> str:
    key = "\x00".join((query, filters.conversation_id or "", filters.sender_id or "",
                       filters.after.isoformat() if filters.after else "",
                       filters.before.isoformat() if filters.before else ""))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def search_token(query: str, filters: SearchFilters, cursor: SearchCursor) -> str:
    return page_tokens.encode({"k": "s", "h": _request_hash(query, filters),
                               "r": cursor.score, "i": cursor.message_id})


def parse_search_token(token: str, query: str, filters: SearchFilters) -> SearchCursor:
    data = page_tokens.decode(token)
    score, mid = data.get("r"), data.get("i")
    try:
        if (data.get("k") != "s" or data.get("h") != _request_hash(query, filters)
                or not isinstance(score, float | int) or isinstance(score, bool)
                or not math.isfinite(score) or not isinstance(mid, str)):
            raise ValueError
        uuid.UUID(mid)
    except ValueError:
        raise InvalidArgument("page_token", "is not a valid page token for this search") \
            from None
    return SearchCursor(float(score), mid)


class SearchService:
    def __init__(self, index: SearchIndex) -> None:
        self._index = index

    async def search(self, caller: Principal, query: str, filters: SearchFilters, limit: int,
                     page_token: str) -> Page[SearchHit]:
        """A page of hits (chat.proto's rules on the fields hold already)."""
        if filters.conversation_id is not None:
            filters = SearchFilters(validation.conversation_id(filters.conversation_id),
                                    filters.sender_id, filters.after, filters.before)
        parsed = parse_query(query)
        size = limit or DEFAULT_LIMIT
        cursor = parse_search_token(page_token, query, filters) if page_token else None
        hits = await self._index.search(caller.tenant_id, caller.user_id, parsed, filters,
                                        cursor, size + 1)
        if hits is None:
            raise NotFound(NOT_FOUND)
        token = ""
        if len(hits) > size:
            hits = hits[:size]
            last = hits[-1]
            token = search_token(query, filters, SearchCursor(last.score, last.message.id))
        return Page(hits, token)
