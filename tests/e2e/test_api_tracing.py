"""OTLP export: with OTEL_EXPORTER_OTLP_ENDPOINT set, chat-api sends its spans to a collector.

The collector here is a real gRPC server implementing OTLP's TraceService on a loopback port
of its own; the API is a real subprocess.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from chat_devtools.process import ServiceProcess, grpc_serving
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, bytes]] = []  # (name, trace_id)

    async def Export(self, request, context):  # noqa: N802 - OTLP's name
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend((span.name, span.trace_id) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_of_a_call_reach_the_otlp_collector(api_env, venv_bin):
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    env = {**os.environ, **api_env,
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    api = ServiceProcess("api", [venv_bin / "chat-api"], env=env, ready=grpc_serving())
    try:
        await api.start().ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port('grpc_port')}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=["bob"]), metadata=auth("alice"), timeout=10)).conversation
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content="traced", idempotency_key=uuid.uuid4().hex),
                metadata=auth("alice"))
        deadline = time.monotonic() + 20
        wanted = {"/chat.v1.ChatService/SendMessage", "db.send_message"}
        while not wanted <= {name for name, _ in collector.spans}:
            assert time.monotonic() < deadline, f"spans seen: {collector.spans}"
            await asyncio.sleep(0.1)
        # The database span belongs to the RPC's trace.
        traces = {name: trace for name, trace in collector.spans if name in wanted}
        assert len(set(traces.values())) == 1
    finally:
        await asyncio.to_thread(api.stop)
        await server.stop(0)
