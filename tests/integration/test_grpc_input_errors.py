"""Input the gRPC transport cannot use is INVALID_ARGUMENT with a plain message, never INTERNAL
or UNKNOWN: Timestamps outside their range (which the binary encoding carries, unlike JSON)
and bytes that are not the request message (corrupt, truncated, invalid UTF-8 in a string).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth
from tests.helpers import create_conversation, error_info, get_messages, rpc_error, send_many


@pytest.mark.parametrize(("seconds", "nanos"), [
    (2**62, 0), (-(2**62), 0), (253402300800, 0), (-62135596801, 0), (0, -1),
    (0, 2_000_000_000), (2**63 - 1, 999_999_999),
])
async def test_out_of_range_before_timestamp_is_invalid_argument_naming_the_field(
        stub, seconds: int, nanos: int) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(get_messages(stub, "alice", conv.id,
                                       before_timestamp=Timestamp(seconds=seconds, nanos=nanos)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith("before_timestamp:"), err.details()
    info = error_info(err)
    assert info is not None and info.metadata["field"] == "before_timestamp"


@pytest.mark.parametrize(("seconds", "nanos", "expected"), [
    (-62135596800, 0, []),                     # 0001-01-01T00:00:00Z: nothing is older
    (253402300799, 999_999_999, [3, 2, 1]),    # 9999-12-31T23:59:59.999999999Z: all of them
])
async def test_before_timestamp_at_the_ends_of_the_range_is_accepted(
        stub, seconds: int, nanos: int, expected: list[int]) -> None:
    conv = await create_conversation(stub, "alice", ["bob"])
    await send_many(stub, "alice", conv.id, 3)
    page = await get_messages(stub, "alice", conv.id,
                              before_timestamp=Timestamp(seconds=seconds, nanos=nanos))
    assert [m.seq for m in page.messages] == expected


def _string_field(number: int, raw: bytes) -> bytes:
    return bytes([number << 3 | 2, len(raw)]) + raw


@pytest.mark.parametrize(("method", "payload"), [
    ("CreateConversation", b"\xff\xff\xff\xff"),              # no valid tag
    ("CreateConversation", b"\x0a\x05ab"),                    # length past the end
    ("CreateConversation", _string_field(1, b"bob\xff")),     # member_ids: invalid UTF-8
    ("SendMessage", _string_field(2, b"\xed\xa0\x80")),       # content: a UTF-8 surrogate
    ("GetMessages", b"\x12"),                                 # a tag and nothing after it
    ("MarkAsRead", b"\x08" + b"\xff" * 11),                   # a varint over 10 bytes
])
async def test_undecodable_request_is_invalid_argument_with_a_plain_message(
        channel: grpc.aio.Channel, method: str, payload: bytes) -> None:
    rpc = channel.unary_unary(f"/chat.v1.ChatService/{method}", request_serializer=None,
                              response_deserializer=None)
    err = await rpc_error(rpc(payload, metadata=auth("alice"), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == (f"request: not a valid chat.v1.{method}Request "
                             "(the bytes do not decode)")
    info = error_info(err)
    assert info is not None and info.metadata["field"] == "request"


async def test_undecodable_request_without_a_token_is_unauthenticated(
        channel: grpc.aio.Channel) -> None:
    rpc = channel.unary_unary("/chat.v1.ChatService/SendMessage", request_serializer=None,
                              response_deserializer=None)
    err = await rpc_error(rpc(b"\xff\xff", timeout=10))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err


async def test_a_decodable_request_still_works_through_the_raw_path(
        channel: grpc.aio.Channel) -> None:
    rpc = channel.unary_unary("/chat.v1.ChatService/CreateConversation",
                              request_serializer=None, response_deserializer=None)
    raw = await rpc(chat_pb2.CreateConversationRequest(member_ids=["bob"]).SerializeToString(),
                    metadata=auth("alice"), timeout=10)
    conv = chat_pb2.CreateConversationResponse.FromString(raw).conversation
    assert sorted(conv.member_ids) == ["alice", "bob"]


async def test_a_call_that_sends_no_request_message_is_invalid_argument(
        channel: grpc.aio.Channel) -> None:
    # A unary method is read by the server as a stream (grpc_server's module docstring): a
    # client that half-closes without a message is told so, like one whose bytes do not decode.
    async def nothing() -> Any:
        return
        yield

    rpc = channel.stream_unary("/chat.v1.ChatService/GetConversations",
                               request_serializer=None, response_deserializer=None)
    err = await rpc_error(rpc(nothing(), metadata=auth("alice"), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == "request: no chat.v1.GetConversationsRequest was sent"


def _calls(code: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("chat_rpc_requests_total", {
        "method": "GetConversations", "code": code, "transport": "grpc"}) or 0.0


async def test_a_client_that_leaves_before_sending_its_message_is_a_cancelled_call(
        channel: grpc.aio.Channel) -> None:
    from prometheus_client import REGISTRY

    def in_flight() -> float:
        return REGISTRY.get_sample_value("chat_rpc_in_flight", {"transport": "grpc"}) or 0.0

    never = asyncio.Event()

    async def held_back() -> Any:
        await never.wait()
        yield b""

    cancelled, invalid = _calls("CANCELLED"), _calls("INVALID_ARGUMENT")
    busy = in_flight()
    rpc = channel.stream_unary("/chat.v1.ChatService/GetConversations",
                               request_serializer=None, response_deserializer=None)
    call = rpc(held_back(), metadata=auth("alice"), timeout=10)
    for _ in range(500):  # admitted, waiting for the message
        if in_flight() > busy:
            break
        await asyncio.sleep(0.01)
    assert in_flight() > busy
    call.cancel()
    for _ in range(500):
        if _calls("CANCELLED") > cancelled:
            break
        await asyncio.sleep(0.01)
    assert _calls("CANCELLED") == cancelled + 1
    assert _calls("INVALID_ARGUMENT") == invalid
