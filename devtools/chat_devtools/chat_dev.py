"""``chat-dev`` (what ``./dev run`` runs): the whole stack on one machine, no Docker needed.

1. Every port the services will listen on is checked before anything starts; a taken one is
   named, with how to move them all (CHAT_DEV_PORT_OFFSET). The check binds with SO_REUSEADDR,
   as the services do, so a stack stopped a moment ago (its connections in TIME_WAIT) is no
   obstacle.
2. Throwaway PostgreSQL, Redis and S3 (attachments) start when DB_SOURCE / REDIS_ADDR /
   S3_ENDPOINT are unset; the migrations are applied. That PostgreSQL runs with fsync off
   (fast, not crash-safe), and the start-up line says so.
3. The three services run as processes with their output prefixed by their names; "running"
   and the addresses are printed once every one of them is ready (gRPC health for the API,
   /readyz for the others).
4. A service that crashes is restarted with backoff (1 s, 2 s, 4 s ... 30 s), and the log says
   so; the rest of the stack keeps running.
5. Ctrl-C (or SIGTERM) stops the services gracefully (each drains), then the servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from chat_devtools.errors import ServiceError
from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_devtools.local_s3 import LocalS3
from chat_devtools.ports import LOOPBACK, port_free
from chat_devtools.process import Probe, ServiceProcess, grpc_serving, http_ok
from chat_devtools.supervisor import Supervised
from chat_shared.config import DEV_JWT_SECRET

OFFSET_HINT = "CHAT_DEV_PORT_OFFSET=10000 ./dev run"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: str
    env: dict[str, str]
    ports: tuple[tuple[str, int], ...]  # (what, port), all on chat-dev's host
    ready: Probe
    urls: tuple[str, ...]


def services(host: str, offset: int = 0) -> list[ServiceSpec]:
    """The three services on their standard ports, each moved by ``offset``."""
    grpc, http, ws = 9090 + offset, 8080 + offset, 8081 + offset
    m_api, m_relay, m_ws = 9100 + offset, 9101 + offset, 9102 + offset
    probe = LOOPBACK if host in ("0.0.0.0", "") else host
    shown = probe
    return [
        ServiceSpec("api", "chat-api",
                    {"GRPC_SERVER_ADDRESS": f"{host}:{grpc}",
                     "HTTP_SERVER_ADDRESS": f"{host}:{http}", "METRICS_PORT": str(m_api),
                     # The demo page is served by the ws-gateway (another origin) and calls
                     # the HTTP API from the browser.
                     "CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{ws},http://localhost:{ws}"},
                    (("api gRPC", grpc), ("api HTTP", http), ("api metrics", m_api)),
                    grpc_serving(host=probe),
                    (f"gRPC      {shown}:{grpc} "
                     f"(reflection on: uv run grpcurl -plaintext {shown}:{grpc} list)",
                     f"HTTP/JSON http://{shown}:{http}/v1/conversations",
                     f"metrics   http://{shown}:{m_api}/metrics")),
        ServiceSpec("relay", "chat-outbox-relay", {"METRICS_PORT": str(m_relay)},
                    (("relay metrics", m_relay),), http_ok("/readyz", host=probe),
                    (f"relay     http://{shown}:{m_relay}/metrics",)),
        ServiceSpec("ws", "chat-ws-gateway",
                    {"WS_SERVER_ADDRESS": f"{host}:{ws}", "METRICS_PORT": str(m_ws),
                     "API_PUBLIC_URL": f"http://{shown}:{http}"},
                    (("ws-gateway WebSocket", ws), ("ws-gateway metrics", m_ws)),
                    http_ok("/readyz", host=probe),
                    (f"WebSocket ws://{shown}:{ws}/v1/ws",
                     f"demo      http://{shown}:{ws}/  (open it in two windows as two users)",
                     f"ws        http://{shown}:{m_ws}/metrics")),
    ]


def taken_ports(host: str, specs: list[ServiceSpec]) -> list[str]:
    """``host:port (what)`` of every port some other process holds."""
    return [f"{host}:{port} ({what})" for spec in specs for what, port in spec.ports
            if not port_free(host, port)]


def _bin(command: str) -> str | None:
    local = Path(sys.executable).parent / command
    return str(local) if local.exists() else shutil.which(command)


class Console:
    """chat-dev's own lines and the services' prefixed output, one whole line at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str, err: bool = False) -> None:
        with self._lock:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def say(self, text: str) -> None:
        self.line(f"chat-dev: {text}")

    def error(self, text: str) -> None:
        self.line(f"chat-dev: {text}", err=True)


