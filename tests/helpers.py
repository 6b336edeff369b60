"""Small helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chat_shared.protos.chat.v1 import chat_pb2
from tests.conftest import auth


async def create_conversation(stub, caller: str, members: list[str], title: str = "") -> chat_pb2.Conversation:
    resp = await stub.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=members, title=title), metadata=auth(caller)
    )
    return resp.conversation


async def send(stub, caller: str, conversation_id: str, content: str, key: str | None = None) -> chat_pb2.Message:
    resp = await stub.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conversation_id, content=content,
                                    idempotency_key=key or uuid.uuid4().hex),
        metadata=auth(caller),
    )
    return resp.message


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of a failed call, if any."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# --- Helpers for the SendMessage / GetMessages / MarkAsRead integration tests. ---------------

async def db_rows(db_source: str, sql: str, *params: object) -> list[tuple]:
    """Rows of one query against the test's database, read beside the API (not through it).

    Async so the in-process API server sharing this event loop keeps serving meanwhile.
    """
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def send_many(stub, caller: str, conversation_id: str, count: int,
                    prefix: str = "m") -> list[chat_pb2.Message]:
    """``count`` messages sent one after another (so their seqs are consecutive)."""
    return [await send(stub, caller, conversation_id, f"{prefix}{i}") for i in range(count)]


async def get_messages(
    stub, caller: str, conversation_id: str, **fields
) -> chat_pb2.GetMessagesResponse:
    return await stub.GetMessages(
        chat_pb2.GetMessagesRequest(conversation_id=conversation_id, **fields),
        metadata=auth(caller),
    )


async def mark_as_read(
    stub, caller: str, conversation_id: str, up_to_seq: int = 0
) -> chat_pb2.MarkAsReadResponse:
    return await stub.MarkAsRead(
        chat_pb2.MarkAsReadRequest(conversation_id=conversation_id, up_to_seq=up_to_seq),
        metadata=auth(caller),
    )


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """The error an awaitable RPC fails with; fails the test when the call succeeds."""
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"expected the call to fail, it returned {result!r}")


def listening_hosts(port: int) -> set[str]:
    """The addresses TCP sockets listen on at ``port`` on this host (from /proc/net/tcp and
    tcp6): "127.0.0.1", "0.0.0.0", "::1", "::". Tells a loopback bind from a wildcard one."""
    import ipaddress
    import pathlib

    hosts = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        path = pathlib.Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_host, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            raw = bytes.fromhex(hex_host)
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            hosts.add(str(ipaddress.ip_address(packed)))
    return hosts


def redis_sync(addr: str, **options: object):
    """A synchronous client for a test's ``redis_addr``: the server's, or a Redis Cluster's
    (``redis+cluster://``) that routes each key to its master."""
    import redis

    from chat_shared.config import RedisSettings

    settings = RedisSettings(_env_file=None, redis_addr=addr)
    host, port = settings.redis_nodes[0]
    if settings.cluster_mode:  # every node a startup node: any of them may be down
        from redis.cluster import ClusterNode
        return redis.RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in settings.redis_nodes],
                                  **options)  # type: ignore[arg-type]
    return redis.Redis(host=host, port=port, **options)  # type: ignore[arg-type]


def redis_async(addr: str, **options: object):
    """``redis_sync``'s asyncio twin."""
    import redis.asyncio as aioredis

    from chat_shared.config import RedisSettings

    settings = RedisSettings(_env_file=None, redis_addr=addr)
    host, port = settings.redis_nodes[0]
    if settings.cluster_mode:
        from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
        return aioredis.RedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in settings.redis_nodes],
            **options)  # type: ignore[arg-type]
    return aioredis.Redis(host=host, port=port, **options)  # type: ignore[arg-type]


def gcra_backend(addr: str, timeout: float = 0.5):
    """The limiter's Redis side for a test's ``redis_addr`` (routed by slot on a cluster)."""
    from chat_shared.config import RedisSettings
    from chat_shared.ratelimit import ClusterGcra, RedisGcra

    settings = RedisSettings(_env_file=None, redis_addr=addr)
    if settings.cluster_mode:
        return ClusterGcra(settings.redis_nodes, timeout=timeout)
    host, port = settings.redis_nodes[0]
    return RedisGcra(host, port, timeout=timeout)
