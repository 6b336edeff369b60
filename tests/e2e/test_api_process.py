"""`chat-api` as a real process: health, a call, metrics, JSON logs, SIGTERM drain, bad config.

This is what Kubernetes sees: the binary from the venv, configured only by environment
variables, probed over grpc.health.v1, scraped on METRICS_PORT, stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest

from chat_devtools.process import PICK, ServiceProcess, grpc_serving
from chat_shared.config import DEV_JWT_SECRET
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import TEST_SECRET, make_token
from tests.helpers import listening_hosts

GRACE_SECONDS = 20.0


class ApiProcess(ServiceProcess):
    """One `chat-api` subprocess (started at once), its stdout and stderr kept apart."""

    def __init__(self, venv_bin: pathlib.Path, env: dict[str, str], workdir: pathlib.Path) -> None:
        # cwd is a fresh directory so that no app.env is read.
        super().__init__("api", [venv_bin / "chat-api"], env=env, cwd=workdir,
                         ready=grpc_serving(), log_path=workdir / "api.log", grace=5.0)
        self.start()

    @property
    def stdout(self) -> str:
        return self.output("stdout")

    @property
    def stderr(self) -> str:
        return self.output("stderr")

    @property
    def grpc_port(self) -> int:
        return self.port("grpc_port")

    @property
    def metrics_port(self) -> int:
        return self.port("metrics_port")

    async def wait_for_log(self, msg: str, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(entry.get("msg") == msg for entry in json_lines(self.stdout)):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {msg!r} log line within {within}s: {self.stdout[-2000:]}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every complete stdout line parsed as JSON (fails the test on a line that is not)."""
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]  # still being written
    return [json.loads(line) for line in lines if line.strip()]


def bearer(user: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {make_token(user)}"),)


@pytest.fixture
def start_api(api_env: dict[str, str], venv_bin: pathlib.Path,
              tmp_path: pathlib.Path) -> Iterator[Callable[..., ApiProcess]]:
    """Starts `chat-api` with api_env (plus overrides); stops leftovers."""
    started: list[ApiProcess] = []

    def start(**overrides: str | None) -> ApiProcess:
        """``overrides``: variables to set, or to remove from the environment with None."""
        env = {**os.environ, **api_env, "METRICS_PORT": PICK, "METRICS_ADDRESS": "127.0.0.1",
               "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE": str(GRACE_SECONDS)}
        env = {k: v for k, v in {**env, **overrides}.items() if v is not None}
        workdir = tmp_path / f"api{len(started)}"
        workdir.mkdir()
        api = ApiProcess(venv_bin, env, workdir)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture
async def running(start_api: Callable[..., ApiProcess]) -> AsyncIterator[ApiProcess]:
    api = start_api()
    await api.ready()
    yield api


@pytest.fixture
async def chat(running: ApiProcess) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as ch:
        yield chat_pb2_grpc.ChatServiceStub(ch)


async def create_and_send(chat: chat_pb2_grpc.ChatServiceStub, text: str) -> chat_pb2.Message:
    conv = await chat.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob"]), metadata=bearer("alice"))
    resp = await chat.SendMessage(
        chat_pb2.SendMessageRequest(conversation_id=conv.conversation.id, content=text,
                                    idempotency_key=uuid.uuid4().hex),
        metadata=bearer("alice"))
    return resp.message


async def test_send_message_works_against_the_process(chat) -> None:
    msg = await create_and_send(chat, "hello from e2e")
    assert (msg.content, msg.seq, msg.sender_id) == ("hello from e2e", 1, "alice")


async def test_metrics_count_calls_by_method(running: ApiProcess, chat) -> None:
    await create_and_send(chat, "counted")
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    lines = [ln for ln in body.splitlines() if ln.startswith("chat_rpc_requests_total{")]
    send_ok = [ln for ln in lines if 'method="SendMessage"' in ln and 'code="OK"' in ln]
    assert len(send_ok) == 1
    assert float(send_ok[0].rsplit(" ", 1)[1]) == 1.0


async def test_metrics_name_only_the_allowed_tenants(
    start_api: Callable[..., ApiProcess],
) -> None:
    api = start_api(METRICS_TENANT_LABELS="acme", TENANT_AUTO_CREATE="true")
    await api.ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as ch:
        chat = chat_pb2_grpc.ChatServiceStub(ch)
        for tenant, calls in (("acme", 2), ("globex", 3), ("initech", 1)):
            meta = (("authorization", f"Bearer {make_token('alice', tenant=tenant)}"),)
            for _ in range(calls):
                await chat.GetConversations(chat_pb2.GetConversationsRequest(), metadata=meta)
    url = f"http://127.0.0.1:{api.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    series = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
              if ln.startswith("chat_tenant_rpc_requests_total{")}
    # One series per allowed tenant, everyone else together: never one per tenant.
    assert series == {'chat_tenant_rpc_requests_total{code="OK",tenant="acme"}': 2.0,
                      'chat_tenant_rpc_requests_total{code="OK",tenant="other"}': 4.0}


def test_a_tenant_label_that_is_no_tenant_id_exits_2_naming_the_variable(start_api) -> None:
    api = start_api(METRICS_TENANT_LABELS="acme,Not A Tenant")
    assert api.wait(30) == 2
    assert "METRICS_TENANT_LABELS" in api.stderr
    assert "Traceback" not in api.stderr


