"""No input makes the gRPC API answer INTERNAL or UNKNOWN, or write a traceback.

A hypothesis fuzzer sends well over a thousand requests, for every RPC of the service
descriptor (a new RPC is fuzzed without a change here), through a raw channel that sends bytes
as they are: random messages built from each request's descriptor (any int64, out-of-range
Timestamps, control characters, invalid page tokens, ids of members and strangers),
valid encodings with bytes flipped, cut or inserted, invalid UTF-8 in string fields, and plain
random bytes; most with a valid token, some with none, a forged or an expired one. Every
answer must be a status the caller can act on, and the server's log (a real ``chat-api``
process) must hold no traceback and no ERROR line.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_shared.auth import issue_token
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth, make_token
from tests.integration.test_http_contract import IMPLEMENTATION_TEXT
from tests.support.api_process import ApiUnderTest, api_process_fixture  # noqa: F401 - fixture

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
EXAMPLES = 1500
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
EDGE_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**62, -(2**62), 2**63 - 1, -(2**63)]
# Timestamp seconds around the ends of its valid range (0001-01-01 .. 9999-12-31) and beyond.
EDGE_SECONDS = [-62135596800, -62135596801, 253402300799, 253402300800, 2**62, -(2**62)]
EDGE_NANOS = [0, 999_999_999, 1_000_000_000, -1, 2_000_000_000, 2**31 - 1, -(2**31)]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
            b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1\xa1", b"ok\x80ok", b"\xc0\xaf"]


def _token(data: dict[str, Any]) -> str:
    raw = json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class World:
    """Real ids and tokens the fuzzer mixes in, so that requests also get past validation."""

    def __init__(self, conversation_id: str, page_tokens: list[str]) -> None:
        # One valid request per RPC, for the variations that change a single field of it (an
        # RPC missing here is still fuzzed with random messages and bytes).
        self.valid: dict[str, Message] = {
            "CreateConversation": chat_pb2.CreateConversationRequest(member_ids=["bob", "carol"],
                                                                     title="t"),
            "SendMessage": chat_pb2.SendMessageRequest(conversation_id=conversation_id,
                                                       content="hi", idempotency_key="fuzz"),
            "GetMessages": chat_pb2.GetMessagesRequest(conversation_id=conversation_id, limit=2),
            "GetConversations": chat_pb2.GetConversationsRequest(limit=2),
            "MarkAsRead": chat_pb2.MarkAsReadRequest(conversation_id=conversation_id,
                                                     up_to_seq=1),
        }
        self.plausible = [conversation_id, "alice", "bob", "carol", "hello", *page_tokens]
        self.odd = [
            conversation_id.upper(), "{" + conversation_id + "}", f"urn:uuid:{conversation_id}",
            str(uuid.uuid4()), "", " ", "mallory", "\x00", "a\x00b", "x" * 129, "x" * 128,
            "\u202e", "\U0001f600", "\t", "line\nbreak",
            _token({"k": "m", "c": conversation_id, "s": 2**70, "a": True}),
            _token({"k": "m", "c": conversation_id, "s": -1, "a": False}),
            _token({"k": "m", "c": conversation_id, "s": True, "a": 1}),
            _token({"k": "c", "t": "0001-01-01T00:00:00+14:00", "i": conversation_id}),
            _token({"k": "c", "t": "9999-12-31T23:59:59-14:00", "i": conversation_id}),
            _token({"k": "c", "t": "2024-01-01T00:00:00", "i": conversation_id}),
            _token({"k": "c", "t": 5, "i": []}), _token([1, 2]), _token({"k": "m"}),
            "====", "bm90IGpzb24", "%%%",
        ]


def _scalar(fd: FieldDescriptor, world: World) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        # Half of the time a value that passes validation, so calls reach the database too.
        return st.one_of(st.sampled_from(world.plausible), st.sampled_from(world.plausible),
                         st.sampled_from(world.odd), st.text(max_size=200),
                         st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=40))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=200)
    if fd.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                   FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(*INT64), st.integers(-5, 300),
                         st.integers(0, 10))
    if fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                   FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from([i for i in EDGE_INTS if INT32[0] <= i <= INT32[1]]),
                         st.integers(*INT32), st.integers(-5, 150), st.integers(0, 10))
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(*INT32)
    raise AssertionError(f"no strategy for {fd.full_name} ({fd.type}): add one here")


def _timestamps() -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({}, optional={
        "seconds": st.one_of(st.sampled_from(EDGE_SECONDS), st.integers(*INT64),
                             st.integers(-62135596800, 253402300799)),
        "nanos": st.one_of(st.sampled_from(EDGE_NANOS), st.integers(*INT32)),
    })


def _field_values(desc: Descriptor, world: World, depth: int
                  ) -> dict[str, st.SearchStrategy[Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
            value: st.SearchStrategy[Any] = _timestamps()
        elif fd.message_type is not None:
            if depth > 2:
                continue
            value = messages(fd.message_type, world, depth + 1)
        else:
            value = _scalar(fd, world)
        fields[fd.name] = st.lists(value, max_size=30) if fd.is_repeated else value
    return fields


def _set(message: Message, name: str, value: Any) -> None:
    fd = message.DESCRIPTOR.fields_by_name[name]
    message.ClearField(name)
    if fd.is_repeated and fd.message_type is not None:
        for item in value:
            getattr(message, name).add().CopyFrom(item)
    elif fd.is_repeated:
        getattr(message, name).extend(value)
    elif isinstance(value, dict):
        target = getattr(message, name)
        target.SetInParent()
        for key, v in value.items():
            setattr(target, key, v)
    elif isinstance(value, Message):
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


def messages(desc: Descriptor, world: World, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random messages of ``desc``: any subset of its fields, each with any value of its type."""
    cls = GetMessageClass(desc)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _set(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=_field_values(desc, world, depth)).map(build)


