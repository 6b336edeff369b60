"""The throwaway PostgreSQL and Redis servers: a taken port is retried on another (and a stranger
answering on it is never taken for the server), a restart keeps the port, and as root the
PostgreSQL server runs as an unprivileged user."""

from __future__ import annotations

import os
import pathlib
import pwd
import signal
import socket
from collections.abc import Iterator

import psycopg
import pytest
import redis

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (and accepts connections on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_redis_moves_to_another_port_when_its_first_is_taken(taken_port: int) -> None:
    server = LocalRedis(port=taken_port)
    try:
        server.start()
        assert server.port != taken_port
        client = redis.Redis(host="127.0.0.1", port=server.port)
        assert client.ping()
        client.close()
        server.stop()
        assert not server.running
        server.start()  # a restart keeps the address clients have
        client = redis.Redis(host="127.0.0.1", port=server.port)
        assert client.ping()
        client.close()
    finally:
        server.cleanup()


def test_postgres_moves_to_another_port_when_its_first_is_taken(taken_port: int) -> None:
    pg = LocalPostgres(port=taken_port)
    try:
        pg.start()
        assert pg.port != taken_port
        assert "address already in use" in (pg.base / "postgres.log").read_text().lower()
        with psycopg.connect(pg.create_database("moved"), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("moved",)
        assert pg.psql("SELECT 1") == "1"
        if os.geteuid() == 0:
            assert pg.process is not None
            status = pathlib.Path(f"/proc/{pg.process.pid}/status").read_text()
            uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
            assert pwd.getpwuid(uid).pw_name in ("postgres", "nobody")
        pg.stop(signal.SIGKILL)  # a crash: recovery at the restart, same port
        port = pg.port
        pg.start()
        assert pg.port == port and pg.psql("SELECT 1", "moved") == "1"
    finally:
        pg.cleanup()
