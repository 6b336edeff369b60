"""Redis connections from REDIS_ADDR: every call bounded by REDIS_TIMEOUT, no hidden retries.

One factory for every service: ``create_redis`` hands out a ``redis.asyncio.Redis`` for a single
server, or a ``redis.asyncio.RedisCluster`` when REDIS_CLUSTER is on (or REDIS_ADDR is a
``redis+cluster://`` address). Callers type their client as ``RedisClient`` and keep to what
both answer alike; where a cluster needs something else (a blocking read over keys of several
slots, the readiness of every master) the helpers here say so once.

redis-py's own defaults would not bound a call: it retries a call that failed to connect or
timed out 10 times with exponential backoff (up to 1 s apart) before it raises, so a dead Redis
held a call for seconds and a stalled one for as long as the stall. Here a call is one attempt:

- ``socket_connect_timeout`` and ``socket_timeout`` (REDIS_TIMEOUT) bound connecting and each
  answer;
- ``retry=Retry(NoBackoff(), 0)`` and no ``retry_on_error``: a failure is raised at once, for
  the caller to handle (the relay and the gateway back off with ``chat_shared.backoff``);
- the pool never waits: redis.asyncio's pool raises MaxConnectionsError when all
  ``max_connections`` are in use, so a pool wait cannot outlast the bounds above either.

With a cluster, "one attempt" still follows redirections: a MOVED answer (the slot lives on
another master now, e.g. after a failover) or ASK (the slot is migrating) is not a failure but
the cluster's routing, and the cluster client follows it within the same call and patches its
slot map. A connection failure marks the slot map stale: the client reads it afresh (CLUSTER
SLOTS from a node that answers) before its next command, so once the cluster has promoted a
replica the next call reaches it. ``max_connections`` is then per node.

Stream reads on a cluster go through ``xread`` / ``xreadgroup`` here, not the client's own
methods: redis-py finds those commands' keys by asking one node (COMMAND GETKEYS), and when
that node dies every stream read fails against it, on every master, without the slot map
ever being marked stale (``_on_slot_master`` says more).

(The relay and the gateway build every client here; the relay sizes its pool for its workers.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot as _key_slot
from redis.exceptions import RedisError

from chat_shared.config import RedisSettings

__all__ = ["MAX_CONNECTIONS", "RedisClient", "create_redis", "group_by_slot", "is_cluster",
           "key_slot", "ping", "xread", "xreadgroup"]

MAX_CONNECTIONS = 16
"""Connections per client (per node of a cluster): the gateway needs one for its probe and one
for each of its readers."""

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""What ``create_redis`` returns: a single server's client or a cluster's."""


