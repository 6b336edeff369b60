"""The HTTP/JSON gateway over a real aiohttp client against the in-process API.

Every route's happy path, each error class with its status and google.rpc.Status body, the
JSON mapping (snake_case and camelCase in, proto names out, equal to gRPC's answer), the
Idempotency-Key header, X-Request-Id, gzip and the server span.
"""

from __future__ import annotations

import gzip
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chat_shared.observability import tracing
from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth, make_token


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


@pytest.fixture
async def http(api: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.http_port}",
                                     auto_decompress=False) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, user: str | None = "alice",
               **kw: Any) -> tuple[int, Any]:
    headers = {**(bearer(user) if user else {}), **kw.pop("headers", {})}
    async with http.request(method, path, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def create(http: aiohttp.ClientSession, user: str = "alice",
                 members: list[str] | None = None, title: str = "") -> dict[str, Any]:
    status, body = await call(http, "POST", "/v1/conversations", user,
                              json={"member_ids": members or ["bob"], "title": title})
    assert status == 200, body
    return body["conversation"]


async def post_message(http: aiohttp.ClientSession, conv_id: str, content: str,
                       user: str = "alice", key: str | None = None) -> dict[str, Any]:
    status, body = await call(http, "POST", "/v1/messages", user,
                              json={"conversation_id": conv_id, "content": content,
                                    "idempotency_key": key or uuid.uuid4().hex})
    assert status == 200, body
    return body["message"]


def error_detail(body: dict[str, Any], type_suffix: str) -> dict[str, Any]:
    found = [d for d in body["details"] if d["@type"].endswith(type_suffix)]
    assert found, body
    return found[0]


# --- happy paths, one per route ------------------------------------------------------------

async def test_create_conversation(http):
    conv = await create(http, members=["bob", "carol"], title="lunch")
    assert conv["title"] == "lunch"
    assert sorted(conv["member_ids"]) == ["alice", "bob", "carol"]
    assert conv["last_seq"] == "0"  # int64 is a string in canonical JSON, printed at 0
    assert conv["created_at"].endswith("Z")
    assert "last_message_at" not in conv  # unset message fields are left out


async def test_send_message(http):
    conv = await create(http)
    msg = await post_message(http, conv["id"], "hello")
    assert (msg["content"], msg["seq"], msg["sender_id"]) == ("hello", "1", "alice")
    assert msg["conversation_id"] == conv["id"]


async def test_get_messages_with_query_parameters(http):
    conv = await create(http)
    sent = [await post_message(http, conv["id"], f"m{i}") for i in range(3)]
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob",
                              params={"limit": "2"})
    assert status == 200, body
    assert [m["content"] for m in body["messages"]] == ["m2", "m1"]
    assert body["next_page_token"]
    status, rest = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob",
                              params={"limit": "2", "page_token": body["next_page_token"]})
    assert (status, [m["content"] for m in rest["messages"]]) == (200, ["m0"])
    assert rest["next_page_token"] == ""  # printed even when empty
    status, after = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob",
                               params={"after_seq": "1"})
    assert [m["seq"] for m in after["messages"]] == ["2", "3"]
    status, before = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob",
                                params={"before_timestamp": sent[2]["created_at"]})
    assert status == 200, before
    assert [m["content"] for m in before["messages"]] == ["m1", "m0"]


async def test_after_seq_zero_pages_from_the_first_message(http):
    """A present ``after_seq=0`` means "from the beginning, oldest first", not "not given"."""
    conv = await create(http)
    for i in range(7):
        await post_message(http, conv["id"], f"m{i}")
    path = f"/v1/conversations/{conv['id']}/messages"
    status, body = await call(http, "GET", path, "bob", params={"after_seq": "0", "limit": "3"})
    assert status == 200, body
    assert [m["seq"] for m in body["messages"]] == ["1", "2", "3"]
    status, rest = await call(http, "GET", path, "bob",
                              params={"limit": "3", "page_token": body["next_page_token"]})
    assert [m["seq"] for m in rest["messages"]] == ["4", "5", "6"]
    status, newest = await call(http, "GET", path, "bob", params={"limit": "3"})
    assert [m["seq"] for m in newest["messages"]] == ["7", "6", "5"]


