"""Each mismatch once found between the published document and the server, pinned down.

The document (services/api/openapi.json, from chat.proto) and the server now agree on: a body
where the method has one, the rules of chat.proto, how integers are written, and that nothing
is decoded before the caller is authenticated.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import aiohttp
import grpc
import pytest

from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import ROOT, make_token

DOC = json.loads((ROOT / "services" / "api" / "openapi.json").read_text())
IMPLEMENTATION_TEXT = re.compile(
    r"invalid literal|object of type|<class|Traceback|bytes-like|NoneType|Exception|Error\b|"
    r"Unexpected <|\.py\b|line \d+, in ")


async def _call(api: Any, method: str, path: str, *, token: str | None = "alice",
                data: bytes | None = None, json_body: Any = None,
                params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {make_token(token)}" if token != "" else "Bearer"
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{api.http_port}{path}", data=data, json=json_body,
            params=params, headers=sent) as resp:
        return resp.status, await resp.json(), resp.headers


async def _conversation(api: Any) -> str:
    status, body, _ = await _call(api, "POST", "/v1/conversations",
                                  json_body={"member_ids": ["bob"]})
    assert status == 200, body
    return str(body["conversation"]["id"])


def _violation(body: dict[str, Any]) -> tuple[str, str]:
    for detail in body["details"]:
        if detail["@type"].endswith("BadRequest"):
            v = detail["field_violations"][0]
            return v["field"], v["description"]
    raise AssertionError(f"no BadRequest in {body}")


@pytest.mark.parametrize("body", [None, b"", b"\t", b'"\\t"', b" \n"])
async def test_create_conversation_needs_a_body(api, body):
    status, answer, _ = await _call(api, "POST", "/v1/conversations", data=body,
                                    headers={"Content-Type": "application/json"})
    assert status == 400, answer
    assert _violation(answer)[0] == "body"


async def test_create_conversation_needs_a_member(api):
    status, answer, _ = await _call(api, "POST", "/v1/conversations", json_body={})
    assert (status, _violation(answer)) == (
        400, ("member_ids", "member_ids: is required (at least one)"))
    assert DOC["components"]["schemas"]["chat.v1.CreateConversationRequest"]["required"] == [
        "member_ids"]
    assert DOC["paths"]["/v1/conversations"]["post"]["requestBody"]["required"] is True


async def test_mark_as_read_needs_a_body(api):
    cid = await _conversation(api)
    status, answer, _ = await _call(api, "POST", f"/v1/conversations/{cid}/read")
    assert status == 400 and _violation(answer)[0] == "body"
    status, answer, _ = await _call(api, "POST", f"/v1/conversations/{cid}/read", json_body={})
    assert status == 200, answer


async def test_up_to_seq_is_what_the_document_says(api):
    # The document: a JSON integer or the same number as a decimal string, 0..2^63-1.
    schema = DOC["components"]["schemas"]["chat.v1.MarkAsReadRequest.Body"]["properties"][
        "up_to_seq"]
    kinds = {branch["type"] for branch in schema["oneOf"]}
    assert kinds == {"integer", "string"}
    cid = await _conversation(api)
    for value in (0, "0", 5, "5", 2**63 - 1, str(2**63 - 1)):
        status, answer, _ = await _call(api, "POST", f"/v1/conversations/{cid}/read",
                                        json_body={"up_to_seq": value})
        assert status == 200, (value, answer)
    for value in (-1, "-1", 1.5, "1.0", "1e2", 1e2, "+1", "01", "1_0", " 1", 2**63, str(2**63),
                  True, None, [], {}):
        status, answer, _ = await _call(api, "POST", f"/v1/conversations/{cid}/read",
                                        json_body={"up_to_seq": value})
        assert status == 400, (value, answer)
        assert _violation(answer)[0] == "up_to_seq", (value, answer)


@pytest.mark.parametrize("params, field", [
    ({"limit": "101"}, "limit"), ({"limit": "0.5"}, "limit"), ({"limit": "abc"}, "limit"),
    ({"after_seq": "-1"}, "after_seq"), ({"after_seq": str(2**63)}, "after_seq"),
    ({"after_seq": "1", "before_timestamp": "2024-01-01T00:00:00Z"}, "after_seq"),
])
async def test_get_messages_rules_are_published_and_enforced(api, params, field):
    cid = await _conversation(api)
    status, answer, _ = await _call(api, "GET", f"/v1/conversations/{cid}/messages",
                                    params=params)
    assert status == 400 and _violation(answer)[0] == field, answer
    assert not IMPLEMENTATION_TEXT.search(answer["message"]), answer
    op = DOC["paths"]["/v1/conversations/{conversation_id}/messages"]["get"]
    published = {p["name"]: p["schema"] for p in op["parameters"]}
    assert published["limit"]["maximum"] == 100
    assert published["after_seq"]["minimum"] == 0
    assert published["conversation_id"]["format"] == "uuid"
    assert "At most one of after_seq, before_timestamp" in op["description"]


async def test_send_message_rules_are_published(api):
    schema = DOC["components"]["schemas"]["chat.v1.SendMessageRequest"]
    # content may be empty on a message with attachments or with ciphertext (an encrypted
    # message has no plaintext): not required, no minimum length, and the rule across the
    # fields in words.
    assert schema["required"] == ["conversation_id"]
    content = schema["properties"]["content"]
    assert "minLength" not in content and content["maxLength"] == 4096
    assert content["pattern"].startswith("^$|")
    assert all(p["pattern"].startswith("^$|") for p in content.get("allOf", []))
    assert "content is required unless attachment_ids lists at least one upload or ciphertext is set" in \
        schema["description"]
    for body in ({"content": "hi\x07"}, {"content": " \n "}, {"content": ""}, {}):
        status, answer, _ = await _call(api, "POST", "/v1/messages", json_body={
            "conversation_id": str(uuid.uuid4()), "idempotency_key": "k", **body})
        assert (status, _violation(answer)[0]) == (400, "content"), (body, answer)


BAD_REQUESTS = [
    ("GET", "/v1/conversations?limit=0.5", None),
    ("POST", "/v1/messages", b'{"x":1}'),
    ("POST", "/v1/messages", b"not json"),
    ("POST", "/v1/conversations", b""),
    ("GET", "/v1/conversations/not-a-uuid/messages?after_seq=-1", None),
]


@pytest.mark.parametrize("method, path, body", BAD_REQUESTS)
@pytest.mark.parametrize("credentials, challenge", [
    (None, 'Bearer realm="chat-service"'),
    ("Bearer garbage", 'Bearer realm="chat-service", error="invalid_token"'),
    ("expired", 'Bearer realm="chat-service", error="invalid_token"'),
    ("Basic YWxpY2U6eA==", 'Bearer realm="chat-service", error="invalid_request"'),
])
async def test_an_unauthenticated_caller_learns_nothing_but_401(api, method, path, body,
                                                                credentials, challenge):
    headers = {"Content-Type": "application/json", "Grpc-Timeout": "nonsense"}
    if credentials == "expired":
        headers["Authorization"] = f"Bearer {make_token('alice', ttl=-60)}"
    elif credentials is not None:
        headers["Authorization"] = credentials
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{api.http_port}{path}", data=body,
            headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 401, answer
        assert resp.headers["WWW-Authenticate"].startswith(challenge)
    assert answer["code"] == 16 and not any(
        d["@type"].endswith("BadRequest") for d in answer["details"])


async def test_grpc_authenticates_before_it_decodes(api):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
        raw = channel.unary_unary("/chat.v1.ChatService/SendMessage",
                                  request_serializer=lambda b: b,
                                  response_deserializer=chat_pb2.SendMessageResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await raw(b"\xff\xff\xff")  # not a message, and no token
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.GetConversations(chat_pb2.GetConversationsRequest(limit=500))
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


WEIRD_VALUES: list[Any] = [None, True, 1.5, -1, 2**64, "abc", "", "x" * 600, [], ["x"], [1],
                           {}, {"a": 1}, "\x00", "2024-13-45T99:00:00Z", "\ud800"[:0] + "😀"]


async def test_no_error_message_shows_the_implementation(api):
    """Every field of every request, given every kind of wrong value, over HTTP: the
    messages name fields and rules, never Python (exception names, tracebacks, parser text)."""
    cid = await _conversation(api)
    messages: list[str] = []
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {make_token('alice')}"}
        for path, item in DOC["paths"].items():
            url = f"http://127.0.0.1:{api.http_port}" + path.replace("{conversation_id}", cid)
            for verb, op in item.items():
                body_ref = (op.get("requestBody", {}).get("content", {})
                            .get("application/json", {}).get("schema", {}).get("$ref", ""))
                body_fields = list(DOC["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
                                   ["properties"]) if body_ref else []
                query_fields = [p["name"] for p in op["parameters"] if p["in"] == "query"]
                for name in body_fields + query_fields:
                    for value in WEIRD_VALUES:
                        if name in body_fields:
                            request = http.request(verb.upper(), url, headers=auth,
                                                   data=json.dumps({name: value}))
                        else:
                            request = http.request(verb.upper(), url, headers=auth,
                                                   params={name: json.dumps(value)})
                        async with request as resp:
                            answer = await resp.json()
                            assert resp.status < 500, answer
                            if resp.status >= 400:
                                messages.append(answer["message"])
    assert len(messages) > 100
    leaks = sorted({m for m in messages if IMPLEMENTATION_TEXT.search(m)})
    assert leaks == []
