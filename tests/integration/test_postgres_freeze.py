"""Calls while PostgreSQL is frozen: each ends in time with the right code, none hangs.

Why: a PostgreSQL that stops answering (SIGSTOP of the postmaster and every backend here; a
stuck storage or a network that drops everything in production) answers nothing, not even the
cancellation of its own statement_timeout, and its kernel still acknowledges every packet, so
no server-side or TCP timeout fires. Every database call must still end: by the caller's
deadline when it has one (DEADLINE_EXCEEDED, HTTP 504), otherwise within DB_POOL_TIMEOUT plus
DB_STATEMENT_TIMEOUT and a grace (UNAVAILABLE, HTTP 503); gRPC health must turn NOT_SERVING;
the ws-gateway's catch-up reads must end the same way; and once PostgreSQL resumes, the API
serves again and retried sends make exactly one message per key.

The freeze lasts until every call has ended or ``FREEZE`` seconds (well past every bound) have
passed, so a call that merely waited for the resume fails the test. Bounds get ``SLACK``
seconds for a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from chat_api.app import build_app
from chat_devtools.local_postgres import LocalPostgres
from chat_migrations.cli import upgrade
from chat_shared.config import DatabaseSettings
from chat_shared.db import ANSWER_GRACE, Database
from chat_shared.errors import Unavailable
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from chat_ws_gateway.history import History
from tests.conftest import auth, make_token
from tests.helpers import create_conversation, db_rows, send

STATEMENT_TIMEOUT = 1.0
POOL_TIMEOUT = 1.0
BOUND = POOL_TIMEOUT + STATEMENT_TIMEOUT + ANSWER_GRACE  # a call without a deadline
DEADLINE = 1.0   # a call with one
FREEZE = 8.0
SLACK = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _cluster(postmaster: int) -> list[int]:
    """The postmaster and its children (backends and auxiliary processes)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(pg: LocalPostgres) -> Iterator[None]:
    """SIGSTOP to the whole cluster (postmaster first, so it forks nothing new), SIGCONT after."""
    assert pg.process is not None
    pids = _cluster(pg.process.pid)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
def own_postgres() -> Iterator[tuple[LocalPostgres, str]]:
    """A cluster of this test's own to freeze, with a migrated database."""
    pg = LocalPostgres().start()
    try:
        dsn = pg.create_database("chat")
        upgrade(dsn)
        yield pg, dsn
    finally:
        pg.cleanup()


@pytest.fixture
async def api_on_own_postgres(api_settings_factory: Callable[..., Any],
                              own_postgres: tuple[LocalPostgres, str]) -> AsyncIterator[Any]:
    app = build_app(api_settings_factory(
        db_source=own_postgres[1], db_statement_timeout=STATEMENT_TIMEOUT,
        db_pool_timeout=POOL_TIMEOUT, health_check_interval=0.2))
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    """(seconds, result or the exception) of ``call``; given up on well after the freeze."""
    started = time.monotonic()
    try:
        result: Any = await asyncio.wait_for(call, FREEZE + 20)
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
        result = exc
    return time.monotonic() - started, result