async def test_threads_over_http_reply_timeline_and_thread_page(http):
    conv = await create(http)
    root = await post_message(http, conv["id"], "question")
    status, body = await call(http, "POST", "/v1/messages", "bob",
                              json={"conversation_id": conv["id"], "content": "answer",
                                    "idempotency_key": uuid.uuid4().hex,
                                    "threadRootId": root["id"]})
    assert status == 200, body
    answer = body["message"]
    assert answer["thread_root_id"] == root["id"] and answer["seq"] == "2"
    assert "thread_root_id" not in root or root["thread_root_id"] == ""
    # The timeline holds the root with its count; include_thread_replies holds both.
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob")
    assert status == 200, body
    assert [(m["content"], m["reply_count"]) for m in body["messages"]] == [("question", "1")]
    assert body["messages"][0]["last_reply_at"] == answer["created_at"]
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob",
                              params={"include_thread_replies": "true"})
    assert [m["seq"] for m in body["messages"]] == ["2", "1"]
    path = f"/v1/conversations/{conv['id']}/threads/{root['id']}"
    status, body = await call(http, "GET", path, "bob", params={"after_seq": "0", "limit": "1"})
    assert status == 200, body
    assert body["root"]["id"] == root["id"] and body["root"]["reply_count"] == "1"
    assert [m["id"] for m in body["messages"]] == [answer["id"]]
    # A reply is no thread of its own (400 naming root_id); a stranger gets the same 404 as
    # for a conversation that does not exist.
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/threads/"
                                           f"{answer['id']}", "bob")
    assert status == 400 and body["message"].startswith("root_id:"), body
    status, body = await call(http, "GET", path, "mallory")
    assert status == 404, body


async def test_get_conversations_and_mark_as_read(http):
    conv = await create(http)
    await post_message(http, conv["id"], "one")
    await post_message(http, conv["id"], "two")
    status, body = await call(http, "GET", "/v1/conversations", "bob", params={"limit": "10"})
    assert status == 200, body
    summary = body["conversations"][0]
    assert (summary["unread_count"], summary["last_read_seq"]) == ("2", "0")
    assert summary["last_message"]["content"] == "two"
    status, read = await call(http, "POST", f"/v1/conversations/{conv['id']}/read", "bob",
                              json={"up_to_seq": 1})
    assert (status, read) == (200, {"last_read_seq": "1", "unread_count": "1"})
    status, read = await call(http, "POST", f"/v1/conversations/{conv['id']}/read", "bob",
                              json={})
    assert (status, read) == (200, {"last_read_seq": "2", "unread_count": "0"})


# --- JSON mapping --------------------------------------------------------------------------

async def test_camel_case_and_snake_case_requests_are_the_same(http):
    conv = await create(http)
    status, body = await call(http, "POST", "/v1/messages", json={
        "conversationId": conv["id"], "content": "camel", "idempotencyKey": "camel-1"})
    assert status == 200, body
    assert body["message"]["conversation_id"] == conv["id"]  # answered in proto names
    status, body = await call(http, "POST", f"/v1/conversations/{conv['id']}/read", "bob",
                              json={"upToSeq": "1"})
    assert (status, body["last_read_seq"]) == (200, "1")
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages",
                              params={"afterSeq": "0", "pageToken": ""})
    assert [m["content"] for m in body["messages"]] == ["camel"]


async def test_http_and_grpc_return_the_same_json(http, stub):
    conv = await create(http)
    await post_message(http, conv["id"], "same")
    options = {"preserving_proto_field_name": True,
               "always_print_fields_with_no_presence": True}
    grpc_msgs = await stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv["id"]),
                                       metadata=auth("bob"))
    _, http_msgs = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "bob")
    assert json_format.MessageToDict(grpc_msgs, **options) == http_msgs
    grpc_convs = await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                             metadata=auth("bob"))
    _, http_convs = await call(http, "GET", "/v1/conversations", "bob")
    assert json_format.MessageToDict(grpc_convs, **options) == http_convs
    assert http_convs["conversations"][0]["unread_count"] == "1"


async def test_idempotency_key_header(http):
    conv = await create(http)
    headers = {"Idempotency-Key": "hdr-key-1"}
    status, first = await call(http, "POST", "/v1/messages", headers=headers,
                               json={"conversation_id": conv["id"], "content": "once"})
    assert status == 200, first
    status, again = await call(http, "POST", "/v1/messages", headers=headers,
                               json={"conversation_id": conv["id"], "content": "once"})
    assert status == 409
    info = error_detail(again, "google.rpc.ErrorInfo")
    assert info["metadata"]["message_id"] == first["message"]["id"]
    # A key in the body that contradicts the header is refused rather than silently chosen.
    status, body = await call(http, "POST", "/v1/messages", headers=headers,
                              json={"conversation_id": conv["id"], "content": "x",
                                    "idempotency_key": "other"})
    assert status == 400 and "idempotency_key" in body["message"]


