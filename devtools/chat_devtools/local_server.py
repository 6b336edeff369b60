"""What the throwaway servers of the tests, chat-dev and chat-bench share: a loopback port of
their own, kept across restarts, and a start that waits until the server answers.

PostgreSQL, Redis, PgBouncer and the S3 server cannot bind port 0 and say which port they got,
so each is given a candidate port and its own bind is the reservation (``ports``): the first
``start`` moves on to another candidate while the port is taken. A restart after ``stop`` keeps
the port it had, since clients hold the address. Each server says how to run it on a port
(``_process``) and what else its ``start`` does (initdb, creating a bucket).
"""

from __future__ import annotations

import abc
import signal

from chat_devtools.errors import ServiceError
from chat_devtools.ports import LOOPBACK, candidate_port, retry_on_port_in_use
from chat_devtools.process import ServiceProcess


class LocalServer(abc.ABC):
    """One server process on a loopback port of its own.

    Args:
        port: the port to try first (default: a candidate).
        attempts: how many ports the first start tries.
    """

    def __init__(self, port: int | None, attempts: int) -> None:
        self.port = port or 0
        self._first_port = port
        self._attempts = attempts
        self.process: ServiceProcess | None = None

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @abc.abstractmethod
    def _process(self, port: int) -> ServiceProcess:
        """The server's process on ``port``, not started yet, with its readiness probe."""

    def _start_on_a_port(self, timeout: float) -> None:
        """Starts the server and waits until it is ready: on the port it had (a restart), else
        on the first port given or a candidate, then others while each is taken.

        Raises:
            PortInUse: every port tried was taken.
            ServiceError: the server exited or did not become ready.
        """
        if self.process is not None:
            self._run(self.port, timeout)
            return
        first = self._first_port

        def attempt() -> None:
            nonlocal first
            port, first = first or candidate_port(), None
            self._run(port, timeout)

        retry_on_port_in_use(attempt, self._attempts)

    def _run(self, port: int, timeout: float) -> None:
        self.port = port
        self.process = self._process(port)
        self.process.start()
        try:
            self.process.wait_ready(timeout)
        except ServiceError:
            self.process.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Asks the server to end with ``sig``; SIGKILL after ``timeout`` seconds."""
        if self.process is None or not self.process.running:
            return
        self.process.stop_signal = sig
        self.process.stop(timeout)
