"""``chat-relay-operator`` as a real process: kubeconfig login, scaling, /metrics, /healthz,
SIGTERM exit 0."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket

import aiohttp
import yaml

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "OPERATOR_NAMESPACE": NS,
           "PEERING_NAME": "", "METRICS_PORT": str(metrics_port),
           "HEALTH_PORT": str(health_port), "METRICS_ADDRESS": "127.0.0.1",
           "OPERATOR_TICK_INTERVAL": "0.1", "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        str(venv_bin / "chat-relay-operator"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await eventually(lambda: replicas(kmock) == 5, within=30)
        status, body = await fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert 'relay_autoscaler_desired_replicas{name="relay",namespace="chat"} 5.0' in body
        assert ('relay_autoscaler_scale_total{direction="up",name="relay",namespace="chat"} 1.0'
                in body)
        status, _ = await fetch(f"http://127.0.0.1:{health_port}/healthz")
        assert status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, output.decode()[-3000:]