# --- error classes -------------------------------------------------------------------------

async def test_invalid_argument_is_400_naming_the_field(http):
    status, body = await call(http, "POST", "/v1/messages",
                              json={"conversation_id": "not-a-uuid", "content": "x",
                                    "idempotency_key": "k-123456"})
    assert status == 400
    assert body["code"] == 3  # gRPC INVALID_ARGUMENT
    violation = error_detail(body, "google.rpc.BadRequest")["field_violations"][0]
    assert violation["field"] == "conversation_id"


async def test_missing_or_bad_token_is_401(http):
    status, body = await call(http, "GET", "/v1/conversations", user=None)
    assert (status, body["code"]) == (401, 16)
    status, body = await call(http, "GET", "/v1/conversations", user=None,
                              headers={"Authorization": "Bearer not-a-jwt"})
    assert status == 401


async def test_not_a_member_is_404(http):
    conv = await create(http)
    status, body = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages", "mallory")
    assert (status, body["code"]) == (404, 5)


async def test_duplicate_send_is_409_with_the_original_message_id(http):
    conv = await create(http)
    first = await post_message(http, conv["id"], "hi", key="dup-key-1")
    status, body = await call(http, "POST", "/v1/messages",
                              json={"conversation_id": conv["id"], "content": "hi",
                                    "idempotency_key": "dup-key-1"})
    assert (status, body["code"]) == (409, 6)
    info = error_detail(body, "google.rpc.ErrorInfo")
    assert info["reason"] == "DUPLICATE_REQUEST"
    assert info["metadata"]["message_id"] == first["id"]
    assert info["metadata"]["seq"] == "1"


async def test_unknown_path_is_404_json(http):
    status, body = await call(http, "GET", "/v1/nothing-here")
    assert status == 404
    assert body == {"code": 5, "message": "no such route", "details": []}


async def test_wrong_method_is_405_with_allow(http):
    async with http.delete("/v1/conversations", headers=bearer("alice")) as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(", ")) == {"GET", "POST"}
        body = await resp.json()
    assert body["code"] == 12  # gRPC UNIMPLEMENTED, as gRPC-Gateway answers


async def test_body_over_the_limit_is_413(http, api):
    limit = api.settings.http_max_body_bytes
    big = orjson.dumps({"conversation_id": "x", "content": "a" * limit,
                        "idempotency_key": "k-123456"})
    status, body = await call(http, "POST", "/v1/messages", data=io.BytesIO(big),
                              headers={"Content-Type": "application/json"})
    assert status == 413
    assert body["code"] == 8 and str(limit) in body["message"]


async def test_unknown_field_is_400(http):
    status, body = await call(http, "POST", "/v1/conversations",
                              json={"member_ids": ["bob"], "colour": "red"})
    assert status == 400
    assert body["message"].startswith("colour:")
    assert error_detail(body, "google.rpc.BadRequest")["field_violations"][0]["field"] == "colour"
    status, body = await call(http, "GET", "/v1/conversations", params={"colour": "red"})
    assert (status, body["message"].split(":")[0]) == (400, "colour")


async def test_malformed_json_is_400(http):
    status, body = await call(http, "POST", "/v1/conversations", data=b'{"member_ids": [',
                              headers={"Content-Type": "application/json"})
    assert status == 400
    assert body["message"].startswith("body: malformed JSON")
    status, body = await call(http, "POST", "/v1/conversations", json=["bob"])
    assert (status, body["message"]) == (400, "body: must be a JSON object")


@pytest.mark.parametrize(("method", "path", "kw", "field"), [
    ("POST", "/v1/conversations", {"json": {"member_ids": "bob"}}, "member_ids"),
    ("POST", "/v1/conversations", {"json": {"title": 7}}, "title"),
    ("GET", "/v1/conversations", {"params": {"limit": "ten"}}, "limit"),
    ("GET", "/v1/conversations/00000000-0000-0000-0000-000000000000/messages",
     {"params": {"before_timestamp": "yesterday"}}, "before_timestamp"),
])
async def test_wrong_type_is_400_naming_the_field(http, method, path, kw, field):
    status, body = await call(http, method, path, **kw)
    assert status == 400, body
    assert body["message"].startswith(f"{field}:")
    assert error_detail(body, "google.rpc.BadRequest")["field_violations"][0]["field"] == field


# --- HTTP-only behaviour -------------------------------------------------------------------