def variations(base: Message, world: World) -> st.SearchStrategy[Message]:
    """``base`` (a valid request) with one field given any value of its type."""
    fields = _field_values(base.DESCRIPTOR, world, 0)

    def vary(name: str, value: Any) -> Message:
        message = type(base)()
        message.CopyFrom(base)
        _set(message, name, value)
        return message

    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: fields[name].map(lambda value: vary(name, value)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def invalid_utf8(draw: st.DrawFn, desc: Descriptor, world: World) -> bytes:
    """A valid message plus one string field whose bytes are not UTF-8."""
    strings = [f for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING]
    base = draw(messages(desc, world)).SerializeToString()
    if not strings:
        return base
    fd = draw(st.sampled_from(strings))
    bad = draw(st.binary(max_size=8)) + draw(st.sampled_from(BAD_UTF8)) + draw(
        st.binary(max_size=8))
    return base + _varint(fd.number << 3 | 2) + _varint(len(bad)) + bad


@st.composite
def mutated(draw: st.DrawFn, desc: Descriptor, world: World) -> bytes:
    """A valid encoding with a few bytes flipped, cut or inserted."""
    raw = bytearray(draw(messages(desc, world)).SerializeToString() or b"\x08\x01")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif action == "cut" and raw:
            del raw[at:at + draw(st.integers(1, 4))]
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            del raw[at:]
    return bytes(raw)


def payloads(method: str, desc: Descriptor, world: World) -> st.SearchStrategy[bytes]:
    valid = world.valid.get(method)
    structured = ([variations(valid, world).map(lambda m: m.SerializeToString())] * 2
                  if valid is not None else [])
    return st.one_of(
        *structured,
        messages(desc, world).map(lambda m: m.SerializeToString()),
        mutated(desc, world),
        invalid_utf8(desc, world),
        st.binary(max_size=300),
    )


def _credentials() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    wrong = issue_token("alice", secret="another-secret-that-is-long-enough-x",
                        ttl_seconds=3600)
    # Mostly authenticated callers (members and a stranger), some without a usable token.
    return st.sampled_from([
        *[auth("alice")] * 12, *[auth("bob")] * 3, *[auth("mallory")] * 2, (),
        (("authorization", "Bearer garbage"),), (("authorization", "Basic YWxpY2U6eA=="),),
        (("authorization", f"Bearer {make_token('alice', ttl=-120)}"),),
        (("authorization", f"Bearer {wrong}"),), (("authorization", "Bearer "),),
    ])


def _request_ids() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                        max_size=200)
    return st.one_of(st.just(()), printable.map(lambda v: (("x-request-id", v),)))


