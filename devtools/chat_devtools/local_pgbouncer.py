"""A throwaway PgBouncer in transaction pooling mode in front of a ``LocalPostgres``: the tests'
way of running the services the way a deployment behind a pooler does (docs/pgbouncer.md).

Debian 12's ``pgbouncer`` (1.18) from the installed binary, on a loopback port of its own (its
bind is the reservation, as for PostgreSQL), as the unprivileged user PostgreSQL runs as
(PgBouncer refuses to run as root). Every database of the cluster is reachable through it
(``* = host=... port=...``); clients authenticate as in the cluster (``trust``, as the tests'
cluster does), so every login role a test uses must be in ``users``.

The login roles of a pooled service carry the session's settings themselves, since nothing
session-scoped can travel through the pooler (``chat_shared.db``): ``pooled_login`` makes such
a role, acting as the given DATABASE_ROLE in UTC with a statement timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql

from chat_devtools.local_postgres import LocalPostgres, _unprivileged_user
from chat_devtools.local_server import LocalServer
from chat_devtools.ports import LOOPBACK
from chat_devtools.process import ServiceProcess

__all__ = ["LocalPgBouncer", "pooled_login"]


def pooled_login(postgres: LocalPostgres, login: str, role: str,
                 statement_timeout: str = "10s") -> None:
    """Creates (or updates) the login role ``login`` whose sessions act as ``role`` in UTC with
    ``statement_timeout`` and the API's ``random_page_cost`` (a pooled session takes no startup
    options): what a service behind a transaction pooler logs in as (docs/pgbouncer.md)."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
        name = sql.Identifier(login)
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(name))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), name))
        for setting, value in (("role", role), ("TimeZone", "UTC"),
                               ("statement_timeout", statement_timeout),
                               ("random_page_cost", "1.1")):
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(
                name, sql.Identifier(setting), sql.Literal(value)))


class LocalPgBouncer(LocalServer):
    """PgBouncer (``pool_mode = transaction``) in front of ``postgres``.

    Args:
        postgres: the running cluster behind it.
        users: the login roles clients may use (PgBouncer's ``auth_file``).
        pool_size: server connections per database and user.
        attempts: how many ports the first ``start`` tries.
    """

    def __init__(self, postgres: LocalPostgres, users: Iterable[str] = ("postgres",), *,
                 pool_size: int = 20, attempts: int = 5) -> None:
        self.postgres = postgres
        self.users = list(users)
        self.pool_size = pool_size
        super().__init__(None, attempts)
        self._user = _unprivileged_user()
        self.dir = Path(tempfile.mkdtemp(prefix="chat-pgbouncer-"))

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{LOOPBACK}:{self.port}/{database}?sslmode=disable"

    def through(self, dsn: str, user: str) -> str:
        """The DSN of ``dsn``'s database on the cluster, through the pooler, as ``user``."""
        database = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        return self.dsn(database, user)

    def start(self, timeout: float = 15.0) -> Self:
        """Starts PgBouncer and waits until a client gets through it to the cluster.

        Raises:
            FileNotFoundError: no pgbouncer binary (apt-get install pgbouncer).
            PortInUse: every port tried was taken.
            ServiceError: it exited or did not become ready.
        """
        self._start_on_a_port(timeout)
        return self

    def _write_config(self, port: int) -> Path:
        self.dir.chmod(0o755)
        (self.dir / "userlist.txt").write_text(
            "".join(f'"{user}" ""\n' for user in self.users))
        config = self.dir / "pgbouncer.ini"
        config.write_text(f"""\
[databases]
* = host={LOOPBACK} port={self.postgres.port}

[pgbouncer]
listen_addr = {LOOPBACK}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 2000
; Every test has a database of its own, so a pool of its own: idle server sessions close
; soon, and one login never holds more than a third of the cluster's max_connections
; (clients beyond it wait for a session rather than fail).
server_idle_timeout = 2
max_user_connections = 100
server_reset_query =
server_check_delay = 0
ignore_startup_parameters = extra_float_digits
""")
        if self._user is not None:
            for path in (self.dir, config, self.dir / "userlist.txt"):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        return config

    def _process(self, port: int) -> ServiceProcess:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(binary):
            raise FileNotFoundError("pgbouncer not found; install it (apt-get install pgbouncer)")
        config = self._write_config(port)
        return ServiceProcess(
            "pgbouncer", [binary, str(config)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            ready=lambda _proc: self._passes(port), log_path=self.dir / "pgbouncer.log",
            stop_signal=signal.SIGTERM, user=self._user)  # SIGTERM: immediate shutdown

    def _passes(self, port: int) -> bool:
        # A query that reaches the cluster behind it: whoever else may listen on the port
        # would not answer with this cluster's own port.
        try:
            with psycopg.connect(host=LOOPBACK, port=port, user="postgres", dbname="postgres",
                                 connect_timeout=1, prepare_threshold=None) as conn:
                row = conn.execute("SELECT current_setting('port')").fetchone()
                return row is not None and int(row[0]) == self.postgres.port
        except psycopg.OperationalError:
            return False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
