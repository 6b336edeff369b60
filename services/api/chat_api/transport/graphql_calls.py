"""How a GraphQL operation calls ChatService: every field that needs data is one RPC through
the shared call pipeline.

Each such field builds the RPC's request message and hands it to the Dispatcher, exactly as a
gRPC or HTTP call does: the same authentication, tenant admission, rate limit (the RPC's own
class: a query asking for a conversation list and two threads counts one ``read`` per list
and thread), request rules from chat.proto, service layer, log line and metrics, with
``transport="graphql"``. GraphQL adds no business logic of its own, so it cannot drift from
the other two transports.

The per-operation loader (a strawberry DataLoader) is what keeps one operation from
repeating work: identical calls (the same RPC with the same request, e.g. a page asked for
under two aliases or through two fragments) are made once, and the calls a level of the
query needs are started together in one event-loop tick rather than one after another.
Where a level asks one method many times (``conversations { messages }``: a page of each
conversation; ``messages { thread }``: each message's thread; several ``conversation(id)``)
and the method has a batch handler, those calls run as one (``Dispatcher.call_many``): each
is still its own call for rate limits, request rules and metrics, with its own answer or
error, and all are read in one SQL statement, so a level costs the same few statements
whatever the page size.
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
        if len(keys) == 1:  # most operations: one call at a time
            try:
                return [await self._one(keys[0])]
            except Exception as exc:  # the loader hands it to the field that asked
                return [exc]
        by_method: dict[str, list[int]] = {}
        for i, (method, _) in enumerate(keys):
            by_method.setdefault(method, []).append(i)
        results: list[Message | BaseException | None] = [None] * len(keys)

        async def run(method: str, indexes: list[int]) -> None:
            answers: Sequence[Message | BaseException]
            if len(indexes) > 1 and self.dispatcher.batches(method):
                answers = await self._many(method, [keys[i] for i in indexes])
            else:
                answers = await asyncio.gather(*(self._one(keys[i]) for i in indexes),
                                               return_exceptions=True)
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer

        await asyncio.gather(*(run(m, indexes) for m, indexes in by_method.items()))
        return [r if r is not None else RuntimeError("no answer") for r in results]

    def _context(self, method: str) -> CallContext:
        ctx = CallContext(method=method, transport=TRANSPORT, authorization=self.authorization,
                          request_id=self.request_id, client_address=self.client_address,
                          read_after=self.read_after)
        if self._deadline is not None:
            ctx.timeout = self._deadline - asyncio.get_running_loop().time()
        return ctx

    def _moved(self, ctx: CallContext) -> None:
        """A write's position: later calls of the operation read after it."""
        if ctx.position is not None:
            self.read_after = ctx.position
            if self.response_headers is not None:
                self.response_headers[POSITION_HEADER] = ctx.position

    async def _many(self, method: str, keys: Sequence[_Key]
                    ) -> list[Message | BaseException]:
        """The calls of one method that a level of the operation makes, run as one
        (``Dispatcher.call_many``: one read for all of them)."""
        self.calls += len(keys)
        ctx = self._context(method)
        answers = await self.dispatcher.call_many(ctx, [self._requests[k] for k in keys])
        self._moved(ctx)
        return [graphql_error(a) if isinstance(a, ChatError) else a for a in answers]

    async def _one(self, key: _Key) -> Message:
        method, _ = key
        request = self._requests[key]
        self.calls += 1
        ctx = self._context(method)
        try:
            response = await self.dispatcher.call(ctx, request)
        except ChatError as exc:
            raise graphql_error(exc) from None
        self._moved(ctx)
        return response
