"""A throwaway Redis server from the installed binary, for the tests, chat-dev and chat-bench.

Why not pytest-redis (tried, 5.0.1): it picks its port with port_for and, when another process
holds it by the time Redis starts, fails with mirakuru's AlreadyRunning; here the server's own
bind is the reservation and a taken port means another try on another port
(``ports.retry_on_port_in_use``), with readiness checked over the server's own Unix socket. It
is also a pytest fixture only, and chat-dev and chat-bench need the same server outside pytest.
Its per-test clean-up is one FLUSHALL, which the pytest plugin does itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Self

import redis

from chat_devtools.local_server import LocalServer
from chat_devtools.ports import LOOPBACK, candidate_port
from chat_devtools.process import ServiceProcess

APPEND_ONLY_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec")
"""Redis persistence for a stream that must survive a restart: the append-only file, fsynced
every second (a crash loses at most about a second of writes). The same in docker-compose.yml
and k8s/dev/redis.yaml."""


class LocalRedis(LocalServer):
    """A Redis server on a loopback port of its own; by default it keeps nothing on disk.

    Args:
        port: the port to try first (default: a candidate); the first ``start`` moves on to
            other candidates while the port is taken, a restart (after ``stop``) keeps the
            port it had, since clients hold the address.
        attempts: how many ports the first ``start`` tries.
        append_only: keep the data in an append-only file (``APPEND_ONLY_ARGS``) in ``dir``,
            which a restart of this server reads back: chat-dev's Redis. Off for the tests'
            server, which is flushed before every test anyway.
    """

    def __init__(self, port: int | None = None, attempts: int = 5, *,
                 append_only: bool = False, cluster_node_timeout_ms: int = 0) -> None:
        self.append_only = append_only
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        """Non-zero: a Redis Cluster node (``LocalRedisCluster``) with this node timeout."""
        self.bus_port = 0
        self._started = False
        super().__init__(port, attempts)
        self.dir = Path(tempfile.mkdtemp(prefix="chat-redis-"))

    def start(self, timeout: float = 15.0) -> Self:
        """Starts the server and waits until it answers PING.

        Raises:
            PortInUse: every port tried was taken.
            ServiceError: the server exited or did not become ready.
        """
        self._start_on_a_port(timeout)
        self._started = True
        return self

    def _process(self, port: int) -> ServiceProcess:
        binary = shutil.which("redis-server")
        if not binary:
            raise FileNotFoundError(
                "redis-server not found; install it (apt-get install redis-server)")
        socket_path = self.dir / "redis.sock"
        cluster: tuple[str, ...] = ()
        if self.cluster_node_timeout_ms:
            # The cluster bus port, chosen with the port (a restart keeps both: the other
            # nodes know the node by them); a taken one fails the start like the port does.
            if not self._started:
                self.bus_port = candidate_port()
            cluster = ("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                       "--cluster-config-file", str(self.dir / "nodes.conf"),
                       "--cluster-node-timeout", str(self.cluster_node_timeout_ms))
        return ServiceProcess(
            "redis",
            [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
             *(APPEND_ONLY_ARGS if self.append_only else ("--appendonly", "no")),
             "--dir", str(self.dir), "--protected-mode", "no", "--logfile", "",
             "--unixsocket", str(socket_path), "--unixsocketperm", "700", *cluster],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            ready=lambda _proc: self._answers(socket_path), log_path=self.dir / "redis.log")

    @staticmethod
    def _answers(socket_path: Path) -> bool:
        # Over the server's own Unix socket, created after its TCP listener: whoever else may
        # answer on the port, this is the server started here.
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