def _offset(text: str) -> int | None:
    if not text.lstrip("-").isdigit() or not -8000 <= int(text) <= 50000:
        return None
    return int(text)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("ENVIRONMENT", "development")
    env.setdefault("JWT_SECRET", DEV_JWT_SECRET)
    host = env.pop("CHAT_DEV_HOST", LOOPBACK)
    env.setdefault("METRICS_ADDRESS", host)
    # Moves every port by this much (e.g. 10000: gRPC on 19090), for a second stack.
    offset_text = env.pop("CHAT_DEV_PORT_OFFSET", "0")
    offset = _offset(offset_text)
    console = Console()
    if offset is None:
        console.error(f"CHAT_DEV_PORT_OFFSET must be a whole number from -8000 to 50000, "
                      f"got {offset_text!r}")
        return 2
    specs = services(host, offset)
    binaries = {spec.name: _bin(spec.command) for spec in specs}
    missing = [spec.command for spec in specs if binaries[spec.name] is None]
    migrate = _bin("chat-migrate")
    if missing or migrate is None:
        console.error(f"{', '.join(missing or ['chat-migrate'])} not found; run through ./dev run")
        return 1
    taken = taken_ports(host, specs)
    if taken:
        console.error(f"address already in use: {', '.join(taken)}")
        console.error(f"another stack may be running: stop it, or move every port: {OFFSET_HINT}")
        return 1
    return _run(env, specs, binaries, migrate, console)


class _Stack:
    """What chat-dev started, for the clean-up whatever happens."""

    def __init__(self) -> None:
        self.pg: LocalPostgres | None = None
        self.redis: LocalRedis | None = None
        self.s3: LocalS3 | None = None
        self.supervised: list[Supervised] = []
        # A plain flag, not a threading.Event: the signal handler runs on the main thread
        # between bytecodes, and Event.set() there deadlocks when the main thread is inside
        # Event.wait() holding the Event's own lock.
        self.stopping = False
        self.starting = True
        """While true, a signal interrupts the start-up step that is waiting."""

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.starting:  # abort the start-up step that is waiting; the clean-up follows
            self.starting = False  # once: a second signal (uv forwards Ctrl-C too) must not
            raise KeyboardInterrupt  # interrupt the clean-up

    def shut_down(self, console: Console) -> bool:
        """Stops everything; False when a service had to be killed."""
        self.starting = False  # a signal no longer interrupts anything
        console.say("stopping ...")
        for service in self.supervised:
            service.request_stop()
        clean = True
        for service in reversed(self.supervised):  # consumers first
            service.stop()
            if service.process.killed:
                console.error(f"{service.name} did not stop in time; killed")
                clean = False
        if self.redis is not None:
            self.redis.cleanup()
        if self.s3 is not None:
            self.s3.cleanup()
        if self.pg is not None:
            self.pg.cleanup()
        console.say("stopped")
        return clean


def _run(env: dict[str, str], specs: list[ServiceSpec], binaries: dict[str, str | None],
         migrate: str, console: Console) -> int:
    stack = _Stack()
    signal.signal(signal.SIGINT, stack.on_signal)
    signal.signal(signal.SIGTERM, stack.on_signal)
    try:
        code = _start_and_serve(stack, env, specs, binaries, migrate, console)
    except KeyboardInterrupt:
        code = 0
    finally:
        clean = stack.shut_down(console)
    return code if clean else 1


