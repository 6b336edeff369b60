"""PostgreSQL access for every process: psycopg 3, one set of session conventions.

Every connection any service opens (pooled or dedicated, async or sync) gets the same session:

- ``application_name`` names the process (``pg_stat_activity`` shows who holds what);
- ``statement_timeout`` is DB_STATEMENT_TIMEOUT, so no statement runs unbounded;
- ``TimeZone=UTC``: psycopg then converts each timestamptz with Python's fixed UTC offset
  instead of a zoneinfo lookup (a page of 50 conversations reads 150 timestamps; 181 -> 140 us
  measured), and timestamps rendered by PostgreSQL itself (``to_json`` in outbox payloads)
  end in ``+00:00`` whichever zone the server defaults to. The instants are the same in any zone;
- ``connect_timeout``, so a dead server costs a bounded time;
- autocommit: a unit of work that is one statement (data-modifying CTEs included) is atomic on
  its own, and skipping BEGIN/COMMIT saves two round trips. A unit of work that needs several
  statements to commit together says so with ``async with conn.transaction()``
  (``Database.transaction``).

Pipelined transactions (``Database.tenant_transaction``): a transaction costs a round trip for
BEGIN and one for COMMIT besides its statements' own. In pipeline mode BEGIN and the tenant's
setting go out with the block's first statements, and COMMIT with its last, so a transaction
that reads (one round trip: a cursor's ``fetchone`` waits for everything sent so far), decides in
Python and then writes costs two round trips, where ``transaction`` costs four or five. Its
results are read after ``commit(conn)`` (the block's end commits too, when it was not called).

The tenant (docs/tenancy.md): tenant-owned tables have row-level security on
``current_setting('app.tenant_id')``, and a session acts as a role that cannot bypass it
(``DATABASE_ROLE``, set at connection start: ``-c role=...``, no extra round trip). A unit of
work for a tenant (``fetchone(..., tenant=...)``, ``tenant_execute``) runs with the session
naming that tenant, and any other work on a pooled connection runs with it naming none:

- a session already naming the tenant runs the statement alone (no extra cost: a deployment
  with one tenant, or a few busy ones, pays for the setting once per connection);
- otherwise ``set_config('app.tenant_id', tenant, false)`` and the statement go together in one
  pipeline (one round trip; about 0.1 ms of psycopg's pipeline bookkeeping), and the session
  remembers the tenant once both succeeded. A failure rolls the setting back with the statement
  and forgets what the session names, so the next unit of work sets it again;
- work without a tenant (``fetchone`` without ``tenant``, ``connection``, ``transaction``) on a
  session that names one first clears it: a statement that forgets its tenant sees no
  tenant-owned row, never the rows of the tenant the connection served last.

Behind a pooler in transaction mode (PgBouncer; ``DB_TRANSACTION_POOLER``, docs/pgbouncer.md)
a client's consecutive transactions may run on different server sessions, each left as another
client set it, so nothing is remembered: every statement for a tenant goes with
``set_config('app.tenant_id', tenant, true)``, local to its own implicit transaction. And
nothing session-scoped is asked of the server:

- no server-side prepared statements (``prepare_threshold=None``, no ``prepare=True``): a
  statement prepared on one server session does not exist on the next (PgBouncer 1.18, Debian
  12's, does not track them; 1.21's ``max_prepared_statements`` would);
- no ``options`` in the startup packet: PgBouncer 1.18 refuses it, and
  ``ignore_startup_parameters = options`` would drop it silently, the role with it, so a
  session could run as a login role that bypasses row-level security. The session's settings
  are the login role's own instead (``ALTER ROLE <login> SET role = chat_app``, ``SET
  TimeZone = 'UTC'``, ``SET statement_timeout = ...``), and each new connection checks that
  it acts as DATABASE_ROLE in UTC, or is refused (fail closed).

Statements use psycopg's own named parameters (``%(name)s``), run as written. Statements that
run often are prepared server-side by psycopg after a few executions per connection.
psycopg turns a statement's placeholders into ``$n`` on every execution and caches that
conversion only for statements of at most ``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``
bytes (4,096: a guard against the ever-different statements ORMs generate). This project's
statements are fixed texts, so the limit is raised to ``CACHED_STATEMENT_LENGTH``: the general
send statement (6,395 bytes, every send with attachments, every reply and end-to-end encrypted
send) was converted again on each execution, 168-369 us of the API's CPU against 17-28 us
cached (timeit of ``PostgresQuery.convert``, load average 4).

Bounded in time: every unit of work on a pooled connection (``fetchone``, ``fetchall``,
``connection``, ``transaction``, ``ping``) ends within a known time whatever the server does,
including nothing at all (a frozen server, a network that drops everything):

- waiting for a pooled connection: DB_POOL_TIMEOUT;
- waiting for the server's answers: DB_STATEMENT_TIMEOUT plus ``ANSWER_GRACE``. A running server
  cancels a statement at DB_STATEMENT_TIMEOUT itself and says so; the grace lets that answer
  arrive first. A server that does not answer is never asked: the connection's socket is shut
  down (``_sever``), the waiting query fails at once and the pool replaces the connection.
  (psycopg answers a *cancelled* query by asking the server to cancel it and waiting up to
  5 + 5 s for it to confirm, which is why a bound is not an ``asyncio.timeout`` here; TCP
  keepalives and ``tcp_user_timeout`` do not help either: the kernel of a frozen server still
  acknowledges every packet.)
- both shorter when the caller's deadline (``chat_shared.deadlines``) comes first.

Dedicated connections (``connect``, ``connect_sync``) serve background work and tools (advisory
locks, LISTEN, the dead-letter CLI) and get ``statement_timeout`` and ``connect_timeout`` only.

Errors: "the database cannot be reached or did not answer in time" (``OperationalError``, which
includes a statement cancelled by ``statement_timeout``, ``PoolTimeout`` and a bound above)
becomes ``chat_shared.errors.Unavailable``, which clients may retry; when it was the caller's
deadline that ran out, ``DeadlineExceeded``. Every other error (a unique violation, a bad
statement) passes through unchanged for the caller to interpret.

Spans: each unit of work is named after what it does (``db.send_message``), as Synapse's
``runInteraction("name", ...)`` names its transactions; spans cost nothing unless recorded
(``chat_shared.observability.tracing``).

What this adds to psycopg_pool: the conventions above in one place, and the bound on a server
that does not answer (psycopg_pool bounds only the wait for a connection); that watchdog is a
loop timer per unit of work, about 3 us. ``Database.fetchone`` and ``fetchall`` are the hot
path of the API (one pooled connection, one statement, no allocation beyond psycopg's own), so
they are written out rather than layered on ``connection()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg._queries
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from chat_shared import deadlines
from chat_shared.config import ConfigError, DatabaseSettings, load_settings
from chat_shared.errors import ChatError, DeadlineExceeded, Unavailable
from chat_shared.observability.logging import get_logger
from chat_shared.observability.tracing import tracer

__all__ = [
    "ANSWER_GRACE", "API_RANDOM_PAGE_COST", "CACHED_STATEMENT_LENGTH", "CONNECTION_ERRORS",
    "CONNECT_TIMEOUT", "PING_TIMEOUT", "AsyncConn",
    "Database", "PooledSessionError", "SET_TENANT", "SET_TENANT_LOCAL", "check_pooled_session",
    "commit", "connect", "clear_tenant", "connect_sync", "conninfo", "interaction", "name_tenant",
    "redacted", "tenant_execute", "tenant_setting", "unavailable_on_connection_errors",
]

_tracer = tracer(__name__)
_log = get_logger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to establish a connection (libpq counts whole seconds, at least 2)."""