async def test_request_id_is_echoed_or_generated(http):
    async with http.get("/v1/conversations", headers={**bearer("alice"),
                                                      "X-Request-Id": "req-abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "req-abc-123"
    async with http.get("/v1/nothing", headers=bearer("alice")) as resp:
        generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32 and generated != "req-abc-123"


async def test_large_responses_are_gzipped(http):
    conv = await create(http)
    for i in range(12):
        await post_message(http, conv["id"], f"message number {i} " + "x" * 100)
    path = f"/v1/conversations/{conv['id']}/messages"
    async with http.get(path, headers={**bearer("alice"), "Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
    body = orjson.loads(gzip.decompress(raw))
    assert len(body["messages"]) == 12
    assert len(raw) < len(gzip.decompress(raw))
    async with http.get(path, headers={**bearer("alice"), "Accept-Encoding": "identity"}) as resp:
        assert "Content-Encoding" not in resp.headers
    # Small answers are not worth compressing.
    async with http.get("/v1/nothing", headers={"Accept-Encoding": "gzip"}) as resp:
        assert "Content-Encoding" not in resp.headers


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test (an SDK provider is installed when none is yet)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_recording(True)  # spans are made only when someone receives them
    yield exporter
    tracing.set_recording(False)


async def test_each_request_gets_a_server_span_in_the_callers_trace(http, spans):
    conv = await create(http)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    status, _ = await call(http, "GET", f"/v1/conversations/{conv['id']}/messages",
                           headers={"traceparent": traceparent})
    assert status == 200
    server = [s for s in spans.get_finished_spans()
              if s.name == "GET /v1/conversations/{conversation_id}/messages"]
    assert len(server) == 1
    span = server[0]
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes["http.response.status_code"] == 200
    spans.clear()


async def test_members_edits_deletions_and_reactions_over_http(http):
    conv = await create(http, members=["bob"], title="routes")
    cid = conv["id"]
    status, body = await call(http, "POST", f"/v1/conversations/{cid}/members",
                              json={"member_ids": ["carol"]})
    assert status == 200 and body["conversation"]["member_ids"] == ["alice", "bob", "carol"]
    assert body["conversation"]["role"] == "owner"
    status, _ = await call(http, "PUT", f"/v1/conversations/{cid}/members/carol/role",
                           json={"role": "admin"})
    assert status == 200
    status, body = await call(http, "PATCH", f"/v1/conversations/{cid}", json={"title": "new"})
    assert status == 200 and body["conversation"]["title"] == "new"
    msg = await post_message(http, cid, "hello")
    path = f"/v1/conversations/{cid}/messages/{msg['id']}"
    status, body = await call(http, "PATCH", path, json={"content": "hello!"})
    assert status == 200 and body["message"]["version"] == 2
    status, body = await call(http, "POST", f"{path}/reactions", "bob", json={"emoji": "👍"})
    assert status == 200
    assert body["message"]["reactions"] == [{"emoji": "👍", "count": 1, "reacted_by_me": True}]
    status, body = await call(http, "DELETE", f"{path}/reactions", "bob", params={"emoji": "👍"})
    assert status == 200 and body["message"]["reactions"] == []
    status, body = await call(http, "DELETE", f"{path}/reactions", "bob", params={"emoji": "x"})
    assert status == 400 and body["message"].startswith("emoji")
    status, body = await call(http, "PATCH", path, "bob", json={"content": "not mine"})
    assert status == 403
    status, body = await call(http, "DELETE", path)
    assert status == 200 and body["message"]["deleted"] and body["message"]["content"] == ""
    # A tombstone: no edit, no reaction, no reply (400 FAILED_PRECONDITION with its reason).
    for method, where, user, payload in (
            ("PATCH", path, "alice", {"content": "back"}),
            ("POST", f"{path}/reactions", "bob", {"emoji": "👍"}),
            ("POST", "/v1/messages", "bob", {"conversation_id": cid, "content": "late",
                                             "idempotency_key": uuid.uuid4().hex,
                                             "thread_root_id": msg["id"]})):
        status, body = await call(http, method, where, user, json=payload)
        assert status == 400 and body["code"] == 9, body  # google.rpc.Code FAILED_PRECONDITION
        reason = error_detail(body, "ErrorInfo")["reason"]
        assert reason == ("ROOT_DELETED" if where == "/v1/messages" else "MESSAGE_DELETED")
    status, _ = await call(http, "DELETE", f"/v1/conversations/{cid}/members/bob", "bob")
    assert status == 200
    status, _ = await call(http, "GET", f"/v1/conversations/{cid}/messages", "bob")
    assert status == 404
