"""The shared dependency probe: one gauge pattern, one log line per change, bounded checks."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Gauge
from structlog.testing import capture_logs

from chat_shared.observability.dependencies import DependencyProbe


def gauge() -> Gauge:
    return Gauge("probe_test_dependency_up", "test", ["dependency"],
                 registry=CollectorRegistry())


def value(g: Gauge, name: str) -> float:
    return g.labels(name).collect()[0].samples[0].value


async def test_answers_set_the_gauge_and_each_change_is_logged_once() -> None:
    answers = {"postgresql": True, "redis": True}
    changes: list[tuple[str, bool]] = []

    async def on_change(name: str, up: bool) -> None:
        changes.append((name, up))

    def check(name: str):  # noqa: ANN202 - a tiny factory
        async def answer() -> bool:
            return answers[name]
        return answer

    g = gauge()
    probe = DependencyProbe(g, {n: check(n) for n in answers}, on_change=on_change)
    assert probe.up == {"postgresql": None, "redis": None} and not probe.all_up()
    with capture_logs() as logs:
        await probe.probe_once()
        await probe.probe_once()  # no change: no line
        answers["redis"] = False
        await probe.probe_once()
        await probe.probe_once()
    assert probe.up == {"postgresql": True, "redis": False} and not probe.all_up()
    assert value(g, "postgresql") == 1 and value(g, "redis") == 0
    lines = [(e["dependency"], e["up"]) for e in logs if e["event"] == "dependency_changed"]
    assert lines == [("postgresql", True), ("redis", True), ("redis", False)]
    assert changes == lines


async def test_a_failing_or_silent_check_counts_as_down_with_the_reason() -> None:
    async def raises() -> bool:
        raise ConnectionRefusedError("refused")

    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    probe = DependencyProbe(gauge(), {"a": raises, "b": hangs}, timeout=0.05)
    with capture_logs() as logs:
        answers = await asyncio.wait_for(probe.probe_once(), 5)
    assert answers == {"a": False, "b": False}
    errors = {e["dependency"]: e["error"] for e in logs if e["event"] == "dependency_changed"}
    assert "ConnectionRefusedError: refused" in errors["a"]
    assert "no answer within 0.05 s" in errors["b"]


async def test_a_service_may_report_a_failure_before_the_next_probe() -> None:
    async def up() -> bool:
        return True

    g = gauge()
    probe = DependencyProbe(g, {"postgresql": up})
    await probe.probe_once()
    await probe.record("postgresql", False, "connection lost")
    assert probe.up["postgresql"] is False and value(g, "postgresql") == 0
    await probe.probe_once()
    assert probe.all_up()


@pytest.mark.parametrize("interval", [0.01])
async def test_run_keeps_probing_until_cancelled(interval: float) -> None:
    calls = 0

    async def count() -> bool:
        nonlocal calls
        calls += 1
        return True

    task = asyncio.create_task(DependencyProbe(gauge(), {"x": count}).run(interval))
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(interval)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3
