"""The pytest plugin (entry point ``pytest11``): throwaway PostgreSQL and Redis for the tests.

Once per session: a PostgreSQL cluster with the schema migrated once into a template database,
and a Redis server, both from the installed binaries on loopback ports of their own
(``LocalPostgres``, ``LocalRedis``: their docstrings say why not pytest-postgresql/pytest-redis).
Per test: a fresh copy of the migrated database (CREATE DATABASE ... TEMPLATE, a file copy
instead of a migration) and a Redis with nothing in it.

Fixtures: ``postgres`` and ``redis_server`` (the servers), ``db_source`` (the DSN of the test's
own database), ``redis_addr`` (host:port of the flushed server); ``s3_server`` (a throwaway
S3-compatible server with its bucket, started by the first test that asks for it) and ``s3``
(the same server with an empty bucket).

``--through-pgbouncer`` (or ``CHAT_TEST_THROUGH_PGBOUNCER=1``): the services the tests start
reach PostgreSQL through a PgBouncer in transaction pooling mode (``pgbouncer``, started once
per session), as the login role ``chat_app_pooled`` (acting as ``chat_app``), with
``DB_TRANSACTION_POOLER=true``; ``db_pooler`` is that PgBouncer, or None without the option.
What the tests themselves read beside the services still goes straight to the cluster.

Redis Cluster: a test marked ``redis_cluster`` that takes ``redis_addr`` runs twice, on the
single server (``[redis]``) and on a Redis Cluster (``[redis-cluster]``: ``redis_cluster``, six
nodes on loopback started by the first test that needs it, ``LocalRedisCluster``), where
``redis_addr`` is its ``redis+cluster://`` address, flushed. A marked test that asks for
``redis_server`` itself (to stop the single server) runs on the single server only.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from chat_devtools.local_pgbouncer import LocalPgBouncer
    from chat_devtools.local_postgres import LocalPostgres
    from chat_devtools.local_redis import LocalRedis
    from chat_devtools.local_redis_cluster import LocalRedisCluster
    from chat_devtools.local_s3 import LocalS3

REDIS_KINDS = ("redis", "redis-cluster")

_STOPPED: dict[str, float] = {}
"""Seconds each session server took to stop and be removed, shown at the end of the run: the
last test's teardown includes them, and once took a minute in CI without saying why."""


def _timed_cleanup(name: str, cleanup: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        cleanup()
    finally:
        _STOPPED[name] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _STOPPED:
        terminalreporter.write_line("session servers stopped and removed in: " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in _STOPPED.items()))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs a ``redis_cluster``-marked test on the single server and on the cluster."""
    if (metafunc.definition.get_closest_marker("redis_cluster") is not None
            and "redis_addr" in metafunc.fixturenames
            and "redis_server" not in metafunc.fixturenames):
        metafunc.parametrize("redis_addr", REDIS_KINDS, indirect=True)

TEMPLATE_DB = "chat_template"
"""The database migrated once per session; every test's database is a copy of it."""

_databases = itertools.count()

POOLED_LOGINS = {"chat_app_pooled": "chat_app"}
"""The login roles through PgBouncer, and the role each acts as."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--through-pgbouncer", action="store_true",
        default=os.environ.get("CHAT_TEST_THROUGH_PGBOUNCER", "") in ("1", "true"),
        help="services started by the tests reach PostgreSQL through PgBouncer in transaction "
             "pooling mode (docs/pgbouncer.md)")


def pooled_pgbouncer(postgres: LocalPostgres) -> Iterator[LocalPgBouncer]:
    """PgBouncer in transaction pooling mode in front of ``postgres``, with the pooled logins
    (a generator for a fixture: yields it, stops it after)."""
    from chat_devtools.local_pgbouncer import LocalPgBouncer, pooled_login

    for login, role in POOLED_LOGINS.items():
        pooled_login(postgres, login, role)
    bouncer = LocalPgBouncer(postgres, users=["postgres", *POOLED_LOGINS]).start()
    try:
        yield bouncer
    finally:
        _timed_cleanup("pgbouncer", bouncer.cleanup)


@pytest.fixture(scope="session")
def pgbouncer(postgres: LocalPostgres) -> Iterator[LocalPgBouncer]:
    """PgBouncer in transaction pooling mode in front of the session's cluster."""
    yield from pooled_pgbouncer(postgres)


@pytest.fixture(scope="session")
def db_pooler(request: pytest.FixtureRequest) -> LocalPgBouncer | None:
    """The PgBouncer the services go through (``--through-pgbouncer``), else None."""
    if not request.config.getoption("--through-pgbouncer"):
        return None
    bouncer: LocalPgBouncer = request.getfixturevalue("pgbouncer")
    return bouncer


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    from chat_devtools.local_postgres import LocalPostgres
    from chat_migrations.cli import upgrade

    pg = LocalPostgres().start()
    try:
        upgrade(pg.create_database(TEMPLATE_DB))
        yield pg
    finally:
        # Its directory is removed after the run, not in the last test's teardown.
        _timed_cleanup("postgres (its directory removed in the background)",
                       lambda: pg.cleanup(wait=False))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    from chat_devtools.local_redis import LocalRedis

    server = LocalRedis().start()
    try:
        yield server
    finally:
        _timed_cleanup("redis", server.cleanup)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    from chat_devtools.local_s3 import LocalS3

    server = LocalS3().start()
    try:
        yield server
    finally:
        _timed_cleanup("s3", server.cleanup)


@pytest.fixture
def s3(s3_server: LocalS3) -> LocalS3:
    """The session's S3 server with nothing in its bucket."""
    s3_server.empty_bucket()
    return s3_server


@pytest.fixture
def db_source(postgres: LocalPostgres) -> str:
    """A fresh, migrated database for one test.

    Not dropped after the test, although a whole run leaves ~600 of them (~5 GB) in the
    session's cluster: on PostgreSQL 15 every DROP DATABASE requests an immediate checkpoint
    and waits for it (30 drops, 30 requested checkpoints), and dropping after each test made
    things slower, not faster: cycles of create, use and drop took 20-90% longer than create
    and use alone, the two run side by side on a loaded 2-core machine. What the kept
    databases cost is disk space, given back when the cluster is removed after the session.
    """
    return postgres.create_database(f"t_{os.getpid()}_{next(_databases)}", template=TEMPLATE_DB)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of six nodes (three masters, three replicas) for the session."""
    from chat_devtools.local_redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster().start()
    try:
        yield cluster
    finally:
        _timed_cleanup("redis-cluster", cluster.cleanup)


@pytest.fixture
def redis_addr(request: pytest.FixtureRequest) -> str:
    """The session's Redis, empty (and running again if an earlier test stopped it); for the
    ``redis-cluster`` variant of a ``redis_cluster`` test, the cluster's address (every node
    running and every slot served again if an earlier test killed a node)."""
    import redis

    if getattr(request, "param", "redis") == "redis-cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        cluster.ensure_healthy()
        cluster.flush()
        return cluster.addr
    redis_server: LocalRedis = request.getfixturevalue("redis_server")
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.addr
