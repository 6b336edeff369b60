"""GraphQL at /graphql, driven by the `gql` client's HTTP transport against the in-process API.

Queries and mutations for every RPC, answers equal to gRPC's, errors with extensions.code and
the duplicate send's original message, the call pipeline (log lines and metrics with
transport "graphql", rate limits per RPC class), and the limits that refuse an operation
before it runs.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import vodozemac
from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import TransportQueryError
from prometheus_client import REGISTRY

from chat_shared.e2ee import MEGOLM_ALGORITHM, device_statement, one_time_key_statement
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, send


def url(app: Any) -> str:
    return f"http://127.0.0.1:{app.http_port}/graphql"


async def run(app: Any, query: str, user: str | None = "alice", **variables: Any) -> Any:
    """The operation's data; raises TransportQueryError when the answer has errors."""
    headers = {"Authorization": f"Bearer {make_token(user)}"} if user else {}
    transport = AIOHTTPTransport(url=url(app), headers=headers)
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        return await session.execute(GraphQLRequest(query, variable_values=variables or None))


async def error_of(app: Any, query: str, user: str | None = "alice",
                   **variables: Any) -> dict[str, Any]:
    """The first error of an operation that must fail."""
    with pytest.raises(TransportQueryError) as caught:
        await run(app, query, user, **variables)
    assert caught.value.errors, caught.value
    return caught.value.errors[0]


async def post(app: Any, body: Any, user: str = "alice",
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            url(app), data=json.dumps(body),
            headers={"Authorization": f"Bearer {make_token(user)}",
                     "Content-Type": "application/json", **(headers or {})}) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


SEND = """
mutation Send($c: ID!, $text: String!, $key: String!, $root: ID) {
  sendMessage(conversationId: $c, content: $text, idempotencyKey: $key, threadRootId: $root) {
    id conversationId senderId content seq threadRootId
  }
}"""

