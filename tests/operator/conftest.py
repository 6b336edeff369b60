"""The operator running for real (kopf.operator in a task) against kmock's Kubernetes emulator.

The backlog comes from a small Prometheus query API served here (``FakePrometheus``), so tests
drive the operator the way the cluster would: by what the source answers, not by touching
operator internals. Each test gets its own kopf registry, holding the operator's handlers plus
the one login handler below (kopf decides logins per registry; two login handlers in one
registry make logins fail, see K8S-TOOLING.md §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib.resources
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kmock as km
import kopf
import pytest
from aiohttp import web

from chat_outbox_relay.operator.handlers import operator_settings, register
from chat_outbox_relay.operator.settings import OperatorConfig

NS = "chat"
DEPLOY = "relay"
RA = "chat.example.dev/v1/relayautoscalers"
PEERING = "kopf.dev/v1/kopfpeerings"
_API: dict[str, str] = {}


def _kmock_login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_API["url"], scheme="Bearer", token="test")


@dataclass
class FakePrometheus:
    """Answers /api/v1/query for the relay's two gauges; ``fail`` makes it answer 503."""

    backlog: float = 0
    oldest_age: float = 0
    fail: bool = False
    url: str = ""
    queries: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.queries += 1
        if self.fail:
            return web.json_response({"status": "error", "error": "unavailable"}, status=503)
        query = request.query.get("query", "")
        value = self.oldest_age if "oldest" in query else self.backlog
        return web.json_response({"status": "success", "data": {
            "resultType": "vector",
            "result": [{"metric": {}, "value": [time.time(), str(value)]}]}})


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def deployment(replicas: int, name: str = DEPLOY) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "resourceVersion": "1"},
            "spec": {"replicas": replicas}}


def autoscaler(source: dict[str, Any], name: str = "relay", annotations: dict[str, str] | None
               = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scaleTargetRef": {"kind": "Deployment", "name": DEPLOY},
        "minReplicas": 1, "maxReplicas": 10, "targetBacklogPerReplica": 100,
        "pollingIntervalSeconds": 0.1,
        "scaleDown": {"stabilizationWindowSeconds": 0},
        "failureThreshold": 3, "fallbackReplicas": 1,
        "source": source,
    }
    body.update(spec)
    return {"apiVersion": "chat.example.dev/v1", "kind": "RelayAutoscaler",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-ra-{name}",
                         "resourceVersion": "1", "annotations": annotations or {}},
            "spec": body}


def prom_source(fake: FakePrometheus) -> dict[str, Any]:
    return {"prometheus": {"url": fake.url}}


def load_resources(kmock: km.KubernetesEmulator) -> None:
    """Discovery for the built-ins (apps/v1, v1 events, autoscaling/v2...) and our CRD."""
    # load_bundled() reads the file with the deprecated importlib.resources.read_binary,
    # which this suite's warnings-as-errors turns fatal; same data, read the current way
    bundled = importlib.resources.files("kmock._internal") / "resources.json.gz"
    kmock.resources.load_data(gzip.decompress(bundled.read_bytes()))
    kmock.resources[RA] = km.ResourceInfo(
        kind="RelayAutoscaler", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"})
    kmock.resources[PEERING] = km.ResourceInfo(
        kind="KopfPeering", namespaced=True, verbs={"get", "list", "watch", "patch"})


@pytest.fixture
def run_operator(kmock: km.KubernetesEmulator) -> Callable[..., Any]:
    """``async with run_operator(): ...`` runs the whole operator until the block ends."""

    @contextlib.asynccontextmanager
    async def _run(scale_up_period: float = 15.0, peering: str | None = None,
                   priority: int = 0) -> AsyncIterator[None]:
        _API["url"] = str(kmock.url)
        load_resources(kmock)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(_kmock_login)
        config = OperatorConfig(_env_file=None, operator_tick_interval=0.05,  # type: ignore[call-arg]
                                scale_up_period=scale_up_period, metrics_port=0)
        register(registry, config)
        settings = operator_settings()
        settings.networking.error_backoffs = [0.1]
        stop = asyncio.Event()
        task = asyncio.create_task(kopf.operator(
            registry=registry, settings=settings, namespaces=[NS], standalone=peering is None,
            peering_name=peering, priority=priority, stop_flag=stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    return _run


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Polls ``check`` until it returns something truthy (bounded); returns that value."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(KeyError, TypeError, IndexError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {check}")
        await asyncio.sleep(0.02)


def scale_patches(kmock: km.KubernetesEmulator) -> list[int]:
    """Replica counts of every PATCH to the Deployment's scale subresource, in order."""
    return [req.data["spec"]["replicas"] for req in list(kmock)
            if req.method == "PATCH" and req.subresource == "scale"]


def status_patches(kmock: km.KubernetesEmulator) -> list[dict[str, Any]]:
    return [req.data["status"] for req in list(kmock)
            if req.method == "PATCH" and req.subresource == "status"]


def events(kmock: km.KubernetesEmulator, reason: str | None = None) -> list[dict[str, Any]]:
    """Kubernetes Events the operator posted (optionally only those with ``reason``)."""
    return [req.data for req in list(kmock)
            if req.method == "POST" and req.url.path.endswith("/events")
            and (reason is None or req.data.get("reason") == reason)]


def replicas(kmock: km.KubernetesEmulator) -> int:
    return int(kmock.objects["apps/v1/deployments", NS, DEPLOY]["spec"]["replicas"])


def status(kmock: km.KubernetesEmulator, name: str = "relay") -> dict[str, Any]:
    return dict(kmock.objects[RA, NS, name].get("status") or {})


def conditions(kmock: km.KubernetesEmulator, name: str = "relay") -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status(kmock, name).get("conditions") or []}


async def api_patch(kmock: km.KubernetesEmulator, path: str, body: dict[str, Any]) -> None:
    """A merge PATCH through kmock's HTTP API, so watchers (the operator) see the change."""
    async with aiohttp.ClientSession() as session:
        async with session.patch(f"{str(kmock.url).rstrip('/')}{path}", json=body,
                                 headers={"Content-Type": "application/merge-patch+json"}) as rsp:
            assert rsp.status == 200, await rsp.text()
