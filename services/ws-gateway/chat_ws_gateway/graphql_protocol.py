"""GraphQL subscriptions over graphql-transport-ws: the messages, the subscription's checks, and
each event rendered as the subscription's selection asks. No I/O here.

The protocol (github.com/enisdenjo/graphql-ws, PROTOCOL.md) in short: the client opens the
socket with the subprotocol ``graphql-transport-ws``, sends ``connection_init`` (its payload
may carry the token: ``{"authorization": "Bearer <token>"}``), the server answers
``connection_ack``; then ``subscribe`` ``{id, payload: {query, variables, operationName}}``,
the server sends ``next`` for each event and ``error`` for an operation it refuses, either side
``complete``\\s a subscription, and ``ping``/``pong`` work both ways.

The schema is ``subscriptions.graphql`` beside this module. An operation is checked once, at
``subscribe`` (size, tokens, aliases, introspection, validation, arguments); each event is then
executed against the operation's selection (graphql-core, with the event as the root value), so
aliases, fragments and ``@skip``/``@include`` mean what GraphQL says they mean.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    OperationType,
    Undefined,
    build_schema,
    execute_sync,
    parse,
    specified_rules,
    validate,
    value_from_ast_untyped,
)

from chat_shared.graphql_settings import GraphQLSettings

SUBPROTOCOL = "graphql-transport-ws"

# Close codes of the protocol.
CLOSE_BAD_MESSAGE = 4400
"""A message that is not the protocol's (or not JSON)."""
CLOSE_UNAUTHORIZED = 4401
"""``subscribe`` before ``connection_ack``."""
CLOSE_FORBIDDEN = 4403
"""``connection_init`` without valid credentials."""
CLOSE_INIT_TIMEOUT = 4408
"""No ``connection_init`` in time."""
CLOSE_SUBSCRIBER_EXISTS = 4409
"""``subscribe`` with the id of a subscription that is still running."""
CLOSE_TOO_MANY_INITS = 4429
"""A second ``connection_init``."""

_SDL = resources.files("chat_ws_gateway").joinpath("subscriptions.graphql").read_text()
SCHEMA: GraphQLSchema = build_schema(_SDL)
# The same types with Subscription as the query root: an event is rendered by executing the
# subscription's selection as a query whose root value is the event.
_EVENT_SCHEMA: GraphQLSchema = build_schema(
    _SDL.replace("query: Query\n  subscription: Subscription", "query: Subscription"))

# Native error codes of error frames -> the gRPC status names GraphQL errors carry.
_CODES = {"not_found": "NOT_FOUND", "unavailable": "UNAVAILABLE", "bad_frame": "INVALID_ARGUMENT"}


class BadMessage(Exception):
    """A client message the protocol does not allow: the socket closes with 4400."""


class Refused(Exception):
    """A ``subscribe`` whose operation is refused; ``errors`` go out in an ``error`` message."""

    def __init__(self, *messages: str, code: str = "GRAPHQL_VALIDATION_FAILED") -> None:
        super().__init__(messages[0])
        self.errors = [{"message": m, "extensions": {"code": code}} for m in messages]


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: str
    id: str | None
    payload: Any


@dataclass(frozen=True, slots=True)
class Subscription:
    """A checked ``conversationEvents`` subscription."""

    id: str
    conversation_ids: frozenset[str]
    since: dict[str, int] | None
    """Resume positions by conversation; None: live from now."""
    root_key: str
    _document: DocumentNode
    _variables: dict[str, Any]
    _operation_name: str | None

    def render(self, frame: dict[str, Any]) -> str:
        """The ``next`` message of an event frame (a native /v1/ws frame, parsed)."""
        event = {"type": frame.get("type"), "conversationId": frame.get("conversation_id"),
                 "pos": frame.get("pos"), "eventId": frame.get("event_id"), "event": frame}
        result = execute_sync(_EVENT_SCHEMA, self._document,
                              root_value={"conversationEvents": event},
                              variable_values=self._variables,
                              operation_name=self._operation_name)
        return encode({"id": self.id, "type": "next", "payload": result.formatted})

    def render_error(self, frame: dict[str, Any]) -> str:
        """The ``next`` message of a native error frame (a conversation refused, a failed
        catch-up): an error at the subscription's field, with the conversation's id."""
        extensions: dict[str, Any] = {"code": _CODES.get(str(frame.get("code")), "INTERNAL")}
        if frame.get("conversation_id"):
            extensions["conversationId"] = frame["conversation_id"]
        return encode({"id": self.id, "type": "next", "payload": {
            "data": None, "errors": [{"message": str(frame.get("message", "")),
                                      "path": [self.root_key], "extensions": extensions}]}})


