"""The services as real subprocesses on free loopback ports: for the benchmark and the e2e tests.

``Service`` runs one console script with its output in a log file (shown when something fails),
waits until it is ready (gRPC health for the API, /readyz for the others) and stops it with
SIGTERM. The e2e tests (tests/support/ws_stack.py) and ``chat-bench`` share these classes, so a
service started by the benchmark is started exactly as the tests start it.
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

from chat_shared.localstack import free_port

BIN = pathlib.Path(sys.executable).parent
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def _kept(name: str) -> bool:
    # COVERAGE_*: a test run measuring coverage follows the services into their processes.
    return name in _KEEP or name.startswith("COVERAGE_")


class ServiceError(AssertionError):
    """A service exited, did not become ready or did not stop (an AssertionError for pytest)."""


def base_env(db_source: str, redis_addr: str, jwt_secret: str,
             **overrides: object) -> dict[str, str]:
    """The environment every service gets; ``overrides`` are upper-cased variable names."""
    env = {k: v for k, v in os.environ.items() if _kept(k)}
    env.update({"ENVIRONMENT": "test", "DB_SOURCE": db_source, "REDIS_ADDR": redis_addr,
                "JWT_SECRET": jwt_secret, "REDIS_TIMEOUT": "2s", "LOG_LEVEL": "INFO",
                "METRICS_ADDRESS": "127.0.0.1"})
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def metric_sum(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
        if self.proc.poll() is not None:
            raise ServiceError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")

    def get(self, port: int, path: str) -> tuple[int, str]:
        return http_get(port, path)

    async def wait_http_ready(self, port: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.alive()
            status, _ = await asyncio.to_thread(self.get, port, "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise ServiceError(f"{self.name} did not become ready:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            raise ServiceError(f"{self.name} still running:\n{self.log()}")
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
        return metric_sum(self.get(self.metrics_port, "/metrics")[1], name)


class Api(Service):
    def __init__(self, env: dict[str, str], log_dir: pathlib.Path,
                 http_port: int | None = None, metrics_port: int = 0) -> None:
        self.grpc_port = free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port
        env = {**env, "GRPC_SERVER_ADDRESS": f"127.0.0.1:{self.grpc_port}",
               "HTTP_SERVER_ADDRESS": f"127.0.0.1:{self.http_port}",
               "METRICS_PORT": str(metrics_port), "HEALTH_CHECK_INTERVAL": "0.2"}
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
        raise ServiceError(f"chat-api did not become SERVING:\n{self.log()}")


class Relay(Service):
    def __init__(self, env: dict[str, str], log_dir: pathlib.Path,
                 quick_intervals: bool = True) -> None:
        self.metrics_port = free_port()
        # Tests want partitions taken and metrics refreshed at once; the benchmark runs the
        # relay with its production defaults (quick_intervals=False).
        quick = ({"OUTBOX_POLL_INTERVAL_MS": "200", "OUTBOX_REBALANCE_INTERVAL": "0.2",
                  "OUTBOX_METRICS_INTERVAL": "0.2"} if quick_intervals else {})
        env = {**env, **quick, "METRICS_PORT": str(self.metrics_port)}
        super().__init__("chat-outbox-relay", env, log_dir, "relay")

    async def ready(self) -> Relay:
        await self.wait_http_ready(self.metrics_port)
        return self
