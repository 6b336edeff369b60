"""Typing indicators: ephemeral frames between the members of a conversation, across replicas.

A client sends ``{"type": "typing", "conversation_id": ...}`` while its user types. The other
members' sockets receive ``{"type": "typing", "conversation_id", "user_id", "expires_in_ms"}``
on whichever gateway replica they are connected to. Typing is not a change to the conversation:
it does not go through the outbox or the streams, is not stored and is not replayed on resume.
It travels over Redis pub/sub instead, on a channel per tenant (``chat:typing:{<tenant>}``),
which every replica subscribes to by pattern; a replica delivers a signal only to its own
sockets of the signal's recipients, in the channel's tenant.

What keeps it cheap and honest:

- Only a member's signal goes out. Membership is read through ``History.member_of`` and the
  conversation's members (the recipients) from its ``member_ids``; both are cached for
  ``WS_TYPING_CACHE_TTL`` seconds, so a user typing costs PostgreSQL at most one read of each
  per conversation and cache period, and a membership change reaches typing within that period.
- At most one signal per user and conversation every ``RATE_LIMIT_TYPING_INTERVAL`` seconds (3
  by default; a rate-limit setting, docs/rate-limits.md), whichever replicas and sockets the
  user types from: a local window first (``limits.TypingThrottle``, no I/O), then ``SET NX PX``
  on a Redis key in the same script that publishes, so two replicas cannot both publish within
  one window. This is the only typing limit: it costs one Redis round trip per signal, where
  asking the shared limiter first would cost two. Extra signals are dropped silently (they are
  not errors). An interval of 0 turns the limit off (every member's signal is published).
- The sender's own sockets never receive their user's signal.
- Redis down or slow: the signal is dropped (bounded by REDIS_TIMEOUT); nothing else waits.

On a Redis Cluster, classic pub/sub would copy every signal to every node over the cluster bus.
There the signals travel by sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) instead, on
``TYPING_SHARDS`` shard channels ``chat:typing:{<n>}`` (a tenant's signals on shard
``crc32(tenant) % TYPING_SHARDS``, the tenant inside the message), so each signal goes to the
one master that owns its channel's slot and from there to the gateways. The throttle key carries
the same hash tag, so the script that sets it and publishes touches one slot. Every replica
subscribes to every shard channel on the master that owns it (a connection per channel); when
the slot moves (a failover: the old master unsubscribes its subscribers, or dies) the
subscription is made again on the new owner. Signals sent meanwhile are lost, as typing may be.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from chat_shared.observability.logging import get_logger
from chat_shared.redis_client import RedisClient
from chat_ws_gateway.history import History
from chat_ws_gateway.limits import TypingThrottle

log = get_logger(__name__)

CHANNEL_PREFIX = "chat:typing"
TYPING_SHARDS = 16
"""Shard channels of typing signals on a Redis Cluster (spread over its masters by slot)."""
EXPIRES_IN_MS = 5000
"""How long a client shows the indicator after a signal, unless another one renews it."""

WS_TYPING = Counter("ws_typing_signals_total",
                    "Typing frames from clients, by what became of them", ["outcome"])
for _outcome in ("published", "throttled", "not_member", "failed", "delivered"):
    WS_TYPING.labels(_outcome)

# Starts the user's window and publishes, or does neither (the window is running): one round
# trip, and two replicas cannot both publish within one window.
_THROTTLED_PUBLISH = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
    return redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return -1
"""
_PUBLISH = "return redis.call('PUBLISH', ARGV[2], ARGV[3])"
# The same on a cluster: a shard channel, whose slot is the key's (same hash tag).
_THROTTLED_SPUBLISH = _THROTTLED_PUBLISH.replace("'PUBLISH'", "'SPUBLISH'")
_SPUBLISH = _PUBLISH.replace("'PUBLISH'", "'SPUBLISH'")


def channel(tenant: str) -> str:
    """The pub/sub channel of a tenant's typing signals."""
    return f"{CHANNEL_PREFIX}:{{{tenant}}}"


def shard_channel(tenant: str) -> str:
    """The shard channel (Redis Cluster) that carries a tenant's typing signals."""
    return f"{CHANNEL_PREFIX}:{{{zlib.crc32(tenant.encode()) % TYPING_SHARDS}}}"


