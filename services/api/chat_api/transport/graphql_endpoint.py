"""GraphQL at ``/graphql`` on the API's HTTP port: strawberry's aiohttp view over the schema.

It is mounted on the HTTP gateway's aiohttp application, so a GraphQL request gets what every
HTTP request gets there (request id, server span, CORS, gzip, the access log line), and each
RPC it makes goes through the shared Dispatcher (``graphql_calls``). What is GraphQL's own:

- the limits of ``graphql_limits``, applied before an operation runs;
- introspection and the GraphiQL page only where GRAPHQL_INTROSPECTION / GRAPHQL_IDE say
  (``auto``: only with ENVIRONMENT=development), the page's scripts served from this process
  (``graphql_ide``), never from a CDN;
- no GET operations (a query in a URL lands in access logs and caches) and no batching;
- an error that is not a ChatService error (a bug in a resolver) reaches the caller as
  ``INTERNAL`` with no detail and is logged with its traceback, as the Dispatcher does.

Why strawberry: it is maintained, typed (the schema is Python classes mypy checks), speaks
aiohttp (the gateway's server) and graphql-transport-ws, and ships the safety extensions
(depth, aliases, tokens, introspection) so they need not be written here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import hdrs, web
from graphql import GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry import Schema
from strawberry.aiohttp.views import GraphQLView
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionContext, ExecutionResult

from chat_api.transport import graphql_ide
from chat_api.transport.dispatch import GRPC_TIMEOUT_HEADER, Dispatcher, http_timeout
from chat_api.transport.graphql_calls import GraphQLCaller
from chat_api.transport.graphql_errors import GRAPHQL_VALIDATION_FAILED
from chat_api.transport.graphql_executor import ChatExecutor
from chat_api.transport.graphql_limits import CostLimit, QuerySizeLimit
from chat_api.transport.graphql_schema import Mutation, Query, config
from chat_shared.graphql_settings import GraphQLSettings
from chat_shared.observability.logging import get_logger
from chat_shared.replica_reads import READ_AFTER_HEADER

log = get_logger("chat_api.graphql")

PATH = "/graphql"
CACHED_OPERATIONS = 256
"""Distinct operation texts whose parse and validation are remembered (per process)."""


def _coded(error: GraphQLError) -> GraphQLError:
    """The error with ``extensions.code``; an unexpected one masked (and logged)."""
    if error.extensions and "code" in error.extensions:
        return error
    if error.original_error is None or isinstance(error.original_error, GraphQLError):
        # The operation itself: syntax, validation, a variable's value.
        return GraphQLError(error.message, error.nodes, error.source, error.positions,
                            error.path, extensions={"code": GRAPHQL_VALIDATION_FAILED})
    log.error("graphql_failed", path=error.path, exc_info=error.original_error)
    return GraphQLError("internal error", error.nodes, error.source, error.positions,
                        error.path, extensions={"code": "INTERNAL"})


class ChatSchema(Schema):
    def process_errors(self, errors: list[GraphQLError],
                       execution_context: ExecutionContext | None = None) -> None:
        # strawberry logs every error with its traceback: the Dispatcher has logged each call
        # already, and _Errors logs the unexpected ones.
        return None


def build_schema(settings: GraphQLSettings, development: bool) -> ChatSchema:
    """The API's GraphQL schema with the limits and switches of ``settings``.

    Parsing and validating an operation cost more than running the inbox query's 50
    conversations (2.7 of 11 ms, measured on a loaded machine), and clients send the same few
    operations again and again: both are cached (bounded LRU caches keyed by the query's text,
    and by the document and rules). The validation rules are built once, here, so that the
    cache's key is the same from one request to the next.
    """
    rules = (*QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
             *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules)
    if not settings.graphql_switch(settings.graphql_introspection, development):
        rules = (*rules, NoSchemaIntrospectionCustomRule)
    # Order matters: the size check before the parser, the rules before validation, the cost
    # after it (ValidationCache sets the validation's errors).
    extensions: list[Callable[[], SchemaExtension]] = [
        lambda: QuerySizeLimit(max_query_bytes=settings.graphql_max_query_bytes),
        lambda: MaxTokensLimiter(max_token_count=settings.graphql_max_tokens),
        lambda: ParserCache(maxsize=CACHED_OPERATIONS),
        lambda: AddValidationRules(list(rules)),
        lambda: ValidationCache(maxsize=CACHED_OPERATIONS),
        lambda: CostLimit(max_cost=settings.graphql_max_cost),
    ]
    return ChatSchema(query=Query, mutation=Mutation, config=config(), extensions=extensions,
                      execution_context_class=ChatExecutor)


def schema_sdl() -> str:
    """The schema's SDL as committed in services/api/schema.graphql."""
    return str(Schema(query=Query, mutation=Mutation, config=config())) + "\n"


class ChatGraphQLView(GraphQLView[GraphQLCaller, None]):
    """strawberry's aiohttp view, with the caller's context and the offline GraphiQL page."""

    allow_queries_via_get = False

    def __init__(self, schema: Schema, dispatcher: Dispatcher, ide: bool,
                 request_id: Callable[[web.Request], str],
                 client_address: Callable[[web.Request], str]) -> None:
        super().__init__(schema, graphql_ide="graphiql" if ide else None,
                         allow_queries_via_get=False, subscription_protocols=())
        self._dispatcher = dispatcher
        self._request_id = request_id
        self._client_address = client_address

    async def get_context(self, request: web.Request, response: Any) -> GraphQLCaller:
        return GraphQLCaller(
            dispatcher=self._dispatcher,
            authorization=request.headers.get(hdrs.AUTHORIZATION),
            request_id=self._request_id(request),
            client_address=lambda: self._client_address(request),
            read_after=request.headers.get(READ_AFTER_HEADER),
            response_headers=response.headers if response is not None else None,
            timeout=http_timeout(request.headers.get(GRPC_TIMEOUT_HEADER)))

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)  # its JSONDecodeError is json's: strawberry answers 400

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    def create_response(self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
                        sub_response: web.Response) -> web.Response:
        # The bytes as orjson writes them (strawberry's own decodes them to text first).
        sub_response.body = orjson.dumps(response_data)
        sub_response.content_type = "application/json"
        return sub_response

    async def process_result(self, request: web.Request,
                             result: ExecutionResult) -> GraphQLHTTPResponse:
        # Here, not in a schema extension: every answer passes here, including those of an
        # operation that failed before it ran (a syntax error found by the parser cache).
        if result.errors:
            result.errors = [_coded(e) for e in result.errors]
        return await super().process_result(request, result)

    async def render_graphql_ide(self, request: web.Request) -> web.Response:
        return web.Response(text=graphql_ide.page(PATH), content_type="text/html")


def mount(app: web.Application, schema: Schema, dispatcher: Dispatcher, *, ide: bool,
          request_id: Callable[[web.Request], str],
          client_address: Callable[[web.Request], str] = lambda request: request.remote or "",
          ) -> None:
    """Adds ``/graphql`` (and the IDE's assets when ``ide``) to the gateway's application."""
    view = ChatGraphQLView(schema, dispatcher, ide, request_id, client_address)
    # GET for the IDE's page (operations in a URL are refused), POST for operations; named,
    # not "*", so that a CORS preflight is answered with the methods that exist.
    app.router.add_route("GET", PATH, view)
    app.router.add_route("POST", PATH, view)
    if ide:
        graphql_ide.add_asset_routes(app, PATH)
