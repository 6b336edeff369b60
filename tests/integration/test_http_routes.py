"""Routes come from google.api.http annotations: a new annotated RPC is served unchanged.

A service that does not exist in chat.proto is built as a descriptor here, with templates the
chat API does not use yet (``{name=things/*}``, a PATCH with ``body: "*"``, a named body
field, bool/repeated query parameters); the gateway serves and documents it with no other code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from chat_api.transport.http_routes import http_bindings
from tests.conftest import make_token

_F = descriptor_pb2.FieldDescriptorProto


def demo_service() -> ServiceDescriptor:
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName("demo.v1.ThingService")
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(name="demo/v1/things.proto", package="demo.v1",
                                           syntax="proto3",
                                           dependency=["google/api/annotations.proto"])
    thing = f.message_type.add(name="Thing")
    thing.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    thing.field.add(name="size", number=2, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    thing.field.add(name="verbose", number=3, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL)
    thing.field.add(name="tags", number=4, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    wrap = f.message_type.add(name="PutThingRequest")
    wrap.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    wrap.field.add(name="thing", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                   type_name=".demo.v1.Thing")
    svc = f.service.add(name="ThingService")
    for name, in_type, rule in (
        ("GetThing", "Thing", http_pb2.HttpRule(get="/v1/{name=things/*}")),
        ("UpdateThing", "Thing", http_pb2.HttpRule(patch="/v1/{name=things/*}", body="*")),
        ("PutThing", "PutThingRequest", http_pb2.HttpRule(put="/v1/{name=things/*}:put",
                                                          body="thing")),
    ):
        m = svc.method.add(name=name, input_type=f".demo.v1.{in_type}",
                           output_type=".demo.v1.Thing")
        m.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(f)
    return pool.FindServiceByName("demo.v1.ThingService")


@pytest.fixture
async def demo_http(api_settings_factory: Callable[..., Any]) -> AsyncIterator[str]:
    from chat_api.transport.dispatch import Dispatcher
    from chat_api.transport.http_gateway import HttpGateway
    from chat_shared.auth import TokenVerifier

    service = demo_service()
    thing_cls = GetMessageClass(service.file.message_types_by_name["Thing"])

    async def echo(caller: str, req: Message) -> Message:
        # Echo the request back as a Thing, so the test sees what the gateway bound.
        thing = req.thing if req.DESCRIPTOR.name == "PutThingRequest" else req
        out = thing_cls()
        out.CopyFrom(thing)
        if req.DESCRIPTOR.name == "PutThingRequest":
            out.name = req.name
        out.tags.append(f"by:{caller.user_id}")
        return out

    dispatcher = Dispatcher(TokenVerifier(api_settings_factory()),
                            {m.name: echo for m in service.methods})
    gateway = HttpGateway(dispatcher, max_body_bytes=1 << 16, service=service)
    port = await gateway.start("127.0.0.1", 0, shutdown_timeout=1.0)
    yield f"http://127.0.0.1:{port}"
    await gateway.stop()


def test_chat_routes_come_from_the_annotations():
    routes = {(b.http_method, b.openapi_path, b.body) for b in http_bindings()}
    assert routes == {
        ("POST", "/v1/conversations", "*"),
        ("POST", "/v1/messages", "*"),
        ("GET", "/v1/conversations/{conversation_id}/messages", ""),
        ("GET", "/v1/conversations/{conversation_id}/threads/{root_id}", ""),
        ("GET", "/v1/conversations", ""),
        ("POST", "/v1/conversations/{conversation_id}/read", "*"),
        ("POST", "/v1/conversations/{conversation_id}/members", "*"),
        ("DELETE", "/v1/conversations/{conversation_id}/members/{user_id}", ""),
        ("PUT", "/v1/conversations/{conversation_id}/members/{user_id}/role", "*"),
        ("PATCH", "/v1/conversations/{conversation_id}", "*"),
        ("GET", "/v1/conversations/{conversation_id}", ""),
        ("PATCH", "/v1/conversations/{conversation_id}/messages/{message_id}", "*"),
        ("DELETE", "/v1/conversations/{conversation_id}/messages/{message_id}", ""),
        ("POST", "/v1/conversations/{conversation_id}/messages/{message_id}/reactions", "*"),
        ("DELETE", "/v1/conversations/{conversation_id}/messages/{message_id}/reactions", ""),
        ("GET", "/v1/messages:search", ""),
        ("POST", "/v1/conversations/{conversation_id}/uploads", "*"),
        ("GET", "/v1/attachments/{attachment_id}/url", ""),
        ("POST", "/v1/devices", "*"),
        ("POST", "/v1/devices/{device_id}/keys", "*"),
        ("POST", "/v1/conversations/{conversation_id}/keys:claim", "*"),
        ("GET", "/v1/conversations/{conversation_id}/devices", ""),
        ("DELETE", "/v1/devices/{device_id}", ""),
        ("POST", "/v1/conversations/{conversation_id}/to_device", "*"),
        ("GET", "/v1/devices/{device_id}/inbox", ""),
        ("POST", "/v1/devices/{device_id}/inbox:ack", "*"),
    }


async def test_a_new_annotated_rpc_is_served_without_other_changes(demo_http):
    auth = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession(demo_http, headers=auth) as http:
        async with http.get("/v1/things/box", params=[("size", "3"), ("verbose", "true"),
                                                     ("tags", "a"), ("tags", "b")]) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"name": "things/box", "size": 3, "verbose": True,
                                         "tags": ["a", "b", "by:alice"]}
        async with http.patch("/v1/things/box", json={"size": 4, "name": "ignored"}) as resp:
            # The path binds name; it wins over the body.
            assert (await resp.json())["name"] == "things/box"
        async with http.put("/v1/things/cup:put", json={"size": 5}) as resp:
            body = await resp.json()
            assert (body["name"], body["size"]) == ("things/cup", 5)
        async with http.get("/v1/other/box") as resp:
            assert resp.status == 404  # the template's literal segment is enforced
        async with http.get("/v1/things/box", params={"verbose": "yes"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"].startswith("verbose:")
        async with http.get("/openapi.json") as resp:
            doc = await resp.json()
    assert set(doc["paths"]) == {"/v1/{name}", "/v1/{name}:put"}
    assert set(doc["paths"]["/v1/{name}"]) == {"get", "patch"}
