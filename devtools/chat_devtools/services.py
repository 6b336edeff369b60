"""The three chat services as ``ServiceProcess``es, started alike by chat-bench and the e2e tests.

Every listener that can bind port 0 does (gRPC, HTTP, WebSocket), and the port is read from the
service's start line; METRICS_PORT, where 0 turns metrics (and the relay's and gateway's
probes) off, is a picked candidate (``PICK``), retried when taken. With API_WORKERS > 1 the
API needs fixed ports, which are reserved here (SO_REUSEPORT) until the workers hold them.
Readiness: gRPC health for the API, /readyz for the others.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from chat_devtools.ports import LOOPBACK, reserve_port
from chat_devtools.process import PICK, Probe, ServiceProcess, grpc_serving, http_get, http_ok

BIN = pathlib.Path(sys.executable).parent
"""Where the workspace's console scripts are (the running interpreter's environment)."""

_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def base_env(db_source: str, redis_addr: str, jwt_secret: str,
             **overrides: object) -> dict[str, str]:
    """The environment every service gets; ``overrides`` are upper-cased variable names."""
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env.update({"ENVIRONMENT": "test", "DB_SOURCE": db_source, "REDIS_ADDR": redis_addr,
                "JWT_SECRET": jwt_secret, "REDIS_TIMEOUT": "2s", "LOG_LEVEL": "INFO",
                "METRICS_ADDRESS": LOOPBACK,
                # Tests and bench phases make many calls quickly as few users; the ones about
                # rate limits turn them on (RATE_LIMIT_ENABLED=true in ``overrides``).
                "RATE_LIMIT_ENABLED": "false"})
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


def metric_sum(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition (0 when absent); ``name``
    may carry a label selector as exposed (``ws_closes_total{reason="token_expired"}``)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class _Service(ServiceProcess):
    def __init__(self, name: str, command: str, env: Mapping[str, str], log_dir: pathlib.Path,
                 *, ready: Probe, hold: Sequence[socket.socket] = (),
                 stop_signal: int = signal.SIGTERM) -> None:
        # cwd: the log directory, so that no app.env of the checkout is read.
        super().__init__(name, [BIN / command], env=env, cwd=log_dir,
                         log_path=log_dir / f"{name}.log", ready=ready, hold=hold,
                         stop_signal=stop_signal)

    @property
    def metrics_port(self) -> int:
        return self.port("metrics_port")

    def get(self, port: int, path: str) -> tuple[int, str]:
        """(status, body) of a GET on one of this service's ports; (0, "") when nothing answers."""
        return http_get(port, path)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics (0 when absent)."""
        return metric_sum(http_get(self.metrics_port, "/metrics")[1], name)


class Api(_Service):
    """``chat-api``: gRPC and HTTP on ports it picks (or reserved ones with API_WORKERS > 1).

    Args:
        http_port: a fixed HTTP port (the caller retries on PortInUse).
        metrics: serve /metrics (on a picked port); off by default.
    """

    def __init__(self, env: Mapping[str, str], log_dir: pathlib.Path, *, name: str = "api",
                 http_port: int | None = None, metrics: bool = False) -> None:
        env = {**env, "HEALTH_CHECK_INTERVAL": env.get("HEALTH_CHECK_INTERVAL", "0.2"),
               "METRICS_PORT": PICK if metrics else "0"}
        grpc_port, hold = 0, list[socket.socket]()
        if int(env.get("API_WORKERS", "1")) > 1:
            # The workers share fixed ports (SO_REUSEPORT): held here until they listen.
            hold = [reserve_port(), reserve_port()]
            grpc_port = hold[0].getsockname()[1]
            http_port = http_port or hold[1].getsockname()[1]
        env["GRPC_SERVER_ADDRESS"] = f"{LOOPBACK}:{grpc_port}"
        env["HTTP_SERVER_ADDRESS"] = f"{LOOPBACK}:{http_port or 0}"
        super().__init__(name, "chat-api", env, log_dir, ready=grpc_serving(), hold=hold)

    @property
    def grpc_port(self) -> int:
        return self.port("grpc_port")

    @property
    def http_port(self) -> int:
        return self.port("http_port")

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"


class Relay(_Service):
    """``chat-outbox-relay``; ``quick_intervals`` takes partitions and refreshes metrics at
    once (tests), False keeps the production defaults (the benchmark)."""

    def __init__(self, env: Mapping[str, str], log_dir: pathlib.Path, *, name: str = "relay",
                 quick_intervals: bool = True, stop_signal: int = signal.SIGTERM) -> None:
        quick = ({"OUTBOX_POLL_INTERVAL_MS": "200", "OUTBOX_REBALANCE_INTERVAL": "0.2",
                  "OUTBOX_METRICS_INTERVAL": "0.2"} if quick_intervals else {})
        super().__init__(name, "chat-outbox-relay", {**quick, **env, "METRICS_PORT": PICK},
                         log_dir, ready=http_ok("/readyz"), stop_signal=stop_signal)


class Gateway(_Service):
    """``chat-ws-gateway`` on a WebSocket port it picks."""

    def __init__(self, env: Mapping[str, str], log_dir: pathlib.Path, name: str = "ws") -> None:
        super().__init__(name, "chat-ws-gateway",
                         {**env, "WS_SERVER_ADDRESS": f"{LOOPBACK}:0", "METRICS_PORT": PICK},
                         log_dir, ready=http_ok("/readyz"))

    @property
    def ws_port(self) -> int:
        return self.port("ws_port")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.ws_port}"
