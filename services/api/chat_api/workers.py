"""API_WORKERS > 1: several API processes on the same ports, so one pod can use several cores.

Python runs one core per process. The supervisor (this module, in the process Kubernetes
starts) spawns API_WORKERS copies of the API; each binds the gRPC and HTTP ports with
SO_REUSEPORT and the kernel spreads incoming connections across them. The supervisor serves
/metrics for all of them (prometheus_client's multiprocess mode), forwards SIGTERM/SIGINT so
each drains, and exits with an error as soon as a worker dies unexpectedly, so the pod restarts
instead of running on with less capacity than it advertises.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

from chat_api.settings import ApiSettings
from chat_shared.config import parse_host_port
from chat_shared.observability.logging import get_lifecycle_logger, get_logger

log = get_logger("chat_api.workers")
lifecycle = get_lifecycle_logger()

WORKER_ENV = "CHAT_API_WORKER"
"""Set in each worker's environment: run one API process, do not supervise."""


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def check_ports(settings: ApiSettings) -> str | None:
    """Why the settings cannot run several workers, or None when they can."""
    for name in ("grpc_server_address", "http_server_address"):
        if parse_host_port(getattr(settings, name))[1] == 0:
            return f"API_WORKERS > 1 needs a fixed port in {name.upper()} (not 0)"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, even by SIGKILL.

    Without this, a killed supervisor leaves its workers running, still holding the ports.
    """
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(settings: ApiSettings) -> int:
    """Runs the workers until a signal (exit 0 when they drained) or a worker's death (exit 1)."""
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="chat-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    env = {**os.environ, WORKER_ENV: "1", "PROMETHEUS_MULTIPROC_DIR": multiproc_dir}
    # Imported only now: prometheus_client picks its storage from the environment at import.
    from prometheus_client import CollectorRegistry, multiprocess

    from chat_shared.observability.metrics import serve_metrics

    workers = [
        subprocess.Popen([sys.executable, "-m", "chat_api.main"], env=env,
                         preexec_fn=_die_with_parent)
        for _ in range(settings.api_workers)
    ]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    port = serve_metrics(settings.metrics_port, registry=registry, addr=settings.metrics_host)
    lifecycle.info("workers_started", workers=[w.pid for w in workers], metrics_port=port)

    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    try:
        while any(w.poll() is None for w in workers):
            for worker in workers:
                code = worker.poll()
                if code is not None and not stopping:
                    log.error("worker_died", pid=worker.pid, code=code)
                    failed = True
                    forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for worker in workers:
            multiprocess.mark_process_dead(worker.pid, multiproc_dir)  # type: ignore[no-untyped-call]
        if not os.environ.get("CHAT_API_KEEP_METRICS_DIR"):
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    codes = [w.returncode for w in workers]
    log.info("workers_stopped", codes=codes)
    return 1 if failed or any(codes) else 0
