"""The operator running for real against kmock, the backlog served by a fake Prometheus API."""

from __future__ import annotations

import time
from typing import Any

import kmock as km

from tests.operator.conftest import (
    DEPLOY,
    NS,
    RA,
    api_patch,
    autoscaler,
    conditions,
    deployment,
    events,
    eventually,
    prom_source,
    replicas,
    scale_patches,
    status,
    status_patches,
)


def seed(kmock: Any, current: int, ra: dict[str, Any]) -> None:
    kmock.objects["apps/v1/deployments", NS, DEPLOY] = deployment(current)
    kmock.objects[RA, NS, "relay"] = ra


async def test_scales_up_on_backlog_and_writes_status_and_event(kmock, run_operator, prometheus):
    seed(kmock, 1, autoscaler(prom_source(prometheus)))
    prometheus.backlog, prometheus.oldest_age = 450, 12
    async with run_operator():
        await eventually(lambda: replicas(kmock) == 5)
        await eventually(lambda: status(kmock).get("desiredReplicas") == 5)
        await eventually(lambda: events(kmock, "ScaledUp"))
    st = status(kmock)
    assert st["backlog"] == 450 and st["oldestAgeSeconds"] == 12
    assert st["currentReplicas"] == 5 and st["lastScaleTime"].endswith("Z")
    conds = conditions(kmock)
    assert conds["Ready"]["status"] == "True"
    assert conds["MetricAvailable"]["status"] == "True"
    assert conds["ScalingLimited"]["status"] == "False"
    assert scale_patches(kmock) == [5]
    [event] = events(kmock, "ScaledUp")
    assert event["type"] == "Normal" and "1 -> 5" in event["message"]
    assert event["involvedObject"]["kind"] == "RelayAutoscaler"


async def test_old_events_scale_up_even_with_a_small_backlog(kmock, run_operator, prometheus):
    seed(kmock, 2, autoscaler(prom_source(prometheus), oldestAgeThresholdSeconds=30))
    prometheus.backlog, prometheus.oldest_age = 150, 95  # 2 replicas suffice by count
    async with run_operator():
        await eventually(lambda: replicas(kmock) == 6)  # 95/30 -> ceil(2 x 3.17) = 7, +4 cap
    assert scale_patches(kmock)[0] == 6


async def test_clamps_at_max_after_the_rate_limit(kmock, run_operator, prometheus):
    seed(kmock, 1, autoscaler(prom_source(prometheus), maxReplicas=7))
    prometheus.backlog = 100_000
    async with run_operator(scale_up_period=0.3):
        await eventually(lambda: replicas(kmock) == 7)
        await eventually(lambda: "maxReplicas" in conditions(kmock)["ScalingLimited"]["message"])
    # 1 -> 5 (double or +4), then the next period allows 10 but maxReplicas is 7
    assert scale_patches(kmock) == [5, 7]
    assert conditions(kmock)["ScalingLimited"]["status"] == "True"
    limited = [p["conditions"] for p in status_patches(kmock) if "conditions" in p]
    assert any("rate limit" in c["message"] for conds in limited for c in conds
               if c["type"] == "ScalingLimited")


async def test_raises_to_min_replicas(kmock, run_operator, prometheus):
    seed(kmock, 1, autoscaler(prom_source(prometheus), minReplicas=3))
    prometheus.backlog = 0
    async with run_operator():
        await eventually(lambda: replicas(kmock) == 3)
        await eventually(lambda: conditions(kmock)["ScalingLimited"]["status"] == "True")
    assert scale_patches(kmock) == [3]
    assert "minReplicas 3" in conditions(kmock)["ScalingLimited"]["message"]


async def test_scale_down_only_after_the_window(kmock, run_operator, prometheus):
    window = 1.5
    seed(kmock, 6, autoscaler(prom_source(prometheus),
                              scaleDown={"stabilizationWindowSeconds": window}))
    prometheus.backlog = 0
    started = time.monotonic()
    async with run_operator():
        # the empty backlog has been read, and the decision was to hold the 6 replicas
        held = await eventually(lambda: status(kmock).get("backlog") == 0
                                and "held by" in conditions(kmock)["Ready"]["message"])
        assert held and replicas(kmock) == 6 and status(kmock)["desiredReplicas"] == 6
        await eventually(lambda: replicas(kmock) == 1)
        scaled_after = time.monotonic() - started
    assert scale_patches(kmock) == [1]
    assert scaled_after >= window
    assert events(kmock, "ScaledDown")


