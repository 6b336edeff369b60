"""A throwaway Redis Cluster on loopback, from the installed binaries: for the tests.

Six ``redis-server --cluster-enabled yes`` processes (``LocalRedis`` nodes, each with its own
port, cluster bus port and directory) joined by ``redis-cli --cluster create ...
--cluster-replicas 1``: three masters owning the 16384 slots, each with one replica. The node
timeout is short (1 s, the default is 15 s) so that a killed master is failed over within
about two seconds, and the fault tests stay short.

``addr`` is what the services take as REDIS_ADDR (``redis+cluster://`` and every node as a
startup node). ``flush`` empties it for the next test; ``ensure_healthy`` restarts nodes a test
killed and waits until every slot is served again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from typing import Self

import redis

from chat_devtools.errors import ServiceError
from chat_devtools.local_redis import LocalRedis
from chat_devtools.ports import LOOPBACK

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout of the nodes: how long a silent master has before its replica takes
over (plus about a second of election)."""


class LocalRedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self.masters = masters
        self.replicas = replicas
        self.nodes = [LocalRedis(cluster_node_timeout_ms=node_timeout_ms)
                      for _ in range(masters * (1 + replicas))]

    @property
    def addr(self) -> str:
        """REDIS_ADDR for the services: every node is a startup node."""
        return "redis+cluster://" + ",".join(node.addr for node in self.nodes)

    def start(self, timeout: float = 60.0) -> Self:
        """Starts the nodes, creates the cluster, waits until every slot is served.

        Raises:
            ServiceError: a node did not start, or the cluster did not form in time.
        """
        cli = shutil.which("redis-cli")
        if not cli:
            raise FileNotFoundError("redis-cli not found; install it (apt-get install redis-tools)")
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [cli, "--cluster", "create", *(node.addr for node in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, check=False)
            if created.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed:\n{created.stdout}"
                                   f"{created.stderr}")
            self.wait_healthy(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def client(self, node: LocalRedis) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def _info(self, node: LocalRedis) -> dict[str, str]:
        with self.client(node) as c:
            text = str(c.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def role(self, node: LocalRedis) -> str:
        """"master" or "slave", as the node itself says (ROLE)."""
        with self.client(node) as c:
            return str(c.execute_command("ROLE")[0])

    def healthy(self) -> bool:
        """Every node runs and says the cluster is ok, all slots served, with the expected
        numbers of masters (each with its replicas) in the view of every node."""
        try:
            for node in self.nodes:
                if not node.running:
                    return False
                info = self._info(node)
                if (info.get("cluster_state") != "ok"
                        or info.get("cluster_slots_ok") != "16384"
                        or info.get("cluster_known_nodes") != str(len(self.nodes))):
                    return False
            return sum(self.role(n) == "master" for n in self.nodes) == self.masters and all(
                self._replicas_in_sync(n) for n in self.nodes if self.role(n) == "master")
        except (redis.RedisError, OSError):
            return False

    def _replicas_in_sync(self, master: LocalRedis) -> bool:
        with self.client(master) as c:
            info = c.info("replication")
        return int(info.get("connected_slaves", 0)) >= self.replicas

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Waits until ``healthy``.

        Raises:
            ServiceError: not healthy within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise ServiceError(f"the Redis Cluster is not healthy after {timeout:g}s")
            time.sleep(0.1)

    def ensure_healthy(self, timeout: float = 60.0) -> None:
        """Restarts nodes that are down (a test killed them; each rejoins as a replica) and
        waits until every slot is served again."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_healthy(timeout)

    def master_nodes(self) -> list[LocalRedis]:
        return [n for n in self.nodes if n.running and self.role(n) == "master"]

    def replica_of(self, master: LocalRedis) -> LocalRedis:
        """A replica of ``master`` (by the master's node id in each replica's CLUSTER NODES)."""
        with self.client(master) as c:
            master_id = str(c.execute_command("CLUSTER", "MYID"))
        for node in self.nodes:
            if node is master or not node.running:
                continue
            with self.client(node) as c:
                role = c.execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == master.port:
                return node
        raise ServiceError(f"no replica of {master.addr} ({master_id})")

    def flush(self) -> None:
        """Empties every master (its replicas follow)."""
        for node in self.master_nodes():
            with self.client(node) as c:
                c.flushall()

    def kill(self, node: LocalRedis) -> None:
        """SIGKILL: the node dies without a word to the cluster."""
        node.stop(sig=signal.SIGKILL)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
