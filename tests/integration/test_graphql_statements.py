"""How many SQL statements a GraphQL operation runs, counted on the API's own connections.

The API's pool is given a connection class that counts each statement it sends (every unit of
work goes through ``AsyncConnection.execute``), so the count is PostgreSQL's work for the
operation, nothing estimated. ``viewer.conversations`` with unread counts and last messages
must cost the same few statements for 5 conversations as for 50, and so must every nested level
below it (each conversation's messages, each message's thread: one batched statement per
level), and several ``conversation(id)`` of one operation. The counter does see a call per
item (so the counts can fail): a level whose calls are not batched shows up as one statement
per item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import auth
from tests.helpers import create_conversation, send
from tests.integration.test_graphql import run

CONVERSATIONS = 60
INBOX = """query($n: Int!) { viewer { conversations(first: $n) {
    edges { node { id title unreadCount lastReadSeq lastMessage { id content seq senderId
                   createdAt reactions { emoji count } attachments { id } } } }
    pageInfo { hasNextPage endCursor } } } }"""
WITH_MESSAGES = """query($n: Int!) { viewer { conversations(first: $n) {
    edges { node { id messages(first: 1) { edges { node { id } } } } } } } }"""
# Three levels: conversations, each one's messages (with their reactions and attachments,
# which come with their message), each message's thread (as deep as the depth limit allows).
NESTED = """query($n: Int!, $m: Int!) { viewer { conversations(first: $n) { edges { node {
    id title unreadCount lastMessage { id }
    messages(first: $m) { edges { cursor node { id seq content deleted
        reactions { emoji count } attachments { id }
        thread(first: 1) { root { id replyCount } pageInfo { hasNextPage } } } }
        pageInfo { endCursor } } } } } } }"""
THREADS = """query($c: ID!, $m: Int!) { conversation(id: $c) { id title role unreadCount
    memberIds lastMessage { id } messages(first: $m) { edges { node { id
        thread(first: 3) { edges { node { id content } } } } } } } }"""


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

    nested5, data5 = await statements_of(counted_api, WITH_MESSAGES, n=5)
    nested50, data50 = await statements_of(counted_api, WITH_MESSAGES, n=50)
    print(f"with messages(first: 1) per conversation: {nested5} and {nested50} statements: "
          f"{CountingConnection.statements}")
    edges = data50["viewer"]["conversations"]["edges"]
    assert len(edges) == 50 and all(len(e["node"]["messages"]["edges"]) == 1 for e in edges)
    # The list's statement and one for every conversation's page, each maybe after a SET.
    assert nested5 <= 4 and nested50 <= 4


async def _threads(stub: Any, conversation: str, roots: int, replies: int) -> None:
    from chat_shared.protos.chat.v1 import chat_pb2

    for r in range(roots):
        root = await send(stub, "alice", conversation, f"root {r}")
        for i in range(replies):
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conversation, content=f"reply {i}",
                idempotency_key=f"{root.id}-{i}",
                thread_root_id=root.id), metadata=auth("alice"))


async def test_each_nested_level_is_one_statement_whatever_the_page_sizes(counted_api, channel):
    from chat_shared.protos.chat.v1 import chat_pb2_grpc

    stub = chat_pb2_grpc.ChatServiceStub(channel)
    convs = [(await create_conversation(stub, "alice", [f"friend-{i}"])).id for i in range(20)]
    for conv in convs:
        await _threads(stub, conv, roots=5, replies=2)
    await run(counted_api, NESTED, n=1, m=1)

    small, small_data = await statements_of(counted_api, NESTED, n=2, m=1)
    large, data = await statements_of(counted_api, NESTED, n=20, m=5)
    print(f"conversations > messages > thread: n=2, m=1 -> {small} statements; "
          f"n=20, m=5 -> {large}: {CountingConnection.statements}")
    edges = data["viewer"]["conversations"]["edges"]
    assert len(edges) == 20
    for edge in edges:
        messages = edge["node"]["messages"]["edges"]
        assert len(messages) == 5
        assert all(m["node"]["thread"]["root"]["replyCount"] == 2 for m in messages)
        assert all(m["node"]["thread"]["pageInfo"]["hasNextPage"] for m in messages)
    assert len(small_data["viewer"]["conversations"]["edges"]) == 2
    # Three levels: three statements, each maybe after a SET of the tenant.
    assert small <= 6 and large <= 6

    for m in (1, 5):
        count, one = await statements_of(counted_api, THREADS, c=convs[0], m=m)
        assert one["conversation"]["role"] == "owner"
        assert len(one["conversation"]["messages"]["edges"]) == m
        assert all([r["node"]["content"] for r in e["node"]["thread"]["edges"]]
                   == ["reply 1", "reply 0"] for e in one["conversation"]["messages"]["edges"])
        print(f"conversation(id) > messages(first: {m}) > thread: {count} statements")
        assert count <= 6

    aliases = " ".join(f'c{i}: conversation(id: "{c}") {{ id title unreadCount }}'
                       for i, c in enumerate(convs))
    count, many = await statements_of(counted_api, f"{{ {aliases} }}")
    print(f"{len(convs)} x conversation(id): {count} statements")
    assert all(many[f"c{i}"]["id"] == c for i, c in enumerate(convs))
    assert count <= 2