async def test_source_failure_holds_then_goes_to_fallback(kmock, run_operator, prometheus):
    seed(kmock, 2, autoscaler(prom_source(prometheus), failureThreshold=3, fallbackReplicas=4))
    prometheus.fail = True
    async with run_operator():
        # first failures: nothing moves (a failing source never scales down or up)
        await eventually(lambda: status(kmock).get("consecutiveFailures") == 1)
        assert replicas(kmock) == 2
        cond = conditions(kmock)["MetricAvailable"]
        assert cond["status"] == "False" and cond["reason"] == "SourceUnavailable"
        await eventually(lambda: replicas(kmock) == 4)
        await eventually(lambda: status(kmock).get("consecutiveFailures", 0) >= 3)
        # the source recovers: failures reset, the condition flips back
        prometheus.fail = False
        prometheus.backlog = 400
        await eventually(lambda: conditions(kmock)["MetricAvailable"]["status"] == "True")
        await eventually(lambda: status(kmock).get("consecutiveFailures") == 0)
    assert scale_patches(kmock) == [4]


async def test_source_failure_keeps_a_higher_count(kmock, run_operator, prometheus):
    seed(kmock, 7, autoscaler(prom_source(prometheus), failureThreshold=2, fallbackReplicas=3))
    prometheus.fail = True
    async with run_operator():
        await eventually(lambda: status(kmock).get("consecutiveFailures", 0) >= 4)
    assert replicas(kmock) == 7
    assert scale_patches(kmock) == []
    assert "not below fallback" in conditions(kmock)["Ready"]["message"]


async def test_refuses_when_an_hpa_targets_the_deployment(kmock, run_operator, prometheus):
    seed(kmock, 1, autoscaler(prom_source(prometheus)))
    kmock.objects["autoscaling/v2/horizontalpodautoscalers", NS, "relay-hpa"] = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "relay-hpa", "namespace": NS, "resourceVersion": "1"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": DEPLOY},
                 "minReplicas": 1, "maxReplicas": 3}}
    prometheus.backlog = 900
    hpa_lists = lambda: [r for r in list(kmock) if r.method == "GET"  # noqa: E731
                         and r.url.path.endswith("/horizontalpodautoscalers")]
    async with run_operator():
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "HPAConflict")
        count = len(hpa_lists())
        await eventually(lambda: len(hpa_lists()) >= count + 5)  # several more ticks
    cond = conditions(kmock)["Ready"]
    assert cond["status"] == "False" and "relay-hpa" in cond["message"]
    assert scale_patches(kmock) == [] and replicas(kmock) == 1
    [event] = events(kmock, "HPAConflict")  # once, on the transition, not every tick
    assert event["type"] == "Warning"
    assert prometheus.queries == 0


async def test_no_patch_when_nothing_changes(kmock, run_operator, prometheus):
    # 3 replicas x 100 = 300; 320 is inside the 10% tolerance
    seed(kmock, 3, autoscaler(prom_source(prometheus)))
    prometheus.backlog = 320
    async with run_operator():
        await eventually(lambda: prometheus.queries >= 20)  # ten polls or more
    assert scale_patches(kmock) == []
    assert replicas(kmock) == 3
    assert len(status_patches(kmock)) == 1  # the first poll's status; later ones are equal
    assert status(kmock)["desiredReplicas"] == 3 and "lastScaleTime" not in status(kmock)
    assert events(kmock, "ScaledUp") == [] and events(kmock, "ScaledDown") == []


async def test_pause_annotation_leaves_the_deployment_alone(kmock, run_operator, prometheus):
    paused = {"chat.example.dev/paused": "true"}
    seed(kmock, 1, autoscaler(prom_source(prometheus), annotations=paused))
    prometheus.backlog = 900
    # a rate-limit period longer than the test: one step of +4, however slow the machine
    async with run_operator(scale_up_period=3600):
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "Paused")
        assert scale_patches(kmock) == [] and prometheus.queries == 0
        await api_patch(kmock, f"/apis/chat.example.dev/v1/namespaces/{NS}/relayautoscalers/relay",
                        {"metadata": {"annotations": {"chat.example.dev/paused": "false"}}})
        await eventually(lambda: replicas(kmock) == 5)
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "Scaling")
    assert scale_patches(kmock) == [5]