INBOX = """
query Inbox($first: Int!, $after: String) {
  viewer {
    conversations(first: $first, after: $after) {
      edges { node { id title memberIds unreadCount lastReadSeq lastSeq
                     lastMessage { id content seq senderId } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""


async def new_conversation(app: Any, members: list[str] | None = None, title: str = "") -> str:
    data = await run(app, """
        mutation($m: [String!]!, $t: String!) {
          createConversation(memberIds: $m, title: $t) { id title memberIds role lastSeq }
        }""", m=members or ["bob"], t=title)
    conv = data["createConversation"]
    assert conv["role"] == "owner" and conv["lastSeq"] == 0
    return str(conv["id"])


# --- queries and mutations ------------------------------------------------------------------

async def test_send_and_read_back_through_viewer_conversations(api):
    cid = await new_conversation(api, ["bob", "carol"], "lunch")
    sent = (await run(api, SEND, c=cid, text="hi all", key="k-1"))["sendMessage"]
    assert sent["content"] == "hi all" and sent["seq"] == 1 and sent["senderId"] == "alice"
    assert sent["threadRootId"] is None

    node = (await run(api, INBOX, "bob", first=10))["viewer"]["conversations"]["edges"][0]["node"]
    assert node["id"] == cid and node["title"] == "lunch"
    assert sorted(node["memberIds"]) == ["alice", "bob", "carol"]
    assert node["unreadCount"] == 1 and node["lastReadSeq"] == 0 and node["lastSeq"] == 1
    assert node["lastMessage"] == {"id": sent["id"], "content": "hi all", "seq": 1,
                                   "senderId": "alice"}

    read = await run(api, """mutation($c: ID!, $s: Int64!) {
        markAsRead(conversationId: $c, upToSeq: $s) { lastReadSeq unreadCount } }""",
                     "bob", c=cid, s=1)
    assert read["markAsRead"] == {"lastReadSeq": 1, "unreadCount": 0}
    node = (await run(api, INBOX, "bob", first=10))["viewer"]["conversations"]["edges"][0]["node"]
    assert node["unreadCount"] == 0


async def test_conversations_page_with_cursors(api):
    ids = [await new_conversation(api, [f"user-{i}"]) for i in range(3)]
    first = (await run(api, INBOX, first=2))["viewer"]["conversations"]
    assert [e["node"]["id"] for e in first["edges"]] == ids[::-1][:2]  # most recent first
    assert first["pageInfo"]["hasNextPage"] is True
    rest = (await run(api, INBOX, first=2, after=first["pageInfo"]["endCursor"]))
    page = rest["viewer"]["conversations"]
    assert [e["node"]["id"] for e in page["edges"]] == [ids[0]]
    assert page["pageInfo"] == {"hasNextPage": False, "endCursor": None}


async def test_messages_connection_pages_by_cursor_both_ways(api):
    cid = await new_conversation(api)
    for i in range(5):
        await run(api, SEND, c=cid, text=f"m{i}", key=f"k{i}")
    query = """query($c: ID!, $after: String, $afterSeq: Int64) {
      conversation(id: $c) {
        id
        messages(first: 2, after: $after, afterSeq: $afterSeq) {
          edges { cursor node { seq content } }
          pageInfo { hasNextPage endCursor }
        }
      }
    }"""
    newest = (await run(api, query, c=cid))["conversation"]["messages"]
    assert [e["node"]["seq"] for e in newest["edges"]] == [5, 4]
    older = (await run(api, query, c=cid, after=newest["pageInfo"]["endCursor"]))
    assert [e["node"]["seq"] for e in older["conversation"]["messages"]["edges"]] == [3, 2]
    # Each edge's cursor continues right after that message.
    from_edge = await run(api, query, c=cid, after=newest["edges"][0]["cursor"])
    assert [e["node"]["seq"] for e in from_edge["conversation"]["messages"]["edges"]] == [4, 3]
    oldest = (await run(api, query, c=cid, afterSeq=0))["conversation"]["messages"]
    assert [e["node"]["seq"] for e in oldest["edges"]] == [1, 2]
    later = await run(api, query, c=cid, after=oldest["pageInfo"]["endCursor"])
    assert [e["node"]["seq"] for e in later["conversation"]["messages"]["edges"]] == [3, 4]


async def test_threads_from_a_message_and_from_the_conversation(api):
    cid = await new_conversation(api)
    root = (await run(api, SEND, c=cid, text="root", key="r"))["sendMessage"]
    reply = (await run(api, SEND, "bob", c=cid, text="reply", key="r1", root=root["id"]))
    assert reply["sendMessage"]["threadRootId"] == root["id"]
    data = await run(api, """query($c: ID!, $r: ID!) {
      conversation(id: $c) {
        messages(first: 10) { edges { node { content replyCount
          thread(first: 5) { root { id } edges { node { content senderId } } } } } }
        thread(rootId: $r) { root { content replyCount } edges { node { content } }
                             pageInfo { hasNextPage } }
      }
    }""", c=cid, r=root["id"])
    (edge,) = data["conversation"]["messages"]["edges"]  # the reply is not on the timeline
    assert edge["node"]["replyCount"] == 1
    assert edge["node"]["thread"]["edges"] == [{"node": {"content": "reply", "senderId": "bob"}}]
    thread = data["conversation"]["thread"]
    assert thread["root"] == {"content": "root", "replyCount": 1}
    assert thread["edges"] == [{"node": {"content": "reply"}}]


async def test_edit_delete_and_reactions(api):
    cid = await new_conversation(api)
    mid = (await run(api, SEND, c=cid, text="typo", key="e"))["sendMessage"]["id"]
    edited = await run(api, """mutation($c: ID!, $m: ID!) {
        editMessage(conversationId: $c, messageId: $m, content: "fixed") {
          content version editedAt } }""", c=cid, m=mid)
    assert edited["editMessage"]["content"] == "fixed"
    assert edited["editMessage"]["version"] == 2 and edited["editMessage"]["editedAt"]
    reacted = await run(api, """mutation($c: ID!, $m: ID!) {
        addReaction(conversationId: $c, messageId: $m, emoji: "👍") {
          reactions { emoji count reactedByMe } } }""", "bob", c=cid, m=mid)
    assert reacted["addReaction"]["reactions"] == [
        {"emoji": "👍", "count": 1, "reactedByMe": True}]
    removed = await run(api, """mutation($c: ID!, $m: ID!) {
        removeReaction(conversationId: $c, messageId: $m, emoji: "👍") { reactions { emoji } }
        }""", "bob", c=cid, m=mid)
    assert removed["removeReaction"]["reactions"] == []
    deleted = await run(api, """mutation($c: ID!, $m: ID!) {
        deleteMessage(conversationId: $c, messageId: $m) { deleted content } }""", c=cid, m=mid)
    assert deleted["deleteMessage"] == {"deleted": True, "content": ""}


async def test_membership_and_conversation_settings(api):
    cid = await new_conversation(api, ["bob"], "team")
    added = await run(api, """mutation($c: ID!) {
        addMembers(conversationId: $c, memberIds: ["carol", "dave"]) { memberIds } }""", c=cid)
    assert sorted(added["addMembers"]["memberIds"]) == ["alice", "bob", "carol", "dave"]
    assert (await run(api, """mutation($c: ID!) {
        setMemberRole(conversationId: $c, userId: "carol", role: "admin") }""",
                      c=cid)) == {"setMemberRole": True}
    assert (await run(api, """mutation($c: ID!) {
        removeMember(conversationId: $c, userId: "dave") }""", c=cid)) == {"removeMember": True}
    updated = await run(api, """mutation($c: ID!) {
        updateConversation(conversationId: $c, title: "renamed") { title memberIds } }""", c=cid)
    assert updated["updateConversation"]["title"] == "renamed"
    assert sorted(updated["updateConversation"]["memberIds"]) == ["alice", "bob", "carol"]
    # dave is no longer a member: the conversation is NOT_FOUND for him.
    err = await error_of(api, """query($c: ID!) { conversation(id: $c) {
        messages { edges { node { id } } } } }""", "dave", c=cid)
    assert err["extensions"]["code"] == "NOT_FOUND"


async def test_search(api):
    cid = await new_conversation(api)
    await run(api, SEND, c=cid, text="the quarterly report is ready", key="s1")
    await run(api, SEND, c=cid, text="lunch?", key="s2")
    data = await run(api, """query { search(query: "report", first: 5) {
        edges { node { conversationId message { content } highlights { start end } } }
        pageInfo { hasNextPage } } }""")
    (edge,) = data["search"]["edges"]
    assert edge["node"]["conversationId"] == cid
    assert edge["node"]["message"]["content"] == "the quarterly report is ready"
    assert edge["node"]["highlights"] == [{"start": 14, "end": 20}]


async def test_uploads_without_a_store_answer_failed_precondition(api):
    cid = await new_conversation(api)
    err = await error_of(api, """mutation($c: ID!) { createUpload(conversationId: $c,
        filename: "a.png", contentType: "image/png", sizeBytes: 10) { uploadId url } }""", c=cid)
    assert err["extensions"]["code"] == "FAILED_PRECONDITION"
    assert err["path"] == ["createUpload"]
    err = await error_of(api, f'query {{ attachmentUrl(attachmentId: "{uuid.uuid4()}") '
                              '{ url } }')
    assert err["extensions"]["code"] == "FAILED_PRECONDITION"


async def test_answers_equal_grpc(api, stub):
    conv = await create_conversation(stub, "alice", ["bob"], "same")
    msg = await send(stub, "alice", conv.id, "hello")
    over_grpc = (await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=5),
                                             metadata=auth("bob"))).conversations[0]
    node = (await run(api, INBOX, "bob", first=5))["viewer"]["conversations"]["edges"][0]["node"]
    assert node["id"] == over_grpc.conversation.id and node["title"] == over_grpc.conversation.title
    assert node["unreadCount"] == over_grpc.unread_count == 1
    assert node["lastMessage"]["id"] == over_grpc.last_message.id == msg.id


# --- errors ---------------------------------------------------------------------------------

async def test_duplicate_send_names_the_original_message(api):
    cid = await new_conversation(api)
    sent = (await run(api, SEND, c=cid, text="once", key="dup"))["sendMessage"]
    err = await error_of(api, SEND, c=cid, text="once", key="dup")
    assert err["path"] == ["sendMessage"]
    ext = err["extensions"]
    assert ext["code"] == "ALREADY_EXISTS" and ext["reason"] == "DUPLICATE_REQUEST"
    assert ext["domain"] == "chat.v1"
    assert ext["metadata"] == {"message_id": sent["id"], "seq": "1", "conversation_id": cid}


async def test_invalid_argument_names_the_field(api):
    err = await error_of(api, SEND, c="not-a-uuid", text="x", key="k")
    assert err["extensions"]["code"] == "INVALID_ARGUMENT"
    assert err["extensions"]["field"] == "conversation_id"
    err = await error_of(api, INBOX, first=500)
    assert err["extensions"]["code"] == "INVALID_ARGUMENT"
    assert err["extensions"]["field"] == "limit"
    assert err["path"] == ["viewer", "conversations"]


async def test_no_token_is_unauthenticated_and_a_stranger_learns_nothing(api):
    err = await error_of(api, INBOX, None, first=5)
    assert err["extensions"]["code"] == "UNAUTHENTICATED"
    cid = await new_conversation(api)
    err = await error_of(api, """query($c: ID!) { conversation(id: $c) {
        messages { edges { node { id } } } } }""", "mallory", c=cid)
    missing = await error_of(api, """query($c: ID!) { conversation(id: $c) {
        messages { edges { node { id } } } } }""", "mallory", c=str(uuid.uuid4()))
    assert err["extensions"] == missing["extensions"] == {"code": "NOT_FOUND"}
    assert err["message"] == missing["message"]


async def test_one_failing_field_leaves_the_others(api):
    cid = await new_conversation(api)
    status, body = await post(api, {"query": """query($c: ID!, $other: ID!) {
        ok: conversation(id: $c) { messages { edges { node { id } } } }
        bad: conversation(id: $other) { messages { edges { node { id } } } } }""",
                                    "variables": {"c": cid, "other": str(uuid.uuid4())}})
    assert status == 200
    assert body["data"]["ok"] == {"messages": {"edges": []}}
    assert body["data"]["bad"] is None  # the failed field alone is null
    assert [e["path"] for e in body["errors"]] == [["bad"]]


async def test_syntax_and_validation_errors_have_a_code(api):
    status, body = await post(api, {"query": "query { viewer { nope } }"})
    assert status == 200
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    status, body = await post(api, {"query": "query { viewer { "})
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    status, body = await post(api, {"query": """mutation($c: ID!, $s: Int64!) {
        markAsRead(conversationId: $c, upToSeq: $s) { lastReadSeq } }""",
                                    "variables": {"c": str(uuid.uuid4()), "s": "many"}})
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "Int64" in body["errors"][0]["message"]


# --- the call pipeline ----------------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_field_is_a_call_with_transport_graphql(api, capsys):
    before = sample("chat_rpc_requests_total", method="GetConversations", code="OK",
                    transport="graphql")
    await run(api, INBOX, first=5)
    assert sample("chat_rpc_requests_total", method="GetConversations", code="OK",
                  transport="graphql") == before + 1


async def test_identical_calls_in_one_operation_are_made_once(api):
    before = sample("chat_rpc_requests_total", method="GetConversations", code="OK",
                    transport="graphql")
    data = await run(api, """query {
        a: viewer { conversations(first: 3) { edges { node { id } } } }
        b: viewer { conversations(first: 3) { pageInfo { hasNextPage } } } }""")
    assert data["a"]["conversations"]["edges"] == []
    assert sample("chat_rpc_requests_total", method="GetConversations", code="OK",
                  transport="graphql") == before + 1


async def test_a_nested_list_is_a_call_per_item_run_as_one_batch(api, stub):
    convs = [await create_conversation(stub, "alice", [f"friend-{i}"]) for i in range(4)]
    for conv in convs:
        await send(stub, "alice", conv.id, "hello")
    before = {code: sample("chat_rpc_requests_total", method="GetMessages", code=code,
                           transport="graphql") for code in ("OK", "NOT_FOUND")}
    data = await run(api, """query { viewer { conversations(first: 10) { edges { node {
        id messages(first: 2) { edges { node { content } } } } } } } }""")
    edges = data["viewer"]["conversations"]["edges"]
    assert [e["node"]["messages"]["edges"] for e in edges] == [[{"node": {"content": "hello"}}]] * 4
    # Each conversation's page is a GetMessages call of its own (metrics, rate limits) ...
    assert sample("chat_rpc_requests_total", method="GetMessages", code="OK",
                  transport="graphql") == before["OK"] + 4
    # ... and one that fails, fails alone: a stranger's conversation among the caller's.
    stranger = await create_conversation(stub, "bob", ["carol"])
    status, body = await post(api, {"query": """query($a: ID!, $b: ID!) {
        a: conversation(id: $a) { messages { edges { node { id } } } }
        b: conversation(id: $b) { title } }""", "variables": {"a": convs[0].id,
                                                               "b": stranger.id}})
    assert body["data"]["a"]["messages"]["edges"] and body["data"]["b"] is None
    assert [(e["path"], e["extensions"]["code"]) for e in body["errors"]] == \
        [(["b"], "NOT_FOUND")]


async def test_conversation_by_id_is_the_inbox_node(api, stub):
    conv = await create_conversation(stub, "alice", ["bob"], "same")
    await send(stub, "bob", conv.id, "hi")
    fields = """id title memberIds role encrypted lastSeq lastPos historyVisibleToNewMembers
                createdAt lastMessageAt unreadCount lastReadSeq
                lastMessage { id content seq senderId attachments { id } }"""
    inbox = await run(api, f"{{ viewer {{ conversations(first: 5) {{ edges {{ node {{ {fields} "
                           "} } } } }")
    one = await run(api, f"query($c: ID!) {{ conversation(id: $c) {{ {fields} }} }}", c=conv.id)
    assert one["conversation"] == inbox["viewer"]["conversations"]["edges"][0]["node"]
    assert one["conversation"]["unreadCount"] == 1 and one["conversation"]["role"] == "owner"
    over_grpc = await stub.GetConversation(chat_pb2.GetConversationRequest(
        conversation_id=conv.id), metadata=auth("bob"))
    assert over_grpc.conversation.conversation.role == "member"
    assert over_grpc.conversation.last_message.content == "hi"


@pytest.fixture
async def started_apps(api_settings_factory: Callable[..., Any]
                       ) -> AsyncIterator[Callable[..., Any]]:
    """Starts an API with settings ``overrides``; each is stopped at the end of the test."""
    from chat_api.app import build_app

    apps: list[Any] = []

    async def start(**overrides: Any) -> Any:
        app = build_app(api_settings_factory(**overrides))
        await app.start()
        await app.probe_once()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=1.0)


async def test_rate_limit_counts_each_rpc_in_its_class(started_apps):
    app = await started_apps(rate_limit_enabled=True, rate_limit_read_rate=0.01,
                             rate_limit_read_burst=2, tenant_cache_ttl=0.2)
    await run(app, INBOX, first=1)
    await run(app, INBOX, first=1)
    err = await error_of(app, INBOX, first=1)
    assert err["extensions"]["code"] == "RESOURCE_EXHAUSTED"
    assert err["extensions"]["reason"] == "RATE_LIMITED"
    assert err["extensions"]["metadata"]["class"] == "read"
    assert err["extensions"]["retryAfterMs"] >= 1
    # A send is another class: still allowed.
    cid = await new_conversation(app)
    assert (await run(app, SEND, c=cid, text="x", key="x"))["sendMessage"]["seq"] == 1


# --- limits ---------------------------------------------------------------------------------

async def test_depth_limit(api):
    # Deeper than 10 (the default limit), and cheap: every list asks for one item.
    deep = (f'query {{ conversation(id: "{uuid.uuid4()}") {{ messages(first: 1) {{ edges {{ '
            "node { thread(first: 1) { root { thread(first: 1) { root { thread(first: 1) { "
            "root { thread(first: 1) { root { id } } } } } } } } } } } } }")
    status, body = await post(api, {"query": deep})
    assert status == 200 and body.get("data") is None
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "exceeds maximum operation depth" in body["errors"][0]["message"]


async def test_cost_limit_counts_nested_pages(api):
    nested = """query { viewer { conversations(first: 100) { edges { node {
        messages(first: 100) { edges { node { id content seq } } } } } } } }"""
    status, body = await post(api, {"query": nested})
    assert body.get("data") is None
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "cost" in body["errors"][0]["message"]
    # The same through a variable.
    status, body = await post(api, {"query": """query($n: Int!) { viewer { conversations(
        first: $n) { edges { node { messages(first: $n) { edges { node { id content seq } }
        } } } } } }""", "variables": {"n": 100}})
    assert "cost" in body["errors"][0]["message"]


async def test_alias_size_and_token_limits(started_apps):
    app = await started_apps(graphql_max_aliases=2, graphql_max_query_bytes=8192,
                             graphql_max_tokens=300)
    _, body = await post(app, {"query": "query { a: viewer { conversations { pageInfo "
                                        "{ hasNextPage } } } b: viewer { conversations { "
                                        "pageInfo { hasNextPage } } } c: viewer { conversations "
                                        "{ pageInfo { hasNextPage } } } }"})
    assert "aliases" in body["errors"][0]["message"]
    _, body = await post(app, {"query": "query { viewer { conversations { pageInfo { "
                                        "hasNextPage } } } }" + " " * 9000})
    assert "bytes" in body["errors"][0]["message"]
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    _, body = await post(app, {"query": "query { " + "__typename " * 400 + "}"})
    assert "token" in body["errors"][0]["message"].lower()


async def test_batching_and_get_operations_are_refused(api):
    status, _ = await post(api, [{"query": "{ __typename }"}, {"query": "{ __typename }"}])
    assert status == 400
    async with aiohttp.ClientSession() as http, http.get(
            url(api), params={"query": "{ __typename }"}) as resp:
        assert resp.status in (400, 404, 405)  # queries in URLs land in logs and caches


async def test_introspection_is_off_by_default_outside_development(api):
    _, body = await post(api, {"query": "{ __schema { queryType { name } } }"})
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "introspection" in body["errors"][0]["message"].lower()


async def test_introspection_and_graphiql_when_enabled(started_apps):
    app = await started_apps(graphql_introspection="on", graphql_ide="on")
    _, body = await post(app, {"query": "{ __schema { queryType { name } } }"})
    assert body["data"] == {"__schema": {"queryType": {"name": "Query"}}}
    async with aiohttp.ClientSession() as http:
        async with http.get(url(app), headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "unpkg" not in page and "cdn" not in page.lower() and "https://" not in page
        for src in ("/graphql/assets/graphiql.min.js", "/graphql/assets/graphiql.min.css",
                    "/graphql/assets/react.production.min.js",
                    "/graphql/assets/react-dom.production.min.js"):
            assert src in page
            async with http.get(f"http://127.0.0.1:{app.http_port}{src}") as resp:
                assert resp.status == 200, src
                assert len(await resp.read()) > 1000, src


async def test_graphiql_is_not_served_by_default(api):
    async with aiohttp.ClientSession() as http, http.get(
            url(api), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 404


async def test_cors_preflight_and_answer(started_apps):
    app = await started_apps(cors_allowed_origins="https://app.example.com")
    origin = {"Origin": "https://app.example.com"}
    async with aiohttp.ClientSession() as http:
        async with http.options(url(app), headers={
                **origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"}) as resp:
            assert resp.status == 204
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    status, body = await post(app, {"query": "{ __typename }"}, headers=origin)
    assert status == 200 and body == {"data": {"__typename": "Query"}}


def _graphql_device(user: str, device_id: str) -> tuple[Any, dict[str, str]]:
    """A vodozemac account and registerDevice's variables for it, self-signed."""
    account = vodozemac.Account()
    curve, ed = account.curve25519_key.to_base64(), account.ed25519_key.to_base64()
    signature = account.sign(device_statement(user, device_id, curve, ed)).to_base64()
    return account, {"d": device_id, "curve": curve, "ed": ed, "sig": signature}


