"""The services as real subprocesses for the WebSocket gateway's end-to-end tests.

``Service`` runs one console script with its output in a log file (shown when a test fails),
waits until it is ready (gRPC health for the API, /readyz for the others) and stops it with
SIGTERM. ``ws_connect`` opens a real aiohttp WebSocket client and sends the resume frame.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
from chat_shared.localstack import free_port

from tests.conftest import TEST_SECRET, make_token

BIN = pathlib.Path(sys.executable).parent
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "COVERAGE_PROCESS_START")


def base_env(db_source: str, redis_addr: str, **overrides: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env.update({"ENVIRONMENT": "test", "DB_SOURCE": db_source, "REDIS_ADDR": redis_addr,
                "JWT_SECRET": TEST_SECRET, "REDIS_TIMEOUT": "2s", "LOG_LEVEL": "INFO",
                "METRICS_ADDRESS": "127.0.0.1"})
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


class Service:
    def __init__(self, command: str, env: dict[str, str], log_dir: pathlib.Path,
                 name: str) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([str(BIN / command)], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}:\n{self.log()}"

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    async def wait_http_ready(self, port: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.alive()
            status, _ = await asyncio.to_thread(self.get, port, "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not become ready:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert self.proc.poll() is not None, f"{self.name} still running:\n{self.log()}"
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Gateway(Service):
    def __init__(self, env: dict[str, str], log_dir: pathlib.Path, name: str = "ws",
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.metrics_port = free_port()
        env = {**env, "WS_SERVER_ADDRESS": f"127.0.0.1:{self.port}",
               "METRICS_PORT": str(self.metrics_port)}
        super().__init__("chat-ws-gateway", env, log_dir, name)

    async def ready(self) -> Gateway:
        await self.wait_http_ready(self.metrics_port)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics (0 when absent)."""
        _, text = self.get(self.metrics_port, "/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


class Api(Service):
    def __init__(self, env: dict[str, str], log_dir: pathlib.Path,
                 http_port: int | None = None) -> None:
        self.grpc_port = free_port()
        self.http_port = http_port or free_port()
        env = {**env, "GRPC_SERVER_ADDRESS": f"127.0.0.1:{self.grpc_port}",
               "HTTP_SERVER_ADDRESS": f"127.0.0.1:{self.http_port}", "METRICS_PORT": "0",
               "HEALTH_CHECK_INTERVAL": "0.2"}
        super().__init__("chat-api", env, log_dir, "api")

    async def ready(self) -> Api:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                self.alive()
                try:
                    r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"chat-api did not become SERVING:\n{self.log()}")


class Relay(Service):
    def __init__(self, env: dict[str, str], log_dir: pathlib.Path) -> None:
        self.metrics_port = free_port()
        env = {**env, "METRICS_PORT": str(self.metrics_port), "OUTBOX_POLL_INTERVAL_MS": "200",
               "OUTBOX_REBALANCE_INTERVAL": "0.2", "OUTBOX_METRICS_INTERVAL": "0.2"}
        super().__init__("chat-outbox-relay", env, log_dir, "relay")

    async def ready(self) -> Relay:
        await self.wait_http_ready(self.metrics_port)
        return self


async def ws_connect(session: aiohttp.ClientSession, gateway: Gateway, user: str, *,
                     positions: dict[str, int] | None = None, ttl: float = 3600.0,
                     resume: bool = True) -> aiohttp.ClientWebSocketResponse:
    """A client socket authenticated as ``user`` that has sent its resume frame."""
    ws = await session.ws_connect(f"{gateway.url}/v1/ws", heartbeat=None, autoping=True,
                                  headers={"Authorization": f"Bearer {make_token(user, ttl)}"})
    if resume:
        await ws.send_json({"type": "resume", "positions": positions or {}})
    return ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, within: float = 20.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    data: dict[str, Any] = msg.json()
    return data


async def messages(ws: aiohttp.ClientWebSocketResponse, count: int,
                   within: float = 30.0) -> list[dict[str, Any]]:
    """The next ``count`` message.created frames (other frames are skipped)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {count} messages: {[m['seq'] for m in out]}"
        frame = await next_frame(ws, left)
        if frame["type"] == "message.created":
            out.append(frame)
    return out


async def close_code(ws: aiohttp.ClientWebSocketResponse, within: float = 30.0,
                     limit: int = 100_000) -> tuple[int | None, int]:
    """Reads until the server closes; returns the close code and how many frames came first."""
    frames = 0
    deadline = time.monotonic() + within
    for _ in range(limit):
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING):
            return ws.close_code, frames
        if msg.type == aiohttp.WSMsgType.ERROR:
            return None, frames
        frames += 1
    raise AssertionError("the server did not close the socket")
