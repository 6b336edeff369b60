"""The gateway's graphql-transport-ws pieces without a socket: messages, the checks of a
``subscribe``, and an event rendered as the subscription's selection asks."""

from __future__ import annotations

import json
import uuid

import pytest

from chat_shared.graphql_settings import GraphQLSettings
from chat_ws_gateway import graphql_protocol as gp

SETTINGS = GraphQLSettings(_env_file=None)  # type: ignore[call-arg]
CID = str(uuid.uuid4())
QUERY = """subscription($ids: [ID!]!, $since: [Int64!]) {
  conversationEvents(conversationIds: $ids, since: $since) { type conversationId pos eventId event }
}"""


def prepare(query: str = QUERY, introspection: bool = False, **variables: object
            ) -> gp.Subscription:
    return gp.prepare("1", {"query": query, "variables": variables}, SETTINGS,
                      introspection=introspection, max_conversations=3)


def refused(query: str = QUERY, **variables: object) -> list[dict[str, object]]:
    with pytest.raises(gp.Refused) as caught:
        prepare(query, **variables)
    return caught.value.errors


def test_messages() -> None:
    assert gp.parse_message('{"type": "ping"}').type == "ping"
    msg = gp.parse_message('{"type": "subscribe", "id": "a", "payload": {"query": "x"}}')
    assert (msg.type, msg.id, msg.payload) == ("subscribe", "a", {"query": "x"})
    for bad in ("nope", "[]", '{"type": "start"}', '{"type": "subscribe", "payload": {}}',
                '{"type": "subscribe", "id": "a"}', '{"type": "complete"}'):
        with pytest.raises(gp.BadMessage):
            gp.parse_message(bad)


def test_token_of_connection_init() -> None:
    assert gp.token_of({"authorization": "Bearer abc"}) == "abc"
    assert gp.token_of({"Authorization": "bearer abc"}) == "abc"
    assert gp.token_of({"token": "abc"}) == "abc"
    assert gp.token_of({"authorization": "Basic abc"}) is None
    assert gp.token_of(None) is None and gp.token_of({}) is None


def test_arguments() -> None:
    sub = prepare(ids=[CID])
    assert sub.conversation_ids == {CID} and sub.since is None
    assert prepare(ids=[CID], since=[7]).since == {CID: 7}
    literal = prepare(f'subscription {{ conversationEvents(conversationIds: ["{CID}"], '
                      'since: [3]) { type } }')
    assert literal.since == {CID: 3}
    assert "one position per conversation" in str(refused(ids=[CID], since=[1, 2]))
    assert "not a conversation id" in str(refused(ids=["nope"]))
    assert "more than 3" in str(refused(ids=[str(uuid.uuid4()) for _ in range(4)]))
    assert "twice" in str(refused(ids=[CID, CID]))
    assert "at least one" in str(refused(ids=[]))
    assert refused(ids=[CID], since=[-1])[0]["extensions"] == {"code": "INVALID_ARGUMENT"}


def test_what_is_refused_before_it_runs() -> None:
    assert refused("query { subscriptionsOnly }", ids=[CID])[0]["extensions"] == {
        "code": "GRAPHQL_VALIDATION_FAILED"}
    assert refused("subscription { conversationEvents(conversationIds: []) { nope } }")
    assert refused("subscription { __schema { types { name } } }")
    prepare("subscription($ids: [ID!]!) { conversationEvents(conversationIds: $ids) { type "
            "__typename } }", introspection=True, ids=[CID])
    aliases = " ".join(f"a{i}: type" for i in range(SETTINGS.graphql_max_aliases + 1))
    assert "aliases" in str(refused(
        f"subscription($ids: [ID!]!) {{ conversationEvents(conversationIds: $ids) {{ {aliases} "
        "} }", ids=[CID]))
    assert "bytes" in str(refused(QUERY + " " * SETTINGS.graphql_max_query_bytes, ids=[CID]))


def test_an_event_is_rendered_as_selected() -> None:
    sub = prepare("""subscription S($ids: [ID!]!, $full: Boolean!) {
        live: conversationEvents(conversationIds: $ids) {
          kind: type pos ...More event @include(if: $full) } }
        fragment More on ConversationEvent { conversationId }""", ids=[CID], full=False)
    frame = {"type": "message.created", "conversation_id": CID, "pos": 4, "event_id": "e",
             "message": {"content": "hi"}}
    out = json.loads(sub.render(frame))
    assert out == {"id": "1", "type": "next", "payload": {"data": {"live": {
        "kind": "message.created", "pos": 4, "conversationId": CID}}}}
    error = json.loads(sub.render_error({"type": "error", "code": "not_found",
                                         "message": "no such conversation",
                                         "conversation_id": CID}))
    assert error["payload"] == {"data": None, "errors": [{
        "message": "no such conversation", "path": ["live"],
        "extensions": {"code": "NOT_FOUND", "conversationId": CID}}]}
