"""A throwaway PostgreSQL cluster from the installed binaries: for the tests, chat-dev, chat-bench.

Why not pytest-postgresql (tried, 10.0.0), which the house style names:

- it runs the server through ``pg_ctl``, which refuses to run as root ("pg_ctl: cannot be run
  as root"), and the tests and ``./dev run`` run as root on a fresh Debian machine; here, as
  root, initdb and the server run as the ``postgres`` user Debian's package creates (or
  ``nobody``);
- it picks its port with port_for (free a moment ago) and fails when another process takes it
  first; here the server's own bind is the reservation, and a taken port means another try on
  another port (``ports.retry_on_port_in_use``), with readiness checked over the cluster's own
  Unix socket, so a stranger answering on the port is never taken for this server;
- it is a pytest fixture; chat-dev and chat-bench need the same server outside pytest.

By default tuned for speed, not durability (``UNSAFE_FAST``: fsync, synchronous_commit and
full_page_writes off): nothing here outlives the process that made it, and a test suite or a
``./dev run`` session gains nothing from surviving a power cut. ``durable=True`` keeps the
server's own defaults (every commit flushed to disk before it returns), which is what a
benchmark must measure; ``settings`` adds any other ``-c name=value``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql

from chat_devtools.local_server import LocalServer
from chat_devtools.ports import LOOPBACK
from chat_devtools.process import ServiceProcess

UNSAFE_FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""The settings of a fast, crash-unsafe server: a crash (of the machine, or of PostgreSQL with
``fsync`` off) may lose committed transactions or corrupt the cluster."""

BASE_SETTINGS = {"max_connections": "300", "shared_buffers": "128MB"}
"""Every cluster's: room for the services' pools and a benchmark's worker processes."""


