"""The throwaway PostgreSQL and Redis servers: a taken port is retried on another (and a stranger
answering on it is never taken for the server), a restart keeps the port, as root the
PostgreSQL server runs as an unprivileged user, and both stop when the process that started
them is killed."""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

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


def test_postgres_cleanup_without_waiting_stops_now_and_removes_the_directory_after() -> None:
    """The test session's cluster is removed this way: the server is down when cleanup
    returns, and the directory goes soon after, in a process of its own."""
    pg = LocalPostgres().start()
    pg.create_database("kept")
    process = pg.process
    assert process is not None and pg.base.exists()
    pg.cleanup(wait=False)
    assert not process.running
    deadline = time.monotonic() + 30
    while pg.base.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pg.base.exists()


_STARTER = """
import json, time
from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.local_redis import LocalRedis
pg, server = LocalPostgres().start(), LocalRedis().start()
print(json.dumps({"postgres": pg.process.pid, "redis": server.process.pid,
                  "dirs": [str(pg.base), str(server.dir)]}), flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie nobody has reaped yet)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_servers_stop_when_the_process_that_started_them_is_killed() -> None:
    """A test run or benchmark killed with SIGKILL cleans up nothing itself: its servers get
    their stop signal from the kernel (``chat_devtools.process.tied_to_parent``)."""
    started: dict[str, Any] = {}
    with subprocess.Popen([sys.executable, "-c", _STARTER], stdout=subprocess.PIPE,
                          text=True) as starter:
        try:
            assert starter.stdout is not None
            line = starter.stdout.readline()  # bounded: the starter prints or exits (EOF)
            started = json.loads(line)
            pids = [int(started["postgres"]), int(started["redis"])]
            assert not any(_gone(pid) for pid in pids)
            starter.kill()
            starter.wait(10)
            deadline = time.monotonic() + 30
            while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [pid for pid in pids if not _gone(pid)] == []
        finally:
            starter.kill()
            for directory in started.get("dirs", []):
                shutil.rmtree(directory, ignore_errors=True)


def _aof_files(server: LocalRedis) -> list[pathlib.Path]:
    return sorted(p for p in server.dir.rglob("*.aof*") if p.is_file())


def _wait_for_aof(server: LocalRedis, needle: bytes, within: float = 10.0) -> None:
    """Until ``needle`` is in the append-only file (fsynced once a second): bounded."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(needle in p.read_bytes() for p in _aof_files(server)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {_aof_files(server)} within {within}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_chat_devs_redis_keeps_its_streams_across_a_restart(sig: int) -> None:
    from chat_devtools.chat_dev import dev_redis

    server = dev_redis()
    try:
        server.start()
        client = redis.Redis(host="127.0.0.1", port=server.port)
        ids = [client.xadd("chat:events:0", {"n": str(i)}) for i in range(50)]
        client.close()
        _wait_for_aof(server, b"chat:events:0")
        server.stop(sig)  # SIGKILL: no shutdown save, only what the AOF already holds
        server.start()
        client = redis.Redis(host="127.0.0.1", port=server.port)
        assert [entry_id for entry_id, _ in client.xrange("chat:events:0")] == ids
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
    finally:
        server.cleanup()


def test_the_test_suites_redis_keeps_nothing_on_disk() -> None:
    server = LocalRedis()
    try:
        server.start()
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.xadd("chat:events:0", {"n": "1"})
        client.close()
        server.stop()
        assert _aof_files(server) == []
        server.start()
        client = redis.Redis(host="127.0.0.1", port=server.port)
        assert client.xlen("chat:events:0") == 0
        client.close()
    finally:
        server.cleanup()
