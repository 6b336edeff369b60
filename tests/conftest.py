"""Test fixtures shared by every kind of test: tokens, the API in-process, its environment.

Real PostgreSQL and Redis come from the chat_devtools pytest plugin (``postgres``,
``redis_server``, ``db_source``: a fresh migrated database per test, ``redis_addr``: a flushed
server), loaded through its ``pytest11`` entry point.
"""

from __future__ import annotations

import os
import pathlib
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import pytest

from chat_shared.auth import issue_token

if TYPE_CHECKING:
    from chat_devtools.local_pgbouncer import LocalPgBouncer

# The same two aiohttp warnings pyproject.toml ignores during tests, also outside them (at
# interpreter exit, where a late-collected session would otherwise fail the run).
warnings.filterwarnings("ignore", "Unclosed client session", ResourceWarning)
warnings.filterwarnings("ignore", "Unclosed connector", ResourceWarning)

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256"


def coverage_env() -> dict[str, str]:
    """The COVERAGE_* variables, for tests that give a subprocess a minimal environment:
    with them, a run measuring coverage follows the code into that process."""
    return {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}


def make_token(user: str, ttl: float = 3600.0, **kw: object) -> str:
    return issue_token(user, secret=TEST_SECRET, ttl_seconds=ttl, **kw)  # type: ignore[arg-type]


def auth(user: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying a valid token for ``user``."""
    return (("authorization", f"Bearer {make_token(user)}"),)


@pytest.fixture
def api_env(db_source: str, redis_addr: str, db_pooler: LocalPgBouncer | None) -> dict[str, str]:
    """Environment for the API (in-process or as a subprocess); through PgBouncer with
    ``--through-pgbouncer`` (docs/pgbouncer.md)."""
    pooled = {} if db_pooler is None else {
        "DB_SOURCE": db_pooler.through(db_source, "chat_app_pooled"),
        "DB_TRANSACTION_POOLER": "true",
    }
    return {
        "ENVIRONMENT": "test",
        "DB_SOURCE": db_source,
        "REDIS_ADDR": redis_addr,
        "JWT_SECRET": TEST_SECRET,
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "HTTP_SERVER_ADDRESS": "127.0.0.1:0",
        "METRICS_PORT": "0",
        "HEALTH_CHECK_INTERVAL": "0.2",
        "LOG_LEVEL": "WARNING",
        # Most tests make many calls quickly; the rate-limit tests turn the limits on.
        "RATE_LIMIT_ENABLED": "false",
        **pooled,
    }


@pytest.fixture
def api_settings_factory(api_env: dict[str, str]) -> Callable[..., object]:
    from chat_api.settings import ApiSettings

    def make(**overrides: object) -> ApiSettings:
        values = {k.lower(): v for k, v in api_env.items()}
        values.update(overrides)
        return ApiSettings(_env_file=None, **values)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def api(api_settings_factory: Callable[..., object]) -> AsyncIterator[object]:
    """The API app running in this event loop on a free port."""
    from chat_api.app import build_app

    app = build_app(api_settings_factory())  # type: ignore[arg-type]
    await app.start()
    await app.probe_once()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture
async def channel(api: object) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.grpc_port}") as ch:  # type: ignore[attr-defined]
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> object:
    from chat_shared.protos.chat.v1 import chat_pb2_grpc

    return chat_pb2_grpc.ChatServiceStub(channel)


@pytest.fixture
def venv_bin() -> pathlib.Path:
    return pathlib.Path(sys.executable).parent