def create_redis(settings: RedisSettings, *, max_connections: int = MAX_CONNECTIONS
                 ) -> RedisClient:
    """A client for REDIS_ADDR whose every call ends within REDIS_TIMEOUT (module docstring).

    Nothing connects here: the first command does (a cluster client reads the slot map then).

    Raises:
        ValueError: REDIS_ADDR is not set.
    """
    if not settings.redis_addr:
        raise ValueError("REDIS_ADDR is not set")
    nodes = settings.redis_nodes
    common = {
        "password": settings.redis_password or None,
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
        "health_check_interval": 30,
        "decode_responses": True,
    }
    if settings.cluster_mode:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            # A failover leaves no slot uncovered for long; a client that refused to start
            # meanwhile would turn a moment of CLUSTERDOWN into a restart loop.
            require_full_coverage=False,
            # Every MOVED rereads the whole map: after a failover all of a dead master's
            # slots moved at once, and patching them one redirection at a time costs a
            # redirection per slot.
            reinitialize_steps=1,
            **common,  # type: ignore[arg-type]
        )
    host, port = nodes[0]
    return aioredis.Redis(host=host, port=port, db=settings.redis_db, retry_on_error=[],
                          **common)  # type: ignore[arg-type]


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its ``{hash tag}``, modulo 16384)."""
    return int(_key_slot(key.encode()))


def group_by_slot(keys: Iterable[str]) -> list[list[str]]:
    """``keys`` grouped so that each group lives in one hash slot, in first-seen order.

    A multi-key command (XREAD over several streams, a script) must name keys of one slot on
    a cluster; a blocking read over all streams becomes one read per group.
    """
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return list(groups.values())


async def xread(client: RedisClient, streams: dict[str, str], *, count: int, block_ms: int
                ) -> Any:
    """XREAD of ``streams`` (stream -> last id read) after ``streams``' ids, as ``client.xread``
    answers it; on a cluster the streams must share a hash slot (``group_by_slot``).

    Use this rather than ``client.xread`` on a cluster (and ``xreadgroup`` below): see
    ``_on_slot_master``.
    """
    keys = list(streams)
    args: list[Any] = ["XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", *keys,
                       *streams.values()]
    if isinstance(client, RedisCluster):
        return await _on_slot_master(client, keys[0], args)
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def xreadgroup(client: RedisClient, group: str, consumer: str, streams: dict[str, str],
                     *, count: int, block_ms: int) -> Any:
    """XREADGROUP of ``streams`` (stream -> id, ``>`` for new entries) as ``group``'s
    ``consumer``, as ``client.xreadgroup`` answers it; on a cluster the streams must share a
    hash slot (``group_by_slot``)."""
    keys = list(streams)
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK",
                       block_ms, "STREAMS", *keys, *streams.values()]
    if isinstance(client, RedisCluster):
        return await _on_slot_master(client, keys[0], args)
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def _on_slot_master(client: RedisCluster, key: str, args: list[Any]) -> Any:
    """``args`` sent to the master that owns ``key``'s slot, found from the slot map here.

    redis-py's cluster client cannot find XREAD's or XREADGROUP's keys by itself (their
    position moves with the options), so before each such call it asks one node, the one
    that was its default node when it last read the slot map, with COMMAND GETKEYS. If that
    node dies the question fails with a connection error that, unlike a failed command, does
    not mark the slot map stale: every stream read of the client, on every master, then fails
    against the dead node until some other command fails and so makes the client reread it (a
    gateway's readers did so for over a minute after a SIGKILLed master). Routing here asks
    no node: the slot is computed locally, and a failure on the master itself is the client's
    ordinary path (connection error: the map is read afresh before the next call; MOVED:
    followed and the map reread).
    """
    try:
        await client.initialize()  # rereads the slot map if the last call found it stale
    except (RedisError, OSError):
        # Rereading the map ends with COMMAND on the default node, the first master the
        # client knows; if that is the dead one every reread fails the same way. Last in
        # line, the next reread picks another.
        parser_node = getattr(client.commands_parser, "node", None)
        if parser_node is not None:
            client.nodes_manager.move_node_to_end_of_cached_nodes(parser_node.name)
        raise
    node = client.get_node_from_key(key)
    return await client.execute_command(*args, target_nodes=node)


async def ping(client: RedisClient, *, every_master: bool = False) -> bool:
    """Whether Redis answers: the server; for a cluster, one of its nodes, or with
    ``every_master`` each master (a slot whose master is down takes no writes, so the relay
    does not resume publishing before they all answer).

    Readiness asks one node: a gateway or relay that stopped being ready whenever one master
    fails over would take every replica out of service for a fault that touches a third of
    the streams. A cluster client whose ping failed rereads its slot map before its next
    command, so after a failover ``every_master`` turns true once the promoted replica answers.
    """
    try:
        if isinstance(client, RedisCluster):
            target = RedisCluster.PRIMARIES if every_master else RedisCluster.DEFAULT_NODE
            answers = await client.ping(target_nodes=target)
            if isinstance(answers, dict):
                return all(bool(v) for v in answers.values())
            return bool(answers)
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
