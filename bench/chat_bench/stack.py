"""The stack under test: started here the way ``chat-dev`` starts it, or a running one.

Local: throwaway PostgreSQL and Redis (``chat_devtools``), ``chat-migrate``, then the API, the
relay and one gateway as ``ServiceProcess``es on loopback ports of their own
(``chat_devtools.services``, the same classes the e2e tests use). Unlike the tests' and
``chat-dev``'s, this PostgreSQL keeps its durability defaults (fsync, synchronous_commit,
full_page_writes on) unless the run asks for the fast, unsafe settings. Remote: only the addresses
given on the command line; the figures that need a process of the stack (gateway memory) are
then left out unless given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import resource
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
from chat_devtools.local_s3 import LocalS3
from chat_devtools.process import ServiceProcess
from chat_devtools.services import BIN, Api, Gateway, Relay, base_env


@dataclass
class Target:
    """Where the stack answers; the optional parts are known only for a stack started here."""

    grpc: str  # host:port
    http: str  # http://host:port
    ws: str  # http://host:port (the gateway; /v1/ws is appended)
    jwt_secret: str
    db_source: str = ""
    redis_addr: str = ""
    stream_prefix: str = "chat:events"
    gateway_pid: int | None = None
    gateway_metrics: str = ""  # http://host:port/metrics
    relay_metrics: str = ""
    log_dir: str = ""
    started_here: bool = False
    # Each part's root process (its workers and backends are its descendants), for the CPU a
    # message costs in each (``chat_bench.cpu``); empty for a running stack.
    processes: dict[str, int] = field(default_factory=dict)


def _pid(process: ServiceProcess | None) -> int:
    if process is None:
        raise RuntimeError("a server of the stack did not start")
    return process.pid


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; inherited by every process started after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.asynccontextmanager
async def local_stack(jwt_secret: str, log_level: str, extra_env: dict[str, str], *,
                      durable: bool = True,
                      pg_settings: Mapping[str, str] | None = None) -> AsyncIterator[Target]:
    """PostgreSQL, Redis, S3 (moto), migrations and the three services; everything is removed
    after.

    Args:
        durable: PostgreSQL with its durability defaults; False: ``UNSAFE_FAST``.
        pg_settings: further PostgreSQL settings (``commit_delay``, ...).
    """
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="chat-bench-"))
    pg = LocalPostgres(durable=durable, settings=pg_settings)
    redis = LocalRedis()
    s3 = LocalS3()
    services: list[Api | Relay | Gateway] = []
    try:
        pg.start()
        redis.start()
        s3.start()
        dsn = pg.create_database("chat")
        migrate = subprocess.run([str(BIN / "chat-migrate")],  # noqa: ASYNC221 (once, at start)
                                 env={**os.environ, "DB_SOURCE": dsn}, capture_output=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"chat-migrate failed: {migrate.stderr.decode()[-2000:]}")
        env = base_env(dsn, redis.addr, jwt_secret, ENVIRONMENT="development",
                       LOG_LEVEL=log_level, **s3.env(), **extra_env)
        api = Api(env, log_dir)
        relay = Relay(env, log_dir, quick_intervals=False)
        gateway = Gateway(env, log_dir)
        services = [gateway, relay, api]  # stopped in this order: consumers first
        for service in reversed(services):
            service.start()
        await asyncio.gather(*(service.ready() for service in services))
        yield Target(
            grpc=f"127.0.0.1:{api.grpc_port}", http=api.http_url,
            ws=gateway.url, jwt_secret=jwt_secret, db_source=dsn, redis_addr=redis.addr,
            gateway_pid=gateway.pid,
            gateway_metrics=f"http://127.0.0.1:{gateway.metrics_port}/metrics",
            relay_metrics=f"http://127.0.0.1:{relay.metrics_port}/metrics",
            log_dir=str(log_dir), started_here=True,
            processes={"API": api.pid, "PostgreSQL": _pid(pg.process), "relay": relay.pid,
                       "gateway": gateway.pid, "Redis": _pid(redis.process)})
        for service in services:
            service.alive()
    finally:
        for service in services:
            service.stop()
        redis.cleanup()
        s3.cleanup()
        pg.cleanup()
