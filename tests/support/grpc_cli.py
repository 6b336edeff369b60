"""A reflection-driven gRPC caller with grpcurl's command-line shape.

grpcurl itself is not installable on these machines (no package in Debian, PyPI or npm), so
the README's grpcurl examples are executed through this stand-in: like grpcurl, it knows no
proto file, fetches the descriptors over server reflection, parses ``-d`` JSON into the request
type and prints the response as JSON. An example that works here uses only what grpcurl uses.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


@dataclass
class GrpcurlCall:
    address: str
    method: str  # "list" or "pkg.Service/Method"
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: str = ""


def parse_grpcurl(command: str) -> GrpcurlCall:
    """Parses one grpcurl command line (after shell expansion) into its parts."""
    args = shlex.split(command)
    if not args or args[0] != "grpcurl":
        raise ValueError(f"not a grpcurl command: {command!r}")
    headers: list[tuple[str, str]] = []
    data = ""
    rest: list[str] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-plaintext":
            pass
        elif arg == "-H":
            name, _, value = args[i + 1].partition(":")
            headers.append((name.strip().lower(), value.strip()))
            i += 1
        elif arg == "-d":
            data = args[i + 1]
            i += 1
        elif arg.startswith("-"):
            raise ValueError(f"unsupported grpcurl flag {arg}")
        else:
            rest.append(arg)
        i += 1
    if len(rest) != 2:
        raise ValueError(f"expected ADDRESS and METHOD|list, got {rest}")
    return GrpcurlCall(address=rest[0], method=rest[1], headers=headers, data=data)


async def _reflect(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
                   ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for response in stub.ServerReflectionInfo(iter([request])):
        return response
    raise RuntimeError("no reflection response")


async def run(call: GrpcurlCall) -> str:
    """Executes the call and returns what grpcurl would print."""
    async with grpc.aio.insecure_channel(call.address) as channel:
        if call.method == "list":
            resp = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
            return "\n".join(sorted(s.name for s in resp.list_services_response.service))
        service_name, _, method_name = call.method.rpartition("/")
        resp = await _reflect(channel, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=service_name))
        pool = descriptor_pool.DescriptorPool()
        pending = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                   for raw in resp.file_descriptor_response.file_descriptor_proto]
        # Add files once their dependencies are in the pool (reflection returns them all).
        added: set[str] = set()
        while pending:
            progressed = False
            for fdp in list(pending):
                if all(dep in added for dep in fdp.dependency):
                    pool.Add(fdp)
                    added.add(fdp.name)
                    pending.remove(fdp)
                    progressed = True
            if not progressed:
                raise RuntimeError(f"unresolved imports: {[f.name for f in pending]}")
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        request = json_format.Parse(call.data or "{}", req_cls())
        invoke = channel.unary_unary(f"/{service_name}/{method_name}",
                                     request_serializer=req_cls.SerializeToString,
                                     response_deserializer=resp_cls.FromString)
        response = await invoke(request, metadata=tuple(call.headers))
        return json.dumps(json_format.MessageToDict(response), indent=2)
