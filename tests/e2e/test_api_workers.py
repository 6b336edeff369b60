"""API_WORKERS: several API processes share the gRPC and HTTP ports, one /metrics for all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
import uuid

import grpc
import pytest

from chat_devtools.process import ServiceProcess
from chat_devtools.services import Api
from chat_shared.protos.chat.v1 import chat_pb2, chat_pb2_grpc
from tests.conftest import auth


def _start(api_env, tmp_path, **extra) -> Api:
    """Two workers on ports reserved for them (fixed ports, shared through SO_REUSEPORT)."""
    env = {**os.environ, **api_env, "API_WORKERS": "2", "LOG_LEVEL": "INFO",
           "METRICS_ADDRESS": "127.0.0.1", **extra}
    return Api(env, tmp_path, metrics=True).start()


def _log_lines(tmp_path):
    lines = []
    for raw in (tmp_path / "api.log").read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    return lines


async def _wait_ready(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await chat_pb2_grpc.ChatServiceStub(ch).GetConversations(
                    chat_pb2.GetConversationsRequest(), metadata=auth("probe"), timeout=1)
                return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2)
    raise AssertionError("API workers did not answer")


@pytest.fixture
def workers(api_env, tmp_path):
    api = _start(api_env, tmp_path)
    try:  # stopped even when it never got ready: its workers would outlive the test
        api.wait_ready()
        yield api, {"grpc": api.grpc_port, "http": api.http_port, "metrics": api.metrics_port}
    finally:
        api.stop()


async def _wait_all_started(tmp_path, count: int = 2, deadline: float = 60.0) -> None:
    """Until every worker has bound the ports (a late one would get no connections)."""
    end = time.monotonic() + deadline
    while sum(1 for line in _log_lines(tmp_path) if line.get("msg") == "api_started") < count:
        assert time.monotonic() < end, "not every worker started"
        await asyncio.sleep(0.2)


async def test_two_workers_share_the_ports_and_the_metrics(workers, tmp_path):
    proc, ports = workers
    await _wait_ready(ports["grpc"])
    await _wait_all_started(tmp_path)
    sent = 0
    for _ in range(12):  # new connections: the kernel spreads them over the workers
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            conv = (await stub.CreateConversation(chat_pb2.CreateConversationRequest(
                member_ids=["bob"]), metadata=auth("alice"))).conversation
            await stub.SendMessage(chat_pb2.SendMessageRequest(
                conversation_id=conv.id, content="hi", idempotency_key=uuid.uuid4().hex),
                metadata=auth("alice"))
            sent += 1
    rpc_pids = {line["pid"] for line in _log_lines(tmp_path)
                if line.get("msg") == "rpc" and line.get("method") == "SendMessage"}
    assert len(rpc_pids) == 2, f"calls were served by {rpc_pids}"
    url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    body = (await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())).decode()
    counts = [line for line in body.splitlines()
              if line.startswith('chat_rpc_requests_total{code="OK",method="SendMessage"')]
    assert counts and float(counts[0].rsplit(" ", 1)[1]) == sent
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert sum(1 for line in _log_lines(tmp_path) if line.get("msg") == "api_stopped") == 2


async def test_a_dead_worker_stops_the_supervisor(workers, tmp_path):
    proc, ports = workers
    await _wait_ready(ports["grpc"])
    started = [line["workers"] for line in _log_lines(tmp_path)
               if line.get("msg") == "workers_started"]
    assert started and len(started[0]) == 2
    os.kill(started[0][0], signal.SIGKILL)
    assert proc.wait(30) == 1  # the pod restarts rather than running at half capacity


async def test_killing_the_supervisor_takes_the_workers_down(workers, tmp_path):
    proc, ports = workers
    await _wait_ready(ports["grpc"])
    started = [line["workers"] for line in _log_lines(tmp_path)
               if line.get("msg") == "workers_started"]
    proc.signal(signal.SIGKILL)  # the supervisor alone
    proc.wait(10)
    deadline = time.monotonic() + 20
    alive = list(started[0])
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        await asyncio.sleep(0.1)
    assert alive == [], "orphaned workers kept running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_workers_need_fixed_ports(api_env, venv_bin):
    env = {**os.environ, **api_env, "API_WORKERS": "2"}  # api_env binds port 0
    with ServiceProcess("api", [venv_bin / "chat-api"], env=env) as api:
        assert api.wait(60) == 2
        assert "GRPC_SERVER_ADDRESS" in api.output("stderr")