async def test_stdout_is_one_json_object_per_line_with_call_fields(
    running: ApiProcess, chat
) -> None:
    await create_and_send(chat, "logged")
    with pytest.raises(grpc.aio.AioRpcError):
        await chat.GetConversations(chat_pb2.GetConversationsRequest(),
                                    metadata=(("authorization", "Bearer not-a-jwt"),))
    await running.wait_for_log("rpc")
    running.signal(signal.SIGTERM)
    assert running.wait(GRACE_SECONDS + 10) == 0
    entries = json_lines(running.stdout)
    calls = {(e.get("method"), e.get("code")): e for e in entries if e.get("msg") == "rpc"}
    assert {("CreateConversation", "OK"), ("SendMessage", "OK"),
            ("GetConversations", "UNAUTHENTICATED")} <= set(calls)
    sent = calls[("SendMessage", "OK")]
    assert isinstance(sent["duration_ms"], int | float) and sent["duration_ms"] >= 0
    assert sent["user"] == "alice"


async def test_logs_never_contain_the_token_or_the_secret(running: ApiProcess, chat) -> None:
    token = make_token("alice")
    await chat.GetConversations(chat_pb2.GetConversationsRequest(),
                                metadata=(("authorization", f"Bearer {token}"),))
    await running.wait_for_log("rpc")
    running.signal(signal.SIGTERM)
    assert running.wait(GRACE_SECONDS + 10) == 0
    output = running.stdout + running.stderr
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature
    assert TEST_SECRET not in output


async def waiting_on_locks(db_source: str, expected: int, within: float = 15.0) -> None:
    """Waits until ``expected`` backends are blocked on a lock (bounded)."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(db_source, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()")
            row = await cur.fetchone()
            if row is not None and row[0] >= expected:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{expected} calls did not block on the held lock within {within}s")


async def test_sigterm_lets_in_flight_calls_finish_and_exits_zero(
    running: ApiProcess, chat, db_source: str
) -> None:
    conv = (await chat.CreateConversation(
        chat_pb2.CreateConversationRequest(member_ids=["bob"]), metadata=bearer("alice"))
    ).conversation
    async with await psycopg.AsyncConnection.connect(db_source) as blocker:
        # Holding the conversation's row lock parks every send inside its transaction, so the
        # calls are provably in flight when SIGTERM arrives.
        await blocker.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE",
                              (conv.id,))
        calls = [asyncio.ensure_future(chat.SendMessage(
            chat_pb2.SendMessageRequest(conversation_id=conv.id, content=f"in flight {i}",
                                        idempotency_key=uuid.uuid4().hex),
            metadata=bearer("alice"), timeout=GRACE_SECONDS + 10)) for i in range(3)]
        await waiting_on_locks(db_source, 3)
        running.signal(signal.SIGTERM)
        await running.wait_for_log("api_draining")
        assert running.running  # still draining, not dead
        await blocker.rollback()  # release the lock: the parked sends can now commit
    results = await asyncio.gather(*calls)
    assert sorted(r.message.seq for r in results) == [1, 2, 3]
    code = await asyncio.to_thread(running.wait, GRACE_SECONDS + 10)
    assert code == 0, running.stderr


def test_bad_metrics_port_exits_2_naming_the_variable(start_api) -> None:
    api = start_api(METRICS_PORT="abc")
    assert api.wait(30) == 2
    assert "METRICS_PORT" in api.stderr
    assert "Traceback" not in api.stderr


def test_production_with_the_development_secret_refuses_to_start(start_api) -> None:
    api = start_api(ENVIRONMENT="production", JWT_SECRET=DEV_JWT_SECRET)
    assert api.wait(30) != 0
    assert "JWT_SECRET" in api.stderr
    assert DEV_JWT_SECRET not in api.stderr + api.stdout


@pytest.mark.parametrize("secret", [DEV_JWT_SECRET, None])
def test_without_environment_a_real_secret_is_required(start_api, secret: str | None) -> None:
    """No ENVIRONMENT is production: neither the development secret nor no secret at all."""
    api = start_api(ENVIRONMENT=None, JWT_SECRET=secret)
    assert api.wait(30) == 2
    assert "JWT_SECRET" in api.stderr and "Traceback" not in api.stderr
    assert DEV_JWT_SECRET not in api.stderr + api.stdout


async def test_credentials_can_come_from_files(start_api, api_env, tmp_path) -> None:
    """JWT_SECRET_FILE and DB_SOURCE_FILE, as the chart mounts them: tokens signed with the
    file's secret are accepted and the database in the file is the one used."""
    (tmp_path / "jwt").write_text(TEST_SECRET + "\n")
    (tmp_path / "dsn").write_text(api_env["DB_SOURCE"] + "\n")
    api = start_api(ENVIRONMENT="production", JWT_SECRET=None, DB_SOURCE=None,
                    JWT_SECRET_FILE=str(tmp_path / "jwt"), DB_SOURCE_FILE=str(tmp_path / "dsn"))
    await asyncio.to_thread(api.wait_ready)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as ch:
        message = await create_and_send(chat_pb2_grpc.ChatServiceStub(ch), "from files")
    assert message.seq == 1
    assert TEST_SECRET not in api.stdout + api.stderr


def test_metrics_bind_where_the_service_binds(start_api) -> None:
    api = start_api(METRICS_ADDRESS=None)  # gRPC and HTTP on 127.0.0.1 (api_env)
    api.wait_ready()
    assert listening_hosts(api.metrics_port) == {"127.0.0.1"}


def test_missing_db_source_exits_2_naming_it(start_api) -> None:
    api = start_api(DB_SOURCE="")
    assert api.wait(30) == 2
    assert "DB_SOURCE" in api.stderr
