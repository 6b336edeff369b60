"""The GraphQL schema: its committed SDL is fresh, every RPC has its field, and the cost of an
operation (graphql_limits.operation_cost) is what its docstring says."""

from __future__ import annotations

from graphql import parse

from chat_api.transport.graphql_endpoint import schema_sdl
from chat_api.transport.graphql_limits import DEFAULT_FIRST, operation_cost
from chat_api.transport.graphql_schema import FIELD_RPCS
from chat_api.transport.rate_classes import RATE_CLASSES
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import ROOT

COMMITTED = ROOT / "services" / "api" / "schema.graphql"


def test_committed_sdl_is_fresh() -> None:
    assert COMMITTED.read_text() == schema_sdl(), (
        "services/api/schema.graphql is stale: run `uv run python scripts/gen_graphql_schema.py`")


def test_every_rpc_has_a_field_and_a_rate_class() -> None:
    rpcs = {m.name for m in chat_pb2.DESCRIPTOR.services_by_name["ChatService"].methods}
    assert set(FIELD_RPCS.values()) == rpcs
    assert rpcs <= set(RATE_CLASSES)


def test_every_listed_field_is_in_the_sdl() -> None:
    sdl = schema_sdl()
    for path in FIELD_RPCS:
        assert f"  {path.rsplit('.', 1)[-1]}(" in sdl or f"  {path}:" in sdl, path


def cost(query: str, **variables: object) -> int:
    return operation_cost(parse(query), None, variables)


def test_each_field_costs_one_and_lists_multiply() -> None:
    assert cost("{ viewer { conversations(first: 1) { pageInfo { hasNextPage } } } }") == 4
    # viewer 1 + conversations (1 + 50 x (edges 1 + node 1 + id 1 + title 1))
    assert cost("{ viewer { conversations(first: 50) { edges { node { id title } } } } }") \
        == 1 + 1 + 50 * 4
    nested = """{ viewer { conversations(first: 10) { edges { node {
        messages(first: 10) { edges { node { id } } } } } } } }"""
    assert cost(nested) == 1 + 1 + 10 * (1 + 1 + 1 + 10 * 3)


def test_a_list_without_first_counts_the_default_page() -> None:
    assert cost("{ viewer { conversations { edges { node { id } } } } }") \
        == 2 + DEFAULT_FIRST * 3


def test_variables_and_fragments_count() -> None:
    query = """query($n: Int!) { viewer { conversations(first: $n) { ...Page } } }
               fragment Page on ConversationConnection { edges { node { id } } }"""
    assert cost(query, n=7) == 2 + 7 * 3
    assert cost(query) == 2 + DEFAULT_FIRST * 3  # a variable not given: the default page


def test_a_fragment_that_spreads_itself_is_counted_once() -> None:
    query = """{ viewer { ...A } } fragment A on Viewer { conversations(first: 1) { pageInfo {
               hasNextPage } } ...A }"""
    assert cost(query) == 1 + 3


def test_the_named_operation_is_the_one_measured() -> None:
    doc = parse("""query Small { viewer { conversations(first: 1) { pageInfo { hasNextPage } } } }
                   query Big { viewer { conversations(first: 90) { edges { node { id } } } } }""")
    assert operation_cost(doc, "Small", None) == 4
    assert operation_cost(doc, "Big", None) == 2 + 90 * 3
    assert operation_cost(doc, "Missing", None) == 0


def test_an_unexpected_error_is_masked_and_a_query_error_keeps_its_message() -> None:
    from graphql import GraphQLError

    from chat_api.transport.graphql_endpoint import _coded

    bug = _coded(GraphQLError("db password is hunter2", path=["viewer"],
                              original_error=ValueError("db password is hunter2")))
    assert bug.message == "internal error" and bug.extensions == {"code": "INTERNAL"}
    assert bug.path == ["viewer"]
    query = _coded(GraphQLError("Cannot query field 'nope' on type 'Viewer'."))
    assert query.message == "Cannot query field 'nope' on type 'Viewer'."
    assert query.extensions == {"code": "GRAPHQL_VALIDATION_FAILED"}
    coded = GraphQLError("x", extensions={"code": "NOT_FOUND"})
    assert _coded(coded) is coded
