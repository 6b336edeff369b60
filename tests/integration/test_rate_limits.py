"""Rate limits in the API's call pipeline: real Redis, the API in-process, real gRPC and HTTP.

Limits are off in the test environment (tests/conftest.py); here they are on, with small
numbers so a test reaches them in a few calls. Across several worker processes:
tests/e2e/test_rate_limits.py.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth, make_token
from tests.helpers import error_info, redis_async
from tests.integration.test_tenant_cli import tenant as tenant_cli

pytestmark = pytest.mark.redis_cluster


def md(user: str, tenant: str | None = None) -> tuple[tuple[str, str], ...]:
    token = make_token(user, tenant=tenant) if tenant else make_token(user)
    return (("authorization", f"Bearer {token}"),)


async def started(settings: Any) -> Any:
    from chat_api.app import build_app

    app = build_app(settings)
    await app.start()
    await app.probe_once()
    return app


@pytest.fixture
def limited_settings(api_settings_factory: Callable[..., Any]) -> Callable[..., Any]:
    """API settings with the limits on; ``overrides`` as lower-case setting names."""
    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = {"rate_limit_enabled": True, "tenant_cache_ttl": 0.2}
        values.update(overrides)
        return api_settings_factory(**values)
    return make


@pytest.fixture
async def limited(limited_settings: Callable[..., Any]) -> AsyncIterator[Any]:
    """The API with small limits: send 2/s burst 3, read 1/s burst 5, anon burst 3."""
    app = await started(limited_settings(
        rate_limit_send_rate=2, rate_limit_send_burst=3,
        rate_limit_read_rate=1, rate_limit_read_burst=5,
        rate_limit_anon_rate=0.01, rate_limit_anon_burst=3))
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def lstub(limited: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch)


async def outcome(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err


def details(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(err)
    assert status is not None
    out: dict[str, Any] = {}
    for any_ in status.details:
        for cls in (error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[cls.__name__] = msg
    return out


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def send(stub: Any, cid: str, user: str, tenant: str | None = None) -> Any:
    return await outcome(stub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=cid, content="hi", idempotency_key=uuid.uuid4().hex),
        metadata=md(user, tenant)))


async def conversation(stub: Any, user: str, tenant: str | None = None) -> str:
    resp = await stub.CreateConversation(chat_pb2.CreateConversationRequest(
        member_ids=["bob"]), metadata=md(user, tenant))
    return str(resp.conversation.id)


async def test_burst_then_refused_with_retry_info_that_tells_the_truth(lstub: Any) -> None:
    cid = await conversation(lstub, "alice")
    first = lstub.SendMessage(chat_pb2.SendMessageRequest(
        conversation_id=cid, content="hi", idempotency_key=uuid.uuid4().hex),
        metadata=md("alice"))
    await first
    allowed_trailer = dict(await first.trailing_metadata())
    assert allowed_trailer["ratelimit-policy"] == '"send";q=3;w=2'
    assert allowed_trailer["ratelimit"].startswith('"send";r=2;t=')
    assert "x-request-id" in allowed_trailer
    codes = [(await send(lstub, cid, "alice"))[0] for _ in range(2)]
    assert codes == [grpc.StatusCode.OK] * 2
    code, err = await send(lstub, cid, "alice")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info is not None and info.reason == "RATE_LIMITED"
    assert info.metadata["class"] == "send" and info.metadata["scope"] == "user"
    found = details(err)
    delay = found["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert 0 < delay <= 0.5  # 2/s: the next one passes within half a second
    assert found["QuotaFailure"].violations[0].subject == "user:alice"
    trailing = dict(err.trailing_metadata())
    assert trailing["ratelimit-policy"] == '"send";q=3;w=2'
    assert trailing["retry-after"] == "1"
    # Refused again (from the process's memory) until the delay has passed, then allowed.
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    await asyncio.sleep(delay)
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.OK
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_classes_users_and_tenants_are_independent(lstub: Any, db_source: str) -> None:
    with psycopg.connect(db_source, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id) VALUES ('acme') ON CONFLICT DO NOTHING")
    cid = await conversation(lstub, "alice")
    for _ in range(3):
        assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.OK
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Reads are another class; bob is another user; alice of acme is another person.
    code, _ = await outcome(lstub.GetMessages(chat_pb2.GetMessagesRequest(
        conversation_id=cid), metadata=md("alice")))
    assert code == grpc.StatusCode.OK
    assert (await send(lstub, cid, "bob"))[0] == grpc.StatusCode.OK
    acme = await conversation(lstub, "alice", "acme")
    assert (await send(lstub, acme, "alice", "acme"))[0] == grpc.StatusCode.OK


async def test_the_tenant_ceiling_refuses_every_user_of_the_tenant(
        limited_settings: Callable[..., Any]) -> None:
    app = await started(limited_settings(rate_limit_tenant_send_rate=0.01,
                                         rate_limit_tenant_send_burst=4))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            cid = await conversation(stub, "alice")
            before = sample("chat_ratelimit_tenant_ceiling_total", tenant="default",
                            **{"class": "send"})
            results = [(await send(stub, cid, user))[0] for user in ("alice", "bob") * 3]
            assert results == [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
            code, err = await send(stub, cid, "carol")
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details(err)["QuotaFailure"].violations[0].subject == "tenant:default"
            assert error_info(err).metadata["scope"] == "tenant"
            assert sample("chat_ratelimit_tenant_ceiling_total", tenant="default",
                          **{"class": "send"}) == before + 3
    finally:
        await app.stop(grace=1.0)


async def test_a_tenant_override_from_the_registry_applies(lstub: Any, db_source: str,
                                                          venv_bin: Any, tmp_path: Any) -> None:
    """Set as an operator does: ``chat-tenant set-limit acme rate_limit.send.burst 6``."""
    for args in (("create", "acme"), ("create", "globex"),
                 ("set-limit", "acme", "rate_limit.send.burst", "6")):
        done = await asyncio.to_thread(tenant_cli, venv_bin, tmp_path, db_source, *args)
        assert done.returncode == 0, done.stderr
    for tenant, burst in (("acme", 6), ("globex", 3)):
        cid = await conversation(lstub, "alice", tenant)
        codes = [(await send(lstub, cid, "alice", tenant))[0] for _ in range(burst + 1)]
        assert codes == [grpc.StatusCode.OK] * burst + [grpc.StatusCode.RESOURCE_EXHAUSTED], tenant


async def test_http_headers_on_allowed_and_limited_answers(limited: Any) -> None:
    url = f"http://127.0.0.1:{limited.http_port}/v1/conversations"
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession() as session:
        answers = []
        for _ in range(6):
            async with session.get(url, headers=headers) as resp:
                answers.append((resp.status, dict(resp.headers)))
        assert [s for s, _ in answers] == [200] * 5 + [429]
        for i, (_, h) in enumerate(answers[:5]):
            assert h["RateLimit-Policy"] == '"read";q=5;w=5'
            assert h["RateLimit"].startswith(f'"read";r={4 - i};t=')
            assert "Retry-After" not in h
        limited_headers = answers[5][1]
        assert limited_headers["RateLimit"].startswith('"read";r=0;t=')
        retry = int(limited_headers["Retry-After"])
        assert retry == 1  # 1/s: the next read is due within a second
        await asyncio.sleep(retry)
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200


async def test_refused_credentials_are_limited_per_client_address(limited: Any,
                                                                  lstub: Any) -> None:
    bad = (("authorization", "Bearer not-a-token"),)
    codes = [(await outcome(lstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                   metadata=bad)))[0] for _ in range(4)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # Now even a valid token from that address is refused before it is looked at.
    code, err = await outcome(lstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                                     metadata=auth("alice")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(err)["QuotaFailure"].violations[0].subject == "client:127.0.0.1"
    # Health is not a ChatService method: never limited.
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_401_carries_the_rate_limit_headers_of_the_address(limited: Any,
                                                                     lstub: Any) -> None:
    url = f"http://127.0.0.1:{limited.http_port}/v1/conversations"
    async with aiohttp.ClientSession() as session, \
            session.get(url, headers={"Authorization": "Bearer not-a-token"}) as resp:
        assert resp.status == 401
        assert resp.headers["RateLimit-Policy"].startswith('"anon";q=3;')
        assert resp.headers["RateLimit"].startswith('"anon";r=2;t=')
        assert "WWW-Authenticate" in resp.headers
    call = lstub.GetConversations(chat_pb2.GetConversationsRequest(),
                                  metadata=(("authorization", "Bearer not-a-token"),))
    code, _ = await outcome(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    trailer = dict(await call.trailing_metadata())
    assert trailer["ratelimit"].startswith('"anon";r=1;t=')
    assert trailer["ratelimit-policy"].startswith('"anon";q=3;')


async def test_an_error_after_the_limit_carries_the_class_headers(limited: Any) -> None:
    url = f"http://127.0.0.1:{limited.http_port}/v1/conversations/{uuid.uuid4()}/messages"
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 404
        assert resp.headers["RateLimit-Policy"] == '"read";q=5;w=5'
        assert resp.headers["RateLimit"].startswith('"read";r=4;t=')


async def _anon_codes(port: int, forwarded: list[str]) -> list[int]:
    url = f"http://127.0.0.1:{port}/v1/conversations"
    out = []
    async with aiohttp.ClientSession() as session:
        for address in forwarded:
            async with session.get(url, headers={"Authorization": "Bearer not-a-token",
                                                 "X-Forwarded-For": address}) as resp:
                out.append(resp.status)
    return out


async def test_forwarded_addresses_count_only_from_trusted_proxies(
        limited_settings: Callable[..., Any]) -> None:
    base = {"rate_limit_anon_rate": 0.01, "rate_limit_anon_burst": 2}
    # Trusting nobody (the default): the header is ignored, every call is the peer's.
    app = await started(limited_settings(**base))
    try:
        assert await _anon_codes(app.http_port, ["198.51.100.1", "198.51.100.2",
                                                 "198.51.100.3"]) == [401, 401, 429]
    finally:
        await app.stop(grace=1.0)
    # The test client's loopback as the ingress: each forwarded address has its own budget,
    # and an address the client wrote left of the proxy's is not believed.
    app = await started(limited_settings(trusted_proxies="127.0.0.0/8", **base))
    try:
        assert await _anon_codes(app.http_port, [
            "198.51.100.1", "198.51.100.1", "198.51.100.1", "198.51.100.2",
            "203.0.113.9, 198.51.100.2", "203.0.113.9, 198.51.100.2"]) == [
            401, 401, 429, 401, 401, 429]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            codes = [(await outcome(stub.GetConversations(
                chat_pb2.GetConversationsRequest(),
                metadata=(("authorization", "Bearer not-a-token"),
                          ("x-forwarded-for", "198.51.100.3")))))[0] for _ in range(3)]
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [
                grpc.StatusCode.RESOURCE_EXHAUSTED]
            _, err = await outcome(stub.GetConversations(
                chat_pb2.GetConversationsRequest(),
                metadata=(("authorization", "Bearer not-a-token"),
                          ("x-forwarded-for", "198.51.100.3"))))
            assert details(err)["QuotaFailure"].violations[0].subject == "client:198.51.100.3"
    finally:
        await app.stop(grace=1.0)


def test_trusted_proxies_must_be_networks(api_settings_factory: Callable[..., Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trusted_proxies"):
        api_settings_factory(trusted_proxies="10.0.0.0/8,ingress")
    settings = api_settings_factory(trusted_proxies=" 10.0.0.0/8 , 192.168.1.7")
    assert settings.trusted_proxies == "10.0.0.0/8,192.168.1.7/32"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


async def test_redis_down_fails_open_to_the_local_limiter(
        limited_settings: Callable[..., Any]) -> None:
    app = await started(limited_settings(redis_addr=f"127.0.0.1:{_closed_port()}",
                                         rate_limit_send_rate=0.01, rate_limit_send_burst=2))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            cid = await conversation(stub, "alice")
            before = sample("chat_ratelimit_requests_total", result="fail_open",
                            **{"class": "send"})
            codes = [(await send(stub, cid, "alice"))[0] for _ in range(3)]
            # Still limited, by this process alone, with the same numbers.
            assert codes == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert sample("chat_ratelimit_requests_total", result="fail_open",
                          **{"class": "send"}) == before + 3
    finally:
        await app.stop(grace=1.0)


async def test_a_stalled_redis_costs_at_most_the_timeout(
        limited_settings: Callable[..., Any]) -> None:
    """A server that accepts and never answers: every check gives up after
    RATE_LIMIT_REDIS_TIMEOUT_MS and decides locally; the call succeeds."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    app = await started(limited_settings(redis_addr=f"127.0.0.1:{port}",
                                         rate_limit_redis_timeout_ms=50))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            before = sample("chat_ratelimit_requests_total", result="fail_open",
                            **{"class": "read"})
            # The client's deadline (2 s) is far above the 50 ms bound and far below a hang.
            await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                        metadata=md("alice"), timeout=2)
            await stub.GetConversations(chat_pb2.GetConversationsRequest(),
                                        metadata=md("alice"), timeout=2)
            assert held, "the limiter never connected to the stalled server"
            assert sample("chat_ratelimit_requests_total", result="fail_open",
                          **{"class": "read"}) == before + 2
    finally:
        await app.stop(grace=1.0)
        server.close()
        for w in held:
            w.close()


