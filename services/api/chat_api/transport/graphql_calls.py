"""How a GraphQL operation calls ChatService: every field that needs data is one RPC through
the shared call pipeline.

Each such field builds the RPC's request message and hands it to the Dispatcher, exactly as a
gRPC or HTTP call does: the same authentication, tenant admission, rate limit (the RPC's own
class: a query asking for a conversation list and two threads counts one ``read`` per list
and thread), request rules from chat.proto, service layer, log line and metrics, with
``transport="graphql"``. GraphQL adds no business logic of its own, so it cannot drift from
the other two transports.

The per-operation ``RpcLoader`` (a strawberry DataLoader) is what keeps one operation from
repeating work: identical calls (the same RPC with the same request, e.g. a page asked for
under two aliases or through two fragments) are made once, and the calls a level of the
query needs are started together in one event-loop tick rather than one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message
from strawberry.dataloader import DataLoader

from chat_api.transport.dispatch import CallContext, Dispatcher
from chat_api.transport.graphql_errors import graphql_error
from chat_shared.errors import ChatError
from chat_shared.replica_reads import POSITION_HEADER

TRANSPORT = "graphql"

M = TypeVar("M", bound=Message)

_Key = tuple[str, bytes]
"""(method, the request's deterministic serialization): equal keys are the same call."""


@dataclass
class GraphQLCaller:
    """What one GraphQL operation knows about its caller, and its way to make calls.

    Strawberry hands it to every resolver as ``info.context``.
    """

    dispatcher: Dispatcher
    authorization: str | None
    request_id: str
    client_address: Callable[[], str] | None = None
    timeout: float | None = None
    """Seconds the caller waits (from a ``Grpc-Timeout`` header); each call gets what is left
    of it when it starts."""
    read_after: str | None = None
    """The caller's ``X-Chat-Read-After`` (read replicas); a write in this operation moves it
    to the write's position, so a later field of the same operation reads its own write."""
    response_headers: MutableMapping[str, str] | None = None
    """The answer's headers: a write's ``X-Chat-Position`` goes there, as over HTTP/JSON."""
    calls: int = 0
    """RPCs made by this operation (after the loader merged identical ones)."""
    _loader: DataLoader[_Key, Message] = field(init=False, repr=False)
    _requests: dict[_Key, Message] = field(default_factory=dict, repr=False)
    _deadline: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._loader = DataLoader(load_fn=self._load_batch)
        if self.timeout is not None:
            self._deadline = asyncio.get_running_loop().time() + self.timeout

    async def call(self, method: str, request: M, response_type: type[Any]) -> Any:
        """The answer of ChatService method ``method`` to ``request``.

        Raises:
            GraphQLError: the call failed; its extensions carry the gRPC status name and the
                error's details (``chat_api.transport.graphql_errors``).
        """
        key = (method, request.SerializeToString(deterministic=True))
        self._requests.setdefault(key, request)
        response = await self._loader.load(key)
        if not isinstance(response, response_type):  # a wrong table entry, not a caller's fault
            raise TypeError(f"{method} answered {type(response).__name__}")
        return response

    async def _load_batch(self, keys: Sequence[_Key]) -> list[Message | BaseException]:
        results = await asyncio.gather(*(self._one(k) for k in keys), return_exceptions=True)
        return list(results)

    async def _one(self, key: _Key) -> Message:
        method, _ = key
        request = self._requests[key]
        self.calls += 1
        ctx = CallContext(method=method, transport=TRANSPORT, authorization=self.authorization,
                          request_id=self.request_id, client_address=self.client_address,
                          read_after=self.read_after)
        if self._deadline is not None:
            ctx.timeout = self._deadline - asyncio.get_running_loop().time()
        try:
            response = await self.dispatcher.call(ctx, request)
        except ChatError as exc:
            raise graphql_error(exc) from None
        if ctx.position is not None:
            self.read_after = ctx.position
            if self.response_headers is not None:
                self.response_headers[POSITION_HEADER] = ctx.position
        return response