async def _world(api: ApiUnderTest) -> World:
    async with grpc.aio.insecure_channel(api.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        conv = (await stub.CreateConversation(
            chat_pb2.CreateConversationRequest(member_ids=["bob"]), metadata=auth("alice"),
            timeout=30)).conversation
        for i in range(3):
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content=f"m{i}", idempotency_key=uuid.uuid4().hex),
                metadata=auth("alice"), timeout=30)
        await stub.CreateConversation(chat_pb2.CreateConversationRequest(member_ids=["carol"]),
                                      metadata=auth("alice"), timeout=30)
        messages_page = await stub.GetMessages(chat_pb2.GetMessagesRequest(
            conversation_id=conv.id, limit=1), metadata=auth("alice"), timeout=30)
        conversations_page = await stub.GetConversations(chat_pb2.GetConversationsRequest(
            limit=1), metadata=auth("alice"), timeout=30)
    return World(conv.id, [messages_page.next_page_token, conversations_page.next_page_token])


def fuzz(target: str, world: World) -> tuple[Counter[str], int, set[str]]:
    """Runs the fuzzer (blocking); returns the answers by code, the number of calls and every
    distinct error message the server sent."""
    answers: Counter[str] = Counter()
    messages: set[str] = set()
    calls = itertools.count(1)
    per_method = {m.name: payloads(m.name, m.input_type, world) for m in SERVICE.methods}
    per_method["NoSuchMethod"] = st.binary(max_size=50)
    cases = st.sampled_from(list(per_method)).flatmap(
        lambda m: st.tuples(st.just(m), per_method[m]))

    with grpc.insecure_channel(target) as channel:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases, credentials=_credentials(), request_id=_request_ids())
        def one(case: tuple[str, bytes], credentials: tuple[tuple[str, str], ...],
                request_id: tuple[tuple[str, str], ...]) -> None:
            method, payload = case
            next(calls)
            rpc = channel.unary_unary(f"/chat.v1.ChatService/{method}",
                                      request_serializer=None, response_deserializer=None)
            try:
                rpc(payload, metadata=credentials + request_id, timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                messages.add(err.details() or "")  # type: ignore[attr-defined]
                assert code not in FORBIDDEN, (method, payload, err.details())  # type: ignore[attr-defined]
                assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (method, payload)
            answers[f"{method} {code.name}"] += 1

        one()
    return answers, next(calls) - 1, messages


@pytest.mark.slow
async def test_no_input_makes_the_api_answer_internal_or_unknown_or_log_a_traceback(
        api_process: ApiUnderTest) -> None:
    world = await _world(api_process)
    since = api_process.log_size()
    started = time.monotonic()
    answers, calls, messages = await asyncio.to_thread(fuzz, api_process.grpc_target, world)
    elapsed = time.monotonic() - started
    print(f"\n{calls} calls in {elapsed:.1f} s; answers:\n"
          + "\n".join(f"  {k}: {v}" for k, v in sorted(answers.items())))
    assert calls >= 1000
    # No error message shows the implementation (Python exception text, class names).
    assert sorted(m for m in messages if IMPLEMENTATION_TEXT.search(m)) == []
    assert len(messages) > 10  # the fuzzer did reach many different refusals
    # The fuzzer reached the service and its storage, not only the validation, of every RPC it
    # has a valid request for.
    answered_ok = {key.split()[0] for key in answers if key.endswith(" OK")}
    assert answered_ok >= set(world.valid) & {m.name for m in SERVICE.methods}, answers
    # The server's side: one call line per call, none INTERNAL, nothing logged as an error.
    await api_process.wait_for_records(lambda r: r.get("msg") == "rpc", count=1, since=since)
    records = api_process.records(since)
    bad = [r for r in records
           if "exception" in r or r.get("level") in ("error", "critical")
           or "Traceback" in r.get("raw", "") or r.get("code") in ("INTERNAL", "UNKNOWN")]
    assert bad == [], bad[:5]