PING_TIMEOUT = 2.0
"""Seconds ``Database.ping`` waits for a pooled connection, and then for the answer."""

ANSWER_GRACE = 0.5
"""Seconds past DB_STATEMENT_TIMEOUT that a unit of work waits for the server's answer."""

API_RANDOM_PAGE_COST = 1.1
"""The API's sessions' ``random_page_cost``: its statements are index probes into data that
is in memory, as for an SSD's ``1.1`` that PostgreSQL's documentation suggests. The default,
4 (a disk's seek), made the generic plan of a page of messages scan ``message_reactions``
and ``attachments`` whole, once for each message of the page, while those tables were small
(a few pages): 150 reactions made GetMessages(50) read 7,500 rows and take 0.97 ms of the
server's time where the index takes 0.32 ms, and the cost grows with the table until the
planner switches (``tests/integration/test_plan_stability.py``, with 150 reactions)."""

CACHED_STATEMENT_LENGTH = 16384
"""Bytes up to which psycopg caches a statement's placeholder conversion (module docstring);
no statement here is longer (``tests/integration/test_send_statements.py`` checks the
sends')."""
psycopg._queries.MAX_CACHED_STATEMENT_LENGTH = max(
    psycopg._queries.MAX_CACHED_STATEMENT_LENGTH, CACHED_STATEMENT_LENGTH)

