"""SendMessage idempotency: (sender, idempotency_key) names one message, whatever Redis does.

Why: clients retry sends after timeouts and reconnects. The database's unique constraint alone
decides (Redis is not on the send path: chat_api.service.messages says why), so these tests
send duplicates through the real gRPC API, concurrently too, and count the rows that result;
one checks that a send costs Redis nothing, not even while it is down.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import redis.asyncio as aioredis
from chat_shared.protos.chat.v1 import chat_pb2
from prometheus_client import REGISTRY

from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, error_info, rpc_error, send

DUPLICATE = "DUPLICATE_REQUEST"
KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _redis(addr: str) -> aioredis.Redis:
    host, port = addr.split(":")
    return aioredis.Redis(host=host, port=int(port))


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


async def test_a_used_key_sent_to_someone_elses_conversation_names_the_original(stub, db_source):
    mine = await create_conversation(stub, "alice", ["bob"])
    theirs = await create_conversation(stub, "bob", ["carol"])
    original = await send(stub, "alice", mine.id, "hello", key="k1")

    err = await rpc_error(_send_call(stub, "alice", theirs.id, "hello", "k1"))

    # The key is the sender's own: it names her message, and nothing about the other one.
    _assert_duplicate_of(err, original, reason=KEY_REUSED)
    assert await db_rows(db_source, "SELECT count(*) FROM messages") == [(1,)]


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


async def test_a_retry_is_answered_by_the_database_constraint(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    original = await send(stub, "alice", conv.id, "hello", key="k1")
    database_hits = _hits("database")

    err = await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))

    _assert_duplicate_of(err, original)
    assert _hits("database") == database_hits + 1


async def test_sends_do_not_touch_redis(stub, db_source, redis_server, redis_addr):
    conv = await create_conversation(stub, "alice", ["bob"])
    client = _redis(redis_addr)
    try:
        before = (await client.info("stats"))["total_commands_processed"]
        sent = await send(stub, "alice", conv.id, "hello", key="k1")
        await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))
        # INFO itself is the one command between the two readings.
        assert (await client.info("stats"))["total_commands_processed"] == before + 1
    finally:
        await client.aclose()
    redis_server.stop()  # the redis_addr fixture restarts it for the next test

    err = await rpc_error(_send_call(stub, "alice", conv.id, "hello", "k1"))
    later = await send(stub, "alice", conv.id, "while redis is down", key="k2")

    _assert_duplicate_of(err, sent)
    assert (sent.seq, later.seq) == (1, 2)
    assert await _count_messages(db_source, "alice", "k1") == 1


async def test_a_failed_send_does_not_consume_its_key(stub, db_source):
    theirs = await create_conversation(stub, "bob", ["carol"])
    mine = await create_conversation(stub, "alice", ["bob"])
    key = uuid.uuid4().hex

    err = await rpc_error(_send_call(stub, "alice", theirs.id, "wrong room", key))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    sent = await send(stub, "alice", mine.id, "right room", key=key)
    retry = await rpc_error(_send_call(stub, "alice", mine.id, "right room", key))

    assert sent.seq == 1
    _assert_duplicate_of(retry, sent)
    assert await _count_messages(db_source, "alice", key) == 1


async def test_rejected_invalid_send_does_not_consume_the_key(stub):
    conv = await create_conversation(stub, "alice", ["bob"])
    err = await rpc_error(_send_call(stub, "alice", conv.id, "   ", "k1"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await send(stub, "alice", conv.id, "now valid", key="k1")).seq == 1
