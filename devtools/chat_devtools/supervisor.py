"""Keeps one of chat-dev's services running: a crash is logged and followed by a restart after a
backoff (1 s, 2 s, 4 s ... capped), as a supervisor (systemd, the kubelet) would, instead of
taking the whole stack down.

``Backoff`` is the arithmetic alone (no clock, no sleeping); ``Supervised`` does the waiting on
a thread of its own, so that the main thread stays free for Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chat_devtools.errors import ServiceError
from chat_devtools.process import ServiceProcess


@dataclass
class Backoff:
    """Delays before restarts: ``first``, doubling up to ``cap``; a run that lasted at least
    ``cap`` seconds counts as healthy and starts the sequence over."""

    first: float = 1.0
    cap: float = 30.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def delay(self, ran_for: float) -> float:
        """The wait before restarting a process that ran ``ran_for`` seconds before it exited."""
        if ran_for >= self.cap:
            self._next = self.first
        current = self._next
        self._next = min(self.cap, self._next * 2)
        return current


class Supervised:
    """One service under supervision.

    Args:
        process: the service (not started yet).
        say: where chat-dev's own lines go.
        ready_timeout: seconds each start may take to become ready.
    """

    def __init__(self, process: ServiceProcess, say: Callable[[str], None],
                 backoff: Backoff | None = None, ready_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.process = process
        self._say = say
        self._backoff = backoff or Backoff()
        self._ready_timeout = ready_timeout
        self._clock = clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self.restarts = 0

    @property
    def name(self) -> str:
        return self.process.name

    def start(self) -> None:
        """Starts the first run (without waiting: ``wait_ready`` does)."""
        with self._lock:
            self.process.start()
            self._started_at = self._clock()

    def wait_ready(self) -> None:
        """Blocks until the first run is ready, then watches it from a thread.

        Raises:
            ServiceError: the first run exited or was not ready in time (not restarted: a
                service that cannot start at all is a configuration problem to show at once).
        """
        self.process.wait_ready(self._ready_timeout)
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            code = self._exit_code()
            if code is None:
                return
            delay = self._backoff.delay(self._clock() - self._started_at)
            self.restarts += 1
            self._say(f"{self.name} exited with code {code}; restarting in {delay:g}s "
                      f"(restart {self.restarts})")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process.start()
                self._started_at = self._clock()
            try:
                self.process.wait_ready(self._ready_timeout)
            except ServiceError as exc:
                if self._stopping.is_set():
                    return
                self._say(f"{self.name} did not become ready: {str(exc).splitlines()[0]}")
                continue
            self._say(f"{self.name} ready again (pid {self.process.pid})")

    def _exit_code(self) -> int | None:
        """The current run's exit code once it ends, None when chat-dev is stopping."""
        while not self._stopping.is_set():
            code = self.process.returncode
            if code is not None:
                return code
            self._stopping.wait(0.2)
        return None

    def request_stop(self) -> None:
        """No more restarts; the stop signal goes to the current run (it drains meanwhile)."""
        self._stopping.set()
        with self._lock:
            self.process.signal(self.process.stop_signal)

    def stop(self) -> int | None:
        """Waits for the current run to end (SIGKILL after its grace period); its exit code."""
        self.request_stop()
        with self._lock:
            code = self.process.stop()
        if self._thread is not None:
            self._thread.join(5.0)
        return code