def encode(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def parse_message(text: str) -> ClientMessage:
    """A client message; raises BadMessage."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadMessage("message is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise BadMessage("message must be an object with a string type")
    kind = data["type"]
    if kind not in ("connection_init", "ping", "pong", "subscribe", "complete"):
        raise BadMessage(f"unknown message type {kind[:40]!r}")
    sid = data.get("id")
    if kind in ("subscribe", "complete") and (not isinstance(sid, str) or not sid
                                              or len(sid) > 128):
        raise BadMessage(f"{kind} needs an id (a string of 1 to 128 characters)")
    payload = data.get("payload")
    if kind == "subscribe" and not isinstance(payload, dict):
        raise BadMessage("subscribe needs a payload object with the query")
    return ClientMessage(kind, sid if isinstance(sid, str) else None, payload)


def token_of(payload: Any) -> str | None:
    """The bearer token of a ``connection_init`` payload (``authorization`` or
    ``Authorization``: "Bearer <token>"; or ``token``)."""
    if not isinstance(payload, dict):
        return None
    header = payload.get("authorization", payload.get("Authorization"))
    if isinstance(header, str):
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    given = payload.get("token")
    return given if isinstance(given, str) and given else None


def prepare(sid: str, payload: dict[str, Any], settings: GraphQLSettings, *,
            introspection: bool, max_conversations: int) -> Subscription:
    """Checks a ``subscribe`` payload; raises Refused with what is wrong."""
    query = payload.get("query")
    if not isinstance(query, str):
        raise Refused("payload.query must be the operation's text")
    if len(query.encode()) > settings.graphql_max_query_bytes:
        raise Refused(f"the query is more than {settings.graphql_max_query_bytes} bytes")
    variables = payload.get("variables") or {}
    name = payload.get("operationName")
    if not isinstance(variables, dict) or (name is not None and not isinstance(name, str)):
        raise Refused("payload.variables must be an object, operationName a string")
    try:
        document = parse(query, max_tokens=settings.graphql_max_tokens)
    except GraphQLError as exc:
        raise Refused(exc.message) from None
    rules = list(specified_rules)
    if not introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    errors = validate(SCHEMA, document, rules)
    if errors:
        raise Refused(*(e.message for e in errors))
    operation = _operation(document, name)
    if operation.operation != OperationType.SUBSCRIPTION:
        raise Refused("this endpoint serves subscriptions; queries and mutations go to the "
                      "API's /graphql")
    aliases = _aliases(operation)
    if aliases > settings.graphql_max_aliases:
        raise Refused(f"{aliases} aliases; at most {settings.graphql_max_aliases}")
    root = next((s for s in operation.selection_set.selections if isinstance(s, FieldNode)),
                None)
    if root is None:
        raise Refused("select conversationEvents directly (not through a fragment)")
    ids, since = _arguments(root, variables, max_conversations)
    # Executed per event as a query over the event schema (same types, Subscription as root).
    as_query = OperationDefinitionNode(
        operation=OperationType.QUERY, name=operation.name,
        variable_definitions=operation.variable_definitions, directives=operation.directives,
        selection_set=operation.selection_set)
    document = DocumentNode(definitions=tuple(
        as_query if d is operation else d for d in document.definitions))
    return Subscription(sid, frozenset(ids), since,
                        root.alias.value if root.alias else root.name.value,
                        document, variables, name)


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is not None:
        operations = [o for o in operations if o.name is not None and o.name.value == name]
    if len(operations) != 1:
        raise Refused("name the operation to run (operationName)" if operations
                      else "no such operation")
    return operations[0]


def _aliases(operation: OperationDefinitionNode) -> int:
    count = 0
    stack = [operation.selection_set]
    while stack:
        selection_set = stack.pop()
        for s in selection_set.selections:
            if isinstance(s, FieldNode) and s.alias is not None:
                count += 1
            inner = getattr(s, "selection_set", None)
            if inner is not None:
                stack.append(inner)
    return count


def _arguments(root: FieldNode, variables: dict[str, Any],
               max_conversations: int) -> tuple[list[str], dict[str, int] | None]:
    args = {a.name.value: value_from_ast_untyped(a.value, variables)
            for a in root.arguments or ()}
    raw_ids, raw_since = args.get("conversationIds"), args.get("since")
    if not isinstance(raw_ids, list) or not raw_ids:
        raise Refused("conversationIds must list at least one conversation",
                      code="INVALID_ARGUMENT")
    if len(raw_ids) > max_conversations:
        raise Refused(f"conversationIds lists more than {max_conversations} conversations",
                      code="INVALID_ARGUMENT")
    ids: list[str] = []
    for value in raw_ids:
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            raise Refused(f"conversationIds: {str(value)[:40]!r} is not a conversation id",
                          code="INVALID_ARGUMENT") from None
    if len(set(ids)) != len(ids):
        raise Refused("conversationIds lists a conversation twice", code="INVALID_ARGUMENT")
    if raw_since is None or raw_since is Undefined:  # left out, or a variable not given
        return ids, None
    if not isinstance(raw_since, list) or len(raw_since) != len(ids):
        raise Refused("since must give one position per conversation id",
                      code="INVALID_ARGUMENT")
    since: dict[str, int] = {}
    for cid, value in zip(ids, raw_since, strict=True):
        try:
            position = int(value)
        except (TypeError, ValueError):
            position = -1
        if isinstance(value, bool) or not 0 <= position < 2**63:
            raise Refused("since: each position is an integer >= 0", code="INVALID_ARGUMENT")
        since[cid] = position
    return ids, since