CONNECTION_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
"""What "the database is unavailable" looks like from psycopg (see the module docstring)."""

AsyncConn = psycopg.AsyncConnection[TupleRow]

SET_TENANT = "SELECT set_config('app.tenant_id', %s, false)"
"""Names the tenant for the session (row-level security reads it); see ``tenant_execute``."""
SET_TENANT_LOCAL = "SELECT set_config('app.tenant_id', %s, true)"
"""Names the tenant for the current transaction only (behind a transaction pooler)."""

_shared_sessions: weakref.WeakSet[AsyncConn] = weakref.WeakSet()
"""Connections through a transaction pooler: their session state is not theirs to keep."""

_session_tenant: weakref.WeakKeyDictionary[AsyncConn, str] = weakref.WeakKeyDictionary()
"""The tenant each session names, or ``_UNKNOWN``; absent = none (never set by this process)."""
_UNKNOWN = "?"  # not a tenant id (chat_shared.tenancy.TENANT_ID)


def conninfo(db_source: str) -> str:
    """DB_SOURCE as libpq takes it: ``postgresql+psycopg://`` (SQLAlchemy's form) loses the
    driver suffix; a plain ``postgresql://`` URL or key=value string is left alone."""
    scheme, sep, rest = db_source.partition("://")
    if sep and "+" in scheme:
        return f"{scheme.split('+', 1)[0]}://{rest}"
    return db_source


