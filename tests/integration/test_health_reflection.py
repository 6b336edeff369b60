"""grpc.health.v1 and server reflection: what Kubernetes probes and grpcurl rely on.

Both work without a token (a kubelet and an operator's grpcurl have none); health reflects
whether PostgreSQL answers, since the API cannot serve without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from chat_api.app import build_app
from chat_devtools.ports import closed_port
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return resp.status


async def reflect(channel: grpc.aio.Channel,
                  request: reflection_pb2.ServerReflectionRequest
                  ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize("service", ["", "chat.v1.ChatService"])
async def test_health_is_serving_once_postgres_answered(channel, service: str) -> None:
    # The `api` fixture ran one probe; no authorization metadata is sent here.
    assert await check(channel, service) == SERVING


async def test_health_of_an_unknown_service_is_not_found(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await check(channel, "no.such.Service")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_not_serving_when_postgres_is_unreachable(
    api_settings_factory: Callable[..., Any]
) -> None:
    with closed_port() as port:
        closed = f"postgresql://postgres@127.0.0.1:{port}/chat?sslmode=disable"
        app = build_app(api_settings_factory(db_source=closed))
        await app.start()
        try:
            await app.probe_once()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
                assert await check(ch) == NOT_SERVING
                assert await check(ch, "chat.v1.ChatService") == NOT_SERVING
        finally:
            await app.stop(grace=0.5)


async def test_reflection_lists_chat_service_without_a_token(channel) -> None:
    resp = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in resp.list_services_response.service}
    assert {"chat.v1.ChatService", "grpc.health.v1.Health"} <= names


async def test_reflection_describes_the_chat_service(channel) -> None:
    resp = await reflect(channel, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="chat.v1.ChatService"))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in resp.file_descriptor_response.file_descriptor_proto]
    chat = next(f for f in files if f.package == "chat.v1")
    (service,) = chat.service
    assert {m.name for m in service.method} == {
        "CreateConversation", "SendMessage", "GetMessages", "GetThread", "GetConversations",
        "GetConversation",
        "MarkAsRead", "AddMembers", "RemoveMember", "SetMemberRole", "UpdateConversation",
        "EditMessage", "DeleteMessage", "AddReaction", "RemoveReaction", "SearchMessages",
        "CreateUpload", "GetAttachmentUrl", "RegisterDevice", "UploadOneTimeKeys", "ClaimKeys",
        "ListDevices", "RemoveDevice", "SendToDevice", "GetToDeviceMessages",
        "AckToDeviceMessages"}
