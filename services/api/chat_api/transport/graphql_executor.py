"""graphql-core's executor with a short path for the fields that are plain attributes.

Most fields of an answer are scalars read off an object the resolvers built: the inbox page
(``viewer.conversations(first: 50)`` with unread counts and last messages) has about 600, and
only one resolver of its own. For each such field graphql-core makes a ``Path``, builds a
``GraphQLResolveInfo``, looks for arguments, calls strawberry's default resolver (which reads
the attribute through two more calls and ignores the rest) and completes the value through
the general path (non-null, list, leaf, abstract, object). Profiled with py-spy on the API
while the graphql bench phase ran, completing the page's fields took about half of the GraphQL
request's CPU (24% of the API process's, against 14% for the call to GetConversations that
produced the data), which is most of what the GraphQL path costs beyond the HTTP/JSON one.

``ChatExecutor.execute_fields`` answers a plain field (strawberry's default resolver, no
arguments, a scalar or enum type, maybe non-null) itself: the attribute, then the type's
``coerce_output_value``, as ``complete_leaf_value`` does. The other fields of the object go
the general way, and so does a plain field whose value is null where it may not be, whose
reading or coercion fails, so graphql-core raises its error with its path as ever. The answer
keeps the fields in the operation's order. ``tests/unit/test_graphql_executor.py`` holds the
two paths to the same answers and errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from graphql import GraphQLField, GraphQLNonNull, GraphQLObjectType, Undefined, is_leaf_type
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.pyutils import AwaitableOrValue, Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.field import StrawberryField

_NOT_PLAIN = object()

_Plain = tuple[Callable[[Any, str], Any], str, Callable[[Any], Any], bool]
"""How to answer a plain field: the default resolver, the attribute's name, the type's
coercion, and whether the field is non-null."""


def _plain_of(field: GraphQLField) -> _Plain | None:
    """How to answer ``field`` when it is plain (module docstring); None when it is not."""
    definition = (field.extensions or {}).get("strawberry-definition")
    if (field.args or not getattr(field.resolve, "_is_default", False)
            or not isinstance(definition, StrawberryField) or not definition.is_basic_field):
        return None
    field_type, non_null = field.type, False
    if isinstance(field_type, GraphQLNonNull):
        field_type, non_null = field_type.of_type, True
    if not is_leaf_type(field_type):
        return None
    return (definition.default_resolver, definition.python_name,
            field_type.coerce_output_value, non_null)


def plain_value(field: GraphQLField, source: Any) -> Any:
    """The answer of a plain field of ``source``; ``_NOT_PLAIN`` when the field is not plain,
    or when the general path must answer it (a null where it may not be, a failure)."""
    known = _KNOWN.get(id(field))
    if known is None or known[0] is not field:
        if len(_KNOWN) >= _MAX_KNOWN:
            _KNOWN.clear()
        known = _KNOWN[id(field)] = (field, _plain_of(field))
    plain = known[1]
    if plain is None:
        return _NOT_PLAIN
    resolver, name, coerce, non_null = plain
    try:
        value = resolver(source, name)
        if value is None or value is Undefined:
            return _NOT_PLAIN if non_null else None
        coerced = coerce(value)
    except Exception:  # noqa: BLE001 - the general path raises it again, with its path
        return _NOT_PLAIN
    return _NOT_PLAIN if coerced is None or coerced is Undefined else coerced


_KNOWN: dict[int, tuple[GraphQLField, _Plain | None]] = {}
"""``_plain_of`` of each field seen, by the field's identity (a GraphQLField is not hashable);
the field is kept with it, so an id is never another field's."""
_MAX_KNOWN = 10_000
"""A process has one schema (of a few hundred fields); tests build many."""


class ChatExecutor(StrawberryGraphQLCoreExecutionContext):
    """The executor of the API's GraphQL schema (module docstring)."""

    def execute_fields(self, parent_type: GraphQLObjectType, source_value: Any,
                       path: Path | None, grouped_field_set: GroupedFieldSet,
                       position_context: Any) -> AwaitableOrValue[dict[str, Any]]:
        middleware = self.middleware_manager
        if middleware is not None and middleware.middlewares:  # may wrap any field
            return super().execute_fields(parent_type, source_value, path, grouped_field_set,
                                          position_context)
        fields = parent_type.fields
        answered: dict[str, Any] = {}
        rest: GroupedFieldSet | None = None
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            field = fields.get(node.name.value)
            value = (_NOT_PLAIN if field is None or node.arguments
                     else plain_value(field, source_value))
            if value is _NOT_PLAIN:
                if rest is None:
                    rest = {}
                rest[response_name] = field_details_list
            else:
                answered[response_name] = value
        if rest is None:
            return answered
        if not answered:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set,
                                          position_context)
        others = super().execute_fields(parent_type, source_value, path, rest,
                                        position_context)
        if self.is_awaitable(others):
            return _merged_later(grouped_field_set, answered, others)
        return _merged(grouped_field_set, answered, others)  # type: ignore[arg-type]


def _merged(order: GroupedFieldSet, answered: dict[str, Any], others: dict[str, Any]
            ) -> dict[str, Any]:
    """Both parts of an object's answer, its fields in the operation's order (a field the
    general path left out, as graphql-core does an unknown one, stays out)."""
    return {name: answered[name] if name in answered else others[name]
            for name in order if name in answered or name in others}


async def _merged_later(order: GroupedFieldSet, answered: dict[str, Any],
                        others: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return _merged(order, answered, await others)