REGISTER = """
mutation Register($d: String!, $curve: String!, $ed: String!, $sig: String!) {
  registerDevice(deviceId: $d, curve25519Key: $curve, ed25519Key: $ed, signature: $sig) {
    userId deviceId curve25519Key ed25519Key
  }
}"""


async def test_end_to_end_encryption_keys_devices_and_ciphertext(api, stub):
    alice, alice_vars = _graphql_device("alice", "A1")
    _, bob_vars = _graphql_device("bob", "B1")
    registered = (await run(api, REGISTER, "alice", **alice_vars))["registerDevice"]
    assert registered == {"userId": "alice", "deviceId": "A1",
                          "curve25519Key": alice_vars["curve"], "ed25519Key": alice_vars["ed"]}
    await run(api, REGISTER, "bob", **bob_vars)
    alice.generate_one_time_keys(2)
    keys = [{"keyId": key_id, "publicKey": key.to_base64(),
             "signature": alice.sign(one_time_key_statement(
                 "alice", "A1", key_id, key.to_base64())).to_base64()}
            for key_id, key in alice.one_time_keys.items()]
    uploaded = await run(api, """
        mutation Up($keys: [OneTimeKeyInput!]!) {
          uploadOneTimeKeys(deviceId: "A1", keys: $keys) }""", "alice", keys=keys)
    assert uploaded == {"uploadOneTimeKeys": 2}
    created = (await run(api, """
        mutation { createConversation(memberIds: ["bob"], title: "secret", encrypted: true) {
          id encrypted } }""", "alice"))["createConversation"]
    assert created["encrypted"] is True
    cid = created["id"]
    devices = await run(api, """query($c: ID!) { devices(conversationId: $c) { userId deviceId
        } }""", "bob", c=cid)
    assert sorted((d["userId"], d["deviceId"]) for d in devices["devices"]) == \
        [("alice", "A1"), ("bob", "B1")]
    claimed = (await run(api, """
        mutation($c: ID!) { claimKeys(conversationId: $c,
                                      devices: [{userId: "alice", deviceId: "A1"}]) {
          device { deviceId } oneTimeKey { keyId publicKey } fallback } }""", "bob",
        c=cid))["claimKeys"]
    assert [(k["device"]["deviceId"], k["fallback"]) for k in claimed] == [("A1", False)]
    assert claimed[0]["oneTimeKey"]["keyId"] in {k["keyId"] for k in keys}

    # A message: ciphertext only, read back as sent (the body base64) over GraphQL and gRPC.
    body = base64.b64encode(b"\x00opaque bytes\xff").decode()
    send_encrypted = """
        mutation($c: ID!, $ct: CiphertextInput!, $key: String!) {
          sendMessage(conversationId: $c, idempotencyKey: $key, ciphertext: $ct) {
            id content ciphertext { algorithm senderDevice body } } }"""
    sent = (await run(api, send_encrypted, "alice", c=cid, key="e1", ct={
        "algorithm": MEGOLM_ALGORITHM, "senderDevice": "A1", "body": body}))["sendMessage"]
    assert sent["content"] == "" and sent["ciphertext"] == {
        "algorithm": MEGOLM_ALGORITHM, "senderDevice": "A1", "body": body}
    page = await run(api, """query($c: ID!) { conversation(id: $c) { messages(first: 5) {
        edges { node { id ciphertext { body } } } } } }""", "bob", c=cid)
    assert [e["node"] for e in page["conversation"]["messages"]["edges"]] == \
        [{"id": sent["id"], "ciphertext": {"body": body}}]
    grpc_page = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=cid),
                                       metadata=auth("bob"))
    assert grpc_page.messages[0].ciphertext.body == b"\x00opaque bytes\xff"
    # Plaintext into the encrypted conversation, a device not registered, a body not base64.
    err = await error_of(api, SEND, "alice", c=cid, text="hello", key="p1")
    assert (err["extensions"]["code"], err["extensions"]["field"]) == \
        ("INVALID_ARGUMENT", "content")
    err = await error_of(api, send_encrypted, "alice", c=cid, key="e2", ct={
        "algorithm": MEGOLM_ALGORITHM, "senderDevice": "nope", "body": body})
    assert err["extensions"]["code"] == "FAILED_PRECONDITION"
    err = await error_of(api, send_encrypted, "alice", c=cid, key="e3", ct={
        "algorithm": MEGOLM_ALGORITHM, "senderDevice": "A1", "body": "not base64!"})
    assert "base64" in err["message"]