def find_pg_bin(name: str) -> str:
    """A PostgreSQL server binary on PATH or in Debian's versioned directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        raise FileNotFoundError(
            f"PostgreSQL binary {name!r} not found; install it (apt-get install postgresql)")
    return candidates[-1]


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


class LocalPostgres(LocalServer):
    """A PostgreSQL cluster in a temporary directory, on a loopback port of its own.

    Args:
        port: the port to try first (default: a candidate); the first ``start`` moves on to
            other candidates while the port is taken, a restart keeps the port it had.
        base_dir: where the cluster lives (default: a new temporary directory, removed by
            ``cleanup``).
        attempts: how many ports the first ``start`` tries.
        durable: run with PostgreSQL's durability defaults instead of ``UNSAFE_FAST``.
        settings: further server settings (``-c name=value``), applied last.
    """

    def __init__(self, port: int | None = None, base_dir: str | Path | None = None,
                 attempts: int = 5, *, durable: bool = False,
                 settings: Mapping[str, str] | None = None) -> None:
        super().__init__(port, attempts)
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="chat-pg-"))
        self.data = self.base / "data"
        self._user = _unprivileged_user()
        self.durable = durable
        self.settings = {**BASE_SETTINGS, **({} if durable else UNSAFE_FAST), **(settings or {})}
        """What the server is started with (``-c``), besides its addresses."""

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}?sslmode=disable"

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        """initdb, once (a restart reuses the cluster)."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self._chown(self.base)
        if (self.data / "PG_VERSION").exists():
            return
        user = self._user
        # --no-sync only where nothing is meant to survive a crash anyway.
        subprocess.run(
            [find_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", *([] if self.durable else ["--no-sync"])],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None)

    def start(self, timeout: float = 30.0) -> Self:
        """Starts the server and waits until it accepts connections.

        Raises:
            PortInUse: every port tried was taken.
            ServiceError: the server exited or did not become ready.
        """
        self.init()
        self._start_on_a_port(timeout)
        return self

    def _process(self, port: int) -> ServiceProcess:
        options = [arg for name, value in self.settings.items()
                   for arg in ("-c", f"{name}={value}")]
        return ServiceProcess(
            "postgres",
            [find_pg_bin("postgres"), "-D", str(self.data), "-p", str(port),
             "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={self.base}",
             *options],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            ready=lambda _proc: self._accepts(port), log_path=self.base / "postgres.log",
            stop_signal=signal.SIGINT, user=self._user)  # SIGINT: PostgreSQL's fast shutdown

    def _accepts(self, port: int) -> bool:
        # Over this cluster's own Unix socket: only this server listens there (whoever may
        # answer on the TCP port), and it creates the socket after its TCP listener.
        try:
            with psycopg.connect(host=str(self.base), port=port, user="postgres",
                                 dbname="postgres", connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def psql(self, query: str, database: str = "postgres") -> str:
        """The output of ``psql -qAt`` running one statement (fails on an SQL error)."""
        r = subprocess.run(
            [shutil.which("psql") or find_pg_bin("psql"), "-h", LOOPBACK, "-p", str(self.port),
             "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", query],
            check=True, capture_output=True, text=True,
        )
        return r.stdout.strip()

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE (a copy of ``template`` when given); returns its DSN."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)
        return self.dsn(name)

    def start_replica(self, settings: Mapping[str, str] | None = None,
                      timeout: float = 60.0) -> LocalPostgres:
        """A streaming replica of this running cluster (``start_replica`` below)."""
        return start_replica(self.port, durable=self.durable, settings=settings, timeout=timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
        """Stops the server: SIGINT is a fast shutdown, SIGKILL a crash (recovery at restart)."""
        if self.process is None or not self.process.running:
            return
        if sig == signal.SIGKILL:
            self.process.kill()
            self.process.wait(timeout)
            self.process.stop()
        else:
            self.process.stop_signal = sig
            self.process.stop(timeout)

    def cleanup(self, *, wait: bool = True) -> None:
        """Stops the server and removes the directory it made (not one it was given).

        Args:
            wait: False hands the removal to a detached ``rm -rf`` and returns at once. The
                test session's cluster ends with hundreds of databases (gigabytes, some
                hundred thousand files), whose removal took 38 s of the last test's teardown
                in CI; nothing reads the directory again once the server has stopped.
        """
        self.stop()
        if not self._own_dir:
            return
        if wait:
            shutil.rmtree(self.base, ignore_errors=True)
            return
        # A shell that starts rm in the background and exits: rm outlives this process without
        # a child left to reap (or a Popen object to warn about at exit).
        subprocess.run(["sh", "-c", 'rm -rf -- "$1" &', "sh", str(self.base)], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)


def start_replica(primary_port: int, *, durable: bool = False,
                  settings: Mapping[str, str] | None = None,
                  timeout: float = 60.0) -> LocalPostgres:
    """A streaming replica (hot standby) of the cluster on ``LOOPBACK:primary_port`` (one whose
    ``postgres`` role may replicate, as a ``LocalPostgres`` allows), on a port of its own:
    ``pg_basebackup -R`` (which writes ``standby.signal`` and ``primary_conninfo``) into a new
    directory, then the server on it. ``cleanup`` of the replica removes it.

    Args:
        settings: further server settings of the replica. A setting that should change while
            it runs (``recovery_min_apply_delay``) belongs in ``ALTER SYSTEM`` instead: a
            ``-c`` on the command line cannot be changed by a reload.
    """
    standby = LocalPostgres(durable=durable, settings=settings)
    standby.base.mkdir(parents=True, exist_ok=True)
    standby.base.chmod(0o755)
    standby._chown(standby.base)
    user = standby._user
    subprocess.run(
        [find_pg_bin("pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream",
         "-c", "fast", "-h", LOOPBACK, "-p", str(primary_port), "-U", "postgres",
         *([] if durable else ["--no-sync"])],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=[] if user else None)
    try:
        return standby.start(timeout)
    except Exception:
        standby.cleanup()
        raise
