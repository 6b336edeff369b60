"""The operator running for real (kopf.operator in a task) against kmock's Kubernetes emulator.

The backlog comes from a small Prometheus query API served here (``FakePrometheus``), so tests
drive the operator the way the cluster would: by what the source answers, not by touching
operator internals. Each test gets its own kopf registry, holding the operator's handlers plus
the one login handler below (kopf decides logins per registry; two login handlers in one
registry make logins fail). The operator's own calls (lightkube) get a ``KubeConfig`` for the
same kmock server.

kmock answers what lightkube sends with two gaps filled here (``load_resources``): it serves a
``scale`` GET or PATCH with the whole Deployment, where an API server answers an
``autoscaling/v1`` Scale; and it merges every PATCH body as JSON, which is right for the merge
patches the operator sends (``scale_patches`` checks their content type) and wrong for JSON or
strategic patches.
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
import lightkube
import pytest
from aiohttp import web
from lightkube.config.models import Cluster, User

from chat_relay_operator.handlers import operator_settings, register
from chat_relay_operator.kube import KubeClient
from chat_relay_operator.settings import OperatorConfig

NS = "chat"
DEPLOY = "relay"
RA = "chat.example.dev/v1/relayautoscalers"
PEERING = "kopf.dev/v1/kopfpeerings"
_API: dict[str, str] = {}


def _kmock_login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_API["url"], scheme="Bearer", token="test")


def kmock_kube_config(kmock: km.KubernetesEmulator) -> lightkube.KubeConfig:
    """What ``KubeConfig.from_env`` would find in a kubeconfig naming the kmock server."""
    return lightkube.KubeConfig.from_one(cluster=Cluster(server=str(kmock.url).rstrip("/")),
                                         user=User(token="test"))


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
    # kmock has already merged a PATCH into the Deployment when this runs (kmock.objects)
    kmock[km.resource("apps/v1/deployments"), km.subresource("scale")] << _scale_of(kmock)


def _scale_of(kmock: km.KubernetesEmulator) -> Callable[[km.Request], dict[str, Any]]:
    """The ``scale`` subresource as an API server answers it: an autoscaling/v1 Scale."""

    def scale(request: km.Request) -> dict[str, Any]:
        try:
            deployment = kmock.objects["apps/v1/deployments", request.namespace, request.name]
        except KeyError:
            raise km.KubernetesObjectNotFoundError() from None
        if deployment.deleted:
            raise km.KubernetesObjectNotFoundError()
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": request.name, "namespace": request.namespace,
                             "resourceVersion": deployment["metadata"]["resourceVersion"]},
                "spec": {"replicas": deployment["spec"]["replicas"]},
                "status": {"replicas": deployment.get("status", {}).get("replicas", 0)}}

    return scale


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
        kube = KubeClient(kmock_kube_config(kmock))
        register(registry, config, kube)
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
            try:
                await asyncio.wait_for(task, 10)
            finally:
                await kube.close()

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
    """Replica counts of every PATCH to the Deployment's scale subresource, in order (each
    a JSON merge patch, the kind kmock applies as a real API server would)."""
    patches = [req for req in list(kmock) if req.method == "PATCH" and req.subresource == "scale"]
    assert {req.headers["Content-Type"] for req in patches} <= {"application/merge-patch+json"}
    return [req.data["spec"]["replicas"] for req in patches]


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