async def test_to_device_messages_and_device_removal(api):
    for user, device in (("alice", "A2"), ("bob", "B2")):
        await run(api, REGISTER, user, **_graphql_device(user, device)[1])
    cid = (await run(api, """mutation { createConversation(memberIds: ["bob"],
        encrypted: true) { id } }""", "alice"))["createConversation"]["id"]
    stored = await run(api, """
        mutation($c: ID!) { sendToDevice(conversationId: $c, senderDevice: "A2", messages: [
          {recipientId: "bob", recipientDevice: "B2", messageType: "m.test", body: "one"}]) }
        """, "alice", c=cid)
    assert stored == {"sendToDevice": 1}
    inbox = """query { toDeviceMessages(deviceId: "B2") { id senderId senderDevice
        messageType body } }"""
    [m] = (await run(api, inbox, "bob"))["toDeviceMessages"]
    assert (m["senderId"], m["senderDevice"], m["messageType"], m["body"]) == \
        ("alice", "A2", "m.test", "one")
    # Not another user's mailbox, even naming the device.
    err = await error_of(api, inbox, "alice")
    assert err["extensions"]["code"] == "NOT_FOUND"
    acked = await run(api, """mutation($up: Int64!) {
        ackToDeviceMessages(deviceId: "B2", upToId: $up) }""", "bob", up=m["id"])
    assert acked == {"ackToDeviceMessages": 1}
    assert (await run(api, inbox, "bob"))["toDeviceMessages"] == []
    assert await run(api, 'mutation { removeDevice(deviceId: "B2") }', "bob") == \
        {"removeDevice": True}
    err = await error_of(api, 'mutation { removeDevice(deviceId: "B2") }', "bob")
    assert err["extensions"]["code"] == "NOT_FOUND"
