"""``ServiceProcess``: one development process, run the way chat-dev, chat-bench and the tests
all need it (a chat service, PostgreSQL, Redis, Prometheus, chat-dev itself).

It starts the command in its own session with the given environment (plus the COVERAGE_*
variables, so a test run measuring coverage follows the code into the process), reads stdout
and stderr on threads (kept in memory, appended to a log file, echoed with the name in front),
learns the ports the process bound from its own output (the services' JSON start lines carry
them), waits until a probe says it is ready (gRPC health, an HTTP endpoint, a line of output),
and stops it with its stop signal and a grace period, then SIGKILL, reporting the exit code.

A process started from the main thread is also sent its stop signal by the kernel when the
process that started it dies, however it dies (``tied_to_parent``): a test run or a benchmark
killed with SIGKILL no longer leaves its PostgreSQL, Redis and services running.

A port the process cannot bind as port 0 (a service's METRICS_PORT, where 0 turns metrics off)
is given as ``PICK`` in the environment: each start fills in a candidate port, and when the
process exits saying the address is in use, ``wait_ready`` starts it again on another one.

Why not mirakuru (the executor under pytest-postgresql and pytest-redis): its executors wait for
a fixed port, URL or banner, but learn no port from the process, cannot tell "the port is taken"
from "the process failed" (it raises AlreadyRunning when anything answers on the port, and then
the process never started), and leave the output in a pipe nobody reads after the banner.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from chat_devtools.errors import PortInUse, ServiceError
from chat_devtools.ports import LOOPBACK, candidate_port, mentions_port_in_use

PICK = "<pick>"
"""An environment value meaning "a candidate port, chosen at each start" (see the module doc)."""

Probe = Callable[["ServiceProcess"], bool]
"""Readiness: called repeatedly (each call bounded, about a second) until it returns True."""

PortParser = Callable[[str], Mapping[str, int]]
"""The ports one line of output announces, by name (empty for most lines)."""


def json_ports(line: str) -> dict[str, int]:
    """The non-zero ``*_port`` fields of a JSON log line: how the services say what they bound
    (``api_started``: grpc_port, http_port; ``relay_started``: metrics_port; ...)."""
    if "_port" not in line or not line.startswith("{"):
        return {}
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {key: value for key, value in record.items()
            if key.endswith("_port") and type(value) is int and value > 0}


def grpc_serving(port_key: str = "grpc_port", host: str = LOOPBACK) -> Probe:
    """Ready when grpc.health.v1 answers SERVING on the port the process announced."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def probe(proc: ServiceProcess) -> bool:
        port = proc.ports.get(port_key)
        if not port:
            return False
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_get(port: int, path: str, host: str = LOOPBACK, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def http_ok(path: str = "/readyz", port_key: str = "metrics_port",
            host: str = LOOPBACK) -> Probe:
    """Ready when ``path`` answers 200 on the port the process announced."""

    def probe(proc: ServiceProcess) -> bool:
        port = proc.ports.get(port_key)
        return port is not None and http_get(port, path, host, timeout=1.0)[0] == 200

    return probe


def printed(text: str) -> Probe:
    """Ready once a line of the process's output contains ``text``."""

    def probe(proc: ServiceProcess) -> bool:
        return any(text in line for _, line in proc.lines())

    return probe


SETPRIV = shutil.which("setpriv")
"""util-linux's setpriv (Debian's util-linux package, always installed), for ``tied_to_parent``."""


def tied_to_parent(argv: Sequence[str], stop_signal: int) -> list[str]:
    """``argv`` run so that it gets ``stop_signal`` when the thread that starts it ends, which
    for the main thread is when this process dies (by SIGKILL too): the kernel's parent-death
    signal (``prctl(PR_SET_PDEATHSIG)``), set by ``setpriv --pdeathsig`` before it executes
    ``argv`` (the signal survives the exec; the pid stays the same). subprocess's
    ``preexec_fn`` could set it without a helper, but is unsafe in a process with threads,
    which every caller here has (the output pumps).

    Only the main thread ties its processes: the signal follows the thread, and another
    thread (the supervisor's, restarting a crashed service; a worker of ``asyncio.to_thread``)
    can end while the process should go on. Without setpriv, ``argv`` unchanged."""
    if SETPRIV is None or threading.current_thread() is not threading.main_thread():
        return list(argv)
    name = signal.Signals(stop_signal).name.removeprefix("SIG")
    return [SETPRIV, "--pdeathsig", name, "--", *argv]


def _found(program: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> bool:
    """Whether Popen would find ``program``: a path (from ``cwd``), or a name on env's PATH."""
    if os.sep in program:
        return os.access(Path(cwd or ".") / program, os.X_OK)
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None


def _coverage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}


class ServiceProcess:
    """One process at a time under one name; ``start`` again after it exited runs it anew.

    Args:
        name: shown in front of echoed lines and in errors.
        argv: the command.
        env: its whole environment (default: this process's); a value ``PICK`` becomes a
            candidate port at each start. COVERAGE_* variables are always passed on.
        ready: the readiness probe (None: ready once started).
        ports_from: reads announced ports from a line of output (default: JSON ``*_port``).
        log_path: the output is appended there too (both streams, in arrival order).
        echo: called with each line of output, prefixed ``"name  | "`` (chat-dev's console).
        stop_signal, grace: how ``stop`` asks the process to end, and how long it waits.
        user: run as this user (PostgreSQL refuses to run as root).
        hold: sockets kept bound for the process (``ports.reserve_port``), closed once it is
            ready or stopped.
    """

    def __init__(self, name: str, argv: Sequence[str | os.PathLike[str]], *,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 ready: Probe | None = None, ports_from: PortParser = json_ports,
                 log_path: Path | None = None, echo: Callable[[str], None] | None = None,
                 stop_signal: int = signal.SIGTERM, grace: float = 20.0,
                 user: pwd.struct_passwd | None = None, hold: Iterable[socket.socket] = (),
                 keep_lines: int = 20_000) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self._env_template = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._ready = ready
        self._ports_from = ports_from
        self.log_path = log_path
        self._echo = echo
        self._prefix = f"{name:<6}| "
        self.stop_signal = stop_signal
        # What the kernel sends when this process dies (``tied_to_parent``): the signal given
        # here, not whatever a test last set ``stop_signal`` to (SIGKILL, to crash a server).
        self._death_signal = stop_signal
        self.grace = grace
        self._user = user
        self._hold = list(hold)
        self._lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=keep_lines)
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        self._log: IO[str] | None = None
        self.env: dict[str, str] = {}
        """The environment of the current run (picked ports filled in)."""
        self.ports: dict[str, int] = {}
        """The ports the current run announced, by name (``grpc_port``, ``metrics_port``...)."""
        self.killed = False
        """Whether the last ``stop`` had to SIGKILL the process after its grace period."""

    # --- running --------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        env = {**_coverage_env(), **self._env_template}
        for key, value in env.items():
            if value == PICK:
                env[key] = str(candidate_port())
        env.setdefault("PYTHONUNBUFFERED", "1")  # lines as they happen, not per 8 KiB
        self.env, self.ports, self.killed = env, {}, False
        with self._lock:
            self._lines.clear()
        if self.log_path is not None:
            self._log = self.log_path.open("a", encoding="utf-8", errors="replace")
        user = self._user
        argv = tied_to_parent(self.argv, self._death_signal)
        if argv[0] != self.argv[0] and not _found(self.argv[0], env, self.cwd):
            # What Popen raises for a missing program, which setpriv would report only by
            # exiting 127 once started.
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.argv[0])
        self._popen = subprocess.Popen(
            argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None)
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._pumps = [threading.Thread(target=self._pump, args=(stream, which), daemon=True,
                                        name=f"{self.name}-{which}")
                       for stream, which in ((self._popen.stdout, "stdout"),
                                             (self._popen.stderr, "stderr"))]
        for pump in self._pumps:
            pump.start()
        return self

    def _pump(self, stream: IO[bytes], which: str) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self._take(which, raw.decode(errors="replace").rstrip("\r\n"))

    def _take(self, which: str, line: str) -> None:
        found = self._ports_from(line)
        with self._lock:
            self._lines.append((which, line))
            if found:
                self.ports.update(found)
            if self._log is not None:
                self._log.write(line + "\n")
                self._log.flush()
        if self._echo is not None:
            self._echo(self._prefix + line)

    def wait_ready(self, timeout: float = 30.0, attempts: int = 5) -> Self:
        """Blocks until the probe says ready; restarts on another candidate port (``PICK``)
        when the process could not bind one.

        Raises:
            PortInUse: it could not bind a port (after ``attempts`` starts when ports are picked).
            ServiceError: it exited, or was not ready within ``timeout`` seconds.
        """
        picks = any(v == PICK for v in self._env_template.values())
        for _ in range(attempts - 1 if picks else 0):
            try:
                return self._wait_ready_once(timeout)
            except PortInUse:
                self.start()  # on new candidate ports
        return self._wait_ready_once(timeout)

    def _wait_ready_once(self, timeout: float) -> Self:
        popen = self._require_started()
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                self._finish()
                raise self._exit_error("exited before it was ready")
            if self._ready is None or self._ready(self):
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} was not ready within {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)
        self._release_hold()
        return self

    async def ready(self, within: float = 30.0) -> Self:
        """``wait_ready`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_ready, within)

    def port(self, key: str, timeout: float = 30.0) -> int:
        """The port announced under ``key``, waiting (bounded) until the process says it."""
        deadline = time.monotonic() + timeout
        while key not in self.ports:
            popen = self._require_started()
            if popen.poll() is not None:
                self._finish()
                if key in self.ports:
                    break
                raise self._exit_error(f"exited without announcing {key}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} announced no {key} within {timeout:g}s:\n"
                                   f"{self.log()}")
            time.sleep(0.02)
        return self.ports[key]

    # --- state ----------------------------------------------------------------------------

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise ServiceError(f"{self.name} was never started")
        return self._popen

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int:
        return self._require_started().pid

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: the signal that ended it), None while running."""
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> None:
        """Raises ServiceError (with the output) when the process has exited."""
        if self._require_started().poll() is not None:
            self._finish()
            raise self._exit_error("exited")

    def lines(self, stream: str | None = None) -> list[tuple[str, str]]:
        """(stream, line) of the current run's output, oldest first."""
        with self._lock:
            return [(s, line) for s, line in self._lines if stream is None or s == stream]

    def output(self, stream: str | None = None) -> str:
        """The current run's output (``"stdout"``, ``"stderr"`` or both), one line per line."""
        return "".join(line + "\n" for _, line in self.lines(stream))

    def log(self, limit: int = 6000) -> str:
        """The end of the output, for error messages."""
        return self.output()[-limit:]

    def _exit_error(self, what: str) -> ServiceError:
        code = self.returncode
        text = f"{self.name} {what} (exit code {code}):\n{self.log()}"
        return PortInUse(text) if mentions_port_in_use(self.output()) else ServiceError(text)

    # --- ending ---------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        if self.running:
            assert self._popen is not None
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to the process and everything it started in its session (workers, backends)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited.

        Raises:
            ServiceError: still running after ``timeout`` seconds.
        """
        popen = self._require_started()
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{self.name} still running after {timeout:g}s:\n"
                               f"{self.log()}") from None
        self._finish()
        return code

    async def wait_async(self, within: float) -> int:
        """``wait`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait, within)

    def stop(self, grace: float | None = None) -> int | None:
        """Stop signal, up to ``grace`` seconds to exit, then SIGKILL; the exit code
        (None when it never started). Safe to call more than once."""
        if self._popen is None:
            return None
        grace = self.grace if grace is None else grace
        if self.running:
            self.signal(self.stop_signal)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.kill()
                self._popen.wait()
        self._finish()
        self._release_hold()
        return self._popen.returncode

    def _finish(self) -> None:
        """After the exit: the rest of the output read, the log file closed."""
        self._join_pumps(5.0)
        self._close_log()

    def _join_pumps(self, timeout: float) -> None:
        # Children that outlive the process (PostgreSQL backends) can hold the pipes open:
        # bounded, the threads are daemons.
        deadline = time.monotonic() + timeout
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))

    def _close_log(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _release_hold(self) -> None:
        for sock in self._hold:
            sock.close()
        self._hold.clear()

    def __enter__(self) -> Self:
        return self if self._popen is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "not started" if self._popen is None else (
            f"pid {self._popen.pid}, " + ("running" if self.running else
                                          f"exit code {self._popen.returncode}"))
        return f"<ServiceProcess {self.name}: {state}>"