async def test_missing_target_is_reported_once(kmock, run_operator, prometheus):
    kmock.objects[RA, NS, "relay"] = autoscaler(prom_source(prometheus))
    async with run_operator():
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "TargetNotFound")
        scale_gets = lambda: [r for r in list(kmock) if r.method == "GET"  # noqa: E731
                              and r.subresource == "scale"]
        count = len(scale_gets())
        await eventually(lambda: len(scale_gets()) >= count + 3)  # several more ticks
    assert f"deployment {DEPLOY} not found" in conditions(kmock)["Ready"]["message"]
    [event] = events(kmock, "TargetNotFound")  # once, on the transition, not every tick
    assert event["type"] == "Warning"
    assert scale_patches(kmock) == [] and prometheus.queries == 0


async def test_api_server_errors_are_retried_then_reported(kmock, run_operator, prometheus):
    seed(kmock, 1, autoscaler(prom_source(prometheus)))
    prometheus.backlog = 450
    answers = [km.KubernetesError(status=503, reason="ServiceUnavailable"),
               km.KubernetesError(status=403, reason="Forbidden")]

    def failing_scale(request: km.Request) -> None:
        if answers:
            raise answers.pop(0)
        raise km.ReactionMismatchError()  # spent: kmock goes on to the next reaction

    # added before run_operator's own scale reaction, so this one answers first
    kmock[km.resource("apps/v1/deployments"), km.subresource("scale")] << failing_scale
    async with run_operator():
        # 503, retried at once: 403, not retried, becomes the Ready condition
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "KubernetesError")
        assert "403 Forbidden" in conditions(kmock)["Ready"]["message"]
        # the next poll reads the scale again (the reaction is spent) and scales
        await eventually(lambda: replicas(kmock) == 5)
        await eventually(lambda: conditions(kmock)["Ready"]["reason"] == "Scaling")
    gets = [r for r in list(kmock) if r.method == "GET" and r.subresource == "scale"]
    assert len(gets) >= 3
    assert scale_patches(kmock) == [5]


async def test_ticks_of_one_resource_never_overlap(kmock, prometheus):
    """A tick due while the previous one is still running (it took longer than the polling
    interval) does nothing: without the per-resource lock it read the replicas the first had
    just set, before the first recorded its scale-up, and passed the rate limit again:
    [5, 9] where one step of +4 is allowed (what test_pause_annotation_leaves_the_deployment_alone
    once saw in CI on a loaded machine, and this test reproduces without the lock)."""
    import asyncio
    import logging

    import kopf

    from chat_relay_operator.handlers import Autoscalers
    from chat_relay_operator.kube import KubeClient
    from chat_relay_operator.settings import OperatorConfig
    from tests.operator.conftest import kmock_kube_config, load_resources

    seed(kmock, 1, autoscaler(prom_source(prometheus)))
    load_resources(kmock)
    prometheus.backlog = 900
    config = OperatorConfig(_env_file=None, scale_up_period=3600,  # type: ignore[call-arg]
                            metrics_port=0)
    kube = KubeClient(kmock_kube_config(kmock))
    scalers = Autoscalers(config, kube)
    ra = kmock.objects[RA, NS, "relay"]
    body = kopf.Body(ra)
    # What kopf.event needs outside a running operator: its settings and a queue (kopf's
    # internals; the events are read back from the queue instead of posted).
    from kopf._core.engines import posting

    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)  # type: ignore[arg-type]
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    # The first tick's scale takes longer than the polling interval (a loaded machine), so
    # the second tick is due while the first has scaled and not yet recorded it.
    patch_scale = kube.patch_scale_replicas

    async def slow_patch(*args: Any) -> Any:
        result = await patch_scale(*args)
        await asyncio.sleep(0.5)
        return result

    kube.patch_scale_replicas = slow_patch  # type: ignore[method-assign]

    async def tick(after: float) -> None:
        await asyncio.sleep(after)
        await scalers.reconcile(
            body=body, spec=body.spec, status=body.status, meta=body.meta, name="relay",
            namespace=NS, uid="uid-1", patch=kopf.Patch(), logger=logging.getLogger("t"))

    try:
        await asyncio.gather(tick(0), tick(0.3))
    finally:
        await kube.close()
    assert scale_patches(kmock) == [5]
    assert queue.qsize() == 1  # one ScaledUp event
