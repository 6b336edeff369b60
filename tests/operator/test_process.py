"""``chat-relay-operator`` as a real process: kubeconfig login, scaling, /metrics, /healthz,
SIGTERM exit 0."""

from __future__ import annotations

import asyncio
import os
import pathlib

import aiohttp
import yaml

from chat_devtools.process import PICK, ServiceProcess, http_get
from tests.operator.conftest import (
    DEPLOY,
    NS,
    RA,
    FakePrometheus,
    autoscaler,
    deployment,
    eventually,
    load_resources,
    prom_source,
    replicas,
)


def liveness_answers(proc: ServiceProcess) -> bool:
    # Its ports are picked candidates (0 turns them off), so they are read from its environment.
    return http_get(int(proc.env["HEALTH_PORT"]), "/healthz")[0] == 200


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as rsp:
        return rsp.status, await rsp.text()


async def test_console_script_scales_serves_metrics_and_health_and_stops(
        kmock, prometheus: FakePrometheus, tmp_path: pathlib.Path, venv_bin: pathlib.Path) -> None:
    load_resources(kmock)
    kmock.objects["apps/v1/deployments", NS, DEPLOY] = deployment(1)
    kmock.objects[RA, NS, "relay"] = autoscaler(prom_source(prometheus))
    prometheus.backlog = 450
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "OPERATOR_NAMESPACE": NS,
           "PEERING_NAME": "", "METRICS_PORT": PICK, "HEALTH_PORT": PICK,
           "METRICS_ADDRESS": "127.0.0.1", "OPERATOR_TICK_INTERVAL": "0.1", "LOG_LEVEL": "WARNING"}
    operator = ServiceProcess("operator", [venv_bin / "chat-relay-operator"], env=env,
                              ready=liveness_answers, log_path=tmp_path / "operator.log")
    try:
        await operator.start().ready()
        metrics_port, health_port = (int(operator.env[k]) for k in ("METRICS_PORT", "HEALTH_PORT"))
        await eventually(lambda: replicas(kmock) == 5, within=30)
        status, body = await fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert 'relay_autoscaler_desired_replicas{name="relay",namespace="chat"} 5.0' in body
        assert ('relay_autoscaler_scale_total{direction="up",name="relay",namespace="chat"} 1.0'
                in body)
        status, _ = await fetch(f"http://127.0.0.1:{health_port}/healthz")
        assert status == 200
    finally:
        code = await asyncio.to_thread(operator.stop, 30)
    assert code == 0, operator.log()