async def test_the_script_is_loaded_again_after_a_flush(limited: Any, lstub: Any,
                                                        redis_addr: str) -> None:
    cid = await conversation(lstub, "alice")
    # The client is ready before the send (a cluster client reads the slot map on its first
    # command): the key below lives 0.5 s after one send (one interval of 2/s), and a loaded
    # machine took longer than that to set up a cluster client between the send and the look.
    r = redis_async(redis_addr)
    await r.ping()
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.OK
    keys = await r.exists("chat:rl:{default}:u:alice:send")
    await r.script_flush()
    await r.aclose()
    assert keys  # the budget lives in Redis, under the tenant's hash tag
    before = sample("chat_ratelimit_requests_total", result="fail_open", **{"class": "send"})
    assert (await send(lstub, cid, "alice"))[0] == grpc.StatusCode.OK
    assert sample("chat_ratelimit_requests_total", result="fail_open",
                  **{"class": "send"}) == before


def test_every_method_has_a_class() -> None:
    from chat_api.transport.rate_classes import RATE_CLASSES

    service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
    assert {m.name for m in service.methods} == set(RATE_CLASSES)


async def test_a_refusal_comes_before_the_request_is_read(limited: Any, lstub: Any) -> None:
    """A limited caller is refused before its request is read: whatever it sends (here bytes
    that do not decode, a body that is not JSON) it gets RESOURCE_EXHAUSTED / 429 with every
    detail of a refusal, and an admitted caller's same bytes are still INVALID_ARGUMENT."""
    cid = await conversation(lstub, "alice")
    codes = [(await send(lstub, cid, "alice"))[0] for _ in range(3)]
    assert codes == [grpc.StatusCode.OK] * 3
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as ch:
        raw = ch.unary_unary("/chat.v1.ChatService/SendMessage", request_serializer=None,
                             response_deserializer=None)
        code, err = await outcome(raw(b"\xff\xff\xff\xff", metadata=md("alice")))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(err)
        assert info is not None and info.reason == "RATE_LIMITED"
        assert info.metadata["class"] == "send" and info.metadata["scope"] == "user"
        found = details(err)
        assert 0 < found["RetryInfo"].retry_delay.ToTimedelta().total_seconds() <= 0.5
        assert found["QuotaFailure"].violations[0].subject == "user:alice"
        trailing = dict(err.trailing_metadata())
        assert trailing["ratelimit-policy"] == '"send";q=3;w=2'
        assert trailing["ratelimit"].startswith('"send";r=0;t=')
        assert trailing["retry-after"] == "1"
        code, _ = await outcome(raw(b"\xff\xff\xff\xff", metadata=md("bob")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    url = f"http://127.0.0.1:{limited.http_port}/v1/messages"
    async with aiohttp.ClientSession() as session:
        for user, status in (("alice", 429), ("bob", 400)):
            async with session.post(url, data=b"{not json",
                                    headers={"Authorization": f"Bearer {make_token(user)}",
                                             "Content-Type": "application/json"}) as resp:
                assert resp.status == status, (user, await resp.text())
                if status == 429:
                    assert resp.headers["Retry-After"] == "1"
                    assert resp.headers["RateLimit-Policy"] == '"send";q=3;w=2'
                    assert resp.headers["RateLimit"].startswith('"send";r=0;t=')


async def test_a_limited_client_is_refused_without_waiting_for_its_body(
        limited_settings: Callable[..., Any]) -> None:
    """The body of a refused call is never waited for: a limited client whose body does not
    come gets its 429 at once (before, the body was read first: a 408 after
    HTTP_BODY_TIMEOUT), and an admitted one still gets the 408."""
    app = await started(limited_settings(rate_limit_send_rate=0.01, rate_limit_send_burst=1,
                                         http_body_timeout=1))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            cid = await conversation(stub, "alice")
            assert (await send(stub, cid, "alice"))[0] == grpc.StatusCode.OK

        async def status_with_a_body_that_never_comes(user: str) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
            try:
                writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                             b"Authorization: Bearer " + make_token(user).encode() +
                             b"\r\n\r\n{")
                await writer.drain()
                return int((await reader.readline()).split()[1])
            finally:
                writer.close()

        assert await status_with_a_body_that_never_comes("alice") == 429
        assert await status_with_a_body_that_never_comes("bob") == 408
    finally:
        await app.stop(grace=1.0)
