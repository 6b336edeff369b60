"""What keeps one GraphQL operation from costing more than a caller should be able to ask for.

A GraphQL query can ask for a lot in few bytes (a list inside a list inside a list), so each
operation is measured before it runs, and refused with ``GRAPHQL_VALIDATION_FAILED`` when it
is over a limit (docs/graphql.md, settings GRAPHQL_*):

- size: the query text's bytes, before it is parsed;
- tokens: the parser stops after so many tokens (strawberry's MaxTokensLimiter);
- depth: nesting of fields (strawberry's QueryDepthLimiter, fragments followed);
- aliases: a field asked for many times under different names (MaxAliasesLimiter);
- cost (``operation_cost``): every field costs 1, and what a list field with ``first``
  selects costs ``first`` times over, so ``viewer.conversations(first: 50)`` with a
  ``messages(first: 20)`` inside costs about 50 x 20 x its fields. It is worked out from the
  query and its variables alone, before any call is made.

Batching (a JSON array of operations in one request) is off: strawberry refuses it unless a
schema enables it. And whatever an operation asks for, each RPC it makes counts against the
caller's rate limit of that RPC's class, as over gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from strawberry.extensions import SchemaExtension

from chat_api.transport.graphql_errors import refused

DEFAULT_FIRST = 20
"""What a list field without ``first`` returns (the schema's default), for its cost."""


def operation_cost(document: DocumentNode, operation_name: str | None,
                   variables: Mapping[str, Any] | None) -> int:
    """The cost of the operation ``operation_name`` of ``document`` (the only one when None).

    The document need not be valid: unknown fragments cost nothing, and a fragment that spreads
    itself is counted once (validation refuses it anyway).
    """
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if not operations:
        return 0
    return _selection_cost(operations[0].selection_set, fragments, variables or {}, frozenset())


def _selection_cost(selection_set: SelectionSetNode | None,
                    fragments: Mapping[str, FragmentDefinitionNode],
                    variables: Mapping[str, Any], spreading: frozenset[str]) -> int:
    if selection_set is None:
        return 0
    total = 0
    for node, now_spreading in _fields(selection_set, fragments, spreading):
        inner = _selection_cost(node.selection_set, fragments, variables, now_spreading)
        total += 1 + _first(node, variables) * inner
    return total


def _fields(selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode],
            spreading: frozenset[str]) -> Iterator[tuple[FieldNode, frozenset[str]]]:
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection, spreading
        elif isinstance(selection, InlineFragmentNode):
            yield from _fields(selection.selection_set, fragments, spreading)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in spreading:
                yield from _fields(fragment.selection_set, fragments, spreading | {name})


def _first(node: FieldNode, variables: Mapping[str, Any]) -> int:
    """How many times over a field's selection counts: its ``first``, else 1 (not a list of
    pages) or DEFAULT_FIRST (a connection without ``first``)."""
    for argument in node.arguments or ():
        if argument.name.value != "first":
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            return max(int(value.value), 1)
        if isinstance(value, VariableNode):
            given = variables.get(value.name.value)
            if isinstance(given, int) and not isinstance(given, bool):
                return max(given, 1)
        return DEFAULT_FIRST
    return DEFAULT_FIRST if node.name.value in _CONNECTIONS else 1


_CONNECTIONS = frozenset({"conversations", "messages", "thread", "search", "toDeviceMessages"})
"""The schema's list fields that take ``first`` (a default page when it is left out)."""


class QuerySizeLimit(SchemaExtension):
    """Refuses an operation whose text is larger than ``max_query_bytes``, before it is parsed.

    Built per operation by the schema (``lambda: QuerySizeLimit(...)``), ahead of the parser.
    """

    def __init__(self, *, max_query_bytes: int) -> None:
        super().__init__()
        self._max_bytes = max_query_bytes

    def on_parse(self) -> Iterator[None]:
        query = self.execution_context.query
        # A character is at most 4 bytes: only a query that may be too large is encoded.
        if query is not None and len(query) * 4 > self._max_bytes:
            size = len(query.encode())
            if size > self._max_bytes:
                raise refused(f"the query is {size} bytes; at most {self._max_bytes}")
        yield None


class CostLimit(SchemaExtension):
    """Refuses a valid operation whose cost (``operation_cost``) is over ``max_cost``, before
    it runs. Listed after strawberry's ValidationCache, which sets the validation's errors."""

    def __init__(self, *, max_cost: int) -> None:
        super().__init__()
        self._max_cost = max_cost

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and not context.pre_execution_errors:
            cost = operation_cost(context.graphql_document, context.operation_name,
                                  context.variables)
            if cost > self._max_cost:
                # strawberry answers these errors alone, and runs nothing.
                context.pre_execution_errors = [refused(
                    f"the operation's cost is {cost}; at most {self._max_cost} (each field "
                    f"costs 1, and a list's fields count `first` times over)")]
        yield None