def dev_redis() -> LocalRedis:
    """chat-dev's Redis: with the append-only file, as a deployment should run it, so the
    streams survive a restart of that Redis (the tests' Redis keeps nothing, for speed)."""
    return LocalRedis(append_only=True)


def _start_and_serve(stack: _Stack, env: dict[str, str], specs: list[ServiceSpec],
                     binaries: dict[str, str | None], migrate: str, console: Console) -> int:
    if not env.get("DB_SOURCE"):
        console.say("DB_SOURCE unset: starting a throwaway PostgreSQL ...")
        stack.pg = LocalPostgres().start()
        env["DB_SOURCE"] = stack.pg.create_database("chat")
        # A throwaway server tuned for speed (LocalPostgres' default): say what that costs.
        console.say(f"PostgreSQL on {stack.pg.addr} (database chat) with fsync=off: a crash "
                    "loses data; fine for trying it, never for data you keep")
    if not env.get("REDIS_ADDR"):
        console.say("REDIS_ADDR unset: starting a throwaway Redis ...")
        stack.redis = dev_redis().start()
        env["REDIS_ADDR"] = stack.redis.addr
        console.say(f"Redis on {stack.redis.addr} (append-only file in {stack.redis.dir})")
    if not env.get("S3_ENDPOINT"):
        console.say("S3_ENDPOINT unset: starting a throwaway S3 server (moto, in memory) ...")
        stack.s3 = LocalS3().start()
        env.update(stack.s3.env())
        console.say(f"S3 on {stack.s3.endpoint} (bucket {stack.s3.bucket}; objects kept in "
                    "memory until it stops)")
    console.say("applying migrations ...")
    if subprocess.run([migrate], env=env).returncode != 0:
        console.error("migrations failed")
        return 1
    for spec in specs:
        binary = binaries[spec.name]
        assert binary is not None
        process = ServiceProcess(spec.name, [binary], env={**env, **spec.env},
                                 ready=spec.ready, echo=console.line)
        stack.supervised.append(Supervised(process, console.say))
        stack.supervised[-1].start()
    for service in stack.supervised:
        try:
            service.wait_ready()
        except ServiceError as exc:
            console.error(f"{service.name} did not start: {str(exc).splitlines()[0]}")
            return 1
        console.say(f"{service.name} ready (pid {service.process.pid})")
    stack.starting = False
    _print_running(console, specs, env)
    while not stack.stopping:
        time.sleep(0.5)
    return 0


def _print_running(console: Console, specs: list[ServiceSpec], env: dict[str, str]) -> None:
    ws = next(s for s in specs if s.name == "ws")
    ws_port = dict(ws.ports)["ws-gateway WebSocket"]
    lines = ["", "chat-dev: running. Ctrl-C stops everything."]
    lines += [f"  {url}" for spec in specs for url in spec.urls]
    if env.get("S3_ENDPOINT"):
        # Presigned URLs name it: the demo page uploads to it and downloads from it.
        lines.append(f"  S3        {env['S3_ENDPOINT']} (attachments, bucket "
                     f"{env.get('S3_BUCKET', 'chat-attachments')})")
    lines.append("  token:    uv run chat-token --user alice   "
                 "(then: Authorization: Bearer <token>)")
    if env.get("ENVIRONMENT") == "development":
        lines.append(f"            or: curl -s -XPOST http://127.0.0.1:{ws_port}/demo/token "
                     "-d '{\"user_id\": \"alice\"}'")
    lines.append(f"  live:     uv run websocat -H 'Authorization: Bearer <token>' "
                 f"ws://127.0.0.1:{ws_port}/v1/ws")
    console.line("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
