"""The settings of GraphQL: the API's /graphql and the gateway's subscriptions (docs/graphql.md).

Shared, because both processes serve the same schema's operations and must refuse the same ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chat_shared.config import BaseSection

Switch = Literal["auto", "on", "off"]
"""auto: on only with ENVIRONMENT=development."""


class GraphQLSettings(BaseSection):
    """GraphQL over HTTP (chat-api) and its subscriptions (chat-ws-gateway)."""

    graphql_enabled: bool = Field(
        True, description="serve /graphql: queries and mutations on chat-api's HTTP port, "
                          "subscriptions on chat-ws-gateway's WebSocket port")
    graphql_introspection: Switch = Field(
        "auto", description="answer introspection queries (__schema, __type): on, off, or auto "
                            "(on only with ENVIRONMENT=development)")
    graphql_ide: Switch = Field(
        "auto", description="serve the GraphiQL page at GET /graphql (its scripts come from "
                            "this server, no CDN): on, off, or auto (on only with "
                            "ENVIRONMENT=development)")
    graphql_max_depth: int = Field(10, ge=1, le=100,
                                   description="deepest nesting of fields an operation may have")
    graphql_max_cost: int = Field(
        10_000, ge=1, description="an operation's largest cost: each field costs 1, and a list "
                                  "field's selection counts `first` times over")
    graphql_max_aliases: int = Field(30, ge=0, description="aliases an operation may use")
    graphql_max_tokens: int = Field(
        5_000, ge=100, description="tokens the parser reads before it refuses an operation")
    graphql_max_query_bytes: int = Field(
        16_384, ge=1024, description="bytes of an operation's text (the query, not its "
                                     "variables)")

    def graphql_switch(self, value: Switch, development: bool) -> bool:
        return value == "on" or (value == "auto" and development)
