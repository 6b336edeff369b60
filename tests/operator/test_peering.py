"""kopf peering: while a live peer of higher priority is in the KopfPeering, this operator
stands still; when that peer's record expires, it takes over."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.operator.conftest import (
    DEPLOY,
    NS,
    PEERING,
    RA,
    autoscaler,
    deployment,
    eventually,
    prom_source,
    replicas,
    scale_patches,
)


@pytest.mark.slow
async def test_a_higher_priority_peer_keeps_this_replica_idle(kmock, run_operator, prometheus):
    lifetime = 3
    kmock.objects["apps/v1/deployments", NS, DEPLOY] = deployment(1)
    kmock.objects[RA, NS, "relay"] = autoscaler(prom_source(prometheus))
    kmock.objects[PEERING, NS, "relay-operator"] = {
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": "relay-operator", "namespace": NS, "resourceVersion": "1"},
        "status": {"the-other-replica": {"priority": 100, "lifetime": lifetime,
                                         "lastseen": datetime.now(UTC).isoformat()}}}
    prometheus.backlog = 450
    started = time.monotonic()
    async with run_operator(peering="relay-operator", priority=1):
        # this replica announced itself in the peering object...
        await eventually(lambda: len(kmock.objects[PEERING, NS, "relay-operator"]["status"]) == 2)
        # ...and only once the other one's record expired did it act
        await eventually(lambda: replicas(kmock) == 5, within=20)
        took_over_after = time.monotonic() - started
    assert took_over_after >= lifetime - 0.5  # lastseen was stamped just before `started`
    assert scale_patches(kmock) == [5]
