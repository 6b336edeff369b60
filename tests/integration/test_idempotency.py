"""SendMessage idempotency: (sender, idempotency_key) names one message, whatever Redis does.

Why: clients retry sends after timeouts and reconnects. The database's unique constraint is the
truth and Redis only a fast path in front of it, so these tests send duplicates through the
real gRPC API while Redis works, is flushed, or is stopped, and count the rows that result.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import redis.asyncio as aioredis
from chat_shared.protos.chat.v1 import chat_pb2
from prometheus_client import REGISTRY

from chat_api.idempotency import IdempotencyStore
from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, error_info, rpc_error, send

DUPLICATE = "DUPLICATE_REQUEST"
KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _redis(addr: str) -> aioredis.Redis:
    host, port = addr.split(":")
    return aioredis.Redis(host=host, port=int(port))


async def _reservation_ttl_ms(addr: str, sender: str, key: str) -> int | None:
    """Milliseconds left on the key's reservation in Redis; None when there is none."""
    client = _redis(addr)
    try:
        ttl = await client.pttl(IdempotencyStore.key(sender, key))
    finally:
        await client.aclose()
    return None if ttl < 0 else int(ttl)


def _hits(source: str) -> float:
    return _sample("idempotency_hits_total", {"source": source})


def _send_call(stub, caller: str, conversation_id: str, content: str, key: str):
    return stub.SendMessage(
        chat_pb2.SendMessageRequest(
            conversation_id=conversation_id, content=content, idempotency_key=key
        ),
        metadata=auth(caller),
    )


async def _count_messages(db_source: str, sender: str, key: str) -> int:
    [(count,)] = await db_rows(
        db_source,
        "SELECT count(*) FROM messages WHERE sender_id = %s AND idempotency_key = %s",
        sender,
        key,
    )
    return count


def _assert_duplicate_of(
    err: grpc.aio.AioRpcError, original: chat_pb2.Message, reason: str = DUPLICATE
) -> None:
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(err)
    assert info is not None, "ALREADY_EXISTS must carry a google.rpc.ErrorInfo"
    assert info.reason == reason
    assert dict(info.metadata) == {
        "message_id": original.id,
        "seq": str(original.seq),
        "conversation_id": original.conversation_id,
    }


async def test_retry_with_same_key_and_content_is_already_exists_naming_the_original(
    stub, db_source
):
    conv = await create_conversation(stub, "alice", ["bob"])
    original = await send(stub, "alice", conv.id, "hello", key="k1")

    err = await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))

    _assert_duplicate_of(err, original)
    assert await _count_messages(db_source, "alice", "k1") == 1


async def test_retry_does_not_burn_a_seq(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    await send(stub, "alice", conv.id, "first", key="k1")
    await rpc_error(_send_call(stub, "alice", conv.id, "first", "k1"))
    assert (await send(stub, "alice", conv.id, "second")).seq == 2


async def test_same_key_with_different_content_is_key_reused(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    original = await send(stub, "alice", conv.id, "hello", key="k1")

    err = await rpc_error(_send_call(stub, "alice", conv.id, "something else", "k1"))

    _assert_duplicate_of(err, original, reason=KEY_REUSED)
    assert await db_rows(db_source, "SELECT content FROM messages") == [("hello",)]


async def test_same_key_and_content_in_another_conversation_is_key_reused(stub):
    first = await create_conversation(stub, "alice", ["bob"])
    second = await create_conversation(stub, "alice", ["carol"])
    original = await send(stub, "alice", first.id, "hello", key="k1")

    err = await rpc_error(_send_call(stub, "alice", second.id, "hello", "k1"))

    _assert_duplicate_of(err, original, reason=KEY_REUSED)


async def test_keys_are_per_sender(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])
    from_alice = await send(stub, "alice", conv.id, "same", key="shared-key")
    from_bob = await send(stub, "bob", conv.id, "same", key="shared-key")

    assert from_alice.id != from_bob.id
    assert (from_alice.seq, from_bob.seq) == (1, 2)
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(2,)]