def _code(result: Any) -> str:
    return result.code().name if isinstance(result, grpc.aio.AioRpcError) else repr(result)


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> float | None:
    """Seconds until ``check()`` holds; None when it did not within ``within`` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            return None
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _in_flight() -> float:
    return sum(REGISTRY.get_sample_value("chat_rpc_in_flight", {"transport": t}) or 0.0
               for t in ("grpc", "http"))


async def test_api_calls_end_in_time_while_postgresql_is_frozen(
        api_on_own_postgres: Any, own_postgres: tuple[LocalPostgres, str]) -> None:
    app = api_on_own_postgres
    pg, dsn = own_postgres
    http_headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel, \
            aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        conv = await create_conversation(stub, "alice", ["bob"])
        await send(stub, "alice", conv.id, "before")
        keys = [uuid.uuid4().hex for _ in range(25)]  # more sends than the pool has connections

        def grpc_send(key: str, timeout: float | None = None) -> Awaitable[Any]:
            return stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content=key, idempotency_key=key),
                metadata=auth("alice"), timeout=timeout)

        async def http_get(headers: dict[str, str]) -> int:
            async with http.get(f"/v1/conversations/{conv.id}/messages",
                                headers={**http_headers, **headers}) as resp:
                return resp.status

        with frozen(pg):
            frozen_at = time.monotonic()
            without_deadline = asyncio.gather(*(_timed(grpc_send(k)) for k in keys))
            with_deadline = asyncio.gather(
                *(_timed(grpc_send(uuid.uuid4().hex, DEADLINE)) for _ in range(3)),
                *(_timed(stub.GetMessages(chat_pb2.GetMessagesRequest(conversation_id=conv.id),
                                          metadata=auth("alice"), timeout=DEADLINE))
                  for _ in range(3)))
            http_calls = asyncio.gather(_timed(http_get({"Grpc-Timeout": "1S"})),
                                        _timed(http_get({})))
            turned = await _until(lambda: _health_is(channel, NOT_SERVING), within=FREEZE)
            deadline_results = await with_deadline
            # The server is done with them too: nothing in flight but the calls without a
            # deadline (which may take up to BOUND).
            server_done = await _until(lambda: _in_flight_at_most(len(keys) + 1),
                                       within=SLACK)
            await asyncio.wait([without_deadline, http_calls],
                               timeout=max(0.0, FREEZE - (time.monotonic() - frozen_at)))
        results = await without_deadline
        (http_504, status_504), (http_503, status_503) = await http_calls

        print(f"health NOT_SERVING after {turned} s; with a deadline (client) "
              f"{max(t for t, _ in deadline_results):.2f} s, the server done with them "
              f"{server_done} s later; without {max(t for t, _ in results):.2f} s; "
              f"HTTP 504 after {http_504:.2f} s, 503 after {http_503:.2f} s")
        assert turned is not None and turned < 0.2 + 2 * SLACK
        assert [_code(r) for _, r in deadline_results] == ["DEADLINE_EXCEEDED"] * 6
        assert server_done is not None
        assert {_code(r) for _, r in results} == {"UNAVAILABLE"}, results
        assert max(t for t, _ in results) < BOUND + SLACK
        assert (status_504, status_503) == (504, 503)
        assert http_504 < DEADLINE + SLACK and http_503 < BOUND + SLACK

        # Resumed: serving again, and each frozen send retried makes its message once (a
        # send answered UNAVAILABLE may have committed when PostgreSQL resumed: the key says).
        assert await _until(lambda: _health_is(channel, SERVING), within=10 + SLACK) is not None
        outcomes = await asyncio.gather(*(_timed(grpc_send(k, 10)) for k in keys))
        assert {_code(r) if isinstance(r, Exception) else "OK" for _, r in outcomes} <= {
            "OK", "ALREADY_EXISTS"}, outcomes
        assert await db_rows(dsn, "SELECT count(*), count(DISTINCT idempotency_key) FROM "
                                  "messages WHERE idempotency_key = ANY(%s)", keys) == [(25, 25)]
        assert (await send(stub, "alice", conv.id, "after")).content == "after"


async def _health_is(channel: grpc.aio.Channel, status: int) -> bool:
    try:
        return await _health(channel) == status
    except grpc.aio.AioRpcError:
        return False


async def _in_flight_at_most(count: int) -> bool:
    return _in_flight() <= count


async def test_catch_up_reads_and_transactions_end_in_time_while_postgresql_is_frozen(
        own_postgres: tuple[LocalPostgres, str]) -> None:
    pg, dsn = own_postgres
    db = Database(DatabaseSettings(_env_file=None, db_source=dsn,  # type: ignore[call-arg]
                                   db_statement_timeout=STATEMENT_TIMEOUT,
                                   db_pool_timeout=POOL_TIMEOUT),
                  application_name="test-freeze")
    await db.open(wait=True)
    history = History(db, page_size=50)
    conv = str(uuid.uuid4())

    began = asyncio.Event()

    async def transaction() -> None:
        """A transaction under way when PostgreSQL freezes."""
        async with db.transaction("db.test_insert") as conn:
            await conn.execute("CREATE TABLE frozen_tx (x int)")
            began.set()
            await asyncio.sleep(0.2)
            await conn.execute("INSERT INTO frozen_tx VALUES (1)")

    try:
        assert await history.messages_after("default", "alice", conv, 0) == []
        in_transaction = asyncio.ensure_future(_timed(transaction()))
        await began.wait()
        with frozen(pg):
            calls = asyncio.gather(
                _timed(history.messages_after("default", "alice", conv, 0)),
                _timed(history.member_of("default", "alice", [conv])),
                in_transaction,
                _timed(db.ping()))
            await asyncio.wait([calls], timeout=FREEZE)
        results = await calls
        print("while frozen:", [(round(t, 2), type(r).__name__) for t, r in results])
        assert [type(r) for _, r in results[:3]] == [Unavailable] * 3, results
        assert results[3][1] is False  # ping: down
        assert max(t for t, _ in results) < BOUND + SLACK
        # Resumed: reads work again, and the severed transaction did not commit.
        assert await _until(db.ping, within=10 + SLACK) is not None
        assert await history.member_of("default", "alice", [conv]) == set()
        assert await db.fetchone("db.t", "SELECT to_regclass('frozen_tx') IS NULL") == (True,)
    finally:
        await db.close()