def shard_channels() -> list[str]:
    return [f"{CHANNEL_PREFIX}:{{{n}}}" for n in range(TYPING_SHARDS)]


def tenant_of(channel_name: str) -> str | None:
    head = CHANNEL_PREFIX + ":{"
    if channel_name.startswith(head) and channel_name.endswith("}"):
        return channel_name[len(head):-1]
    return None


def typing_frame(conversation_id: str, user_id: str) -> str:
    return orjson.dumps({"type": "typing", "conversation_id": conversation_id,
                         "user_id": user_id, "expires_in_ms": EXPIRES_IN_MS}).decode()


class _TtlCache:
    """A small cache of answers that may be ``ttl`` seconds old (cleared when it is full)."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._data: dict[object, tuple[float, Any]] = {}

    def get(self, key: object) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None or hit[0] <= self._clock():
            return False, None
        return True, hit[1]

    def put(self, key: object, value: Any) -> None:
        if len(self._data) >= self._max:
            self._data.clear()
        self._data[key] = (self._clock() + self._ttl, value)


Deliver = Callable[[str, str, str, list[str], str], int]
"""(tenant, conversation_id, sender, recipients, frame) -> sockets it was queued for."""


class TypingRelay:
    def __init__(self, redis: RedisClient, subscriber: RedisClient, history: History,
                 deliver: Deliver, *, interval: float, cache_ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._subscriber = subscriber
        self._history = history
        self._deliver = deliver
        """
        Args:
            interval: seconds between two signals of one user in one conversation
                (RATE_LIMIT_TYPING_INTERVAL); 0 = no limit.
            cache_ttl: seconds a membership answer may be reused (WS_TYPING_CACHE_TTL).
        """
        self.interval = interval
        self._interval_ms = max(1, int(interval * 1000))
        self._throttle = (TypingThrottle(interval, clock, max_keys=100_000)
                          if interval > 0 else None)
        self._members = _TtlCache(cache_ttl, clock)
        self._member_of = _TtlCache(cache_ttl, clock)
        self._cluster = isinstance(redis, RedisCluster)
        if interval > 0:
            self._source = _THROTTLED_SPUBLISH if self._cluster else _THROTTLED_PUBLISH
        else:  # no limit: the same arguments, no window key set
            self._source = _SPUBLISH if self._cluster else _PUBLISH
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self._shards_subscribed: set[str] = set()
        self.subscribed = asyncio.Event()

    async def signal(self, tenant: str, user_id: str, conversation_id: str) -> str:
        """Handles one typing frame of ``user_id``; returns what became of it (the metric's
        outcome): published, throttled, not_member or failed."""
        outcome = await self._signal(tenant, user_id, conversation_id)
        WS_TYPING.labels(outcome).inc()
        return outcome

    async def _signal(self, tenant: str, user_id: str, conversation_id: str) -> str:
        if self._throttle is not None and not self._throttle.allow(
                (tenant, user_id, conversation_id)):
            return "throttled"
        try:
            if not await self._is_member(tenant, user_id, conversation_id):
                return "not_member"
            recipients = [m for m in await self._recipients(tenant, conversation_id)
                          if m != user_id]
            if not recipients:
                return "published"  # nobody else to tell
            if self._cluster:
                name = shard_channel(tenant)
                message = orjson.dumps({"t": tenant, "c": conversation_id, "u": user_id,
                                        "r": recipients})
                key = f"{name}:{tenant}:{conversation_id}:{user_id}"
            else:
                name = channel(tenant)
                message = orjson.dumps({"c": conversation_id, "u": user_id, "r": recipients})
                key = f"{CHANNEL_PREFIX}:{{{tenant}}}:{conversation_id}:{user_id}"
            sent = await self._throttled_publish(key, name, message)
        except Exception:  # noqa: BLE001 - a lost typing signal is harmless; see the module doc
            log.warning("ws_typing_failed", user_id=user_id, conversation_id=conversation_id,
                        exc_info=True)
            return "failed"
        return "throttled" if sent == -1 else "published"

    async def _throttled_publish(self, key: str, name: str, message: bytes) -> Any:
        """The script by its SHA, sent whole when the node does not know it (a restarted or
        flushed node, or the master of another slot): EVAL loads it where the key lives.
        (Not redis-py's ``Script``: on a cluster its SCRIPT LOAD goes to every master through
        connections the client then leaves open.)"""
        args = (1, key, self._interval_ms, name, message)
        try:
            return await self._redis.evalsha(self._sha, *args)
        except NoScriptError:
            return await self._redis.eval(self._source, *args)

    async def _is_member(self, tenant: str, user_id: str, conversation_id: str) -> bool:
        key = (tenant, user_id, conversation_id)
        hit, value = self._member_of.get(key)
        if not hit:
            value = conversation_id in await self._history.member_of(tenant, user_id,
                                                                     [conversation_id])
            self._member_of.put(key, value)
        return bool(value)

    async def _recipients(self, tenant: str, conversation_id: str) -> list[str]:
        key = (tenant, conversation_id)
        hit, value = self._members.get(key)
        if not hit:
            value = await self._history.members(tenant, conversation_id)
            self._members.put(key, value)
        return list(value)

    async def run(self, retry_delay: float = 1.0) -> None:
        """Receives every tenant's signals and hands them to the local sockets; reconnects
        after a Redis fault (signals sent meanwhile are lost, as typing may be)."""
        if isinstance(self._subscriber, RedisCluster):
            await self._run_sharded(self._subscriber, retry_delay)
            return
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{CHANNEL_PREFIX}:*")
                self.subscribed.set()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis went away: resubscribe
                self.subscribed.clear()
                log.warning("ws_typing_subscription_lost", exc_info=True)
                await asyncio.sleep(retry_delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _run_sharded(self, cluster: RedisCluster, retry_delay: float) -> None:
        """Subscribes to every shard channel, each on the master that owns its slot."""
        tasks = [asyncio.create_task(self._run_shard(cluster, name, retry_delay),
                                     name=f"typing-{name}") for name in shard_channels()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_shard(self, cluster: RedisCluster, name: str, retry_delay: float) -> None:
        while True:
            node_client: aioredis.Redis | None = None
            pubsub: Any = None
            try:
                await cluster.initialize()
                node = cluster.get_node_from_key(name)
                if node is None:
                    raise ConnectionError(f"no master owns {name}")
                kwargs = cluster.get_connection_kwargs()
                node_client = aioredis.Redis(
                    host=node.host, port=int(node.port), password=kwargs.get("password"),
                    username=kwargs.get("username"),
                    socket_connect_timeout=kwargs.get("socket_connect_timeout"),
                    socket_timeout=kwargs.get("socket_timeout"))
                pubsub = node_client.pubsub()
                await pubsub.ssubscribe(name)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    kind = kind.decode() if isinstance(kind, bytes) else kind
                    if kind == "ssubscribe":
                        self._shards_subscribed.add(name)
                        if len(self._shards_subscribed) == TYPING_SHARDS:
                            self.subscribed.set()
                    elif kind == "sunsubscribe":
                        # The slot left this node (a failover or a resharding).
                        raise ConnectionError(f"{name} moved away from {node.name}")
                    elif kind == "smessage":
                        self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the master went away or the slot moved
                self._shards_subscribed.discard(name)
                self.subscribed.clear()
                log.warning("ws_typing_subscription_lost", channel=name, exc_info=True)
                # Read the slot map afresh before subscribing again.
                with contextlib.suppress(Exception):
                    await cluster.aclose()
                await asyncio.sleep(retry_delay)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                if node_client is not None:
                    with contextlib.suppress(Exception):
                        await node_client.aclose()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        name = msg.get("channel")
        tenant = tenant_of(name.decode() if isinstance(name, bytes) else str(name))
        try:
            data = orjson.loads(msg["data"])
            cid, user, recipients = str(data["c"]), str(data["u"]), list(data["r"])
            if "t" in data:  # a shard channel's message names its tenant
                tenant = str(data["t"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ws_typing_bad_message", channel=str(name))
            return
        if tenant is None:
            return
        delivered = self._deliver(tenant, cid, user, recipients, typing_frame(cid, user))
        if delivered:
            WS_TYPING.labels("delivered").inc(delivered)
