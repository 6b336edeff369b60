"""Publishing claimed events to Redis Streams, one conversation's events in order.

Each conversation's events go to Redis in one Lua call that XADDs them in order and stops at the
first one Redis refuses, so a conversation can never have a later event in the stream while an
earlier one waits for its retry. The calls of one batch are spread over up to OUTBOX_WORKERS
pipelines sent concurrently (one round trip each).

On a Redis Cluster the script's two keys (the stream and its epoch key) share a hash slot
(``events.epoch_key``), each conversation's call goes to the master of its stream's slot, and a
pipeline is split by the cluster client into one pipeline per master, sent concurrently.
A master that is down (until the cluster promotes its replica) makes the calls that reach it
*unavailable*, like an unreachable Redis: their events stay in the outbox, in order, and the
relay pauses until every master answers again (``redis_client.ping``), which after a failover
is as soon as the client has read the new slot map. (Calls of the same pipeline that other
masters did run are published again then: at least once, same event_id.)

Failures fall into two kinds, because a long Redis outage must not dead-letter the backlog:
- *unavailable*: Redis cannot be reached or refuses all writes for now (connection errors,
  timeouts, LOADING, OOM, READONLY ...). The events stay in the outbox untouched (no attempt is
  counted) and the relay pauses publishing until Redis answers again.
- *rejected*: Redis refused this event in particular (e.g. WRONGTYPE because its stream key
  holds another type). It counts toward the event's retries and eventually dead-letters.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat_outbox_relay.claiming import ClaimedRow, Failure
from chat_shared.events import ENTRY_FIELDS, EPOCH_FIELD, entry_values, epoch_key, stream_key
from chat_shared.redis_client import RedisClient
from chat_shared.redis_client import ping as redis_ping


def _xadd_in_order(fields: Sequence[str]) -> str:
    """The Lua script that XADDs a conversation's events in order, stopping at the first refusal.

    KEYS[1]: the stream; KEYS[2]: its epoch key (``events.epoch_key``). ARGV[1]: MAXLEN ("0" =
    no trimming); ARGV[2]: a new epoch, used when the stream does not exist (or has no epoch
    yet); then ``len(fields)`` values per event, in ``fields`` order. Every entry gets the
    stream's epoch as its ``epoch`` field. Returns {published count, error of the first refused
    event or ""}.

    The epoch is read and, for a stream that is missing, replaced in the same script as the
    XADD that recreates the stream, so no entry of a new stream carries the old epoch, whatever
    the number of relays.
    """
    if not all(re.fullmatch(r"[a-z_]+", name) for name in (*fields, EPOCH_FIELD)):
        raise ValueError(f"entry field names must be [a-z_]+ to be quoted in Lua: {fields}")
    pairs = ", ".join([f"'{EPOCH_FIELD}', epoch"]
                      + [f"'{name}', ARGV[i+{k}]" for k, name in enumerate(fields)])
    return f"""
local maxlen = ARGV[1]
local epoch = redis.call('GET', KEYS[2])
if (not epoch) or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
local n = 0
for i = 3, #ARGV, {len(fields)} do
  local r
  if maxlen == '0' then
    r = redis.pcall('XADD', KEYS[1], '*', {pairs})
  else
    r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', {pairs})
  end
  if type(r) == 'table' and r.err then
    return {{n, r.err}}
  end
  n = n + 1
end
return {{n, ''}}
"""


def new_epoch() -> str:
    """A fresh stream epoch: milliseconds since 1970 and 32 random bits (unique, and ordered by
    time, for a human reading them; consumers only compare them for equality)."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(4)}"


_XADD_IN_ORDER = _xadd_in_order(ENTRY_FIELDS)

# Server-wide conditions that say "not now" rather than "not this event".
_TRANSIENT_PREFIXES = ("OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN",
                       "CLUSTERDOWN", "NOREPLICAS", "MISCONF", "NOSCRIPT")


def is_transient(message: str) -> bool:
    return message.lstrip("-").startswith(_TRANSIENT_PREFIXES)


@dataclass
class PublishOutcome:
    published: list[ClaimedRow] = field(default_factory=list)
    rejected: list[Failure] = field(default_factory=list)
    unavailable: list[ClaimedRow] = field(default_factory=list)
    """Not published because Redis was unavailable; left in the outbox as they were."""
    unavailable_error: str = ""


class StreamPublisher:
    def __init__(self, redis: RedisClient, *, shards: int, maxlen: int, prefix: str,
                 workers: int) -> None:
        self._redis = redis
        self._shards = shards
        self._maxlen = str(maxlen)
        self._prefix = prefix
        self._workers = workers
        self._script = redis.register_script(_XADD_IN_ORDER)

    async def publish(self, rows: Sequence[ClaimedRow]) -> PublishOutcome:
        """Publishes ``rows`` (id order); a conversation's chain stops at its first failure."""
        chains: dict[str, list[ClaimedRow]] = {}
        for row in rows:
            chains.setdefault(row.event.conversation_id, []).append(row)
        conversations = list(chains.values())
        width = min(self._workers, len(conversations))
        groups = [conversations[i::width] for i in range(width)] if width else []
        outcome = PublishOutcome()
        results = await asyncio.gather(*(self._send(g) for g in groups), return_exceptions=True)
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                outcome.unavailable.extend(r for chain in group for r in chain)
                outcome.unavailable_error = _describe(result)
                continue
            for chain, reply in zip(group, result, strict=True):
                self._settle_chain(chain, reply, outcome)
        return outcome

    def _settle_chain(self, chain: list[ClaimedRow], reply: object,
                      outcome: PublishOutcome) -> None:
        if isinstance(reply, BaseException):
            # The whole call was refused (e.g. OOM before the script ran).
            message = _describe(reply)
            if is_transient(message) or not isinstance(reply, ResponseError):
                outcome.unavailable.extend(chain)
                outcome.unavailable_error = message
            else:
                outcome.rejected.append(Failure(chain[0], message))
            return
        pair: list[Any] = list(reply)  # type: ignore[call-overload]
        count, error = int(pair[0]), str(pair[1])
        outcome.published.extend(chain[:count])
        if count < len(chain):
            message = error
            if is_transient(message):
                outcome.unavailable.extend(chain[count:])
                outcome.unavailable_error = message
            else:
                outcome.rejected.append(Failure(chain[count], message))

    def _call(self, chain: list[ClaimedRow]) -> tuple[list[str], list[str]]:
        """The keys (stream, epoch) and script arguments that publish ``chain``."""
        args: list[str] = [self._maxlen, new_epoch()]
        for row in chain:
            args += entry_values(row.event)
        stream = stream_key(chain[0].event.conversation_id, self._shards, self._prefix)
        return [stream, epoch_key(stream)], args

    async def _send(self, group: list[list[ClaimedRow]]) -> list[object]:
        if len(group) == 1:
            # One conversation (the usual batch under light load): a plain EVALSHA costs
            # less than a pipeline of one. A refusal is its reply, as in a pipeline.
            keys, args = self._call(group[0])
            try:
                return [await self._script(keys=keys, args=args)]
            except ResponseError as exc:
                return [exc]
        pipe = self._redis.pipeline(transaction=False)
        for chain in group:
            keys, args = self._call(chain)
            pipe.eval(_XADD_IN_ORDER, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def ping(self, *, every_master: bool = False) -> bool:
        """Redis answers (with ``every_master``, each master of a cluster: see
        ``redis_client.ping``)."""
        return await redis_ping(self._redis, every_master=every_master)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return f"redis unavailable: {type(exc).__name__}: {exc}"[:1000]
    return f"{exc}"[:1000] or type(exc).__name__
