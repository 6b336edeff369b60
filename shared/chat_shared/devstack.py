"""``chat-dev`` (README's run command): the whole stack on one machine, no Docker needed.

Starts throwaway PostgreSQL and Redis from the installed binaries when DB_SOURCE / REDIS_ADDR
are unset, applies the migrations, then runs each service as its own process with its output
prefixed by its name. Ctrl-C (or SIGTERM) stops the services gracefully, then the servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chat_shared.config import DEV_JWT_SECRET
from chat_shared.localstack import LocalPostgres, LocalRedis


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: str
    env: dict[str, str]
    urls: tuple[str, ...]


def _bin(command: str) -> str | None:
    local = Path(sys.executable).parent / command
    return str(local) if local.exists() else shutil.which(command)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _services(host: str, offset: int = 0) -> list[ServiceSpec]:
    """The three services on their standard ports, each moved by ``offset``."""
    grpc, http, ws = 9090 + offset, 8080 + offset, 8081 + offset
    m_api, m_relay, m_ws = 9100 + offset, 9101 + offset, 9102 + offset
    return [
        ServiceSpec("api", "chat-api",
                    {"GRPC_SERVER_ADDRESS": f"{host}:{grpc}",
                     "HTTP_SERVER_ADDRESS": f"{host}:{http}", "METRICS_PORT": str(m_api),
                     # The demo page is served by the ws-gateway (another origin) and calls
                     # the HTTP API from the browser.
                     "CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{ws},http://localhost:{ws}"},
                    (f"gRPC      127.0.0.1:{grpc} "
                     f"(reflection on: grpcurl -plaintext 127.0.0.1:{grpc} list)",
                     f"HTTP/JSON http://127.0.0.1:{http}/v1/conversations",
                     f"metrics   http://127.0.0.1:{m_api}/metrics")),
        ServiceSpec("relay", "chat-outbox-relay", {"METRICS_PORT": str(m_relay)},
                    (f"relay     http://127.0.0.1:{m_relay}/metrics",)),
        ServiceSpec("ws", "chat-ws-gateway",
                    {"WS_SERVER_ADDRESS": f"{host}:{ws}", "METRICS_PORT": str(m_ws),
                     "API_PUBLIC_URL": f"http://127.0.0.1:{http}"},
                    (f"WebSocket ws://127.0.0.1:{ws}/v1/ws",
                     f"demo      http://127.0.0.1:{ws}/  (open it in two windows as two users)",
                     f"ws        http://127.0.0.1:{m_ws}/metrics")),
    ]


def _pump(name: str, stream: object, lock: threading.Lock) -> None:
    width = 6
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            print(f"{name:<{width}}| {line}", flush=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("ENVIRONMENT", "development")
    env.setdefault("JWT_SECRET", DEV_JWT_SECRET)
    host = env.pop("CHAT_DEV_HOST", "127.0.0.1")
    # Moves every port by this much (e.g. 10000: gRPC on 19090), for a second stack.
    offset_text = env.pop("CHAT_DEV_PORT_OFFSET", "0")
    if not offset_text.lstrip("-").isdigit() or not -8000 <= int(offset_text) <= 50000:
        print(f"chat-dev: CHAT_DEV_PORT_OFFSET must be a whole number from -8000 to 50000, "
              f"got {offset_text!r}", file=sys.stderr)
        return 2
    offset = int(offset_text)
    lock = threading.Lock()
    pg: LocalPostgres | None = None
    redis: LocalRedis | None = None
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if not env.get("DB_SOURCE"):
            print("chat-dev: DB_SOURCE unset: starting a throwaway PostgreSQL ...", flush=True)
            pg = LocalPostgres().start()
            env["DB_SOURCE"] = pg.create_database("chat")
            print(f"chat-dev: PostgreSQL on 127.0.0.1:{pg.port} (database chat)", flush=True)
        if not env.get("REDIS_ADDR"):
            print("chat-dev: REDIS_ADDR unset: starting a throwaway Redis ...", flush=True)
            redis = LocalRedis().start()
            env["REDIS_ADDR"] = redis.addr
            print(f"chat-dev: Redis on {redis.addr}", flush=True)
        migrate = _bin("chat-migrate")
        if migrate is None:
            print("chat-dev: chat-migrate not found; run through ./dev run", file=sys.stderr)
            return 1
        print("chat-dev: applying migrations ...", flush=True)
        if subprocess.run([migrate], env=env).returncode != 0:
            print("chat-dev: migrations failed", file=sys.stderr)
            return 1
        urls: list[str] = []
        for spec in _services(host, offset):
            binary = _bin(spec.command)
            if binary is None:
                continue
            busy = [p for p in (spec.env.get("METRICS_PORT"),) if p and not _port_free(int(p))]
            for key in ("GRPC_SERVER_ADDRESS", "HTTP_SERVER_ADDRESS", "WS_SERVER_ADDRESS"):
                if key in spec.env and not _port_free(int(spec.env[key].rsplit(":", 1)[1])):
                    busy.append(spec.env[key])
            if busy:
                print(f"chat-dev: cannot start {spec.name}: port(s) in use: {', '.join(busy)}",
                      file=sys.stderr)
                return 1
            proc = subprocess.Popen([binary], env={**env, **spec.env}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((spec.name, proc))
            threading.Thread(target=_pump, args=(spec.name, proc.stdout, lock),
                             daemon=True).start()
            urls.extend(spec.urls)
        with lock:
            print("\nchat-dev: running. Ctrl-C stops everything.", flush=True)
            for url in urls:
                print(f"  {url}", flush=True)
            print("  token:    uv run chat-token --user alice   "
                  "(then: Authorization: Bearer <token>)", flush=True)
            if env.get("ENVIRONMENT") == "development":
                print("            or: curl -s -XPOST http://127.0.0.1:8081/demo/token "
                      "-d '{\"user_id\": \"alice\"}'", flush=True)
            print("  live:     websocat -H 'Authorization: Bearer <token>' "
                  "ws://127.0.0.1:8081/v1/ws\n", flush=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"chat-dev: {name} exited with code {proc.returncode}; stopping",
                          file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
        return 0 if all(p.poll() is None for _, p in procs) else 1
    finally:
        print("chat-dev: stopping ...", flush=True)
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"chat-dev: {name} did not stop in time; killing", file=sys.stderr)
                proc.kill()
                proc.wait()
        if redis is not None:
            redis.cleanup()
        if pg is not None:
            pg.cleanup()
        print("chat-dev: stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