def redacted(db_source: str) -> str:
    """The URL with its password hidden, for logs."""
    parts = urlsplit(db_source)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _session_options(
    *, application_name: str, statement_timeout: float, connect_timeout: float = CONNECT_TIMEOUT,
    role: str = "", pooled: bool = False, settings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The connection arguments every session gets (see the module docstring).

    Args:
        application_name: the process, as ``pg_stat_activity`` shows it.
        statement_timeout: seconds any one statement may run.
        connect_timeout: seconds to establish the connection.
        role: the role the session acts as from its start (``DATABASE_ROLE``); "" = the login
            user. A role that does not exist, or of which the login user is not a member,
            fails the connection: a service never falls back to more rights than it asked for.
        pooled: through a transaction pooler: no ``options``, no prepared statements (the
            module docstring; ``check_pooled_session`` checks the role instead).
        settings: further server settings for the session (``{"synchronous_commit": "off"}``),
            in the startup packet like the others; refused with ``pooled`` (nothing
            session-scoped can be asked of a pooler's shared sessions).
    """
    common: dict[str, Any] = {
        "autocommit": True,
        "application_name": application_name,
        "connect_timeout": max(1, math.ceil(connect_timeout)),
    }
    if pooled:
        if settings:
            raise ValueError("session settings cannot go through a transaction pooler")
        return {**common, "prepare_threshold": None}
    options = (f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
               " -c TimeZone=UTC")
    if role:
        options += f" -c role={role}"
    for name, value in (settings or {}).items():
        if not re.fullmatch(r"[a-z_.]+", name) or not re.fullmatch(r"[\w.]+", value):
            raise ValueError(f"a session setting that cannot go in options: {name}={value}")
        options += f" -c {name}={value}"
    return {**common, "options": options}


class PooledSessionError(Exception):
    """A session through a transaction pooler is not what DATABASE_ROLE and the shared session
    conventions ask for (the login role's settings are missing)."""


async def check_pooled_session(conn: AsyncConn, role: str) -> None:
    """Refuses a session through a transaction pooler that does not act as ``role`` ("" = any)
    in UTC: without ``options`` the login role's settings are the session's (module docstring).

    Raises:
        PooledSessionError: the session acts as another role, or in another time zone.
    """
    row = await (await conn.execute(
        "SELECT current_user, current_setting('TimeZone')", prepare=False)).fetchone()
    assert row is not None
    user, zone = row
    problems = []
    if role and user != role:
        problems.append(f"acts as {user!r}, not DATABASE_ROLE {role!r} "
                        f"(ALTER ROLE <login> SET role = '{role}')")
    if zone != "UTC":
        problems.append(f"TimeZone is {zone!r} (ALTER ROLE <login> SET TimeZone = 'UTC')")
    if problems:
        raise PooledSessionError("session through the transaction pooler refused: "
                                 + "; ".join(problems))


def tenant_setting(conn: AsyncConn, tenant: str) -> tuple[str, tuple[str], bool]:
    """The statement, parameters and ``prepare`` that name ``tenant`` for the transaction
    ``conn`` is in: for the session (and prepared) on a session of its own, for the
    transaction alone through a transaction pooler (module docstring)."""
    if conn in _shared_sessions:
        return SET_TENANT_LOCAL, (tenant,), False
    return SET_TENANT, (tenant,), True


async def tenant_execute(conn: AsyncConn, tenant: str, query: QueryNoTemplate,
                         params: Params | None = None) -> psycopg.AsyncCursor[TupleRow]:
    """Runs ``query`` for ``tenant`` on ``conn``: alone when the session names ``tenant``
    already, else after naming it in the same pipeline (module docstring). The cursor holds the
    statement's rows."""
    if conn in _shared_sessions:
        async with conn.pipeline():
            await conn.execute(SET_TENANT_LOCAL, (tenant,), prepare=False)
            cursor = await conn.execute(query, params)
        return cursor
    if _session_tenant.get(conn) == tenant:
        return await conn.execute(query, params)
    # Until both succeed the session's setting is unknown: any later work clears or sets it.
    _session_tenant[conn] = _UNKNOWN
    async with conn.pipeline():
        await conn.execute(SET_TENANT, (tenant,), prepare=True)
        cursor = await conn.execute(query, params)
    _session_tenant[conn] = tenant  # both succeeded (a failure raised above)
    return cursor


class _Pipelined:
    """One pipelined transaction for a tenant on ``conn`` (``Database.tenant_transaction``)."""

    __slots__ = ("_conn", "_known", "_pipeline", "_tenant")

    def __init__(self, conn: AsyncConn, tenant: str) -> None:
        self._conn = conn
        self._tenant = tenant
        self._known = True
        self._pipeline: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def begin(self) -> None:
        """Queues BEGIN and, unless the session names the tenant already, its setting."""
        conn = self._conn
        self._pipeline = conn.pipeline()
        await self._pipeline.__aenter__()
        await conn.execute(_BEGIN, prepare=False)
        if conn in _shared_sessions:
            await conn.execute(SET_TENANT_LOCAL, (self._tenant,), prepare=False)
        elif _session_tenant.get(conn) != self._tenant:
            # Until the commit the session's setting is unknown (a rollback restores the one
            # before, whatever it was): any later work clears or sets it.
            self._known = False
            _session_tenant[conn] = _UNKNOWN
            await conn.execute(SET_TENANT, (self._tenant,), prepare=True)

    async def commit(self) -> None:
        """Queues COMMIT and waits for everything sent (one round trip)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        await self._conn.execute(_COMMIT, prepare=False)
        await pipeline.__aexit__(None, None, None)  # the Sync; raises what the server raised
        if not self._known:
            _session_tenant[self._conn] = self._tenant

    async def rollback(self, exc: BaseException) -> None:
        """Ends the transaction without its changes, on the error ``exc``; a connection that
        cannot do even that is left to the pool, which discards it."""
        conn = self._conn
        pipeline, self._pipeline = self._pipeline, None
        with contextlib.suppress(Exception):
            if pipeline is not None:
                await pipeline.__aexit__(type(exc), exc, exc.__traceback__)
            # The ROLLBACK goes after the pipeline, through psycopg's own rollback: a ROLLBACK
            # read inside a pipeline clears psycopg's prepared-statement cache but leaves the
            # matching DEALLOCATE ALL to run after the connection's next statement, which by
            # then has been prepared again under a name the server then forgets.
            if (conn.pgconn.status == psycopg.pq.ConnStatus.OK
                    and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE):
                await conn.rollback()


_BEGIN, _COMMIT = "BEGIN", "COMMIT"
_pipelined: weakref.WeakKeyDictionary[AsyncConn, _Pipelined] = weakref.WeakKeyDictionary()
"""The pipelined transaction each connection is in (``commit``)."""


async def commit(conn: AsyncConn) -> None:
    """Commits the pipelined transaction ``conn`` is in (``Database.tenant_transaction``) with
    the statements sent so far, in one round trip; their results can be read after it. The
    block must then send nothing more."""
    await _pipelined[conn].commit()


async def name_tenant(conn: AsyncConn, tenant: str) -> None:
    """Leaves ``conn``'s session naming ``tenant``, as a unit of work for it would: the next
    one for ``tenant`` then runs its statement alone, and any other work sets or clears it as
    after any unit of work (module docstring). For a new connection's warm-up
    (``Database(configure=...)``), not behind a transaction pooler (nothing is kept there)."""
    if conn in _shared_sessions:
        return
    _session_tenant[conn] = _UNKNOWN
    await conn.execute(SET_TENANT, (tenant,), prepare=True)
    _session_tenant[conn] = tenant


async def clear_tenant(conn: AsyncConn) -> None:
    """Makes ``conn`` name no tenant, when this process may have left one on it."""
    if conn in _session_tenant:
        await conn.execute(SET_TENANT, ("",), prepare=True)
        del _session_tenant[conn]


@contextlib.contextmanager
def unavailable_on_connection_errors() -> Iterator[None]:
    """Turns "the database cannot be reached or did not answer in time" into Unavailable
    (clients may retry)."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise Unavailable("database unavailable") from exc


@contextlib.contextmanager
def interaction(name: str) -> Iterator[None]:
    """One named unit of work on a connection the caller holds: a span called ``name`` and
    connection errors as Unavailable. (Pooled work gets the same from ``Database``.)"""
    with _tracer.start_as_current_span(name), unavailable_on_connection_errors():
        yield


async def connect(
    db_source: str, *, application_name: str, statement_timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT, role: str = "",
    settings: Mapping[str, str] | None = None,
) -> AsyncConn:
    """A dedicated async session with the shared options, for work that needs a session of
    its own (advisory locks, LISTEN) or must not take a pool slot; ``settings``: further
    server settings for this session only.

    Raises:
        Unavailable: the server could not be reached.
    """
    with unavailable_on_connection_errors():
        return await psycopg.AsyncConnection.connect(
            conninfo(db_source), **_session_options(
                application_name=application_name, statement_timeout=statement_timeout,
                connect_timeout=connect_timeout, role=role, settings=settings))


def connect_sync(
    db_source: str, *, application_name: str, statement_timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT, role: str = "",
) -> psycopg.Connection[TupleRow]:
    """A synchronous session with the shared options (command-line tools).

    Raises:
        Unavailable: the server could not be reached.
    """
    with unavailable_on_connection_errors():
        return psycopg.Connection.connect(
            conninfo(db_source), **_session_options(
                application_name=application_name, statement_timeout=statement_timeout,
                connect_timeout=connect_timeout, role=role))


CLI_EXIT_USAGE, CLI_EXIT_UNREACHABLE = 2, 3
"""The exit codes of the command-line tools when their database session cannot be had."""


class CliSessionFailed(Exception):
    """A command-line tool could not open its session: ``str(exc)`` for stderr (without the
    program's name), ``exit_code`` to exit with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect_cli(program: str, settings_type: type[DatabaseSettings] = DatabaseSettings
                ) -> psycopg.Connection[TupleRow]:
    """The session of a command-line tool (``chat-tenant``, ``chat-outbox``): its settings
    from the environment, then ``connect_sync`` as the tool (``application_name=program``).

    Raises:
        CliSessionFailed: the settings are invalid or DB_SOURCE is unset (exit 2), or the
            server could not be reached (exit 3).
    """
    try:
        settings = load_settings(settings_type)
    except ConfigError as exc:
        raise CliSessionFailed(str(exc), CLI_EXIT_USAGE) from None
    if not settings.db_source:
        raise CliSessionFailed("DB_SOURCE is not set", CLI_EXIT_USAGE)
    try:
        return connect_sync(settings.db_source, application_name=program,
                            statement_timeout=settings.db_statement_timeout,
                            role=settings.database_role)
    except Unavailable as exc:
        raise CliSessionFailed(f"cannot reach the database: {exc.__cause__}",
                               CLI_EXIT_UNREACHABLE) from None


def _within_deadline(wait: float) -> tuple[float, bool]:
    """``wait``, or less when the caller's deadline comes first; and whether it does.

    Raises:
        DeadlineExceeded: the caller's deadline has passed already.
    """
    left = deadlines.remaining()
    if left is None or left >= wait:
        return wait, False
    if left <= 0:
        raise DeadlineExceeded("deadline exceeded before the database answered")
    return left, True


def _timed_out(by_caller: bool) -> ChatError:
    if by_caller:
        return DeadlineExceeded("deadline exceeded before the database answered")
    return Unavailable("database unavailable: no answer in time")


def _sever(conn: AsyncConn) -> None:
    """Shuts the connection's socket down, so that whatever waits on it fails at once.

    The socket then reads as end-of-file: the waiting query raises OperationalError, psycopg
    marks the connection BAD, and the pool replaces it. ``shutdown``, not ``close``: the
    descriptor stays psycopg's, so no other file can take its number while psycopg holds it.
    """
    with contextlib.suppress(Exception):  # already closed or broken: nothing waits on it
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """Severs a connection that is still in use ``seconds`` from now."""

    __slots__ = ("_conn", "_handle", "fired")

    def __init__(self, conn: AsyncConn, seconds: float) -> None:
        self._conn = conn
        self.fired = False
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        _sever(self._conn)

    def cancel(self) -> None:
        self._handle.cancel()


class Database:
    """A process's pool of sessions, and its units of work.

    Built in the composition root; nothing connects until ``open()``.
    """

    def __init__(self, settings: DatabaseSettings, *, application_name: str,
                 generic_plans: bool = False, random_page_cost: float | None = None,
                 configure: Callable[[AsyncConn], Awaitable[None]] | None = None) -> None:
        """
        Args:
            generic_plans: ``plan_cache_mode=force_generic_plan`` for the pool's sessions: a
                prepared statement is planned once, not again for each of its first five
                executions, so a connection's first calls cost what its later ones do. Only
                for a process whose statements all have index plans as generic plans (the
                API's do: ``tests/integration/test_plan_stability.py``).
            random_page_cost: the planner's cost of a page read out of order, for the pool's
                sessions (``API_RANDOM_PAGE_COST``); None = the server's. Behind a transaction
                pooler, the login role's setting (docs/pgbouncer.md).
            configure: run on each new pooled connection before the pool hands it out (e.g.
                preparing hot statements); an error there discards the connection.
        """
        if not settings.db_source:
            raise ValueError("DB_SOURCE is not set")
        session = _session_options(application_name=application_name,
                                   statement_timeout=settings.db_statement_timeout,
                                   role=settings.database_role,
                                   pooled=settings.db_transaction_pooler)
        if generic_plans and not settings.db_transaction_pooler:  # nothing is prepared there
            session["options"] += " -c plan_cache_mode=force_generic_plan"
        if random_page_cost is not None and not settings.db_transaction_pooler:
            session["options"] += f" -c random_page_cost={random_page_cost:g}"
        self.pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            conninfo(settings.db_source),
            min_size=min(2, settings.db_pool_size),
            max_size=settings.db_pool_size + settings.db_max_overflow,
            timeout=settings.db_pool_timeout,
            kwargs=session,
            configure=self._configure,
            name=application_name,
            open=False,
        )
        self._shared_sessions = settings.db_transaction_pooler
        self._role = settings.database_role
        self._configure_more = configure
        self._pool_wait = settings.db_pool_timeout
        self._answer_wait = settings.db_statement_timeout + ANSWER_GRACE

    async def _configure(self, conn: AsyncConn) -> None:
        if self._shared_sessions:
            _shared_sessions.add(conn)
            try:
                await check_pooled_session(conn, self._role)
            except PooledSessionError as exc:
                _log.error("pooled_session_refused", error=str(exc))
                raise
            return  # session-scoped preparation means nothing behind a transaction pooler
        if self._configure_more is not None:
            await self._configure_more(conn)

    async def open(self, *, wait: bool = False) -> None:
        """Starts filling the pool; with ``wait=False`` the process starts even while
        PostgreSQL is down, and connections come when it is back."""
        await self.pool.open(wait=wait)

    async def close(self) -> None:
        await self.pool.close()

    async def fetchone(self, name: str, query: QueryNoTemplate, params: Params | None = None,
                       *, tenant: str | None = None) -> TupleRow | None:
        """Runs one statement on a pooled connection (for ``tenant``, when given: see
        ``tenant_execute``); its first row, if any.

        Raises:
            Unavailable: no connection, or the statement did not finish in time.
            DeadlineExceeded: the caller's deadline passed first.
        """
        with _tracer.start_as_current_span(name):
            async with self._bounded(self._pool_wait, self._answer_wait) as conn:
                if tenant is None:
                    await clear_tenant(conn)
                    return await (await conn.execute(query, params)).fetchone()
                return await (await tenant_execute(conn, tenant, query, params)).fetchone()

    async def fetchall(self, name: str, query: QueryNoTemplate, params: Params | None = None,
                       *, tenant: str | None = None) -> list[TupleRow]:
        """Runs one statement on a pooled connection (for ``tenant``, when given: see
        ``tenant_execute``); all its rows.

        Raises:
            Unavailable: no connection, or the statement did not finish in time.
            DeadlineExceeded: the caller's deadline passed first.
        """
        with _tracer.start_as_current_span(name):
            async with self._bounded(self._pool_wait, self._answer_wait) as conn:
                if tenant is None:
                    await clear_tenant(conn)
                    return await (await conn.execute(query, params)).fetchall()
                return await (await tenant_execute(conn, tenant, query, params)).fetchall()

    @contextlib.asynccontextmanager
    async def connection(self, name: str) -> AsyncIterator[AsyncConn]:
        """A pooled connection for a unit of several statements, each committed on its own.

        The whole block is one unit of work, bounded as one statement is (module docstring).
        """
        with _tracer.start_as_current_span(name):
            async with self._bounded(self._pool_wait, self._answer_wait) as conn:
                await clear_tenant(conn)
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, name: str) -> AsyncIterator[AsyncConn]:
        """A pooled connection inside one transaction: every statement of the block commits
        together at its end, or none does (an exception rolls it back). Bounded as
        ``connection``."""
        with _tracer.start_as_current_span(name):
            async with self._bounded(self._pool_wait, self._answer_wait) as conn:
                await clear_tenant(conn)
                async with conn.transaction():
                    yield conn

    @contextlib.asynccontextmanager
    async def tenant_transaction(self, name: str, tenant: str) -> AsyncIterator[AsyncConn]:
        """A pooled connection in one transaction for ``tenant``, in pipeline mode (module
        docstring): BEGIN and the tenant's setting go with the block's first statements and
        COMMIT with its last (``commit``, or the block's end). An exception rolls it back.
        Bounded as ``connection``."""
        with _tracer.start_as_current_span(name):
            async with self._bounded(self._pool_wait, self._answer_wait) as conn:
                tx = _Pipelined(conn, tenant)
                _pipelined[conn] = tx
                try:
                    await tx.begin()
                    yield conn
                    await tx.commit()
                except BaseException as exc:
                    await tx.rollback(exc)
                    raise
                finally:
                    del _pipelined[conn]

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query within PING_TIMEOUT (and a pooled
        connection came within PING_TIMEOUT: a probe must not queue behind a busy pool)."""
        try:
            with deadlines.deadline_after(None):  # the probe's own bounds, whoever calls
                async with self._bounded(PING_TIMEOUT, PING_TIMEOUT) as conn:
                    await conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - any failure means "down" here
            return False

    @contextlib.asynccontextmanager
    async def _bounded(self, pool_wait: float, answer_wait: float
                       ) -> AsyncIterator[AsyncConn]:
        """A pooled connection for one unit of work, bounded as the module docstring says.

        Args:
            pool_wait: seconds to wait for a pooled connection.
            answer_wait: seconds the unit of work may then wait for the server.
        """
        pool_wait, by_caller = _within_deadline(pool_wait)
        try:
            conn = await self.pool.getconn(timeout=pool_wait)
        except PoolTimeout as exc:
            raise _timed_out(by_caller) from exc
        except psycopg.OperationalError as exc:  # the pool is closed
            raise Unavailable("database unavailable") from exc
        answer_wait, by_caller = _within_deadline(answer_wait)
        watchdog = _Watchdog(conn, answer_wait)
        try:
            yield conn
        except psycopg.Error as exc:
            if watchdog.fired:
                raise _timed_out(by_caller) from exc
            if isinstance(exc, psycopg.OperationalError):
                raise Unavailable("database unavailable") from exc
            raise
        finally:
            watchdog.cancel()
            await self.pool.putconn(conn)

    def stats(self) -> dict[str, int]:
        """The pool's counters (psycopg_pool's ``get_stats()``)."""
        return self.pool.get_stats()
