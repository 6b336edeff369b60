"""Every built image runs: throwaway PostgreSQL and Redis, the migration from the api image, then
each image's own command under ``buildah run`` (the host's network, the image's non-root user,
/tmp a tmpfs as the chart mounts it) with the environment the chart gives it. Through the
running containers only: gRPC health answers SERVING, a message sent over HTTP reaches a
WebSocket client of the gateway's container through the relay's container, /metrics answers
on each, and SIGTERM stops each with exit 0 within its grace period.

What differs from a pod, and why: listeners bind 127.0.0.1 and ports the services pick (the
host's network is shared with everything else on the machine); the operator reads a
kubeconfig naming kmock's Kubernetes emulator where a pod has its service account; buildah
has no read-only root file system, so the test shows the same thing another way: after the
run no file in the container's root file system belongs to the service's user.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from typing import Any

import aiohttp
import grpc
import kmock as km
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat_devtools import images
from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.process import PICK, ServiceProcess, grpc_serving, http_get, http_ok
from tests.conftest import TEST_SECRET, make_token
from tests.images import support
from tests.images.conftest import BUILD_TIMEOUT
from tests.operator.conftest import load_resources

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]

LOOPBACK = "127.0.0.1"
GRACE = 30.0
"""The chart's terminationGracePeriodSeconds (its SHUTDOWN_GRACE is 10 s inside it)."""


def operator_ready(proc: ServiceProcess) -> bool:
    # The operator announces no ports: its picked health port is in its environment.
    return http_get(int(proc.env["HEALTH_PORT"]), "/healthz")[0] == 200


async def test_images_run_the_chat_pipeline(
        built_images: dict[str, images.BuiltImage], postgres: LocalPostgres, redis_addr: str,
        kmock: km.KubernetesEmulator, tmp_path: pathlib.Path) -> None:
    name = {service: image.name for service, image in built_images.items()}
    uid = int(support.image_config(name["api"])["config"]["User"].split(":")[0])
    db_source = postgres.create_database(f"images_{uuid.uuid4().hex[:8]}")  # empty: no schema
    credentials = {"DB_SOURCE": db_source, "JWT_SECRET": TEST_SECRET}
    listen = {"METRICS_ADDRESS": LOOPBACK, "METRICS_PORT": PICK, "REDIS_ADDR": redis_addr,
              "LOG_LEVEL": "INFO"}

    def environment(workload: str, **overrides: str) -> tuple[dict[str, str], list[str]]:
        env, files = support.chart_env(workload, credentials, {**listen, **overrides})
        volumes = []
        if files:
            creds = support.write_credentials(tmp_path / f"{workload}-credentials", files)
            volumes.append(f"{creds}:{support.SECRETS_MOUNT}:ro")
        return env, volumes

    # The operator's cluster: kmock, named by a kubeconfig mounted where KUBECONFIG points.
    load_resources(kmock)
    kube = tmp_path / "kube"
    kube.mkdir(mode=0o755)
    (kube / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    (kube / "config").chmod(0o444)

    containers: list[support.Container] = []

    def container(*args: Any, **kwargs: Any) -> support.Container:
        containers.append(support.Container(*args, **kwargs))
        return containers[-1]

    with support.removed_at_end(containers):
        env, volumes = environment("migrate")
        migrate = container("migrate", name["api"], env, tmp_path,
                                    command=["chat-migrate", "upgrade"], volumes=volumes)
        env, volumes = environment("api", GRPC_SERVER_ADDRESS=f"{LOOPBACK}:0",
                                   HTTP_SERVER_ADDRESS=f"{LOOPBACK}:0")
        api = container("api", name["api"], env, tmp_path,
                                ready=grpc_serving(), volumes=volumes)
        env, volumes = environment("outbox-relay", OUTBOX_POLL_INTERVAL_MS="100")
        relay = container("relay", name["outbox-relay"], env, tmp_path,
                                  ready=http_ok("/readyz"), volumes=volumes)
        env, volumes = environment("ws-gateway", WS_SERVER_ADDRESS=f"{LOOPBACK}:0")
        gateway = container("gateway", name["ws-gateway"], env, tmp_path,
                                    ready=http_ok("/readyz"), volumes=volumes)
        env, volumes = environment("relay-operator", HEALTH_PORT=PICK, PEERING_NAME="",
                                   KUBECONFIG="/run/kube/config")
        operator = container("operator", name["relay-operator"], env, tmp_path,
                                     ready=operator_ready,
                                     volumes=[*volumes, f"{kube}:/run/kube:ro"])
        services = [api, relay, gateway, operator]  # each runs the command its image names
        assert await asyncio.to_thread(migrate.run_to_end, 120) == 0, migrate.process.log()
        with psycopg.connect(db_source) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"messages", "outbox", "alembic_version"} <= tables, tables

        for c in services:
            c.start()
        for c in services:
            await c.process.ready(120)
        # As the image's own user, the one a pod's runAsNonRoot sees in the image.
        assert {c.name: c.uid() for c in services} == {c.name: uid for c in services}

        # gRPC health, through the api container's port.
        with grpc.insecure_channel(f"{LOOPBACK}:{api.process.port('grpc_port')}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        # A message sent over HTTP reaches bob's WebSocket through the relay and the gateway.
        http = f"http://{LOOPBACK}:{api.process.port('http_port')}"
        ws_url = f"http://{LOOPBACK}:{gateway.process.port('ws_port')}/v1/ws"
        alice = {"Authorization": f"Bearer {make_token('alice')}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{http}/v1/conversations", headers=alice,
                                    json={"member_ids": ["bob"], "title": "images"}) as rsp:
                assert rsp.status == 200, await rsp.text()
                conversation = (await rsp.json())["conversation"]["id"]
            async with session.ws_connect(
                    ws_url, headers={"Authorization": f"Bearer {make_token('bob')}"}) as ws:
                await ws.send_json({"type": "resume", "positions": {}})
                async with session.post(f"{http}/v1/messages",
                                        headers={**alice, "Idempotency-Key": "images-1"},
                                        json={"conversation_id": conversation,
                                              "content": "hello from the images"}) as rsp:
                    assert rsp.status == 200, await rsp.text()
                frame: dict[str, object] = {}
                while frame.get("type") != "message.created":
                    msg = await ws.receive(timeout=30)
                    assert msg.type == aiohttp.WSMsgType.TEXT, (msg, relay.process.log())
                    frame = msg.json()
        assert frame["conversation_id"] == conversation
        assert frame["message"]["content"] == "hello from the images"  # type: ignore[index]

        # /metrics on each container, with the metrics each one is known by.
        known = {"api": "chat_rpc_requests_total", "relay": "outbox_processed_total",
                 "gateway": "ws_frames_sent_total", "operator": "relay_autoscaler"}
        for c in services:
            status, body = http_get(int(c.process.env["METRICS_PORT"]), "/metrics")
            assert status == 200 and known[c.name] in body, (c.name, status, body[:500])

        # SIGTERM: each drains and exits 0 within the grace period.
        codes = {}
        for c in (gateway, relay, api, operator):
            codes[c.name] = await asyncio.to_thread(c.terminate, GRACE)
        assert codes == {"gateway": 0, "relay": 0, "api": 0, "operator": 0}, \
            {c.name: c.process.log(2000) for c in services}

        # Nothing was written to the root file system (only /tmp, a tmpfs, is writable).
        for c in (migrate, *services):
            assert c.files_owned_by(uid) == [], c.name