async def test_fifty_concurrent_sends_with_one_key_make_exactly_one_message(stub, db_source):
    conv = await create_conversation(stub, "alice", ["bob"])

    results = await asyncio.gather(
        *(_send_call(stub, "alice", conv.id, "once", "race-key") for _ in range(50)),
        return_exceptions=True,
    )

    successes = [r.message for r in results if isinstance(r, chat_pb2.SendMessageResponse)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1, results
    assert len(failures) == 49, results
    for err in failures:
        _assert_duplicate_of(err, successes[0])
    assert await _count_messages(db_source, "alice", "race-key") == 1
    assert await db_rows(db_source, "SELECT last_seq FROM conversations") == [(1,)]
    assert await db_rows(db_source, "SELECT count(*) FROM outbox") == [(1,)]


async def test_retry_after_redis_flushall_is_answered_by_the_database(stub, db_source, redis_addr):
    conv = await create_conversation(stub, "alice", ["bob"])
    original = await send(stub, "alice", conv.id, "hello", key="k1")
    host, port = redis_addr.split(":")
    client = aioredis.Redis(host=host, port=int(port))
    try:
        await client.flushall()
    finally:
        await client.aclose()
    database_hits = _hits("database")

    err = await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))

    _assert_duplicate_of(err, original)
    assert _hits("database") == database_hits + 1
    assert await _count_messages(db_source, "alice", "k1") == 1


async def test_immediate_retry_is_answered_from_redis(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    original = await send(stub, "alice", conv.id, "hello", key="k1")
    redis_hits, database_hits = _hits("redis"), _hits("database")

    err = await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))

    _assert_duplicate_of(err, original)
    assert (_hits("redis"), _hits("database")) == (redis_hits + 1, database_hits)


async def test_sends_stay_exactly_once_with_redis_stopped(stub, db_source, redis_server):
    conv = await create_conversation(stub, "alice", ["bob"])
    degraded = _sample("idempotency_degraded_total")
    redis_server.stop()  # the redis_addr fixture restarts it for the next test

    original = await send(stub, "alice", conv.id, "while redis is down", key="k1")
    err = await rpc_error(_send_call(stub, "alice", conv.id, "while redis is down", "k1"))

    assert original.seq == 1
    _assert_duplicate_of(err, original)
    assert await _count_messages(db_source, "alice", "k1") == 1
    # One degraded send per call: each skipped the Redis fast path and the database decided.
    assert _sample("idempotency_degraded_total") == degraded + 2


async def test_failed_send_releases_its_key_reservation(stub, db_source, redis_addr):
    theirs = await create_conversation(stub, "bob", ["carol"])
    mine = await create_conversation(stub, "alice", ["bob"])
    key = uuid.uuid4().hex

    err = await rpc_error(_send_call(stub, "alice", theirs.id, "wrong room", key))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # Released: a reservation left behind would send every retry through a database lookup.
    assert await _reservation_ttl_ms(redis_addr, "alice", key) is None

    sent = await send(stub, "alice", mine.id, "right room", key=key)
    redis_hits, database_hits = _hits("redis"), _hits("database")
    retry = await rpc_error(_send_call(stub, "alice", mine.id, "right room", key))

    assert sent.seq == 1
    _assert_duplicate_of(retry, sent)
    assert (_hits("redis"), _hits("database")) == (redis_hits + 1, database_hits)
    assert await _count_messages(db_source, "alice", key) == 1


async def test_a_send_reserves_its_key_in_redis_with_the_ttl(stub, redis_addr, api):
    conv = await create_conversation(stub, "alice", ["bob"])
    key = uuid.uuid4().hex
    await send(stub, "alice", conv.id, "hello", key=key)
    ttl_ms = await _reservation_ttl_ms(redis_addr, "alice", key)
    assert ttl_ms is not None
    ttl_setting_ms = api.settings.idempotency_ttl * 1000
    assert ttl_setting_ms - 60_000 < ttl_ms <= ttl_setting_ms


async def test_retry_while_the_original_is_uncommitted_is_decided_by_the_database(
        stub, db_source, redis_addr):
    """A reservation whose send never committed (its API process died): the retry sends."""
    conv = await create_conversation(stub, "alice", ["bob"])
    key = uuid.uuid4().hex
    client = _redis(redis_addr)
    try:
        await client.set(IdempotencyStore.key("alice", key), "orphaned-token", px=60_000)
    finally:
        await client.aclose()

    sent = await send(stub, "alice", conv.id, "hello", key=key)
    retry = await rpc_error(_send_call(stub, "alice", conv.id, "hello", key))

    assert sent.seq == 1
    _assert_duplicate_of(retry, sent)
    assert await _count_messages(db_source, "alice", key) == 1


async def test_rejected_invalid_send_does_not_consume_the_key(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(_send_call(stub, "alice", conv.id, "   ", "k1"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await send(stub, "alice", conv.id, "now valid", key="k1")).seq == 1
