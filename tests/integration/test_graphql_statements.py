"""How many SQL statements a GraphQL operation runs, counted on the API's own connections.

The API's pool is given a connection class that counts each statement it sends (every unit of
work goes through ``AsyncConnection.execute``), so the count is PostgreSQL's work for the
operation, nothing estimated. ``viewer.conversations`` with unread counts and last messages
must cost the same few statements for 5 conversations as for 50; a nested per-conversation
list (messages of each conversation) is one call per conversation, which the counter sees too
(so the count can fail) and the cost limit bounds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from tests.helpers import create_conversation, send
from tests.integration.test_graphql import run

CONVERSATIONS = 60
INBOX = """query($n: Int!) { viewer { conversations(first: $n) {
    edges { node { id title unreadCount lastReadSeq lastMessage { id content seq senderId
                   createdAt reactions { emoji count } attachments { id } } } }
    pageInfo { hasNextPage endCursor } } } }"""
WITH_MESSAGES = """query($n: Int!) { viewer { conversations(first: $n) {
    edges { node { id messages(first: 1) { edges { node { id } } } } } } } }"""


class CountingConnection(psycopg.AsyncConnection[Any]):
    """Counts the statements sent while ``counting`` is on, and keeps their text."""

    counting = False
    statements: list[str] = []

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if CountingConnection.counting:
            CountingConnection.statements.append(str(query)[:80])
        return await super().execute(query, *args, **kwargs)


@pytest.fixture
async def counted_api(api_settings_factory: Callable[..., Any]) -> AsyncIterator[Any]:
    from chat_api.app import build_app

    # No background probes during a count: one at start, then none for the test's length.
    app = build_app(api_settings_factory(health_check_interval=3600, tenant_cache_ttl=5))
    app.db.pool.connection_class = CountingConnection
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


async def statements_of(app: Any, query: str, **variables: Any) -> tuple[int, Any]:
    CountingConnection.statements = []
    CountingConnection.counting = True
    try:
        data = await run(app, query, "alice", **variables)
    finally:
        CountingConnection.counting = False
    return len(CountingConnection.statements), data


async def test_viewer_conversations_runs_a_bounded_number_of_statements(counted_api, channel):
    from chat_shared.protos.chat.v1 import chat_pb2_grpc

    stub = chat_pb2_grpc.ChatServiceStub(channel)
    for i in range(CONVERSATIONS):
        conv = await create_conversation(stub, "alice", [f"friend-{i}"])
        await send(stub, f"friend-{i}", conv.id, f"hello {i}")
    await run(counted_api, INBOX, n=1)  # the tenant's registry entry is read once, and cached

    small, data5 = await statements_of(counted_api, INBOX, n=5)
    large, data50 = await statements_of(counted_api, INBOX, n=50)
    edges = data50["viewer"]["conversations"]["edges"]
    assert len(data5["viewer"]["conversations"]["edges"]) == 5 and len(edges) == 50
    assert all(e["node"]["unreadCount"] == 1 and e["node"]["lastMessage"]["content"]
               for e in edges)
    print(f"viewer.conversations: first 5 -> {small} statements, first 50 -> {large}: "
          f"{CountingConnection.statements}")
    # GetConversations' one statement, plus at most the SET of the tenant on a connection
    # that named another one (in the same pipeline): never a statement per conversation.
    assert small <= 2 and large <= 2

    nested5, _ = await statements_of(counted_api, WITH_MESSAGES, n=5)
    nested50, _ = await statements_of(counted_api, WITH_MESSAGES, n=50)
    print(f"with messages(first: 1) per conversation: {nested5} and {nested50} statements")
    assert nested50 >= 50 > nested5  # one GetMessages per conversation: the counter sees it
