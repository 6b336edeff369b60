"""The gRPC face of ChatService: method handlers generated from the service descriptor.

Each RPC of chat.v1.ChatService gets a unary handler that hands the request to the shared
Dispatcher, so a new RPC needs only its proto definition and its handler function.

Requests arrive as bytes and are decoded by the Dispatcher (``decode``), not by grpc's
request deserializer: an exception there never reaches our code, and grpc answers it with
UNKNOWN "Unexpected <class 'google.protobuf.message.DecodeError'>". Decoded here, bytes that
are not the request message (truncated, corrupt, invalid UTF-8 in a string field) are
INVALID_ARGUMENT with a plain message, logged and counted like every call.

Each unary method is registered with grpc as a stream-unary handler (the wire is the same: a
unary call is a stream of one message each way). grpc reads a unary handler's request before
it calls the handler; a stream handler reads it when it asks (``context.read()``), so the
Dispatcher reads it (``receive``) only once the caller is admitted and within its rate limit.
A refused call is answered without its message ever being read off the stream: under an
abusive client, that read was a fifth of the API's CPU per refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from chat_api.transport.client_address import ClientAddress
from chat_api.transport.dispatch import CallContext, Dispatcher
from chat_api.transport.grpc_errors import to_grpc_status
from chat_shared.errors import ChatError, InvalidArgument
from chat_shared.observability.tracing import recording, trace_id_from
from chat_shared.protos.chat.v1 import chat_pb2
from chat_shared.replica_reads import POSITION_HEADER, READ_AFTER_HEADER

SERVICE_NAME = "chat.v1.ChatService"


EOF_GRACE = 0.005
"""Seconds a call without a request message waits before it is answered (``_unary``)."""

_READ_AFTER = READ_AFTER_HEADER.lower()
_READ = frozenset({"authorization", "x-request-id", "traceparent", "x-forwarded-for",
                   _READ_AFTER})
_POSITION = POSITION_HEADER.lower()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The request metadata this service reads, in one pass (the first value of each key)."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in _READ and key not in found:
            found[key] = value if isinstance(value, str) else value.decode()
    return found


def peer_address(peer: str) -> str:
    """The address in grpc's peer string ("ipv4:10.0.0.7:51234", "ipv6:[::1]:5", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return rest or peer


def _decoder(cls: type[Message]) -> Callable[[bytes], Message]:
    problem = f"not a valid {cls.DESCRIPTOR.full_name} (the bytes do not decode)"

    def decode(raw: bytes) -> Message:
        if not isinstance(raw, bytes):  # grpc.aio.EOF: the client sent no message
            raise InvalidArgument("request", f"no {cls.DESCRIPTOR.full_name} was sent")
        try:
            return cls.FromString(raw)
        except DecodeError:
            raise InvalidArgument("request", problem) from None

    return decode


def _unary(dispatcher: Dispatcher, method: str, decode: Callable[[bytes], Message],
           addresses: ClientAddress) -> Callable[..., Awaitable[Any]]:
    async def handle(_: object, context: grpc.aio.ServicerContext) -> Any:
        # The request iterator is not used: ``context.read()`` is the same read, done by the
        # Dispatcher once the call is admitted (module docstring).
        metadata = _metadata(context)
        ctx = CallContext(method=method, transport="grpc",
                          authorization=metadata.get("authorization"),
                          timeout=context.time_remaining(),
                          client_address=lambda: addresses.resolve(
                              peer_address(context.peer()), metadata.get("x-forwarded-for")),
                          read_after=metadata.get(_READ_AFTER))
        request_id = metadata.get("x-request-id")
        if request_id and len(request_id) <= 128:
            ctx.request_id = request_id
        if not recording():  # else the interceptor's server span gives the trace id
            ctx.trace_id = trace_id_from(metadata.get("traceparent"))

        async def receive() -> Any:
            raw = await context.read()
            if raw is grpc.aio.EOF:
                # No message: the client half-closed without one (INVALID_ARGUMENT, from
                # decode), or it went away before its message came, and grpc, told of that a
                # moment after the read ends, cancels this call (CANCELLED, as grpc counted a
                # unary call whose request never arrived). The pause tells them apart.
                await asyncio.sleep(EOF_GRACE)
            return raw

        try:
            response = await dispatcher.call(ctx, None, decode, receive)
        except ChatError as exc:
            # Refused credentials (counted against the address) and errors after the limit
            # carry the decision's RateLimit headers too.
            await context.abort_with_status(to_grpc_status(exc, ctx.rate_limit_headers()))
        trailing = [("x-request-id", ctx.request_id)]
        if ctx.rate_limit is not None:  # the same RateLimit headers HTTP sends
            trailing += ((k.lower(), v) for k, v in ctx.rate_limit_headers().items())
        if ctx.position is not None:
            trailing.append((_POSITION, ctx.position))
        context.set_trailing_metadata(trailing)
        return response

    return handle


def chat_service_handler(dispatcher: Dispatcher, addresses: ClientAddress | None = None
                         ) -> grpc.GenericRpcHandler:
    """The ChatService methods; ``addresses`` tells a call's client address (TRUSTED_PROXIES;
    None = the peer's)."""
    addresses = addresses or ClientAddress()
    service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
    handlers = {}
    for method in service.methods:
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        handlers[method.name] = grpc.stream_unary_rpc_method_handler(
            _unary(dispatcher, method.name, _decoder(req_cls), addresses),
            request_deserializer=None,  # bytes: read and decoded in the Dispatcher (see above)
            response_serializer=resp_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
